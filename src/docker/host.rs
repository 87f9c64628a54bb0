//! Where the engine listens: `DOCKER_HOST`, parsed once, for bollard's client and for the build
//! session's own connections alike.

use std::io;
use std::path::{Path, PathBuf};

use bollard::Docker;
use bollard::errors::Error;
use http::{Request, Response};
use hyper::body::{Body, Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpStream, UnixStream};
use tokio_util::either::Either;

use super::tunnel::Remote;

const DEFAULT_SOCKET: &str = "/var/run/docker.sock";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum EngineAddr {
    Unix(PathBuf),
    /// `host:port`, plain HTTP.
    Tcp(String),
    /// Over TLS or ssh, through a [`super::tunnel::Tunnel`].
    Remote(Remote),
}

/// What the docker CLI reads to find the engine.
#[derive(Debug, Default)]
pub(crate) struct HostEnv {
    pub docker_host: Option<String>,
    pub tls_verify: Option<String>,
    pub cert_path: Option<String>,
    pub home: Option<String>,
}

impl HostEnv {
    /// From the variables `lookup` gives (the process environment, at the edge).
    pub(crate) fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name);
        Self {
            docker_host: var("DOCKER_HOST"),
            tls_verify: var("DOCKER_TLS_VERIFY"),
            cert_path: var("DOCKER_CERT_PATH"),
            home: var("HOME"),
        }
    }
}

impl EngineAddr {
    /// `tcp://` is TLS when DOCKER_TLS_VERIFY is set (not empty), with ca.pem, cert.pem and key.pem
    /// from DOCKER_CERT_PATH, else ~/.docker.
    pub(crate) fn parse(env: &HostEnv) -> Result<Self, Error> {
        let unsupported = |uri: &str| Error::UnsupportedURISchemeError {
            uri: uri.to_owned(),
        };
        let Some(host) = env
            .docker_host
            .as_deref()
            .map(str::trim)
            .filter(|h| !h.is_empty())
        else {
            return Ok(EngineAddr::Unix(PathBuf::from(DEFAULT_SOCKET)));
        };
        if let Some(path) = host.strip_prefix("unix://") {
            return Ok(EngineAddr::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = host.strip_prefix("ssh://") {
            return Remote::ssh(rest)
                .map(EngineAddr::Remote)
                .map_err(|_| unsupported(host));
        }
        let addr = (host.strip_prefix("tcp://"))
            .or_else(|| host.strip_prefix("http://"))
            .map(|addr| addr.trim_end_matches('/'))
            .filter(|addr| !addr.is_empty())
            .ok_or_else(|| unsupported(host))?;
        let tls = env.tls_verify.as_deref().is_some_and(|v| !v.is_empty());
        if !tls {
            return Ok(EngineAddr::Tcp(addr.to_owned()));
        }
        let cert_path = (env.cert_path.as_deref())
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                env.home
                    .as_deref()
                    .map(|home| Path::new(home).join(".docker"))
            })
            .unwrap_or_else(|| PathBuf::from(".docker"));
        Ok(EngineAddr::Remote(Remote::Tls {
            addr: addr.to_owned(),
            cert_path,
        }))
    }

    /// bollard's client for this address; requests time out after `timeout_seconds`.
    pub(crate) fn client(&self, timeout_seconds: u64) -> Result<Docker, Error> {
        let version = bollard::API_DEFAULT_VERSION;
        match self {
            EngineAddr::Unix(path) => {
                Docker::connect_with_unix(&path.to_string_lossy(), timeout_seconds, version)
            }
            EngineAddr::Tcp(addr) => Docker::connect_with_http(addr, timeout_seconds, version),
            EngineAddr::Remote(remote) => Err(Error::UnsupportedURISchemeError {
                uri: format!("{remote}: reached through a tunnel"),
            }),
        }
    }

    /// One HTTP/1.1 request on a fresh connection; the connection lives (with upgrades) as long
    /// as the response or the upgraded stream does.
    pub(crate) async fn send<B>(&self, request: Request<B>) -> Result<Response<Incoming>, Error>
    where
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let stream = match self {
            EngineAddr::Unix(path) => Either::Left(UnixStream::connect(path).await?),
            EngineAddr::Tcp(addr) => Either::Right(TcpStream::connect(addr).await?),
            EngineAddr::Remote(remote) => {
                return Err(Error::UnsupportedURISchemeError {
                    uri: format!("{remote}: reached through a tunnel"),
                });
            }
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
            EngineAddr::Remote(remote) => write!(f, "{remote}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(docker_host: &str) -> HostEnv {
        HostEnv {
            docker_host: Some(docker_host.to_owned()),
            home: Some("/home/ci".to_owned()),
            ..HostEnv::default()
        }
    }

    fn parse(docker_host: &str) -> Result<EngineAddr, Error> {
        EngineAddr::parse(&host(docker_host))
    }

    #[test]
    fn docker_host_is_read_as_the_docker_cli_reads_it() {
        let unix = |path: &str| EngineAddr::Unix(PathBuf::from(path));
        assert_eq!(
            EngineAddr::parse(&HostEnv::default()).unwrap(),
            unix(DEFAULT_SOCKET)
        );
        assert_eq!(parse("  ").unwrap(), unix(DEFAULT_SOCKET));
        assert_eq!(
            parse("unix:///tmp/x/docker.sock").unwrap(),
            unix("/tmp/x/docker.sock")
        );
        for docker_host in [
            "tcp://127.0.0.1:2375",
            "http://127.0.0.1:2375/",
            " tcp://127.0.0.1:2375 ",
        ] {
            assert_eq!(
                parse(docker_host).unwrap(),
                EngineAddr::Tcp("127.0.0.1:2375".into()),
                "{docker_host}"
            );
        }
        assert_eq!(
            parse("ssh://ci@builder:2222").unwrap(),
            EngineAddr::Remote(Remote::Ssh {
                destination: "ci@builder".into(),
                port: Some(2222)
            })
        );
        for docker_host in [
            "npipe:////./pipe/docker_engine",
            "tcp://",
            "127.0.0.1:2375",
            "ssh://",
        ] {
            assert!(parse(docker_host).is_err(), "{docker_host}");
        }
        assert_eq!(parse("tcp://h:1").unwrap().to_string(), "tcp://h:1");
    }

    #[test]
    fn tls_verify_makes_tcp_a_tls_engine_with_the_cli_s_certificate_folder() {
        let mut env = host("tcp://127.0.0.1:2376");
        env.tls_verify = Some("1".into());
        let tls = |cert_path: &str| {
            EngineAddr::Remote(Remote::Tls {
                addr: "127.0.0.1:2376".into(),
                cert_path: cert_path.into(),
            })
        };
        assert_eq!(EngineAddr::parse(&env).unwrap(), tls("/home/ci/.docker"));
        env.cert_path = Some("/certs".into());
        assert_eq!(EngineAddr::parse(&env).unwrap(), tls("/certs"));
        env.tls_verify = Some(String::new());
        assert_eq!(
            EngineAddr::parse(&env).unwrap(),
            EngineAddr::Tcp("127.0.0.1:2376".into()),
            "an empty DOCKER_TLS_VERIFY is unset, as the docker CLI reads it"
        );
    }

    #[test]
    fn both_clients_are_made_from_the_one_address() {
        parse("tcp://127.0.0.1:2375").unwrap().client(5).unwrap();
        let missing = parse("unix:///nonexistent.sock").unwrap();
        assert!(matches!(
            missing.client(5),
            Err(Error::SocketNotFoundError(path)) if path == "/nonexistent.sock"
        ));
    }
}
