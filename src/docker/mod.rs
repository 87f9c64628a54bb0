//! The Docker Engine API: connect (waiting for a daemon that is starting), build, tag, push.
//! BuildKit builds serve the context ([`filesync`]), secrets and registry credentials on the
//! build's own [`session`]; on the containerd image store they go through BuildKit's control API
//! ([`solve`]), which can export the cache to a registry, elsewhere through `POST /build`.

mod error;
mod filesync;
mod host;
mod progress;
mod session;
mod solve;
mod tunnel;

pub(crate) use error::DockerError;
pub(crate) use host::{EngineAddr, HostEnv};
pub(crate) use solve::CacheSpec;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bollard::Docker;
use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::models::BuildInfo;
use bollard::query_parameters::{
    BuildImageOptionsBuilder, BuilderVersion, CreateImageOptionsBuilder, PushImageOptionsBuilder,
    TagImageOptionsBuilder,
};
use futures_util::StreamExt;

use crate::config::Builder;
use crate::context::{ContextFiles, SYNCED_DOCKERFILE, SyncRequest};
use progress::BuildProgress;
use tunnel::{ProbeError, Tunnel};

/// Builds upload the whole context before the engine answers; bollard's timeout covers that wait.
const LONG_REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 3600);
const PING_TIMEOUT: Duration = Duration::from_secs(5);
pub(crate) struct Engine {
    docker: Docker,
    /// For the requests bollard 0.21.1 cannot make: BuildKit builds with our own session.
    address: EngineAddr,
    api_prefix: String,
    /// The containerd image store: BuildKit can export its cache there, so builds go through its
    /// control API ([`solve`]); the classic store gets `POST /build`.
    containerd_store: bool,
    /// A remote engine's relay, for as long as the engine is used.
    _tunnel: Option<tunnel::Tunnel>,
}

/// The engine's address for messages, and where it came from.
fn describe(address: &EngineAddr, env: &HostEnv) -> String {
    let from = match env.docker_host.as_deref() {
        Some(host) if !host.trim().is_empty() => "DOCKER_HOST",
        _ => "DOCKER_HOST is not set",
    };
    format!("{address} ({from})")
}

impl Engine {
    /// Connects, waiting up to `wait` for a daemon that is still starting, as buildspecs do with
    /// `until docker info; do sleep 1; done`.
    /// `DOCKER_HOST` (and the TLS variables) as the docker CLI reads them, in `env`.
    pub(crate) async fn connect(wait: Duration, env: &HostEnv) -> Result<Engine, DockerError> {
        let configured = EngineAddr::parse(env)?;
        let (address, tunnel) = match &configured {
            EngineAddr::Remote(remote) => {
                let tunnel = until_up(&remote.to_string(), wait, || Tunnel::open(remote)).await?;
                (EngineAddr::Unix(tunnel.socket()), Some(tunnel))
            }
            _ => (configured.clone(), None),
        };
        let host = describe(&configured, env);
        let docker = until_up(&host, wait, || async {
            let attempt = async {
                let docker = address.client(PING_TIMEOUT.as_secs())?;
                docker.ping().await?;
                // bollard 0.21.1 sends unversioned paths; negotiating keeps a later upgrade working on old engines.
                docker.negotiate_version().await
            };
            (attempt.await).map_err(|err| ProbeError::Starting(err.to_string()))
        })
        .await?;
        let info = docker.info().await?;
        let containerd_store = (info.driver_status.iter().flatten()).any(|pair| {
            pair.first().is_some_and(|key| key == "driver-type")
                && pair
                    .get(1)
                    .is_some_and(|value| value.starts_with("io.containerd.snapshotter"))
        });
        tracing::debug!(
            "connected to Docker at {host} ({} image store)",
            if containerd_store {
                "containerd"
            } else {
                "classic"
            }
        );
        let api_prefix = format!("/v{}", docker.client_version());
        Ok(Engine {
            docker: docker.with_timeout(LONG_REQUEST_TIMEOUT),
            address,
            api_prefix,
            containerd_store,
            _tunnel: tunnel,
        })
    }

