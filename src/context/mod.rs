//! The build context `docker build` sends: the walk that picks the entries (after `.dockerignore`,
//! [`ignore`]), their content digest ([`digest`]) and the tar stream for the Engine API ([`stream`]).
//!
//! Sources followed: docker/cli (`cli/command/image/build.go`, `build/context.go`,
//! `build/dockerignore.go`) and moby/go-archive (`TarWithOptions`).
//!
//! Known differences from docker CLI: FIFOs, devices and sockets are skipped; hard links are sent as
//! separate files; file names must be UTF-8; headers carry mtime 0 and no `security.capability`
//! xattr; a Dockerfile from outside the context gets a content-derived name instead of a random one;
//! the Dockerfile and .dockerignore are sent even where docker CLI's exception check misses them
//! (Docker then fails); and a file that grows while it is read is sent as it was when the walk saw it.

mod digest;
mod goregex;
mod ignore;
mod stream;
mod sync;

pub(crate) use ignore::DockerIgnore;

pub(crate) use sync::{SYNCED_DOCKERFILE, SyncDir, SyncDirs, SyncItem, SyncRequest};

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

const DOCKERIGNORE: &str = ".dockerignore";
/// The mode docker CLI gives files it adds to the context itself.
const ADDED_FILE_MODE: u32 = 0o600;

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot open the build context {path}: {cause}")]
    ContextDir { path: PathBuf, cause: io::Error },
    #[error("the build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot read the Dockerfile {path}: {cause}")]
    Dockerfile { path: PathBuf, cause: io::Error },
    #[error("the Dockerfile {path} is not a regular file")]
    DockerfileNotAFile { path: PathBuf },
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("{path}: the name is not valid UTF-8")]
    NonUtf8Path { path: PathBuf },
    #[error(
        "{path} changed while the build context was read ({change}); leave the context alone \
         during the build, or .dockerignore the file"
    )]
    Changed { path: PathBuf, change: &'static str },
}

impl ContextError {
    /// An error reading `path`; one that [`stream::SizedPrefix`] or the tar stream raised about a
    /// changed file keeps its own message.
    fn from_io(path: &Path, err: io::Error) -> ContextError {
        match err.downcast::<ContextError>() {
            Ok(changed) => changed,
            Err(err) => read_error(path)(err),
        }
    }
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |cause| ContextError::Read {
        path: path.to_owned(),
        cause,
    }
}

/// One entry the build sends.
#[derive(Debug, Clone)]
struct Entry {
    /// Relative to the context, '/'-separated, no trailing slash.
    path: String,
    /// Permission bits, with setuid/setgid/sticky as Docker keeps them.
    mode: u32,
    kind: EntryKind,
    sent: Sent,
}

/// Which way of sending the context carries an entry. The tar (legacy builder) follows docker
/// CLI's tar: it must carry the Dockerfile and .dockerignore even where .dockerignore excludes
/// them, and a Dockerfile from outside the context under a generated name. The build session's
/// file sync (BuildKit) follows docker CLI's sync: .dockerignore alone decides, and the Dockerfile
/// travels in a directory of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sent {
    Always,
    TarOnly,
    SyncOnly,
}

#[derive(Debug, Clone)]
enum EntryKind {
    Dir,
    Symlink(PathBuf),
    /// A regular file read from the context at digest and tar time: the first `size` bytes, the
    /// size collect saw; `hash` is their sha256 once the digest has read them.
    DiskFile {
        size: u64,
        hash: Option<[u8; 32]>,
    },
    /// A regular file whose bytes collect produced: a Dockerfile from outside the context, or
    /// the .dockerignore amended to name it.
    MemoryFile(Vec<u8>),
}

impl Entry {
    fn content_len(&self) -> u64 {
        match &self.kind {
            EntryKind::DiskFile { size, .. } => *size,
            EntryKind::MemoryFile(bytes) => bytes.len() as u64,
            EntryKind::Dir | EntryKind::Symlink(_) => 0,
        }
    }
}

/// The entries a build sends (directories, regular files, symlinks), after .dockerignore,
/// sorted by path (byte order), walked once.
#[derive(Debug, Clone)]
pub(crate) struct ContextFiles {
    root: PathBuf,
    dockerfile: String,
    entries: Vec<Entry>,
    /// The bytes of the ignore file that applies (empty where there is none): part of the recipe.
    ignore_rules: Vec<u8>,
}

