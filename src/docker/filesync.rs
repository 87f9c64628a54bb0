//! BuildKit's FileSync on the build session: the context reaches the engine as the docker CLI
//! sends it, through fsutil's DiffCopy. The engine keeps what it received between builds, so a
//! build sends only the files that changed.
//!
//! fsutil's protocol, sender side: one STAT packet per entry in walk order (its id is its index),
//! an empty STAT to end the list; the receiver asks for files by id (REQ), each answered with DATA
//! packets and an empty DATA; the receiver's FIN is answered with FIN. An ERR packet from either
//! side ends the transfer with its text.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};

use bollard::fsutil::types::packet::PacketType;
use bollard::fsutil::types::{Packet, Stat};
use bollard::moby::filesync::v1::file_sync_server::FileSync;
use tokio::sync::{Semaphore, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::context::{SyncDir, SyncDirs, SyncItem, SyncRequest};

/// Files read and sent at once, as fsutil's sender does.
const PARALLEL_FILES: usize = 4;
/// Packets buffered towards the engine.
const PACKETS_IN_FLIGHT: usize = 64;
/// Sent paths named in the `-v` log of one transfer.
const LOGGED_PATHS: usize = 20;

/// Serves one build's context and Dockerfile.
pub(super) struct ContextSync {
    image: String,
    dirs: Arc<SyncDirs>,
    failure: Arc<Mutex<Option<String>>>,
    /// Every DiffCopy of the context BuildKit asked for: what the build read.
    requests: Mutex<Vec<SyncRequest>>,
}

impl ContextSync {
    pub(super) fn new(image: &str, dirs: SyncDirs) -> Self {
        Self {
            image: image.to_owned(),
            dirs: Arc::new(dirs),
            failure: Arc::default(),
            requests: Mutex::default(),
        }
    }

    /// What BuildKit asked of the context so far, in the order it asked.
    pub(super) fn requests(&self) -> Vec<SyncRequest> {
        self.requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub(super) fn shared_key(&self) -> &str {
        &self.dirs.shared_key
    }

    /// Why a file could not be served (it changed after it was hashed): the build's real cause,
    /// which BuildKit only reports wrapped.
    pub(super) fn failure(&self) -> Option<String> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

#[derive(Clone, Copy)]
enum Dir {
    Context,
    Dockerfile,
}

impl Dir {
    fn of(dirs: &SyncDirs, dir: Dir) -> &SyncDir {
        match dir {
            Dir::Context => &dirs.context,
            Dir::Dockerfile => &dirs.dockerfile,
        }
    }
}

type PacketSender = mpsc::Sender<Result<Packet, Status>>;

#[tonic::async_trait]
impl FileSync for ContextSync {
    type DiffCopyStream = ReceiverStream<Result<Packet, Status>>;
    type TarStreamStream = ReceiverStream<Result<Packet, Status>>;

    async fn diff_copy(
        &self,
        request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::DiffCopyStream>, Status> {
        let values = |key: &str| -> Vec<String> {
            (request.metadata().get_all(key).iter())
                .filter_map(|value| value.to_str().ok())
                .map(str::to_owned)
                .collect()
        };
        let name = values("dir-name").into_iter().next().unwrap_or_default();
        let dir = match name.as_str() {
            "context" => Dir::Context,
            "dockerfile" => Dir::Dockerfile,
            other => {
                return Err(Status::not_found(format!(
                    "no access allowed to dir {other:?}"
                )));
            }
        };
        if let Dir::Context = dir {
            let request = SyncRequest {
                include: values("include-patterns"),
                exclude: values("exclude-patterns"),
                follow: values("followpaths"),
            };
            tracing::debug!(
                image = self.image.as_str(),
                "the build asked for the context: {request:?}"
            );
            (self.requests.lock().unwrap_or_else(|e| e.into_inner())).push(request);
        }
        let selected = Dir::of(&self.dirs, dir)
            .select(&values("include-patterns"), &values("followpaths"))
            .map_err(|err| Status::invalid_argument(err.to_string()))?;
        let (sender, receiver) = mpsc::channel(PACKETS_IN_FLIGHT);
        let transfer = Transfer {
            image: self.image.clone(),
            name,
            dirs: Arc::clone(&self.dirs),
            dir,
            failure: Arc::clone(&self.failure),
            sender,
        };
        tokio::spawn(transfer.run(selected, request.into_inner()));
        Ok(Response::new(ReceiverStream::new(receiver)))
    }

    async fn tar_stream(
        &self,
        _request: Request<Streaming<Packet>>,
    ) -> Result<Response<Self::TarStreamStream>, Status> {
        Err(Status::unimplemented("only diffcopy is served"))
    }
}

/// One DiffCopy of one directory.
struct Transfer {
    image: String,
    name: String,
    dirs: Arc<SyncDirs>,
    dir: Dir,
    failure: Arc<Mutex<Option<String>>>,
    sender: PacketSender,
}

impl Transfer {
    async fn run(self, selected: Vec<usize>, mut incoming: Streaming<Packet>) {
        let dir = Dir::of(&self.dirs, self.dir);
        let mut files = HashMap::new();
        for (id, &index) in selected.iter().enumerate() {
            let item = dir.item(index);
            if item.has_content() {
                files.insert(id as u32, index);
            }
            if self.send(stat_packet(Some(item))).await.is_err() {
                return;
            }
        }
        if self.send(stat_packet(None)).await.is_err() {
            return;
        }
        let slots = Arc::new(Semaphore::new(PARALLEL_FILES));
        let mut reads = tokio::task::JoinSet::new();
        let mut sent = Vec::new();
        loop {
            let packet = match incoming.message().await {
                Ok(Some(packet)) => packet,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(image = self.image, "build session: {}: {status}", self.name);
                    break;
                }
            };
            match PacketType::try_from(packet.r#type) {
                Ok(PacketType::PacketReq) => {
                    let Some(index) = files.remove(&packet.id) else {
                        let _ = self
                            .send(error_packet(&format!("invalid file id {}", packet.id)))
                            .await;
                        break;
                    };
                    sent.push(dir.item(index).path.clone());
                    let Ok(slot) = Arc::clone(&slots).acquire_owned().await else {
                        break;
                    };
                    let (dirs, which, id) = (Arc::clone(&self.dirs), self.dir, packet.id);
                    let (sender, failure) = (self.sender.clone(), Arc::clone(&self.failure));
                    reads.spawn_blocking(move || {
                        send_file(Dir::of(&dirs, which), index, id, &sender, &failure);
                        drop(slot);
                    });
                }
                Ok(PacketType::PacketFin) => {
                    while reads.join_next().await.is_some() {}
                    let _ = self
                        .send(Packet {
                            r#type: PacketType::PacketFin as i32,
                            ..Packet::default()
                        })
                        .await;
                    break;
                }
                Ok(PacketType::PacketErr) => {
                    tracing::debug!(
                        image = self.image,
                        "build session: {}: the engine ended the transfer: {}",
                        self.name,
                        String::from_utf8_lossy(&packet.data)
                    );
                    break;
                }
                _ => {}
            }
        }
        self.log_sent(selected.len(), &sent);
    }

    async fn send(&self, packet: Packet) -> Result<(), ()> {
        self.sender.send(Ok(packet)).await.map_err(|_| ())
    }

    fn log_sent(&self, offered: usize, sent: &[String]) {
        let mut named = sent
            .iter()
            .take(LOGGED_PATHS)
            .map(String::as_str)
            .collect::<Vec<_>>()
            .join(", ");
        if sent.len() > LOGGED_PATHS {
            named.push_str(&format!(" and {} more", sent.len() - LOGGED_PATHS));
        }
        tracing::debug!(
            image = self.image,
            "build session: {}: {offered} entries offered, {} files sent: [{named}]",
            self.name,
            sent.len()
        );
    }
}

/// Sends one file as DATA packets and an empty DATA; a file that changed since it was hashed
/// ends the transfer with an ERR naming it, and is remembered as the build's failure. Blocking.
fn send_file(
    dir: &SyncDir,
    index: usize,
    id: u32,
    sender: &PacketSender,
    failure: &Mutex<Option<String>>,
) {
    let data = |data: Vec<u8>| {
        Ok(Packet {
            r#type: PacketType::PacketData as i32,
            id,
            data,
            ..Packet::default()
        })
    };
    let closed = || io::Error::new(io::ErrorKind::BrokenPipe, "the build session closed");
    let sent = dir
        .read(index, &mut |chunk| {
            sender
                .blocking_send(data(chunk.to_vec()))
                .map_err(|_| closed())
        })
        .and_then(|()| sender.blocking_send(data(Vec::new())).map_err(|_| closed()));
    match sent {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::BrokenPipe => {}
        Err(err) => {
            let message = err.to_string();
            failure
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get_or_insert_with(|| message.clone());
            let _ = sender.blocking_send(Ok(error_packet(&message)));
        }
    }
}

/// A STAT packet for `item`; `None`: the empty STAT that ends the list.
fn stat_packet(item: Option<&SyncItem>) -> Packet {
    Packet {
        r#type: PacketType::PacketStat as i32,
        stat: item.map(|item| Stat {
            path: item.path.clone(),
            mode: item.mode,
            size: item.size,
            mod_time: item.mod_time_nanos,
            linkname: item.linkname.clone(),
            ..Stat::default()
        }),
        ..Packet::default()
    }
}

fn error_packet(message: &str) -> Packet {
    Packet {
        r#type: PacketType::PacketErr as i32,
        data: message.as_bytes().to_vec(),
        ..Packet::default()
    }
}
