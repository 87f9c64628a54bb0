//! BuildKit's control API through the engine, as buildx's docker driver reaches it: `POST /grpc`
//! upgraded to HTTP/2 (h2c), then `moby.buildkit.v1.Control/Solve` with the dockerfile frontend and
//! our build session ([`super::session`]: the context, secrets, registry credentials), and
//! `Control/Status` for the step lines. Unlike `POST /build`, a solve can export BuildKit's cache to
//! a registry.
//!
//! The client is bollard-buildkit-proto's generated `ControlClient`, over hyper's HTTP/2 client on
//! the upgraded connection. The request carries no secret value: secrets and credentials travel
//! only on the session, when BuildKit asks for them.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bollard::errors::Error;
use bollard::moby::buildkit::v1::control_client::ControlClient;
use bollard::moby::buildkit::v1::{
    CacheOptions, CacheOptionsEntry, Exporter, SolveRequest, StatusRequest, StatusResponse,
};
use bytes::Bytes;
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{Request, StatusCode, Uri};
use http_body_util::Empty;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::context::SYNCED_DOCKERFILE;

use super::BuildRequest;
use super::host::EngineAddr;
use super::session::server_error;

/// BuildKit's own limit for a message (buildkitd's default); a status update can be large.
const MAX_MESSAGE_BYTES: usize = 16 << 20;

/// hyper's HTTP/2 client connection as the service tonic's generated client calls.
#[derive(Clone)]
pub(super) struct Http2(SendRequest<tonic::body::Body>);

impl tower_service::Service<http::Request<tonic::body::Body>> for Http2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = hyper::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        Box::pin(self.0.send_request(request))
    }
}

/// Opens the engine's BuildKit control API: `POST /grpc`, answered with 101, then HTTP/2 on the
/// same connection.
pub(super) async fn connect(
    engine: &EngineAddr,
    api_prefix: &str,
) -> Result<ControlClient<Http2>, Error> {
    let request = Request::post(format!("{api_prefix}/grpc"))
        .header(HOST, "docker")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "h2c")
        .body(Empty::<Bytes>::new())?;
    let response = engine.send(request).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(server_error(response).await);
    }
    let upgraded = hyper::upgrade::on(response).await?;
    let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .handshake(upgraded)
        .await?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!("BuildKit control connection ended: {err}");
        }
    });
    let origin = Uri::from_static("http://docker");
    Ok(ControlClient::with_origin(Http2(send), origin)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES))
}

/// Where BuildKit's cache goes and comes from, besides the image itself.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct CacheSpec {
    /// `ref` and `mode` (`max`, `min`) of the registry cache to export, in the OCI image-manifest
    /// form that ECR stores.
    pub export: Option<(String, String)>,
    /// Put the cache metadata in the image's config (inline cache).
    pub inline: bool,
    /// Registry caches and images (inline cache) to import.
    pub imports: Vec<String>,
}