/// Walks `context_dir` as `docker build` does. A relative `dockerfile` is relative to the context
/// dir; a Dockerfile outside the context is added under a generated name, as docker CLI does.
#[cfg(test)]
pub(crate) fn collect(context_dir: &Path, dockerfile: &Path) -> Result<ContextFiles, ContextError> {
    collect_with(context_dir, DockerfileSource::Path(dockerfile))
}

/// Where the Dockerfile comes from: a file, or its text (Compose's `dockerfile_inline`), which
/// travels like a Dockerfile from outside the context.
#[derive(Clone, Copy)]
pub(crate) enum DockerfileSource<'a> {
    Path(&'a Path),
    Inline(&'a str),
}

pub(crate) fn collect_with(
    context_dir: &Path,
    dockerfile: DockerfileSource<'_>,
) -> Result<ContextFiles, ContextError> {
    let root = context_root(context_dir)?;
    let placed = place_dockerfile(&root, dockerfile)?;
    let ignore_file = ignore_file_for(&root, dockerfile);
    walk_context(root, placed, &ignore_file)
}

/// The ignore file BuildKit applies to an image's context: `<Dockerfile>.dockerignore` beside
/// the Dockerfile where there is one (`web.Dockerfile.dockerignore`), else the context's
/// `.dockerignore`. An inline Dockerfile has no file of its own.
pub(crate) fn ignore_file_for(root: &Path, dockerfile: DockerfileSource<'_>) -> PathBuf {
    if let DockerfileSource::Path(path) = dockerfile {
        let mut own = root.join(path).into_os_string();
        own.push(".dockerignore");
        let own = PathBuf::from(own);
        if own.is_file() {
            return own;
        }
    }
    root.join(DOCKERIGNORE)
}

/// The context directory with symlinks resolved: Docker resolves both paths before relating them.
fn context_root(context_dir: &Path) -> Result<PathBuf, ContextError> {
    let root = fs::canonicalize(context_dir).map_err(|cause| ContextError::ContextDir {
        path: context_dir.to_owned(),
        cause,
    })?;
    if !root.is_dir() {
        return Err(ContextError::NotADirectory {
            path: context_dir.to_owned(),
        });
    }
    Ok(root)
}

/// Where an image's Dockerfile goes in its context.
enum PlacedDockerfile {
    /// A file inside the context, by its path there.
    Inside(String),
    /// The text of a file outside the context, or an inline one, to add under a generated name.
    Added(Vec<u8>),
}

fn place_dockerfile(
    root: &Path,
    dockerfile: DockerfileSource<'_>,
) -> Result<PlacedDockerfile, ContextError> {
    match dockerfile {
        DockerfileSource::Path(path) => match locate_dockerfile(root, path)? {
            Ok(rel) => Ok(PlacedDockerfile::Inside(rel)),
            Err(outside) => match fs::read(&outside) {
                Ok(content) => Ok(PlacedDockerfile::Added(content)),
                Err(cause) => Err(ContextError::Dockerfile {
                    path: outside,
                    cause,
                }),
            },
        },
        DockerfileSource::Inline(text) => Ok(PlacedDockerfile::Added(text.as_bytes().to_vec())),
    }
}

/// The Dockerfile's path inside the context (`Ok`), or its resolved path outside it (`Err`).
fn locate_dockerfile(
    root: &Path,
    dockerfile: &Path,
) -> Result<Result<String, PathBuf>, ContextError> {
    let given_dockerfile = root.join(dockerfile);
    let dockerfile_path =
        fs::canonicalize(&given_dockerfile).map_err(|cause| ContextError::Dockerfile {
            path: given_dockerfile.clone(),
            cause,
        })?;
    if !dockerfile_path.is_file() {
        return Err(ContextError::DockerfileNotAFile {
            path: given_dockerfile,
        });
    }
    match dockerfile_path.strip_prefix(root) {
        Ok(rel) => Ok(Ok(rel
            .to_str()
            .ok_or_else(|| ContextError::NonUtf8Path {
                path: dockerfile_path.clone(),
            })?
            .to_owned())),
        Err(_) => Ok(Err(dockerfile_path)),
    }
}

/// The ignore file that applies (see [`ignore_file_for`]), as its bytes and as rules with docker
/// CLI's exception for the context's `.dockerignore`.
fn read_ignore(ignore_path: &Path) -> Result<(DockerIgnore, Option<Vec<u8>>), ContextError> {
    let ignore_bytes = match fs::read(ignore_path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(cause) => return Err(read_error(ignore_path)(cause)),
    };
    // Non-UTF-8 patterns could only match non-UTF-8 names, which collect refuses anyway.
    let mut ignore = DockerIgnore::parse(&String::from_utf8_lossy(
        ignore_bytes.as_deref().unwrap_or(&[]),
    ))?;
    // docker CLI's TrimBuildFilesFromExcludes: the daemon needs both files (and drops them itself).
    if ignore.cli_excludes(DOCKERIGNORE) {
        ignore.add_exception(DOCKERIGNORE)?;
    }
    Ok((ignore, ignore_bytes))
}

/// The walk with `.dockerignore`, and the Dockerfile sent or added.
fn walk_context(
    root: PathBuf,
    placed: PlacedDockerfile,
    ignore_file: &Path,
) -> Result<ContextFiles, ContextError> {
    let (mut ignore, ignore_bytes) = read_ignore(ignore_file)?;
    let ignore_rules = ignore_bytes.clone().unwrap_or_default();
    let mut build_files = vec![DOCKERIGNORE];
    if let PlacedDockerfile::Inside(rel) = &placed {
        if ignore.cli_excludes(rel) {
            ignore.add_exception(rel)?;
        }
        build_files.push(rel);
    }
    let mut entries = walk(&root, &ignore, &build_files)?;
    let dockerfile = match placed {
        PlacedDockerfile::Inside(rel) => rel,
        PlacedDockerfile::Added(content) => {
            add_outside_dockerfile(&mut entries, content, ignore_bytes)
        }
    };
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(ContextFiles {
        root,
        dockerfile,
        entries,
        ignore_rules,
    })
}

/// A context walked once for every image built from it: what `.dockerignore` lets through, with no
/// image's Dockerfile added yet, and each file's content hashed once.
pub(crate) struct SharedWalk {
    ignore: DockerIgnore,
    ignore_bytes: Option<Vec<u8>>,
    files: ContextFiles,
}

impl SharedWalk {
    /// Walks `context_dir`, leaves out `withheld` files, and hashes every file (blocking).
    pub(crate) fn new(
        context_dir: &Path,
        withheld: &[PathBuf],
    ) -> Result<SharedWalk, ContextError> {
        let root = context_root(context_dir)?;
        let (ignore, ignore_bytes) = read_ignore(&root.join(DOCKERIGNORE))?;
        let mut entries = walk(&root, &ignore, &[DOCKERIGNORE])?;
        entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
        let mut files = ContextFiles {
            root,
            dockerfile: String::new(),
            entries,
            ignore_rules: ignore_bytes.clone().unwrap_or_default(),
        };
        files.withhold(withheld);
        files.hash_contents()?;
        Ok(SharedWalk {
            ignore,
            ignore_bytes,
            files,
        })
    }

    /// One image's context out of the shared walk, or `None` where its Dockerfile needs a walk of
    /// its own (one that `.dockerignore` excludes, for which docker CLI adds an exception, or one
    /// with an ignore file of its own).
    pub(crate) fn image_context(
        &self,
        dockerfile: DockerfileSource<'_>,
    ) -> Result<Option<ContextFiles>, ContextError> {
        if ignore_file_for(&self.files.root, dockerfile) != self.files.root.join(DOCKERIGNORE) {
            return Ok(None);
        }
        let placed = place_dockerfile(&self.files.root, dockerfile)?;
        if let PlacedDockerfile::Inside(rel) = &placed {
            let sent = self.files.entries.iter().any(|e| &e.path == rel);
            if !sent || self.ignore.cli_excludes(rel) {
                return Ok(None);
            }
        }
        let mut files = self.files.clone();
        files.dockerfile = match placed {
            PlacedDockerfile::Inside(rel) => rel,
            PlacedDockerfile::Added(content) => {
                let ignore_bytes = self.ignore_bytes.clone();
                let name = add_outside_dockerfile(&mut files.entries, content, ignore_bytes);
                files.entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
                name
            }
        };
        Ok(Some(files))
    }
}

/// Docker's TarWithOptions walk. `build_files` are sent even where the patterns would still
/// exclude them (docker CLI's exceptions miss e.g. `**/dir` excluding `a/b/dir/Dockerfile`).
fn walk(
    root: &Path,
    ignore: &DockerIgnore,
    build_files: &[&str],
) -> Result<Vec<Entry>, ContextError> {
    let mut entries = Vec::new();
    let as_written = ignore.as_written();
    // Directories still to list: the path relative to the root ("" for the root itself) and
    // the pattern matches its children inherit.
    let mut pending = vec![(String::new(), Vec::new())];
    while let Some((dir, parent_matches)) = pending.pop() {
        let dir_path = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(&dir)
        };
        for item in fs::read_dir(&dir_path).map_err(read_error(&dir_path))? {
            let item = item.map_err(read_error(&dir_path))?;
            let path = item.path();
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| ContextError::NonUtf8Path { path: path.clone() })?;
            let rel = if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            };
            // DirEntry::metadata does not follow symlinks.
            let metadata = item.metadata().map_err(read_error(&path))?;
            let mode = metadata.permissions().mode() & 0o7777;
            let file_type = metadata.file_type();
            let (excluded, matches) = ignore.evaluate(&rel, &parent_matches);
            // What only the exceptions for build files let through goes into the tar alone.
            let sent = if excluded || as_written.as_ref().is_some_and(|w| w.is_excluded(&rel)) {
                Sent::TarOnly
            } else {
                Sent::Always
            };
            if file_type.is_dir() {
                if !excluded {
                    entries.push(Entry {
                        path: rel.clone(),
                        mode,
                        kind: EntryKind::Dir,
                        sent,
                    });
                }
                let holds_build_file = build_files.iter().any(|file| {
                    file.strip_prefix(rel.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                });
                if !excluded || ignore.walks_excluded_dir(&rel) || holds_build_file {
                    pending.push((rel, matches));
                }
                continue;
            }
            if excluded && !build_files.contains(&rel.as_str()) {
                continue;
            }
            let Some(kind) = file_kind(&path, &metadata)? else {
                continue;
            };
            entries.push(Entry {
                path: rel,
                mode,
                kind,
                sent,
            });
        }
    }
    Ok(entries)
}

