//! The context digest: sha256 over what the build sends, reading each file once on two threads.

use std::collections::{BTreeMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use sha2::{Digest, Sha256};

use super::stream::SizedPrefix;
use super::{ContextError, ContextFiles, DockerIgnore, Entry, EntryKind, read_error};
use crate::gopath::ancestors;

/// Files are hashed in pieces of this size, so memory stays bounded whatever the context holds.
const CHUNK_SIZE: usize = 64 * 1024;
/// Names the digest's input encoding; change it whenever the encoding changes.
const DIGEST_DOMAIN: &[u8] = b"ecr-build build-context digest v1\n";
/// The same, for the digest over what a Dockerfile reads.
const INPUTS_DIGEST_DOMAIN: &[u8] = b"ecr-build build-context inputs digest v1\n";

impl ContextFiles {
    /// sha256 (lowercase hex, 64 chars) over every sent entry: path, type, mode (permission bits),
    /// symlink target, and file content; plus the Dockerfile's name in the context and `extra`
    /// (caller-supplied bytes, e.g. build args) framed so no two inputs collide.
    /// Independent of mtimes, uid/gid, the order the filesystem lists entries, and the absolute
    /// path of context_dir. Reads each file once, on up to 2 threads, in 64 KiB chunks, and keeps
    /// each file's hash, so that the tar stream can prove it sends what was hashed. Blocking.
    pub(crate) fn digest(&mut self, extra: &[u8]) -> Result<String, ContextError> {
        // Each file is read once: a second digest (another platform) reuses the hashes.
        self.hash_contents()?;
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_DOMAIN);
        put_framed(&mut hasher, self.dockerfile.as_bytes());
        put_entries(&mut hasher, self.entries.iter());
        put_framed(&mut hasher, extra);
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// The digest over what an image's Dockerfile can read: the entries `patterns` match (Docker
    /// patterns; a matched directory takes everything below it), the directories above them, and
    /// the Dockerfile; plus the patterns and `extra`. `Ok(Err(reason))` where that cannot stand for
    /// the image: a symlink among the inputs or on the way to them (BuildKit follows it).
    pub(crate) fn inputs_digest(
        &mut self,
        extra: &[u8],
        patterns: &[String],
    ) -> Result<Result<String, String>, ContextError> {
        self.hash_contents()?;
        let matcher = DockerIgnore::from_patterns(patterns.iter().map(String::as_str))?;
        let mut wanted: HashSet<&str> = HashSet::new();
        for entry in (self.entries.iter()).filter(|entry| matcher.is_excluded(&entry.path)) {
            wanted.insert(&entry.path);
            wanted.extend(ancestors(&entry.path));
        }
        for entry in &self.entries {
            let EntryKind::Symlink(_) = entry.kind else {
                continue;
            };
            let on_the_way = patterns.iter().any(|pattern| {
                pattern
                    .strip_prefix(entry.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'))
            });
            if on_the_way || wanted.contains(entry.path.as_str()) {
                return Ok(Err(format!(
                    "the symlink {} is among the inputs",
                    entry.path
                )));
            }
        }
        let selected = (self.entries.iter())
            .filter(|entry| wanted.contains(entry.path.as_str()) || entry.path == self.dockerfile);
        let mut hasher = Sha256::new();
        hasher.update(INPUTS_DIGEST_DOMAIN);
        put_framed(&mut hasher, self.dockerfile.as_bytes());
        hasher.update((patterns.len() as u64).to_be_bytes());
        for pattern in patterns {
            put_framed(&mut hasher, pattern.as_bytes());
        }
        put_entries(&mut hasher, selected);
        put_framed(&mut hasher, extra);
        Ok(Ok(format!("{:x}", hasher.finalize())))
    }

    /// Hashes every file not hashed yet and keeps the hashes: each file is read once, however many
    /// digests (platforms, images of one context) are made of it.
    pub(super) fn hash_contents(&mut self) -> Result<(), ContextError> {
        let unhashed = (self.entries.iter())
            .any(|entry| matches!(entry.kind, EntryKind::DiskFile { hash: None, .. }));
        if !unhashed {
            return Ok(());
        }
        let mut content_hashes = self.hash_disk_files()?.into_iter();
        for entry in &mut self.entries {
            if let EntryKind::DiskFile { hash, .. } = &mut entry.kind {
                *hash = Some(
                    content_hashes
                        .next()
                        .expect("hash_disk_files yields one hash per DiskFile, in entry order"),
                );
            }
        }
        Ok(())
    }

    /// The sha256 of every DiskFile's content, in entry order, computed by two threads that take
    /// files in turn.
    fn hash_disk_files(&self) -> Result<Vec<[u8; 32]>, ContextError> {
        let jobs: Vec<(PathBuf, u64)> = self
            .entries
            .iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::DiskFile { size, .. } => Some((self.root.join(&entry.path), size)),
                _ => None,
            })
            .collect();
        let next_job = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || -> Result<Vec<(usize, [u8; 32])>, ContextError> {
            let mut buffer = vec![0; CHUNK_SIZE];
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let index = next_job.fetch_add(1, Ordering::Relaxed);
                let Some((path, size)) = jobs.get(index) else {
                    break;
                };
                match hash_file(path, *size, &mut buffer) {
                    Ok(hash) => done.push((index, hash)),
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                }
            }
            Ok(done)
        };
        let (mine, helpers) = thread::scope(|scope| {
            // If the helper cannot start, this thread simply does all the files.
            let helper = if jobs.len() > 1 {
                thread::Builder::new()
                    .name("context-digest".to_owned())
                    .spawn_scoped(scope, work)
                    .ok()
            } else {
                None
            };
            let mine = work();
            let helpers = helper.map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (mine, helpers)
        });
        let mut hashes = vec![[0; 32]; jobs.len()];
        let helpers = helpers.transpose()?.unwrap_or_default();
        for (index, hash) in mine?.into_iter().chain(helpers) {
            hashes[index] = hash;
        }
        Ok(hashes)
    }

    /// For each pattern, a short digest of what it matches: what a later build compares to say
    /// which of an image's inputs changed. Call after a digest (files hashed).
    pub(crate) fn input_digests(
        &self,
        patterns: &[String],
    ) -> Result<BTreeMap<String, String>, ContextError> {
        let mut digests = BTreeMap::new();
        for pattern in patterns {
            let matcher = DockerIgnore::from_patterns([pattern.as_str()])?;
            let mut hasher = Sha256::new();
            put_entries(
                &mut hasher,
                (self.entries.iter()).filter(|entry| matcher.is_excluded(&entry.path)),
            );
            let digest = format!("{:x}", hasher.finalize());
            digests.insert(pattern.clone(), digest[..16].to_owned());
        }
        Ok(digests)
    }
}