/// The request for one image's build on `session` (also the build's ref): the dockerfile frontend on
/// the session's "context" and "dockerfile" directories, exported into the engine (`moby`) under
/// the request's reference; what buildx sends for `docker buildx build` on the docker driver.
pub(super) fn solve_request(request: &BuildRequest<'_>, session: &str) -> SolveRequest {
    // No `attest:*` attribute: a single-platform image stays one manifest, with no attestation.
    let mut attrs: HashMap<String, String> =
        HashMap::from([("filename".into(), SYNCED_DOCKERFILE.into())]);
    let optional = [
        ("target", request.target),
        ("platform", request.platform),
        ("force-network-mode", request.network),
    ];
    for (key, value) in optional {
        if let Some(value) = value {
            attrs.insert(key.into(), value.into());
        }
    }
    for (key, value) in request.build_args {
        attrs.insert(format!("build-arg:{key}"), value.clone());
    }
    for (key, value) in request.labels {
        attrs.insert(format!("label:{key}"), value.clone());
    }
    let imports: Vec<CacheOptionsEntry> = (request.cache.imports.iter())
        .map(|reference| cache_entry("registry", [("ref", reference.as_str())]))
        .collect();
    if !imports.is_empty() {
        let listed: Vec<serde_json::Value> = (imports.iter())
            .map(|entry| serde_json::json!({ "Type": entry.r#type, "Attrs": entry.attrs }))
            .collect();
        attrs.insert(
            "cache-imports".into(),
            serde_json::Value::from(listed).to_string(),
        );
    }
    let mut exports = Vec::new();
    if let Some((reference, mode)) = &request.cache.export {
        exports.push(cache_entry(
            "registry",
            [
                ("ref", reference.as_str()),
                ("mode", mode.as_str()),
                ("image-manifest", "true"),
                ("oci-mediatypes", "true"),
                // A cache that cannot be written (the registry down for a moment) costs the next
                // host time, not this build.
                ("ignore-error", "true"),
            ],
        ));
    }
    if request.cache.inline {
        exports.push(cache_entry("inline", []));
    }
    let entitlements = match request.network {
        Some("host") => vec!["network.host".to_owned()],
        _ => Vec::new(),
    };
    SolveRequest {
        r#ref: session.to_owned(),
        session: session.to_owned(),
        frontend: "dockerfile.v0".into(),
        frontend_attrs: attrs,
        exporters: vec![Exporter {
            r#type: "moby".into(),
            attrs: HashMap::from([("name".to_owned(), request.reference.to_owned())]),
        }],
        cache: Some(CacheOptions {
            exports,
            imports,
            ..CacheOptions::default()
        }),
        entitlements,
        ..SolveRequest::default()
    }
}

fn cache_entry<const N: usize>(kind: &str, attrs: [(&str, &str); N]) -> CacheOptionsEntry {
    CacheOptionsEntry {
        r#type: kind.to_owned(),
        attrs: (attrs.into_iter())
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect(),
    }
}

/// Runs `request`, handing each status update to `on_status` while it runs. Both calls run in the
/// caller's task, so a build that is dropped (a signal, another image's failure) ends its solve.
pub(super) async fn run(
    control: ControlClient<Http2>,
    request: SolveRequest,
    mut on_status: impl FnMut(StatusResponse),
) -> Result<(), tonic::Status> {
    let status_request = StatusRequest {
        r#ref: request.r#ref.clone(),
    };
    let mut solver = control.clone();
    let mut watcher = control;
    let report = async {
        let mut updates = match watcher.status(status_request).await {
            Ok(updates) => updates.into_inner(),
            Err(err) => {
                tracing::debug!("BuildKit status unavailable: {err}");
                return;
            }
        };
        loop {
            match updates.message().await {
                Ok(Some(update)) => on_status(update),
                Ok(None) => break,
                Err(err) => {
                    tracing::debug!("BuildKit status ended: {err}");
                    break;
                }
            }
        }
    };
    let (solved, ()) = tokio::join!(solver.solve(request), report);
    solved.map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn build<'a>(cache: &'a CacheSpec, args: &'a [(String, String)]) -> BuildRequest<'a> {
        BuildRequest {
            image: "web",
            reference: "127.0.0.1:5000/web:abc",
            dockerfile: "docker/Dockerfile",
            target: Some("release"),
            network: Some("none"),
            platform: None,
            builder: crate::config::Builder::Buildkit,
            build_args: args,
            labels: &[],
            registry_auth: None,
            cache,
            secrets: HashMap::from([("token".to_owned(), b"s3cret".to_vec())]),
        }
    }

    #[test]
    fn the_request_names_the_frontend_the_session_the_exporter_and_the_cache() {
        let cache = CacheSpec {
            export: Some(("r.example/web:buildcache".into(), "max".into())),
            inline: false,
            imports: vec!["r.example/web:buildcache".into()],
        };
        let args = [("VERSION".to_owned(), "1".to_owned())];
        let request = solve_request(&build(&cache, &args), "session1");
        assert_eq!(request.frontend, "dockerfile.v0");
        assert_eq!(request.session, "session1");
        assert_eq!(request.r#ref, "session1");
        // Secrets travel on the session only, when BuildKit asks.
        assert!(!format!("{request:?}").contains("s3cret"));
        let attrs = &request.frontend_attrs;
        assert_eq!(attrs["filename"], "Dockerfile");
        assert_eq!(attrs["target"], "release");
        assert_eq!(attrs["force-network-mode"], "none");
        assert_eq!(attrs["build-arg:VERSION"], "1");
        assert!(!attrs.contains_key("platform"));
        assert_eq!(request.exporters[0].r#type, "moby");
        assert_eq!(request.exporters[0].attrs["name"], "127.0.0.1:5000/web:abc");
        let options = request.cache.unwrap();
        let export = &options.exports[0];
        assert_eq!(export.r#type, "registry");
        assert_eq!(export.attrs["mode"], "max");
        assert_eq!(export.attrs["image-manifest"], "true");
        assert_eq!(export.attrs["oci-mediatypes"], "true");
        assert_eq!(export.attrs["ignore-error"], "true");
        assert_eq!(options.imports[0].attrs["ref"], "r.example/web:buildcache");
        assert!(attrs["cache-imports"].contains("r.example/web:buildcache"));
        assert!(request.entitlements.is_empty());
    }

    #[test]
    fn inline_cache_and_host_network_are_asked_for_as_buildx_asks() {
        let cache = CacheSpec {
            inline: true,
            ..CacheSpec::default()
        };
        let mut build = build(&cache, &[]);
        build.network = Some("host");
        let request = solve_request(&build, "session1");
        let options = request.cache.unwrap();
        assert_eq!(options.exports.len(), 1);
        assert_eq!(options.exports[0].r#type, "inline");
        assert!(options.imports.is_empty());
        assert!(!request.frontend_attrs.contains_key("cache-imports"));
        assert_eq!(request.entitlements, ["network.host"]);
    }
}