/// A regular file or a symlink as an entry; `None` for sockets, FIFOs and devices, which have no
/// place in an image build.
fn file_kind(path: &Path, metadata: &fs::Metadata) -> Result<Option<EntryKind>, ContextError> {
    let file_type = metadata.file_type();
    if file_type.is_file() {
        // Fail now, naming the file, rather than halfway through the upload.
        File::open(path).map_err(read_error(path))?;
        Ok(Some(EntryKind::DiskFile {
            size: metadata.len(),
            hash: None,
        }))
    } else if file_type.is_symlink() {
        let target = fs::read_link(path).map_err(read_error(path))?;
        Ok(Some(EntryKind::Symlink(target)))
    } else {
        Ok(None)
    }
}

/// docker CLI's AddDockerfileToBuildContext: the Dockerfile travels under a generated name that
/// is appended to .dockerignore (created if missing), so the daemon keeps it out of `COPY . .`.
/// The name comes from the content rather than randomness, keeping the context reproducible.
fn add_outside_dockerfile(
    entries: &mut Vec<Entry>,
    content: Vec<u8>,
    ignore_bytes: Option<Vec<u8>>,
) -> String {
    let name = format!(
        ".dockerfile.{}",
        &format!("{:x}", Sha256::digest(&content))[..20]
    );
    let mut ignore_content = ignore_bytes.unwrap_or_else(|| DOCKERIGNORE.as_bytes().to_vec());
    ignore_content.extend_from_slice(format!("\n{name}\n").as_bytes());
    let ignore_mode = entries
        .iter()
        .find(|entry| {
            entry.path == DOCKERIGNORE && matches!(entry.kind, EntryKind::DiskFile { .. })
        })
        .map_or(ADDED_FILE_MODE, |entry| entry.mode);
    entries.retain(|entry| {
        !(entry.path == name || entry.path == DOCKERIGNORE && entry.sent == Sent::TarOnly)
    });
    // The file sync sends the .dockerignore as it is, and the Dockerfile in a directory of its own.
    for entry in entries
        .iter_mut()
        .filter(|entry| entry.path == DOCKERIGNORE)
    {
        entry.sent = Sent::SyncOnly;
    }
    entries.push(Entry {
        path: DOCKERIGNORE.to_owned(),
        mode: ignore_mode,
        kind: EntryKind::MemoryFile(ignore_content),
        sent: Sent::TarOnly,
    });
    entries.push(Entry {
        path: name.clone(),
        mode: ADDED_FILE_MODE,
        kind: EntryKind::MemoryFile(content),
        sent: Sent::TarOnly,
    });
    name
}

