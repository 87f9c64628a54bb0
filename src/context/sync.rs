//! The context as the build session's file sync serves it to BuildKit (docker CLI's way, fsutil's
//! DiffCopy): a "context" directory, which `.dockerignore` alone decides, and a "dockerfile"
//! directory holding only the Dockerfile. Each is a list of entries in fsutil's walk order, every
//! parent directory present, as fsutil's receiver checks.
//!
//! A file's modification time is derived from its content: the engine keeps the context between
//! builds and asks again only for files whose size, mode or time changed, so a content-derived
//! time makes it ask exactly for the files whose content changed, whatever a checkout did to the
//! times on disk; and the same content always gives the same image.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::ignore::DockerIgnore;
use super::stream::{SizedPrefix, Verified};
use super::{ContextError, ContextFiles, Entry, EntryKind, Sent};
use crate::gopath::{ancestors, clean, within_context};

/// The name the Dockerfile has in the "dockerfile" directory: the build's `dockerfile` option.
pub(crate) const SYNCED_DOCKERFILE: &str = "Dockerfile";
/// File content goes out in pieces of this size, as fsutil's sender sends them.
const CHUNK_SIZE: usize = 32 * 1024;
/// Go's `os.FileMode` bits, which fsutil puts in a stat's mode.
const GO_MODE_DIR: u32 = 1 << 31;
const GO_MODE_SYMLINK: u32 = 1 << 27;
const GO_MODE_SETUID: u32 = 1 << 23;
const GO_MODE_SETGID: u32 = 1 << 22;
const GO_MODE_STICKY: u32 = 1 << 20;
/// Symlinks followed before a path is given up as a loop.
const MAX_LINK_HOPS: usize = 40;

/// What BuildKit asked of the context in one DiffCopy: the patterns and paths it named (fsutil's
/// `include-patterns`, `exclude-patterns` and `followpaths`). A build's requests are what its
/// Dockerfile frontend read, with ARG, ENV, stages and the base images' triggers resolved by
/// BuildKit itself.
#[derive(
    Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub(crate) struct SyncRequest {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub include: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub follow: Vec<String>,
}

/// Names the encoding of [`ContextFiles::requests_digest`]; change it whenever that changes.
const REQUESTS_DIGEST_DOMAIN: &[u8] = b"ecr-build file sync digest v1\n";

/// What one build's session serves.
pub(crate) struct SyncDirs {
    pub context: SyncDir,
    pub dockerfile: SyncDir,
    /// Keys the engine's kept copy of the context: the same context folder finds it again.
    pub shared_key: String,
}

/// One directory, in fsutil's walk order.
pub(crate) struct SyncDir {
    items: Vec<SyncItem>,
}

/// One entry as fsutil's stat describes it.
pub(crate) struct SyncItem {
    /// '/'-separated, relative to the directory.
    pub path: String,
    /// Go's `os.FileMode`.
    pub mode: u32,
    pub size: i64,
    pub mod_time_nanos: i64,
    pub linkname: String,
    content: Option<Content>,
}

enum Content {
    /// The first `size` bytes of the file, which must hash to `hash`.
    Disk {
        path: PathBuf,
        size: u64,
        hash: [u8; 32],
    },
    Memory(Vec<u8>),
}

impl SyncItem {
    /// Whether the receiver may ask for this entry's content (a regular file).
    pub(crate) fn has_content(&self) -> bool {
        self.content.is_some()
    }

    fn from_entry(entry: &Entry, root: &std::path::Path, path: String) -> SyncItem {
        let mut item = SyncItem {
            path,
            mode: go_file_mode(entry.mode),
            size: 0,
            mod_time_nanos: 0,
            linkname: String::new(),
            content: None,
        };
        match &entry.kind {
            EntryKind::Dir => item.mode |= GO_MODE_DIR,
            EntryKind::Symlink(target) => {
                item.mode |= GO_MODE_SYMLINK;
                item.linkname = String::from_utf8_lossy(target.as_os_str().as_bytes()).into();
            }
            EntryKind::DiskFile { size, hash } => {
                let hash = hash.expect("the context is hashed before it is served");
                item.size = *size as i64;
                item.mod_time_nanos = content_time(&hash);
                item.content = Some(Content::Disk {
                    path: root.join(&entry.path),
                    size: *size,
                    hash,
                });
            }
            EntryKind::MemoryFile(bytes) => {
                item.size = bytes.len() as i64;
                item.mod_time_nanos = content_time(&Sha256::digest(bytes).into());
                item.content = Some(Content::Memory(bytes.clone()));
            }
        }
        item
    }
}

