//! Remote engines: `tcp://` with TLS (`DOCKER_TLS_VERIFY`, `DOCKER_CERT_PATH`) and `ssh://` (`ssh …
//! docker system dial-stdio`, the user's ssh config honoured), read as the docker CLI reads them.
//!
//! Both engine clients (bollard's and our build session's) speak plain HTTP to a unix socket in a
//! private folder; every connection made to it is relayed to the remote engine over TLS or through
//! ssh. So TLS and ssh are handled once, for every request, upgrades (the build session) included.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixListener};
use tokio::process::Command;
use tokio_rustls::TlsConnector;

/// How long one connection attempt to a remote engine may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A remote engine and how to reach it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Remote {
    /// `host:port`, with the folder holding ca.pem, cert.pem and key.pem.
    Tls { addr: String, cert_path: PathBuf },
    /// `[user@]host`, and a port when DOCKER_HOST names one.
    Ssh {
        destination: String,
        port: Option<u16>,
    },
}

/// Why a remote engine cannot be reached: `Starting` may pass (nothing listens yet, or the remote
/// daemon is not up), `Refused` will not (a certificate, a key or ssh said no).
#[derive(Debug)]
pub(super) enum ProbeError {
    Starting(String),
    Refused(String),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Tls { addr, .. } => write!(f, "tcp://{addr} (TLS)"),
            Remote::Ssh {
                destination,
                port: Some(port),
            } => write!(f, "ssh://{destination}:{port}"),
            Remote::Ssh { destination, .. } => write!(f, "ssh://{destination}"),
        }
    }
}

impl Remote {
    /// `ssh://[user@]host[:port]`.
    pub(crate) fn ssh(rest: &str) -> Result<Remote, String> {
        let rest = rest.trim_end_matches('/');
        let (destination, port) = match rest.rsplit_once(':') {
            Some((destination, port)) if !destination.ends_with(']') || rest.starts_with('[') => {
                let port = port
                    .parse::<u16>()
                    .map_err(|_| format!("ssh://{rest}: the port must be a number"))?;
                (destination, Some(port))
            }
            _ => (rest, None),
        };
        if destination.is_empty() || destination.ends_with('@') || destination.contains('/') {
            return Err(format!("ssh://{rest} is not ssh://[user@]host[:port]"));
        }
        Ok(Remote::Ssh {
            destination: destination.to_owned(),
            port,
        })
    }

    /// One connection to the remote engine, as a byte stream.
    async fn connect(&self, tls: Option<&TlsConnector>) -> Result<Connection, ProbeError> {
        match self {
            Remote::Tls { addr, .. } => {
                let connector = tls.expect("a TLS remote has a connector");
                let tcp = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr))
                    .await
                    .map_err(|_| {
                        ProbeError::Starting(format!("no answer within {CONNECT_TIMEOUT:?}"))
                    })?
                    .map_err(|err| ProbeError::Starting(err.to_string()))?;
                let name = server_name(addr).map_err(ProbeError::Refused)?;
                let stream = connector.connect(name, tcp).await.map_err(|err| {
                    ProbeError::Refused(format!(
                        "TLS handshake failed: {}",
                        crate::output::with_causes(&err)
                    ))
                })?;
                Ok(Connection::Tls(Box::new(stream)))
            }
            Remote::Ssh { destination, port } => {
                let mut command = Command::new("ssh");
                // As the docker CLI runs it; BatchMode: a refused key fails instead of asking.
                command.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-T"]);
                if let Some(port) = port {
                    command.arg("-p").arg(port.to_string());
                }
                command
                    .arg("--")
                    .arg(destination)
                    .args(["docker", "system", "dial-stdio"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .kill_on_drop(true);
                let child = command
                    .spawn()
                    .map_err(|err| ProbeError::Refused(format!("ssh could not run: {err}")))?;
                Ok(Connection::Ssh(Box::new(child)))
            }
        }
    }
}

/// The TLS client of a `tcp://` engine: its CA, and our certificate and key, from `cert_path`.
fn tls_connector(cert_path: &Path) -> Result<TlsConnector, String> {
    let file = |name: &str| cert_path.join(name);
    let read_certs = |path: PathBuf| -> Result<Vec<CertificateDer<'static>>, String> {
        CertificateDer::pem_file_iter(&path)
            .and_then(Iterator::collect)
            .map_err(|err| format!("cannot read {}: {err}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for ca in read_certs(file("ca.pem"))? {
        roots
            .add(ca)
            .map_err(|err| format!("{}: {err}", file("ca.pem").display()))?;
    }
    let certs = read_certs(file("cert.pem"))?;
    let key = PrivateKeyDer::from_pem_file(file("key.pem"))
        .map_err(|err| format!("cannot read {}: {err}", file("key.pem").display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| err.to_string())?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)
        .map_err(|err| format!("{}: {err}", file("cert.pem").display()))?;
    Ok(TlsConnector::from(Arc::new(config)))
}

fn server_name(addr: &str) -> Result<ServerName<'static>, String> {
    let host = crate::reference::host_name(addr)
        .map_err(|reason| format!("{addr} is not a host[:port] ({reason})"))?;
    ServerName::try_from(host.to_owned()).map_err(|_| format!("{host} is not a host name"))
}

/// A connection to the remote engine.
enum Connection {
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Ssh(Box<tokio::process::Child>),
}