impl ContextFiles {
    /// The Dockerfile's text (lossy where it is not UTF-8), as the build reads it.
    pub(crate) fn dockerfile_text(&self) -> Result<String, ContextError> {
        let entry = (self.entries.iter())
            .find(|entry| entry.path == self.dockerfile)
            .expect("the Dockerfile is an entry of its context");
        let bytes = match &entry.kind {
            EntryKind::MemoryFile(bytes) => bytes.clone(),
            _ => {
                let path = self.root.join(&entry.path);
                fs::read(&path).map_err(read_error(&path))?
            }
        };
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// What to pass as the engine's `dockerfile` build option.
    pub(crate) fn dockerfile_in_context(&self) -> &str {
        &self.dockerfile
    }

    /// The bytes of the ignore file that applies; empty where there is none.
    pub(crate) fn ignore_rules(&self) -> &[u8] {
        &self.ignore_rules
    }

    /// The entries of the context as the tar sends it.
    fn tar_entries(&self) -> impl Iterator<Item = &Entry> {
        self.entries
            .iter()
            .filter(|entry| entry.sent != Sent::SyncOnly)
    }

    pub(crate) fn len(&self) -> usize {
        self.tar_entries().count()
    }

    /// The bytes of file content the tar sends.
    pub(crate) fn total_bytes(&self) -> u64 {
        self.tar_entries().map(Entry::content_len).sum()
    }

    #[cfg(test)]
    pub(crate) fn paths(&self) -> impl Iterator<Item = &str> {
        self.tar_entries().map(|entry| entry.path.as_str())
    }

    /// Stops sending `files` (absolute paths) where they lie inside the context: ecr-build's own
    /// artifacts, so that a re-run in the same folder does not bake the last run's output into the
    /// image. Returns the context paths withheld.
    pub(crate) fn withhold(&mut self, files: &[PathBuf]) -> Vec<String> {
        let inside: Vec<String> = files
            .iter()
            .filter_map(|file| {
                let parent = fs::canonicalize(file.parent()?).ok()?;
                let relative = parent
                    .strip_prefix(&self.root)
                    .ok()?
                    .join(file.file_name()?);
                relative.to_str().map(str::to_owned)
            })
            .filter(|path| *path != self.dockerfile && path != DOCKERIGNORE)
            .collect();
        let mut withheld = Vec::new();
        self.entries.retain(|entry| {
            let keep = !inside.contains(&entry.path);
            if !keep {
                withheld.push(entry.path.clone());
            }
            keep
        });
        withheld
    }
}

/// The files this process writes its stdout and stderr to (`ecr-build build > build.log` run in
/// the context): they grow while the context is read, and are never sent, like the artifacts.
pub(crate) fn own_output_files() -> Vec<PathBuf> {
    [1, 2]
        .into_iter()
        .filter_map(|fd| fs::read_link(format!("/proc/self/fd/{fd}")).ok())
        .filter(|path| path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::test_support::{TempDir, set_mode};
    use super::*;
    use futures_util::TryStreamExt;
    use std::io::Read as _;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::symlink;

    fn paths(files: &ContextFiles) -> Vec<&str> {
        files.paths().collect()
    }

    async fn tar_bytes(files: ContextFiles) -> Vec<u8> {
        let chunks: Vec<bytes::Bytes> = files.into_tar_stream().try_collect().await.unwrap();
        chunks.concat()
    }

    #[test]
    fn collect_always_sends_dockerfile_and_dockerignore() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "*\nDockerfile\n.dockerignore\n");
        dir.write("app.txt", "x");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(paths(&files), [".dockerignore", "Dockerfile"]);
        assert_eq!(files.dockerfile_in_context(), "Dockerfile");
    }

