//! The context as a tar stream for the Engine API: produced on a thread of its own into a bounded
//! channel, never whole in memory, with normalised headers so the same tree gives the same bytes.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::thread;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{ContextError, ContextFiles, Entry, EntryKind, read_error};

/// Tar output is handed on in pieces of about this size.
const CHUNK_SIZE: usize = 64 * 1024;
/// Tar chunks buffered between the producing thread and the request body.
const CHUNKS_IN_FLIGHT: usize = 8;

impl ContextFiles {
    /// The context as a tar byte stream, produced on a blocking thread into a bounded channel
    /// (never the whole tar in memory). Suitable for `bollard::body_try_stream`. Headers are
    /// normalized: uid/gid 0, no user/group names, mtime 0, mode = permission bits; entries in
    /// path order, so the same tree always gives the same bytes. A read failure ends the stream
    /// with an error naming the file.
    pub(crate) fn into_tar_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let spawn_failure = sender.clone();
        let producer = thread::Builder::new()
            .name("context-tar".to_owned())
            .spawn(move || {
                let mut sink = ChunkSender {
                    sender,
                    buffer: Vec::with_capacity(CHUNK_SIZE),
                };
                if let Err(err) = self.write_tar(&mut sink) {
                    // Nobody is listening if the receiver is gone.
                    let _ = sink.sender.blocking_send(Err(err));
                }
            });
        if let Err(err) = producer {
            // The channel is empty, so this cannot be full.
            let _ = spawn_failure.try_send(Err(err));
        }
        ReceiverStream::new(receiver)
    }

    fn write_tar(&self, sink: &mut ChunkSender) -> io::Result<()> {
        let mut builder = tar::Builder::new(&mut *sink);
        for entry in self.tar_entries() {
            self.append_entry(&mut builder, entry)?;
        }
        builder.into_inner()?;
        sink.flush()
    }

    fn append_entry<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        entry: &Entry,
    ) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(entry.content_len());
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                // Docker names directories with a trailing slash.
                builder.append_data(&mut header, format!("{}/", entry.path), io::empty())
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, &entry.path, target)
            }
            EntryKind::DiskFile { size, hash } => {
                header.set_entry_type(tar::EntryType::Regular);
                let path = self.root.join(&entry.path);
                let file = File::open(&path)
                    .map_err(|err| io::Error::new(err.kind(), read_error(&path)(err)))?;
                let content =
                    Verified::new(SizedPrefix::new(file, *size, path.clone()), *hash, path);
                builder.append_data(&mut header, &entry.path, content)
            }
            EntryKind::MemoryFile(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, &entry.path, bytes.as_slice())
            }
        }
    }
}

/// The first `size` bytes of a file: what the walk saw. A file that grew since (a log written
/// during the build) is cut there; one that shrank is an error naming it.
pub(super) struct SizedPrefix<R> {
    inner: R,
    remaining: u64,
    path: PathBuf,
}

impl<R: Read> SizedPrefix<R> {
    pub(super) fn new(inner: R, size: u64, path: PathBuf) -> Self {
        SizedPrefix {
            inner,
            remaining: size,
            path,
        }
    }
}

impl<R: Read> Read for SizedPrefix<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() || self.remaining == 0 {
            return Ok(0);
        }
        let limit = usize::try_from(self.remaining).map_or(buf.len(), |left| left.min(buf.len()));
        let read = self.inner.read(&mut buf[..limit])?;
        if read == 0 {
            return Err(changed(
                &self.path,
                "it is shorter than when the context was walked",
            ));
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

fn changed(path: &std::path::Path, change: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        ContextError::Changed {
            path: path.to_owned(),
            change,
        },
    )
}

/// Passes a file's bytes on and, at its end, checks that they hash to what the digest read: the
/// context digest always describes what the engine received.
pub(super) struct Verified<R> {
    inner: R,
    hasher: Sha256,
    expected: Option<[u8; 32]>,
    path: PathBuf,
}

impl<R: Read> Verified<R> {
    pub(super) fn new(inner: R, expected: Option<[u8; 32]>, path: PathBuf) -> Self {
        Verified {
            inner,
            hasher: Sha256::new(),
            expected,
            path,
        }
    }
}

impl<R: Read> Read for Verified<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(buf)?;
        self.hasher.update(&buf[..read]);
        if read == 0 && !buf.is_empty() {
            let sent: [u8; 32] = std::mem::take(&mut self.hasher).finalize().into();
            if self.expected.is_some_and(|expected| expected != sent) {
                return Err(changed(
                    &self.path,
                    "its content differs from what was hashed",
                ));
            }
        }
        Ok(read)
    }
}

