//! Where the engine listens: `DOCKER_HOST`, parsed once, for bollard's client and for the build
//! session's own connections alike.

use std::io;
use std::path::PathBuf;

use bollard::Docker;
use bollard::errors::Error;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EngineAddr {
    Unix(PathBuf),
    /// `host:port`.
    Tcp(String),
}

impl EngineAddr {
    /// `DOCKER_HOST` as the docker CLI reads it: unset or empty is the local socket.
    pub fn from_env() -> Result<Self, Error> {
        Self::parse(std::env::var("DOCKER_HOST").ok().as_deref())
    }

    pub fn parse(host: Option<&str>) -> Result<Self, Error> {
        let Some(host) = host.map(str::trim).filter(|h| !h.is_empty()) else {
            return Ok(EngineAddr::Unix(PathBuf::from(DEFAULT_SOCKET)));
        };
        if let Some(path) = host.strip_prefix("unix://") {
            Ok(EngineAddr::Unix(PathBuf::from(path)))
        } else if let Some(addr) = (host.strip_prefix("tcp://"))
            .or_else(|| host.strip_prefix("http://"))
            .filter(|addr| !addr.is_empty())
        {
            Ok(EngineAddr::Tcp(addr.trim_end_matches('/').to_owned()))
        } else {
            Err(Error::UnsupportedURISchemeError {
                uri: host.to_owned(),
            })
        }
    }

    /// bollard's client for this address; requests time out after `timeout_seconds`.
    pub fn client(&self, timeout_seconds: u64) -> Result<Docker, Error> {
        let version = bollard::API_DEFAULT_VERSION;
        match self {
            EngineAddr::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), timeout_seconds, version)
            }
            EngineAddr::Tcp(addr) => Docker::connect_with_http(addr, timeout_seconds, version),
        }
    }

    /// One HTTP/1.1 request on a fresh connection; the connection lives (with upgrades) as long
    /// as the response or the upgraded stream does.
    pub async fn send<B>(&self, request: Request<B>) -> Result<Response<Incoming>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = match self {
            EngineAddr::Unix(path) => Either::Left(UnixStream::connect(path).await?),
            EngineAddr::Tcp(addr) => Either::Right(TcpStream::connect(addr).await?),
        };
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!("engine connection ended: {err}");
            }
        });
        match sender.send_request(request).await {
            Ok(response) => Ok(response),
            // hyper's own text ("error from user's Body stream") hides the cause: keep the chain.
            Err(err) => Err(Error::from(io::Error::other(crate::output::with_causes(
                &err,
            )))),
        }
    }
}

impl std::fmt::Display for EngineAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            EngineAddr::Unix(path) => write!(f, "unix://{}", path.display()),
            EngineAddr::Tcp(addr) => write!(f, "tcp://{addr}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_host_is_read_as_the_docker_cli_reads_it() {
        let unix = |path: &str| EngineAddr::Unix(PathBuf::from(path));
        assert_eq!(EngineAddr::parse(None).unwrap(), unix(DEFAULT_SOCKET));
        assert_eq!(EngineAddr::parse(Some("  ")).unwrap(), unix(DEFAULT_SOCKET));
        assert_eq!(
            EngineAddr::parse(Some("unix:///tmp/x/docker.sock")).unwrap(),
            unix("/tmp/x/docker.sock")
        );
        for host in [
            "tcp://127.0.0.1:2375",
            "http://127.0.0.1:2375/",
            " tcp://127.0.0.1:2375 ",
        ] {
            assert_eq!(
                EngineAddr::parse(Some(host)).unwrap(),
                EngineAddr::Tcp("127.0.0.1:2375".into()),
                "{host}"
            );
        }
        for host in [
            "ssh://builder",
            "npipe:////./pipe/docker_engine",
            "tcp://",
            "127.0.0.1:2375",
        ] {
            assert!(EngineAddr::parse(Some(host)).is_err(), "{host}");
        }
        assert_eq!(
            EngineAddr::parse(Some("tcp://h:1")).unwrap().to_string(),
            "tcp://h:1"
        );
    }

    #[test]
    fn both_clients_are_made_from_the_one_address() {
        let addr = EngineAddr::parse(Some("tcp://127.0.0.1:2375")).unwrap();
        addr.client(5).unwrap();
        let missing = EngineAddr::parse(Some("unix:///nonexistent.sock")).unwrap();
        assert!(matches!(
            missing.client(5),
            Err(Error::SocketNotFoundError(path)) if path == "/nonexistent.sock"
        ));
    }
}