    #[test]
    fn collect_sends_a_dockerfile_inside_an_excluded_directory() {
        let dir = TempDir::new();
        dir.write("docker/Dockerfile.prod", "FROM scratch\n");
        dir.write("docker/notes.txt", "x");
        dir.write("a/b/build/Dockerfile", "FROM scratch\n");
        // `**/build` is missed by docker CLI's exception check; it is sent anyway.
        dir.write(".dockerignore", "docker\n**/build\n");
        let files = collect(dir.path(), Path::new("docker/Dockerfile.prod")).unwrap();
        assert_eq!(files.dockerfile_in_context(), "docker/Dockerfile.prod");
        assert_eq!(
            paths(&files),
            [".dockerignore", "a", "a/b", "docker/Dockerfile.prod"]
        );
        let files = collect(dir.path(), Path::new("a/b/build/Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "a", "a/b", "a/b/build/Dockerfile"]
        );
    }

    #[test]
    fn collect_walks_into_a_directory_as_docker_does_for_the_dockerfile_exception() {
        let dir = TempDir::new();
        dir.write("docs/Dockerfile", "FROM scratch\n");
        dir.write("docs/keep.md", "keep");
        dir.write("docs/other.md", "drop");
        dir.write(".dockerignore", "docs\n!**/keep.md\n");
        // docker CLI appends `!docs/Dockerfile`, which makes the walk enter `docs`, where
        // `!**/keep.md` then re-includes keep.md; without it `docs` would be skipped whole.
        let files = collect(dir.path(), Path::new("docs/Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "docs/Dockerfile", "docs/keep.md"]
        );
    }

    #[test]
    fn collect_skips_excluded_directories_and_keeps_empty_ones() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "node_modules\n**/*.log\n");
        dir.write("node_modules/pkg/index.js", "x");
        dir.write("src/main.rs", "fn main() {}");
        dir.write("src/debug.log", "x");
        fs::create_dir_all(dir.path().join("empty")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "Dockerfile", "empty", "src", "src/main.rs"]
        );
        assert_eq!(files.len(), 5);
        assert!(files.len() > 0);
        // .dockerignore, Dockerfile and src/main.rs.
        assert_eq!(files.total_bytes(), 22 + 13 + 12);
    }

    #[test]
    fn collect_finds_an_exception_inside_an_excluded_directory() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "docs\n!docs/keep.md\n");
        dir.write("docs/keep.md", "keep");
        dir.write("docs/other.md", "drop");
        dir.write("docs/sub/deep.md", "drop");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        // Like Docker, the excluded directory's own entry is not sent.
        assert_eq!(
            paths(&files),
            [".dockerignore", "Dockerfile", "docs/keep.md"]
        );
    }

    #[test]
    fn collect_keeps_symlinks_as_symlinks() {
        let dir = TempDir::new();
        let outside = TempDir::new();
        outside.write("secret/file", "outside");
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("target.txt", "t");
        symlink("target.txt", dir.path().join("link")).unwrap();
        symlink(outside.path().join("secret"), dir.path().join("outside")).unwrap();
        symlink("missing", dir.path().join("dangling")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            ["Dockerfile", "dangling", "link", "outside", "target.txt"]
        );
        let link = files
            .entries
            .iter()
            .find(|entry| entry.path == "link")
            .unwrap();
        assert!(
            matches!(&link.kind, EntryKind::Symlink(target) if target == Path::new("target.txt"))
        );
        let outside_link = files
            .entries
            .iter()
            .find(|entry| entry.path == "outside")
            .unwrap();
        assert!(matches!(outside_link.kind, EntryKind::Symlink(_)));
    }

    #[test]
    fn collect_resolves_the_dockerfile_path() {
        let dir = TempDir::new();
        dir.write("build/Dockerfile", "FROM scratch\n");
        symlink("build/Dockerfile", dir.path().join("Dockerfile")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(files.dockerfile_in_context(), "build/Dockerfile");
        let absolute = dir.path().join("build/Dockerfile");
        let files = collect(dir.path(), &absolute).unwrap();
        assert_eq!(files.dockerfile_in_context(), "build/Dockerfile");
    }

    #[tokio::test]
    async fn collect_adds_a_dockerfile_from_outside_the_context() {
        let dir = TempDir::new();
        let elsewhere = TempDir::new();
        let dockerfile = elsewhere.write("Dockerfile", "FROM scratch\nCOPY . /\n");
        dir.write("app.txt", "app");
        let files = collect(dir.path(), &dockerfile).unwrap();
        let expected_name = format!(
            ".dockerfile.{}",
            &format!("{:x}", Sha256::digest(b"FROM scratch\nCOPY . /\n"))[..20]
        );
        assert_eq!(files.dockerfile_in_context(), expected_name);
        assert_eq!(
            paths(&files),
            [expected_name.as_str(), ".dockerignore", "app.txt"]
        );

        let tar = tar_bytes(files).await;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut contents = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            contents.push((
                entry.path().unwrap().to_str().unwrap().to_owned(),
                entry.header().mode().unwrap(),
                content,
            ));
        }
        assert_eq!(
            contents[0],
            (
                expected_name.clone(),
                0o600,
                "FROM scratch\nCOPY . /\n".to_owned()
            )
        );
        // As docker CLI does, .dockerignore names the added file so the daemon drops it after reading.
        assert_eq!(
            contents[1],
            (
                ".dockerignore".to_owned(),
                0o600,
                format!(".dockerignore\n{expected_name}\n")
            )
        );

        dir.write(".dockerignore", "*.tmp");
        set_mode(&dir.path().join(".dockerignore"), 0o640);
        let files = collect(dir.path(), &dockerfile).unwrap();
        let ignore_entry = files
            .tar_entries()
            .find(|entry| entry.path == DOCKERIGNORE)
            .unwrap();
        assert_eq!(ignore_entry.mode, 0o640);
        assert!(
            matches!(&ignore_entry.kind, EntryKind::MemoryFile(bytes) if *bytes == format!("*.tmp\n{expected_name}\n").into_bytes())
        );
    }

    #[test]
    fn collect_errors_name_the_path() {
        let dir = TempDir::new();
        let missing_context = dir.path().join("nope");
        let err = collect(&missing_context, Path::new("Dockerfile")).unwrap_err();
        assert!(
            matches!(&err, ContextError::ContextDir { path, .. } if *path == missing_context),
            "{err}"
        );
        assert!(
            err.to_string().contains(missing_context.to_str().unwrap()),
            "{err}"
        );

        let err = collect(dir.path(), Path::new("Dockerfile.missing")).unwrap_err();
        assert!(matches!(err, ContextError::Dockerfile { .. }), "{err}");
        assert!(err.to_string().contains("Dockerfile.missing"), "{err}");

        fs::create_dir(dir.path().join("Dockerfile")).unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(
            matches!(err, ContextError::DockerfileNotAFile { .. }),
            "{err}"
        );

        let file_context = dir.write("plain", "x");
        let err = collect(&file_context, Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::NotADirectory { .. }), "{err}");

        let bad = TempDir::new();
        bad.write("Dockerfile", "FROM scratch\n");
        bad.write(".dockerignore", "ok\n[broken\n");
        let err = collect(bad.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(err.to_string().contains("\"[broken\""), "{err}");
    }

    #[test]
    fn withheld_files_are_neither_sent_nor_hashed() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("app.txt", "app");
        let mut clean = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let clean_digest = clean.digest(b"").unwrap();
        assert!(
            clean
                .withhold(&[dir.path().join("imagedefinitions.json")])
                .is_empty()
        );

        dir.write("imagedefinitions.json", "[]");
        dir.write("out/build.json", "{}");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let withheld = files.withhold(&[
            dir.path().join("imagedefinitions.json"),
            dir.path().join("out/build.json"),
            dir.path().join("Dockerfile"),
            PathBuf::from("/elsewhere/build.json"),
        ]);
        assert_eq!(withheld, ["imagedefinitions.json", "out/build.json"]);
        assert_eq!(paths(&files), ["Dockerfile", "app.txt", "out"]);
        assert_ne!(
            files.digest(b"").unwrap(),
            clean_digest,
            "the empty out/ directory is still sent"
        );
        fs::remove_dir_all(dir.path().join("out")).unwrap();
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        files.withhold(&[dir.path().join("imagedefinitions.json")]);
        assert_eq!(files.digest(b"").unwrap(), clean_digest);
    }

    #[test]
    fn collect_reports_an_unreadable_dockerignore() {
        // A directory where .dockerignore should be: unreadable even for root, unlike mode 000.
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        fs::create_dir(dir.path().join(DOCKERIGNORE)).unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::Read { .. }), "{err}");
        assert!(err.to_string().contains(DOCKERIGNORE), "{err}");
    }

    #[test]
    fn collect_skips_sockets_and_refuses_non_utf8_names() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("app.sock")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(paths(&files), ["Dockerfile"]);

        let odd_name = std::ffi::OsStr::from_bytes(b"bad-\xff");
        fs::write(dir.path().join(odd_name), "x").unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::NonUtf8Path { .. }), "{err}");
        assert!(err.to_string().contains("bad-"), "{err}");
    }

    /// Builds the same tree in a fresh directory, creating files in the given order.
    #[test]
    fn images_of_one_context_share_its_walk_and_get_what_their_own_walk_gives() {
        let dir = TempDir::new();
        dir.write(".dockerignore", "*.log\ndocker/ignored/\n");
        dir.write("src/app.sh", "echo app");
        dir.write("debug.log", "noise");
        dir.write("docker/web/Dockerfile", "FROM scratch\nCOPY . /web\n");
        dir.write("docker/ignored/Dockerfile", "FROM scratch\n");
        let outside = TempDir::new();
        outside.write("Dockerfile", "FROM scratch\nCOPY . /outside\n");
        let shared = SharedWalk::new(dir.path(), &[]).unwrap();
        let digest = |mut files: ContextFiles| files.digest(b"inputs").unwrap();
        let sources = [
            DockerfileSource::Path(Path::new("docker/web/Dockerfile")),
            DockerfileSource::Path(&outside.path().join("Dockerfile")),
            DockerfileSource::Inline("FROM scratch\nCOPY . /inline\n"),
        ];
        for source in sources {
            let own = collect_with(dir.path(), source).unwrap();
            let from_shared = shared.image_context(source).unwrap().unwrap();
            assert_eq!(paths(&from_shared), paths(&own));
            assert_eq!(
                from_shared.dockerfile_in_context(),
                own.dockerfile_in_context()
            );
            assert_eq!(digest(from_shared), digest(own));
        }
        // A Dockerfile that .dockerignore excludes needs a walk of its own.
        let ignored = DockerfileSource::Path(Path::new("docker/ignored/Dockerfile"));
        assert!(shared.image_context(ignored).unwrap().is_none());
    }

    #[test]
    fn a_shared_walk_reads_each_file_once() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let expected = collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .digest(b"")
            .unwrap();
        let shared = SharedWalk::new(dir.path(), &[]).unwrap();
        // Gone after the shared walk hashed it: no image reads it again.
        fs::remove_file(dir.path().join("data")).unwrap();
        let mut files = shared
            .image_context(DockerfileSource::Path(Path::new("Dockerfile")))
            .unwrap()
            .unwrap();
        assert_eq!(files.digest(b"").unwrap(), expected);
    }

    #[test]
    fn the_run_s_own_output_files_are_found() {
        // Under cargo test, stdout and stderr are pipes or a terminal, never a regular file.
        for path in own_output_files() {
            assert!(path.is_file(), "{}", path.display());
        }
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    //! A scratch context for the tests of this module and its parts.

    use std::fs::{self, File};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::{Path, PathBuf};
    use std::time::SystemTime;

    /// A directory under the system temp dir, removed when dropped.
    pub(crate) struct TempDir(tempfile::TempDir);

    impl TempDir {
        pub(crate) fn new() -> TempDir {
            TempDir(
                tempfile::Builder::new()
                    .prefix("ecr-build-context-test")
                    .tempdir()
                    .unwrap(),
            )
        }

        pub(crate) fn path(&self) -> &Path {
            self.0.path()
        }

        pub(crate) fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.path().join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            path
        }
    }

    pub(crate) fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// The same small tree, written in either order with any mtime.
    pub(crate) fn sample_tree(reverse: bool, mtime: SystemTime) -> TempDir {
        let dir = TempDir::new();
        let mut files = vec![
            ("Dockerfile", "FROM scratch\n"),
            (".dockerignore", "*.log\n"),
            ("src/a.rs", "a"),
            ("src/b.rs", "b"),
            ("src/nested/c.rs", "c"),
            ("run.sh", "#!/bin/sh\n"),
            ("debug.log", "noise"),
        ];
        if reverse {
            files.reverse();
        }
        for (rel, content) in files {
            let path = dir.write(rel, content);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        set_mode(&dir.path().join("run.sh"), 0o755);
        symlink("src/a.rs", dir.path().join("link")).unwrap();
        dir
    }
}