/// Collects tar output into chunks of about CHUNK_SIZE and hands them to the stream's channel,
/// waiting while the channel is full.
struct ChunkSender {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the build context stream was dropped",
                )
            })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            self.send_buffered()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::collect;
    use super::super::test_support::{TempDir, sample_tree, set_mode};
    use super::*;
    use futures_util::TryStreamExt;
    use std::fs;
    use std::path::Path;
    use std::time::SystemTime;

    async fn tar_bytes(files: ContextFiles) -> Vec<u8> {
        let chunks: Vec<Bytes> = files.into_tar_stream().try_collect().await.unwrap();
        chunks.concat()
    }

    #[tokio::test]
    async fn tar_stream_holds_normalized_entries() {
        let dir = sample_tree(false, SystemTime::now());
        let long_dir = "d".repeat(60);
        let long_path = format!("{long_dir}/{}", "f".repeat(80));
        dir.write(&long_path, "long");
        set_mode(&dir.path().join("src/nested"), 0o700);
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let expected_paths: Vec<String> = files.paths().map(str::to_owned).collect();
        let tar = tar_bytes(files).await;

        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let name = entry.path().unwrap().to_str().unwrap().to_owned();
            assert_eq!(header.uid().unwrap(), 0, "{name}");
            assert_eq!(header.gid().unwrap(), 0, "{name}");
            assert_eq!(header.mtime().unwrap(), 0, "{name}");
            assert_eq!(header.username_bytes().unwrap_or_default(), b"", "{name}");
            assert_eq!(header.groupname_bytes().unwrap_or_default(), b"", "{name}");
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            match name.as_str() {
                "src/" => assert_eq!(header.entry_type(), tar::EntryType::Directory),
                "src/nested/" => assert_eq!(header.mode().unwrap(), 0o700),
                "run.sh" => {
                    assert_eq!(header.mode().unwrap(), 0o755);
                    assert_eq!(content, "#!/bin/sh\n");
                }
                "src/a.rs" => {
                    assert_eq!(header.entry_type(), tar::EntryType::Regular);
                    assert_eq!(header.mode().unwrap(), 0o644);
                    assert_eq!(content, "a");
                }
                "link" => {
                    assert_eq!(header.entry_type(), tar::EntryType::Symlink);
                    assert_eq!(entry.link_name().unwrap().unwrap(), Path::new("src/a.rs"));
                }
                _ if name == long_path => assert_eq!(content, "long"),
                _ => {}
            }
            seen.push(name.trim_end_matches('/').to_owned());
        }
        assert_eq!(seen, expected_paths);
        assert!(seen.contains(&long_path));
        assert!(!seen.contains(&"debug.log".to_owned()));
    }

    #[tokio::test]
    async fn tar_stream_is_reproducible_and_chunked() {
        let dir = sample_tree(false, SystemTime::now());
        dir.write("big.bin", &"z".repeat(300_000));
        let first = tar_bytes(collect(dir.path(), Path::new("Dockerfile")).unwrap()).await;
        let other = sample_tree(true, SystemTime::UNIX_EPOCH);
        other.write("big.bin", &"z".repeat(300_000));
        let second = tar_bytes(collect(other.path(), Path::new("Dockerfile")).unwrap()).await;
        assert_eq!(first, second);

        let chunks: Vec<Bytes> = collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .into_tar_stream()
            .try_collect()
            .await
            .unwrap();
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.len() < 2 * CHUNK_SIZE));
    }

    #[tokio::test]
    async fn tar_stream_ends_with_an_error_naming_a_changed_file() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        fs::remove_file(dir.path().join("data")).unwrap();
        let result: Result<Vec<Bytes>, io::Error> = files.into_tar_stream().try_collect().await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("data"), "{err}");
    }

    #[tokio::test]
    async fn a_file_that_grows_is_sent_as_the_walk_saw_it() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("build.log", "line 1\n");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let mut log = fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("build.log"))
            .unwrap();
        use std::io::Write as _;
        log.write_all(b"line 2, written while the digest was read\n")
            .unwrap();
        let digest = files.digest(b"").unwrap();
        log.write_all(b"line 3, written while the context was sent\n")
            .unwrap();
        let tar = tar_bytes(files).await;
        let mut archive = tar::Archive::new(tar.as_slice());
        let sent: Vec<(String, String)> = archive
            .entries()
            .unwrap()
            .map(|entry| {
                let mut entry = entry.unwrap();
                let mut content = String::new();
                entry.read_to_string(&mut content).unwrap();
                (entry.path().unwrap().display().to_string(), content)
            })
            .collect();
        assert!(
            sent.contains(&("build.log".to_owned(), "line 1\n".to_owned())),
            "{sent:?}"
        );
        // The digest describes exactly that.
        fs::write(dir.path().join("build.log"), "line 1\n").unwrap();
        let mut again = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(again.digest(b"").unwrap(), digest);
    }

    #[tokio::test]
    async fn a_file_rewritten_after_it_was_hashed_fails_the_stream_naming_it() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("app.conf", "port=80\n");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        files.digest(b"").unwrap();
        dir.write("app.conf", "port=81\n");
        let result: Result<Vec<Bytes>, io::Error> = files.into_tar_stream().try_collect().await;
        let err = result.unwrap_err().to_string();
        assert!(
            err.contains("app.conf") && err.contains("differs from what was hashed"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn a_file_that_shrank_fails_the_stream_naming_it() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        dir.write("data", "123");
        let result: Result<Vec<Bytes>, io::Error> = files.into_tar_stream().try_collect().await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("data") && err.contains("shorter"), "{err}");
    }
}