    /// Builds one image, streaming its output to the log with the image's name, and returns the
    /// image ID. BuildKit reads the context through the build session (as the docker CLI sends
    /// it); the legacy builder gets it as a tar.
    pub(crate) async fn build(
        &self,
        request: BuildRequest<'_>,
        context: ContextFiles,
    ) -> Result<BuiltImage, DockerError> {
        if request.builder == Builder::Buildkit && self.containerd_store {
            return self.solve(request, context).await;
        }
        let options = build_options(&request);
        let mut progress = BuildProgress::new(request.image);
        let registry_auth = request.registry_auth.unwrap_or_default();
        // The session lives until the build's stream ends: BuildKit asks it for the context,
        // secrets and pull credentials while steps run.
        let (session, mut stream) = match request.builder {
            Builder::Buildkit => {
                let (session, stream) = self
                    .start_buildkit(
                        options,
                        request.image,
                        request.secrets,
                        registry_auth,
                        context,
                    )
                    .await?;
                (Some(session), stream.boxed())
            }
            Builder::Legacy => {
                let options = options.version(BuilderVersion::BuilderV1).build();
                let stream = self.docker.build_image(
                    options,
                    Some(registry_auth),
                    Some(bollard::body_try_stream(context.into_tar_stream())),
                );
                (None, stream.boxed())
            }
        };
        let mut image_id = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    if let Some(id) = progress.handle(info) {
                        image_id = Some(id);
                    }
                }
                Err(BollardError::DockerStreamError { error }) => {
                    // A file that changed after it was hashed: say so, not BuildKit's wrapping.
                    let changed = session.as_ref().and_then(|s| s.context().failure());
                    return Err(progress.failure(changed.unwrap_or(error)));
                }
                Err(err) => return Err(err.into()),
            }
        }
        let id = image_id.ok_or(DockerError::NoImageId)?;
        Ok(built(request.image, session.as_ref(), progress, id))
    }

    /// A BuildKit build through its control API: the session first, then the solve, whose status
    /// gives the step lines.
    async fn solve(
        &self,
        request: BuildRequest<'_>,
        context: ContextFiles,
    ) -> Result<BuiltImage, DockerError> {
        let mut progress = BuildProgress::new(request.image);
        let id = session_id(request.image);
        let solve_request = solve::solve_request(&request, &id);
        let registry_auth = request.registry_auth.unwrap_or_default();
        let session =
            (self.open_session(&id, request.image, request.secrets, registry_auth, context))
                .await?;
        let control = solve::connect(&self.address, &self.api_prefix).await?;
        let outcome = solve::run(control, solve_request, |update| progress.status(update)).await;
        if let Err(status) = outcome {
            let changed = session.context().failure();
            return Err(progress.failure(changed.unwrap_or_else(|| status.message().to_owned())));
        }
        let image_id = (self.image_id(request.reference).await?).ok_or(DockerError::NoImageId)?;
        Ok(built(request.image, Some(&session), progress, image_id))
    }

    /// Opens the build's session (context, Dockerfile, secrets, pull credentials) and posts
    /// `/build`; BuildKit reads the context through the session.
    async fn start_buildkit(
        &self,
        options: BuildImageOptionsBuilder,
        image: &str,
        secrets: HashMap<String, Vec<u8>>,
        registry_auth: HashMap<String, DockerCredentials>,
        context: ContextFiles,
    ) -> Result<
        (
            session::BuildSession,
            impl futures_util::Stream<Item = Result<BuildInfo, BollardError>> + Send + Unpin + use<>,
        ),
        DockerError,
    > {
        let id = session_id(image);
        let session = (self.open_session(&id, image, secrets, registry_auth, context)).await?;
        let options = options
            .version(BuilderVersion::BuilderBuildKit)
            .session(&id)
            .remote("client-session")
            .dockerfile(SYNCED_DOCKERFILE)
            .build();
        let stream = session::post_build(&self.address, &self.api_prefix, &options).await?;
        Ok((session, stream))
    }

    /// Whether BuildKit can export its cache to a registry here (the containerd image store).
    pub(crate) fn can_export_cache(&self) -> bool {
        self.containerd_store
    }

    /// Opens build session `id`: the context and the Dockerfile, secrets, pull credentials.
    async fn open_session(
        &self,
        id: &str,
        image: &str,
        secrets: HashMap<String, Vec<u8>>,
        registry_auth: HashMap<String, DockerCredentials>,
        context: ContextFiles,
    ) -> Result<session::BuildSession, DockerError> {
        let failed = |message: String| DockerError::BuildFailed {
            step: None,
            message,
        };
        let dirs = tokio::task::spawn_blocking(move || context.into_sync_dirs())
            .await
            .map_err(|err| failed(format!("reading the context failed: {err}")))?
            .map_err(|err| failed(err.to_string()))?;
        let store = std::sync::Arc::new(session::SecretStore::new(secrets));
        let context = filesync::ContextSync::new(image, dirs);
        Ok(session::open_session(
            &self.address,
            &self.api_prefix,
            id,
            "ecr-build",
            store,
            registry_auth,
            context,
        )
        .await?)
    }

    /// The identity of the image the engine has under `reference`, as a build would use it: the
    /// registry digest it was pulled by (its repo digest for that name), else its image ID.
    /// `None` where the engine has no such image.
    pub(crate) async fn local_image(&self, reference: &str) -> Result<Option<String>, DockerError> {
        let Some(inspected) = self.inspect(reference).await? else {
            return Ok(None);
        };
        let name = reference
            .split_once('@')
            .map_or(reference, |(name, _)| name);
        let name = match name.rsplit_once(':') {
            Some((repository, tag)) if !tag.contains('/') => repository,
            _ => name,
        };
        let pulled_as =
            (inspected.repo_digests.unwrap_or_default().into_iter()).find_map(|repo_digest| {
                let (repository, digest) = repo_digest.split_once('@')?;
                (repository == name).then(|| digest.to_owned())
            });
        Ok(pulled_as.or(inspected.id))
    }

    pub(crate) async fn tag(
        &self,
        image_id: &str,
        repository: &str,
        tag: &str,
    ) -> Result<(), DockerError> {
        let options = TagImageOptionsBuilder::default()
            .repo(repository)
            .tag(tag)
            .build();
        self.docker
            .tag_image(image_id, Some(options))
            .await
            .map_err(|source| DockerError::Tag {
                image: image_id.to_owned(),
                reference: format!("{repository}:{tag}"),
                source,
            })
    }

    /// The ID of the image the engine has under `reference`, if it has one.
    pub(crate) async fn image_id(&self, reference: &str) -> Result<Option<String>, DockerError> {
        Ok(self
            .inspect(reference)
            .await?
            .and_then(|inspected| inspected.id))
    }

    /// The image the engine has under `reference`, if it has one.
    async fn inspect(
        &self,
        reference: &str,
    ) -> Result<Option<bollard::models::ImageInspect>, DockerError> {
        match self.docker.inspect_image(reference).await {
            Ok(inspected) => Ok(Some(inspected)),
            Err(BollardError::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(None),
            Err(err) => Err(err.into()),
        }
    }

    /// Pulls `reference` (for `platform`, else the engine's own).
    pub(crate) async fn pull(
        &self,
        reference: &str,
        platform: Option<&str>,
        credentials: Option<DockerCredentials>,
    ) -> Result<(), DockerError> {
        let mut options = CreateImageOptionsBuilder::default().from_image(reference);
        if let Some(platform) = platform {
            options = options.platform(platform);
        }
        let mut stream = self
            .docker
            .create_image(Some(options.build()), None, credentials);
        while let Some(item) = stream.next().await {
            let message = match item {
                Ok(_) => continue,
                Err(BollardError::DockerStreamError { error }) => error,
                Err(err) => err.to_string(),
            };
            let reference = reference.to_owned();
            return Err(DockerError::PullFailed { reference, message });
        }
        Ok(())
    }

    /// Pushes `repository:tag`; returns the manifest digest the registry stored.
    pub(crate) async fn push(
        &self,
        image: &str,
        repository: &str,
        tag: &str,
        credentials: Option<DockerCredentials>,
    ) -> Result<String, DockerError> {
        let reference = format!("{repository}:{tag}");
        let options = PushImageOptionsBuilder::default().tag(tag).build();
        let mut stream = self
            .docker
            .push_image(repository, Some(options), credentials);
        let mut digest = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(info) => {
                    let Some(status) = info.status else { continue };
                    if let Some(found) = digest_in_status(&status) {
                        digest = Some(found.to_owned());
                    }
                    if info.progress_detail.is_none() || status.starts_with("Pushed") {
                        tracing::debug!(image, "push {reference}: {status}");
                    }
                }
                Err(BollardError::DockerStreamError { error }) => {
                    return Err(DockerError::PushFailed {
                        reference,
                        message: error,
                    });
                }
                Err(err) => {
                    return Err(DockerError::PushFailed {
                        reference,
                        message: err.to_string(),
                    });
                }
            }
        }
        digest.ok_or(DockerError::NoDigest { reference })
    }
}