impl ContextFiles {
    /// The two directories a BuildKit build reads through the session. Blocking (hashes any file
    /// not hashed yet).
    pub(crate) fn into_sync_dirs(mut self) -> Result<SyncDirs, ContextError> {
        self.hash_contents()?;
        let root = self.root.clone();
        let dockerfile = (self.entries.iter())
            .find(|entry| entry.path == self.dockerfile)
            .map(|entry| SyncItem::from_entry(entry, &root, SYNCED_DOCKERFILE.to_owned()))
            .into_iter()
            .collect();
        let mut items: Vec<SyncItem> = (self.entries.iter())
            .filter(|entry| entry.sent != Sent::TarOnly)
            .map(|entry| SyncItem::from_entry(entry, &root, entry.path.clone()))
            .collect();
        // An excluded directory that holds a re-included file is not an entry of the walk, but
        // the receiver needs every parent: it gets the directory's own mode, as fsutil sends it.
        let known: HashSet<String> = items.iter().map(|item| item.path.clone()).collect();
        let parents: HashSet<String> = (items.iter())
            .flat_map(|item| ancestors(&item.path))
            .filter(|dir| !known.contains(*dir))
            .map(str::to_owned)
            .collect();
        for parent in parents {
            let mode = fs::symlink_metadata(root.join(&parent))
                .map_or(0o755, |metadata| metadata.permissions().mode() & 0o7777);
            items.push(SyncItem {
                path: parent,
                mode: go_file_mode(mode) | GO_MODE_DIR,
                size: 0,
                mod_time_nanos: 0,
                linkname: String::new(),
                content: None,
            });
        }
        // fsutil's order: component by component, so "a/x" comes before "a-b".
        items.sort_by(|a, b| a.path.split('/').cmp(b.path.split('/')));
        let shared_key = format!(
            "{:x}",
            Sha256::digest([b"ecr-build context ", root.as_os_str().as_bytes()].concat())
        );
        Ok(SyncDirs {
            context: SyncDir { items },
            dockerfile: SyncDir { items: dockerfile },
            shared_key,
        })
    }

    /// sha256 (hex) over what the file sync offers for `requests`: each request, then every entry
    /// it selects (path, Go mode, size, symlink target, content hash), as [`SyncDir::select`]
    /// serves them. The same requests over the same files give the same digest; any byte, mode or
    /// name BuildKit would receive that differs gives another. Blocking (hashes unhashed files).
    pub(crate) fn requests_digest(&self, requests: &[SyncRequest]) -> Result<String, ContextError> {
        let dirs = self.clone().into_sync_dirs()?;
        let mut requests = requests.to_vec();
        requests.sort();
        requests.dedup();
        let mut hasher = Sha256::new();
        hasher.update(REQUESTS_DIGEST_DOMAIN);
        for request in &requests {
            let framed = serde_json::to_vec(request).expect("strings serialize");
            hasher.update((framed.len() as u64).to_be_bytes());
            hasher.update(&framed);
            let selected = dirs.context.select(&request.include, &request.follow)?;
            hasher.update((selected.len() as u64).to_be_bytes());
            for index in selected {
                dirs.context.item(index).hash_into(&mut hasher);
            }
        }
        Ok(format!("{:x}", hasher.finalize()))
    }
}

impl SyncItem {
    fn hash_into(&self, hasher: &mut Sha256) {
        for field in [self.path.as_bytes(), self.linkname.as_bytes()] {
            hasher.update((field.len() as u64).to_be_bytes());
            hasher.update(field);
        }
        hasher.update(self.mode.to_be_bytes());
        hasher.update(self.size.to_be_bytes());
        match &self.content {
            None => hasher.update([0]),
            Some(Content::Disk { hash, .. }) => {
                hasher.update([1]);
                hasher.update(hash);
            }
            Some(Content::Memory(bytes)) => {
                hasher.update([1]);
                hasher.update(Sha256::digest(bytes));
            }
        }
    }
}

impl SyncDir {
    pub(crate) fn item(&self, index: usize) -> &SyncItem {
        &self.items[index]
    }