impl Connection {
    /// Relays `local` to the remote engine until either side closes.
    async fn relay(self, mut local: tokio::net::UnixStream) -> io::Result<()> {
        match self {
            Connection::Tls(mut stream) => {
                tokio::io::copy_bidirectional(&mut local, &mut *stream).await?;
            }
            Connection::Ssh(mut child) => {
                let (stdin, stdout) = (child.stdin.take(), child.stdout.take());
                let (Some(stdin), Some(stdout)) = (stdin, stdout) else {
                    return Err(io::Error::other("ssh has no stdin or stdout"));
                };
                let mut remote = tokio::io::join(stdout, stdin);
                tokio::io::copy_bidirectional(&mut local, &mut remote).await?;
            }
        }
        Ok(())
    }

    /// `GET /_ping` on this connection: whether a daemon answers.
    async fn ping(self) -> Result<(), ProbeError> {
        match self {
            Connection::Tls(mut stream) => ping_on(&mut *stream).await,
            Connection::Ssh(mut child) => {
                let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                    return Err(ProbeError::Refused("ssh has no stdin or stdout".into()));
                };
                let mut remote = tokio::io::join(stdout, stdin);
                let answer = ping_on(&mut remote).await;
                if answer.is_ok() {
                    return Ok(());
                }
                drop(remote);
                let output = child
                    .wait_with_output()
                    .await
                    .map_err(|err| ProbeError::Starting(format!("ssh did not finish: {err}")))?;
                let said = String::from_utf8_lossy(&output.stderr);
                let said = said
                    .lines()
                    .rfind(|l| !l.trim().is_empty())
                    .unwrap_or("")
                    .trim();
                // ssh itself exits 255 (no connection, refused key); anything else is the remote side.
                Err(match output.status.code() {
                    Some(255) => ProbeError::Refused(format!(
                        "ssh failed: {said} (check the key and ~/.ssh/config for this host; ecr-build runs \
                         `ssh HOST docker system dial-stdio` as the docker CLI does)"
                    )),
                    _ => ProbeError::Starting(format!("the remote docker did not answer: {said}")),
                })
            }
        }
    }
}

async fn ping_on<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> Result<(), ProbeError> {
    let starting = |err: io::Error| ProbeError::Starting(err.to_string());
    stream
        .write_all(b"GET /_ping HTTP/1.1\r\nHost: docker\r\nConnection: close\r\n\r\n")
        .await
        .map_err(starting)?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(CONNECT_TIMEOUT, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(Ok(_)) | Ok(Err(_)) if answer.starts_with(b"HTTP/1.1 200") => Ok(()),
        Ok(Err(err)) => Err(ProbeError::Refused(format!(
            "the engine closed the connection: {}",
            crate::output::with_causes(&err)
        ))),
        Ok(Ok(_)) => Err(ProbeError::Starting(format!(
            "the engine answered {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(40)])
        ))),
        Err(_) => Err(ProbeError::Starting(format!(
            "no answer within {CONNECT_TIMEOUT:?}"
        ))),
    }
}

/// The relay: a unix socket in a private folder that reaches the remote engine. Dropping it stops
/// it and removes the folder.
pub(super) struct Tunnel {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Tunnel {
    pub(super) fn socket(&self) -> PathBuf {
        self.dir.path().join("engine.sock")
    }

    /// Checks that the remote engine answers, then starts relaying.
    pub(super) async fn open(remote: &Remote) -> Result<Tunnel, ProbeError> {
        let tls = match remote {
            Remote::Tls { cert_path, .. } => {
                Some(tls_connector(cert_path).map_err(ProbeError::Refused)?)
            }
            Remote::Ssh { .. } => None,
        };
        remote.connect(tls.as_ref()).await?.ping().await?;
        let dir = tempfile::Builder::new()
            .prefix("ecr-build-engine")
            .tempdir()
            .map_err(|err| ProbeError::Refused(format!("cannot make a private folder: {err}")))?;
        let listener = UnixListener::bind(dir.path().join("engine.sock")).map_err(|err| {
            ProbeError::Refused(format!("cannot listen on a private socket: {err}"))
        })?;
        let remote = remote.clone();
        let task = tokio::spawn(async move {
            while let Ok((local, _)) = listener.accept().await {
                let (remote, tls) = (remote.clone(), tls.clone());
                tokio::spawn(async move {
                    let relayed = match remote.connect(tls.as_ref()).await {
                        Ok(connection) => connection.relay(local).await,
                        Err(ProbeError::Starting(why) | ProbeError::Refused(why)) => {
                            Err(io::Error::other(why))
                        }
                    };
                    if let Err(err) = relayed {
                        tracing::debug!("engine connection through {remote} ended: {err}");
                    }
                });
            }
        });
        Ok(Tunnel { dir, task })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssh_addresses_are_read_as_the_docker_cli_reads_them() {
        let ssh = |text| Remote::ssh(text);
        assert_eq!(
            ssh("builder@10.0.0.5:2222").unwrap(),
            Remote::Ssh {
                destination: "builder@10.0.0.5".into(),
                port: Some(2222)
            }
        );
        assert_eq!(
            ssh("build-host").unwrap(),
            Remote::Ssh {
                destination: "build-host".into(),
                port: None
            }
        );
        assert_eq!(
            ssh("build-host:22").unwrap().to_string(),
            "ssh://build-host:22"
        );
        for bad in ["", "user@", "host:x", "host/path"] {
            assert!(ssh(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tls_names_the_host_it_verifies() {
        assert!(matches!(
            server_name("127.0.0.1:2376"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("docker.example:2376"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("[::1]:2376"),
            Ok(ServerName::IpAddress(_))
        ));
    }

    #[test]
    fn missing_certificates_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let Err(err) = tls_connector(dir.path()) else {
            panic!("no certificates, yet a connector");
        };
        assert!(err.contains("ca.pem"), "{err}");
    }
}