/// The built image, with what the session saw: the context BuildKit asked for; a warning for the
/// secrets it asked for that the image has none of.
fn built(
    image: &str,
    session: Option<&session::BuildSession>,
    mut progress: BuildProgress<'_>,
    id: String,
) -> BuiltImage {
    progress.flush();
    if let Some(session) = session {
        let missing = session.secrets().missing();
        if !missing.is_empty() {
            tracing::warn!(
                image,
                "the Dockerfile asked for secret(s) {} that are not configured for this image; \
                 their mounts were left out",
                missing.join(", ")
            );
        }
    }
    BuiltImage {
        id,
        context_requests: session.map(|s| s.context().requests()),
        loaded_images: progress.loaded_images.into_iter().collect(),
    }
}

/// The `/build` query both builders share.
fn build_options(request: &BuildRequest<'_>) -> BuildImageOptionsBuilder {
    let mut build_args: HashMap<String, String> = request.build_args.iter().cloned().collect();
    if request.cache.inline && request.builder == Builder::Buildkit {
        build_args.insert("BUILDKIT_INLINE_CACHE".into(), "1".into());
    }
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(request.dockerfile)
        .t(request.reference)
        .rm(true)
        .forcerm(true)
        .buildargs(&build_args)
        .labels(&request.labels.iter().cloned().collect());
    if let Some(target) = request.target {
        options = options.target(target);
    }
    if let Some(network) = request.network {
        options = options.networkmode(network);
    }
    if let Some(platform) = request.platform {
        options = options.platform(platform);
    }
    if !request.cache.imports.is_empty() {
        options = options.cachefrom(&request.cache.imports.to_vec());
    }
    options
}