    /// The entries a request for `include_patterns` and `follow_paths` gets, by index, in order:
    /// those the patterns (Docker's syntax; a match of a directory takes all below it) or paths
    /// (with the symlinks on their way followed) name, and the directories above them. Neither
    /// given: all. Where a path cannot be resolved here (a wildcard through a symlink), all.
    pub(crate) fn select(
        &self,
        include_patterns: &[String],
        follow_paths: &[String],
    ) -> Result<Vec<usize>, ContextError> {
        let everything = (0..self.items.len()).collect();
        if include_patterns.is_empty() && follow_paths.is_empty() {
            return Ok(everything);
        }
        let Some(followed) = self.resolve_follow_paths(follow_paths) else {
            return Ok(everything);
        };
        let patterns: Vec<&str> = (include_patterns.iter().map(String::as_str))
            .chain(followed.iter().map(String::as_str))
            .collect();
        if patterns.iter().any(|pattern| clean(pattern) == ".") {
            return Ok(everything);
        }
        let matcher = DockerIgnore::from_patterns(patterns.iter().copied())?;
        let index_of: HashMap<&str, usize> = (self.items.iter().enumerate())
            .map(|(index, item)| (item.path.as_str(), index))
            .collect();
        let mut wanted = vec![false; self.items.len()];
        for (index, item) in self.items.iter().enumerate() {
            if !matcher.is_excluded(&item.path) {
                continue;
            }
            wanted[index] = true;
            for dir in ancestors(&item.path) {
                if let Some(&parent) = index_of.get(dir) {
                    wanted[parent] = true;
                }
            }
        }
        Ok((0..self.items.len()).filter(|&i| wanted[i]).collect())
    }

    /// fsutil's FollowLinks: each path, and where a component of it is a symlink, the link and
    /// the path through its target. `None` where that cannot be done without reading the disk.
    fn resolve_follow_paths(&self, follow_paths: &[String]) -> Option<Vec<String>> {
        let links: HashMap<&str, &str> = (self.items.iter())
            .filter(|item| item.mode & GO_MODE_SYMLINK != 0)
            .map(|item| (item.path.as_str(), item.linkname.as_str()))
            .collect();
        let mut resolved = Vec::new();
        for path in follow_paths {
            if links.is_empty() {
                resolved.push(path.clone());
            } else if path.contains(['*', '?', '[', '\\']) {
                return None;
            } else {
                follow(path, &links, &mut resolved, 0)?;
            }
        }
        Some(resolved)
    }

    /// Sends entry `index`'s content to `sink` in pieces, checking that it is what was hashed: a
    /// file changed since is an error naming it. Blocking.
    pub(crate) fn read(
        &self,
        index: usize,
        sink: &mut dyn FnMut(&[u8]) -> io::Result<()>,
    ) -> io::Result<()> {
        match &self.items[index].content {
            None => Ok(()),
            Some(Content::Memory(bytes)) => bytes.chunks(CHUNK_SIZE).try_for_each(sink),
            Some(Content::Disk { path, size, hash }) => {
                let file = File::open(path).map_err(|err| {
                    io::Error::new(err.kind(), super::read_error(path)(err).to_string())
                })?;
                let mut reader = Verified::new(
                    SizedPrefix::new(file, *size, path.clone()),
                    Some(*hash),
                    path.clone(),
                );
                let mut buffer = vec![0; CHUNK_SIZE];
                loop {
                    let read = reader.read(&mut buffer)?;
                    if read == 0 {
                        return Ok(());
                    }
                    sink(&buffer[..read])?;
                }
            }
        }
    }
}

/// One follow path through the symlinks of `links`, into `resolved`.
fn follow(
    path: &str,
    links: &HashMap<&str, &str>,
    resolved: &mut Vec<String>,
    hops: usize,
) -> Option<()> {
    if hops > MAX_LINK_HOPS {
        return None;
    }
    let path = within_context(path);
    let parts: Vec<&str> = path.split('/').collect();
    for end in 1..=parts.len() {
        let prefix = parts[..end].join("/");
        let Some(target) = links.get(prefix.as_str()) else {
            continue;
        };
        resolved.push(prefix.clone());
        let base = match (target.starts_with('/'), prefix.rfind('/')) {
            (false, Some(slash)) => &prefix[..slash],
            _ => "",
        };
        let rest = parts[end..].join("/");
        return follow(
            &format!("{base}/{target}/{rest}"),
            links,
            resolved,
            hops + 1,
        );
    }
    resolved.push(parts.join("/"));
    Some(())
}