/// The sha256 of the first `size` bytes: what the walk saw. What a growing file (a log) appends
/// after that is not part of the context.
fn hash_file(path: &Path, size: u64, buffer: &mut [u8]) -> Result<[u8; 32], ContextError> {
    let file = File::open(path).map_err(read_error(path))?;
    let mut reader = SizedPrefix::new(file, size, path.to_owned());
    let mut hasher = Sha256::new();
    loop {
        let read = reader
            .read(buffer)
            .map_err(|err| ContextError::from_io(path, err))?;
        if read == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..read]);
    }
}

/// Each entry: path, mode, type, and the symlink's target or the file's size and content hash.
fn put_entries<'a>(hasher: &mut Sha256, entries: impl Iterator<Item = &'a Entry>) {
    let entries: Vec<&Entry> = entries.collect();
    hasher.update((entries.len() as u64).to_be_bytes());
    for entry in entries {
        put_framed(hasher, entry.path.as_bytes());
        hasher.update(entry.mode.to_be_bytes());
        match &entry.kind {
            EntryKind::Dir => hasher.update(b"d"),
            EntryKind::Symlink(target) => {
                hasher.update(b"l");
                put_framed(hasher, target.as_os_str().as_bytes());
            }
            EntryKind::DiskFile { size, hash } => {
                hasher.update(b"f");
                hasher.update(size.to_be_bytes());
                hasher.update(hash.expect("files are hashed before a digest"));
            }
            EntryKind::MemoryFile(bytes) => {
                hasher.update(b"f");
                hasher.update((bytes.len() as u64).to_be_bytes());
                hasher.update(Sha256::digest(bytes));
            }
        }
    }
}