/// Tries `attempt` until the engine at `host` answers: a refusal (a certificate, a key, ssh) fails
/// at once; a daemon that does not answer yet is tried again every half second, for up to `wait`.
async fn until_up<T, F, Fut>(host: &str, wait: Duration, mut attempt: F) -> Result<T, DockerError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ProbeError>>,
{
    let started = Instant::now();
    let mut announced = false;
    loop {
        let cause = match attempt().await {
            Ok(up) => return Ok(up),
            Err(ProbeError::Refused(cause)) => {
                let host = host.to_owned();
                return Err(DockerError::RemoteRefused { host, cause });
            }
            Err(ProbeError::Starting(cause)) => cause,
        };
        if started.elapsed() >= wait {
            return Err(DockerError::Unreachable {
                host: host.to_owned(),
                waited: wait.as_secs(),
                cause,
            });
        }
        if !announced {
            let seconds = wait.as_secs();
            tracing::info!("waiting up to {seconds} s for the Docker daemon at {host} ({cause})");
            announced = true;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A build session ID must be unique per build; the image name keeps it readable in engine logs.
fn session_id(image: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("ecr-build-{image}-{}-{nanos:x}", std::process::id())
}

/// `abc1234: digest: sha256:… size: 528`
fn digest_in_status(status: &str) -> Option<&str> {
    let (_, rest) = status.split_once("digest: ")?;
    let digest = rest.split_whitespace().next()?;
    (digest.starts_with("sha256:") && digest.len() == 71).then_some(digest)
}

pub(crate) struct BuildRequest<'a> {
    pub image: &'a str,
    pub reference: &'a str,
    pub dockerfile: &'a str,
    pub target: Option<&'a str>,
    pub network: Option<&'a str>,
    /// `linux/arm64`; `None`: the engine's own platform.
    pub platform: Option<&'a str>,
    pub builder: Builder,
    pub build_args: &'a [(String, String)],
    pub labels: &'a [(String, String)],
    pub registry_auth: Option<HashMap<String, DockerCredentials>>,
    /// The cache to export (where the engine can; `POST /build` has inline cache only) and import.
    pub cache: &'a CacheSpec,
    /// BuildKit secrets by id; values stay in memory and are served only on the build's session.
    pub secrets: HashMap<String, Vec<u8>>,
}

/// An image the engine built.
pub(crate) struct BuiltImage {
    pub id: String,
    /// BuildKit: what it asked of the context, every DiffCopy; `None` for the legacy builder.
    pub context_requests: Option<Vec<SyncRequest>>,
    /// BuildKit: the images whose metadata it loaded (`[internal] load metadata for REF`), as it
    /// names them: the bases the build really used.
    pub loaded_images: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_is_read_from_the_push_status() {
        assert_eq!(
            digest_in_status(&format!(
                "abc1234: digest: sha256:{} size: 528",
                "a".repeat(64)
            )),
            Some(format!("sha256:{}", "a".repeat(64)).as_str())
        );
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(digest_in_status("x: digest: sha256:short size: 1"), None);
    }
}