/// Permission bits (with setuid, setgid, sticky) as Go's `os.FileMode` has them.
fn go_file_mode(mode: u32) -> u32 {
    let mut go_mode = mode & 0o777;
    for (unix, go) in [
        (0o4000, GO_MODE_SETUID),
        (0o2000, GO_MODE_SETGID),
        (0o1000, GO_MODE_STICKY),
    ] {
        if mode & unix != 0 {
            go_mode |= go;
        }
    }
    go_mode
}

/// A modification time (nanoseconds since 1970) that only the content decides: within the
/// first 34 years, to the nanosecond, from the content's sha256.
fn content_time(hash: &[u8; 32]) -> i64 {
    let seconds = u32::from_be_bytes([hash[0], hash[1], hash[2], hash[3]]) >> 2;
    let nanos = u32::from_be_bytes([hash[4], hash[5], hash[6], hash[7]]) % 1_000_000_000;
    i64::from(seconds) * 1_000_000_000 + i64::from(nanos)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use super::super::collect;
    use super::super::test_support::{TempDir, set_mode};
    use super::*;

    fn paths(dir: &SyncDir, selected: &[usize]) -> Vec<String> {
        (selected.iter())
            .map(|&index| dir.item(index).path.clone())
            .collect()
    }

    fn all(dir: &SyncDir) -> Vec<String> {
        paths(dir, &(0..dir.items.len()).collect::<Vec<_>>())
    }

    fn content(dir: &SyncDir, index: usize) -> io::Result<Vec<u8>> {
        let mut bytes = Vec::new();
        dir.read(index, &mut |chunk| {
            bytes.extend_from_slice(chunk);
            Ok(())
        })?;
        Ok(bytes)
    }

    fn sync_dirs(dir: &TempDir, dockerfile: &str) -> SyncDirs {
        let mut files = collect(dir.path(), Path::new(dockerfile)).unwrap();
        files.digest(b"").unwrap();
        files.into_sync_dirs().unwrap()
    }

    #[test]
    fn entries_come_in_fsutil_order_with_every_parent() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("a-b", "1");
        dir.write("a/x", "2");
        dir.write("src/deep/keep.txt", "3");
        dir.write("src/deep/drop.txt", "4");
        dir.write(".dockerignore", "src\n!src/deep/keep.txt\n");
        set_mode(&dir.path().join("src/deep"), 0o700);
        let dirs = sync_dirs(&dir, "Dockerfile");
        assert_eq!(
            all(&dirs.context),
            [
                ".dockerignore",
                "Dockerfile",
                "a",
                "a/x",
                "a-b",
                "src",
                "src/deep",
                "src/deep/keep.txt"
            ]
        );
        // The excluded directories above a re-included file go with their own modes.
        let deep = dirs.context.item(6);
        assert_eq!(deep.mode, GO_MODE_DIR | 0o700);
        assert!(!deep.has_content());
        assert_eq!(content(&dirs.context, 3).unwrap(), b"2");
    }

    #[test]
    fn excluded_build_files_stay_out_and_the_dockerfile_has_its_own_directory() {
        let dir = TempDir::new();
        dir.write("docker/web.Dockerfile", "FROM scratch\nCOPY . /\n");
        dir.write("app.txt", "app");
        dir.write(".dockerignore", "docker\n.dockerignore\n");
        let dirs = sync_dirs(&dir, "docker/web.Dockerfile");
        assert_eq!(all(&dirs.context), ["app.txt"]);
        assert_eq!(all(&dirs.dockerfile), [SYNCED_DOCKERFILE]);
        assert_eq!(
            content(&dirs.dockerfile, 0).unwrap(),
            b"FROM scratch\nCOPY . /\n"
        );
        // The tar still carries both, as docker CLI's tar does.
        let files = collect(dir.path(), Path::new("docker/web.Dockerfile")).unwrap();
        assert_eq!(
            files.paths().collect::<Vec<_>>(),
            [".dockerignore", "app.txt", "docker/web.Dockerfile"]
        );
    }

    #[test]
    fn a_dockerfile_from_outside_is_not_in_the_context_and_dockerignore_is_as_written() {
        let outside = TempDir::new();
        outside.write("app.Dockerfile", "FROM scratch\n");
        let dir = TempDir::new();
        dir.write("app.txt", "app");
        dir.write(".dockerignore", "*.tmp\n");
        let dockerfile = outside.path().join("app.Dockerfile");
        let dirs = sync_dirs(&dir, dockerfile.to_str().unwrap());
        assert_eq!(all(&dirs.context), [".dockerignore", "app.txt"]);
        assert_eq!(content(&dirs.context, 0).unwrap(), b"*.tmp\n");
        assert_eq!(content(&dirs.dockerfile, 0).unwrap(), b"FROM scratch\n");
    }

    #[test]
    fn times_follow_content_and_modes_are_go_file_modes() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("a.txt", "same");
        dir.write("b.txt", "same");
        dir.write("c.txt", "other");
        dir.write("tool", "#!/bin/sh\n");
        set_mode(&dir.path().join("tool"), 0o4755);
        symlink("a.txt", dir.path().join("link")).unwrap();
        let dirs = sync_dirs(&dir, "Dockerfile");
        let item = |path: &str| {
            let index = all(&dirs.context).iter().position(|p| p == path).unwrap();
            dirs.context.item(index)
        };
        assert_eq!(item("a.txt").mod_time_nanos, item("b.txt").mod_time_nanos);
        assert_ne!(item("a.txt").mod_time_nanos, item("c.txt").mod_time_nanos);
        assert!(item("a.txt").mod_time_nanos > 0);
        assert_eq!(item("tool").mode, GO_MODE_SETUID | 0o755);
        assert_eq!(item("link").mode & GO_MODE_SYMLINK, GO_MODE_SYMLINK);
        assert_eq!(item("link").linkname, "a.txt");
        assert!(!item("link").has_content());
        assert_eq!(item("c.txt").size, 5);
    }

    #[test]
    fn a_request_gets_what_its_patterns_and_paths_name_with_their_parents() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("app/main.php", "php");
        dir.write("app/lib/util.php", "php");
        dir.write("public/index.html", "html");
        dir.write("docker/nginx/nginx.conf", "conf");
        dir.write("shared/real/x.txt", "x");
        symlink("shared/real", dir.path().join("linked")).unwrap();
        let dirs = sync_dirs(&dir, "Dockerfile");
        let select = |includes: &[&str], follow: &[&str]| {
            let owned = |list: &[&str]| list.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
            let selected = dirs
                .context
                .select(&owned(includes), &owned(follow))
                .unwrap();
            paths(&dirs.context, &selected)
        };
        assert_eq!(select(&[], &[]), all(&dirs.context));
        assert_eq!(
            select(&["app"], &[]),
            ["app", "app/lib", "app/lib/util.php", "app/main.php"]
        );
        assert_eq!(
            select(&[], &["docker/nginx/nginx.conf", "public"]),
            [
                "docker",
                "docker/nginx",
                "docker/nginx/nginx.conf",
                "public",
                "public/index.html"
            ]
        );
        assert_eq!(select(&["*.php"], &[]), Vec::<String>::new());
        assert_eq!(
            select(&["**/*.php"], &[]),
            ["app", "app/lib", "app/lib/util.php", "app/main.php"]
        );
        // A path through a symlink takes the link and where it leads.
        assert_eq!(
            select(&[], &["linked/x.txt"]),
            ["linked", "shared", "shared/real", "shared/real/x.txt"]
        );
        // What cannot be resolved without the disk, or names the whole context, takes everything.
        assert_eq!(select(&[], &["linked/*.txt"]), all(&dirs.context));
        assert_eq!(select(&[], &["."]), all(&dirs.context));
    }

    #[test]
    fn symlink_loops_take_everything() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let dirs = sync_dirs(&dir, "Dockerfile");
        let selected = dirs.context.select(&[], &["a/x".to_owned()]).unwrap();
        assert_eq!(paths(&dirs.context, &selected), all(&dirs.context));
    }

    #[test]
    fn a_file_rewritten_after_hashing_is_an_error_naming_it() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        let path = dir.write("data.txt", "before");
        let dirs = sync_dirs(&dir, "Dockerfile");
        std::fs::write(&path, "after!").unwrap();
        let err = content(&dirs.context, 1).unwrap_err();
        assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
        assert!(
            err.to_string().contains("differs from what was hashed"),
            "{err}"
        );
        // One that grew is sent as it was hashed.
        std::fs::write(&path, "before, and a log line").unwrap();
        assert_eq!(content(&dirs.context, 1).unwrap(), b"before");
    }
}