fn put_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

#[cfg(test)]
mod tests {
    use super::super::collect;
    use super::super::test_support::{TempDir, sample_tree, set_mode};
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, SystemTime};

    fn digest_of(dir: &TempDir, extra: &[u8]) -> String {
        collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .digest(extra)
            .unwrap()
    }

    #[test]
    fn digest_ignores_mtimes_creation_order_and_location() {
        let first = sample_tree(
            false,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        );
        let second = sample_tree(true, SystemTime::now());
        let digest = digest_of(&first, b"args");
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        );
        assert_eq!(digest, digest_of(&second, b"args"));
    }

    #[test]
    fn digest_follows_what_is_sent() {
        let dir = sample_tree(false, SystemTime::now());
        let original = digest_of(&dir, b"");

        dir.write("debug.log", "different noise");
        assert_eq!(digest_of(&dir, b""), original, "an ignored file changed");

        dir.write("src/b.rs", "c");
        let edited = digest_of(&dir, b"");
        assert_ne!(edited, original, "one byte changed");
        dir.write("src/b.rs", "b");
        assert_eq!(digest_of(&dir, b""), original);

        set_mode(&dir.path().join("run.sh"), 0o644);
        assert_ne!(digest_of(&dir, b""), original, "mode changed");
        set_mode(&dir.path().join("run.sh"), 0o755);

        fs::remove_file(dir.path().join("link")).unwrap();
        symlink("src/b.rs", dir.path().join("link")).unwrap();
        assert_ne!(digest_of(&dir, b""), original, "symlink target changed");
        fs::remove_file(dir.path().join("link")).unwrap();
        symlink("src/a.rs", dir.path().join("link")).unwrap();

        fs::create_dir(dir.path().join("new-empty-dir")).unwrap();
        assert_ne!(digest_of(&dir, b""), original, "directory added");
    }

    #[test]
    fn digest_frames_extra() {
        let dir = sample_tree(false, SystemTime::now());
        let digests = [
            digest_of(&dir, b""),
            digest_of(&dir, b"a"),
            digest_of(&dir, b"b"),
            digest_of(&dir, b"\0"),
        ];
        for (index, digest) in digests.iter().enumerate() {
            assert!(!digests[index + 1..].contains(digest), "{digests:?}");
        }
        // A file's content and the extra bytes cannot be traded against each other.
        let one = TempDir::new();
        one.write("Dockerfile", "FROM scratch\nx");
        let two = TempDir::new();
        two.write("Dockerfile", "FROM scratch\n");
        assert_ne!(digest_of(&one, b""), digest_of(&two, b"x"));
    }

    #[test]
    fn digest_covers_many_files_in_order() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        for index in 0..50 {
            dir.write(&format!("f{index:02}"), &"x".repeat(index * 3000));
        }
        let first = digest_of(&dir, b"");
        assert_eq!(first, digest_of(&dir, b""));
        dir.write("f49", &"y".repeat(49 * 3000));
        assert_ne!(first, digest_of(&dir, b""));
    }

    #[test]
    fn digest_reads_what_the_walk_saw_and_fails_naming_a_file_that_shrank() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let before = digest_of(&dir, b"");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        dir.write("data", "1234567");
        assert_eq!(
            files.digest(b"").unwrap(),
            before,
            "what a file appends after the walk is not read"
        );
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        dir.write("data", "123");
        let err = files.digest(b"").unwrap_err().to_string();
        assert!(err.contains("data") && err.contains("shorter"), "{err}");
    }

    #[test]
    fn a_second_digest_reads_no_file_again() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let amd64 = files.digest(b"linux/amd64").unwrap();
        // Another platform's digest of the same files: their hashes are kept, nothing is read.
        std::fs::remove_file(dir.path().join("data")).unwrap();
        let arm64 = files.digest(b"linux/arm64").unwrap();
        assert_ne!(amd64, arm64);
    }

    fn inputs_digest_of(dir: &TempDir, patterns: &[&str]) -> Result<String, String> {
        let patterns: Vec<String> = patterns.iter().map(|p| (*p).to_owned()).collect();
        collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .inputs_digest(b"args", &patterns)
            .unwrap()
    }

    #[test]
    fn the_inputs_digest_covers_what_the_patterns_match_and_the_dockerfile() {
        let dir = TempDir::new();
        dir.write(
            "Dockerfile",
            "FROM x\nCOPY app /app\nCOPY conf/*.ini /etc/\n",
        );
        dir.write("app/main.php", "<?php");
        dir.write("app/lib/util.php", "<?php");
        dir.write("conf/a.ini", "a");
        dir.write("conf/b.txt", "b");
        dir.write("public/index.html", "html");
        let patterns = ["app", "conf/*.ini"];
        let before = inputs_digest_of(&dir, &patterns).unwrap();
        assert_ne!(
            before,
            inputs_digest_of(&dir, &["app"]).unwrap(),
            "the patterns are inputs"
        );
        // Outside the patterns: no change.
        dir.write("public/index.html", "changed");
        dir.write("conf/b.txt", "changed");
        dir.write("public/new.html", "new");
        assert_eq!(inputs_digest_of(&dir, &patterns).unwrap(), before);
        // Inside, a new file, a mode, the directories above, the Dockerfile: a change each.
        let changes: [fn(&TempDir); 5] = [
            |d| {
                d.write("app/lib/util.php", "<?php // changed");
            },
            |d| {
                d.write("app/lib/new.php", "new");
            },
            |d| set_mode(&d.path().join("conf/a.ini"), 0o600),
            |d| set_mode(&d.path().join("app/lib"), 0o700),
            |d| {
                d.write(
                    "Dockerfile",
                    "FROM x\nCOPY app /app\nCOPY conf/*.ini /etc/\n# more\n",
                );
            },
        ];
        for change in changes {
            let dir = TempDir::new();
            for (path, content) in [
                (
                    "Dockerfile",
                    "FROM x\nCOPY app /app\nCOPY conf/*.ini /etc/\n",
                ),
                ("app/main.php", "<?php"),
                ("app/lib/util.php", "<?php"),
                ("conf/a.ini", "a"),
            ] {
                dir.write(path, content);
            }
            let unchanged = inputs_digest_of(&dir, &patterns).unwrap();
            change(&dir);
            assert_ne!(inputs_digest_of(&dir, &patterns).unwrap(), unchanged);
        }
    }

    #[test]
    fn a_symlink_among_the_inputs_or_on_the_way_is_no_narrow_digest() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM x\n");
        dir.write("shared/x.txt", "x");
        dir.write("app/a.txt", "a");
        symlink("../shared", dir.path().join("app/shared")).unwrap();
        symlink("shared", dir.path().join("linked")).unwrap();
        let err = inputs_digest_of(&dir, &["app"]).unwrap_err();
        assert!(err.contains("app/shared"), "{err}");
        let err = inputs_digest_of(&dir, &["linked/x.txt"]).unwrap_err();
        assert!(err.contains("linked"), "{err}");
        assert!(inputs_digest_of(&dir, &["shared"]).is_ok());
    }
}
