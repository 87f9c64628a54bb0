//! A small client for the three Docker Registry HTTP API v2 calls that re-tagging needs:
//! HEAD, GET and PUT of a manifest.
//!
//! The "skip unchanged" feature uses it: when `repo:ctx-<digest>` already exists, the same manifest
//! bytes are PUT under the new tags, so no layer is pulled or pushed.
//!
//! - Every request carries an `Accept` header listing the four manifest media types. Without it,
//!   distribution answers with a converted schema1 manifest that has a different digest.
//! - Basic auth is sent preemptively; ECR (`AWS:<token>`) and distribution with htpasswd take it.
//!   One client serves a run; [`Registry::set_login`] swaps in a renewed ECR token.
//! - Loopback registries are spoken to over plain http (as the docker engine does), everything else
//!   over https with the platform's root certificates, using rustls with aws-lc-rs.
//! - The password only ever lives in a `HeaderValue` marked sensitive. Nothing here logs headers, and
//!   neither the errors nor the `Debug` output contain credentials or tokens.

use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256, Sha512};

mod blobs;
mod error;
pub(crate) mod manifest;
mod token;

use error::classify;
pub(crate) use error::{Operation, RegistryError, Target, Timeout};
use token::bearer_challenge;

use crate::reference::{self, is_digest, is_loopback};

/// Docker image manifest, schema 2.
#[cfg(test)]
pub(crate) const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub(crate) const DOCKER_MANIFEST_LIST: &str =
    "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub(crate) const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub(crate) const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` header of every manifest request. Never leave it out: see the module docs.
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a whole call, reading the body included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Registries cap manifests at 4 MiB; anything much larger is not a manifest.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const USER_AGENT_VALUE: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// A manifest exactly as the registry stores it. PUT `bytes` unchanged to keep the digest.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    pub bytes: Bytes,
    /// The `Content-Type` the registry served, e.g. [`DOCKER_MANIFEST_V2`].
    pub media_type: String,
    /// `sha256:<hex>`, checked against `bytes`.
    pub digest: String,
}

impl fmt::Debug for Manifest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Manifest")
            .field("media_type", &self.media_type)
            .field("digest", &self.digest)
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Client for one registry. Cloning is cheap and shares the connection pool and cached tokens.
#[derive(Clone)]
pub(crate) struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host[:port]` as given.
    host: String,
    /// `http` for loopback hosts, `https` otherwise.
    scheme: &'static str,
    /// `Basic base64(user:password)`, marked sensitive; `None` for anonymous access.
    basic: RwLock<Option<HeaderValue>>,
    /// `Bearer <token>` from the registry's token service, once a call was challenged for one
    /// (Docker Hub, GHCR and most registries but ECR); marked sensitive.
    bearer: RwLock<Option<HeaderValue>>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// [`REQUEST_TIMEOUT`]; a field so that a test can shorten it.
    request_timeout: Duration,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.inner.host)
            .field("scheme", &self.inner.scheme)
            .field("credentials", &"<redacted>")
            .finish()
    }
}

/// A response with its body read.
struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Registry {
    /// `host` is `host[:port]` (no scheme, no path). Loopback hosts (127.0.0.0/8, `localhost`,
    /// `[::1]`) use plain http, everything else https with the platform's root certificates.
    /// Anonymous until [`Registry::set_login`].
    pub(crate) fn new(host: &str) -> Result<Self, RegistryError> {
        let invalid = |reason| RegistryError::InvalidHost {
            host: host.to_owned(),
            reason,
        };
        let name = reference::host_name(host).map_err(invalid)?;
        let loopback = is_loopback(name);
        let scheme = if loopback { "http" } else { "https" };

        let tls_error = |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Tls {
            host: host.to_owned(),
            source,
        };
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| tls_error(e.into()))?;
        let tls = match builder.clone().with_native_roots() {
            Ok(b) => b.with_no_client_auth(),
            // A loopback registry needs no TLS; don't fail on a machine without CA certificates.
            Err(_) if loopback => builder
                .with_root_certificates(rustls::RootCertStore::empty())
                .with_no_client_auth(),
            Err(e) => return Err(tls_error(e.into())),
        };

        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(connector);
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);

        Ok(Registry {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                scheme,
                basic: RwLock::new(None),
                bearer: RwLock::new(None),
                http,
                request_timeout: REQUEST_TIMEOUT,
            }),
        })
    }

    /// Basic auth for every later call (ECR: `AWS` and the token's password).
    pub(crate) fn set_login(&self, username: &str, password: &str) {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
        let mut value =
            HeaderValue::from_str(&format!("Basic {encoded}")).expect("base64 is ASCII");
        value.set_sensitive(true);
        *self.inner.basic.write().unwrap_or_else(|e| e.into_inner()) = Some(value);
    }

    /// HEAD the manifest. `Ok(None)` on 404 (MANIFEST_UNKNOWN / NAME_UNKNOWN), otherwise the
    /// `Docker-Content-Digest` (falling back to a GET if a registry leaves the header out).
    pub(crate) async fn manifest_digest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<String>, RegistryError> {
        let target = self.target(Operation::Head, repository, reference)?;
        let resp = self.execute(&target, Method::HEAD, None).await?;
        match resp.status {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match header_digest(&target, &resp.headers)? {
                Some(digest) => Ok(Some(digest)),
                None => Ok(self
                    .get_manifest(repository, reference)
                    .await?
                    .map(|m| m.digest)),
            },
            _ => Err(classify(target, resp.status, &resp.body)),
        }
    }

    /// GET the manifest: its exact bytes, media type and digest. `Ok(None)` on 404. The digest the
    /// registry reports (and a digest reference) is checked against the sha256 of the bytes.
    pub(crate) async fn get_manifest(
        &self,
        repository: &str,
        reference: &str,
    ) -> Result<Option<Manifest>, RegistryError> {
        let target = self.target(Operation::Get, repository, reference)?;
        let resp = self.execute(&target, Method::GET, None).await?;
        if resp.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status.is_success() {
            return Err(classify(target, resp.status, &resp.body));
        }
        let invalid = |message: String| RegistryError::InvalidResponse {
            target: Box::new(target.clone()),
            message,
        };
        let media_type = manifest_media_type(&resp.headers, &resp.body).map_err(invalid)?;
        if media_type.contains("distribution.manifest.v1+") {
            return Err(invalid(format!(
                "the registry served a schema1 manifest ({media_type}), which cannot be re-tagged"
            )));
        }
        let computed = sha256_digest(&resp.body);
        let claimed = header_digest(&target, &resp.headers)?;
        let reference_digest = reference.contains(':').then_some(reference);
        for expected in claimed.as_deref().into_iter().chain(reference_digest) {
            verify_digest(expected, &resp.body).map_err(|actual| {
                RegistryError::DigestMismatch {
                    target: Box::new(target.clone()),
                    expected: expected.to_owned(),
                    actual,
                }
            })?;
        }
        Ok(Some(Manifest {
            bytes: resp.body,
            media_type,
            // A sha512 header was verified above; callers compare sha256 digests.
            digest: computed,
        }))
    }

    /// PUT `manifest.bytes` unchanged, with `manifest.media_type` as Content-Type, under `tag`.
    /// Returns the digest the registry reports (which equals `manifest.digest` unless the registry
    /// altered the manifest).
    pub(crate) async fn put_manifest(
        &self,
        repository: &str,
        tag: &str,
        manifest: &Manifest,
    ) -> Result<String, RegistryError> {
        let target = self.target(Operation::Put, repository, tag)?;
        if tag.contains(':') {
            return Err(RegistryError::InvalidReference {
                target: Box::new(target),
                reason: "put_manifest takes a tag, not a digest".to_owned(),
            });
        }
        let content_type = HeaderValue::from_str(&manifest.media_type).map_err(|_| {
            RegistryError::InvalidReference {
                target: Box::new(target.clone()),
                reason: format!("invalid media type {:?}", manifest.media_type),
            }
        })?;
        let body = Some((content_type, manifest.bytes.clone()));
        let resp = self.execute(&target, Method::PUT, body).await?;
        if !resp.status.is_success() {
            return Err(classify(target, resp.status, &resp.body));
        }
        let digest = match header_digest(&target, &resp.headers)? {
            Some(d) => d,
            None => sha256_digest(&manifest.bytes),
        };
        if digest != manifest.digest {
            tracing::warn!(
                "{target}: the registry reports digest {digest}, the manifest had {}",
                manifest.digest
            );
        }
        Ok(digest)
    }

    fn target(
        &self,
        operation: Operation,
        repository: &str,
        reference: &str,
    ) -> Result<Target, RegistryError> {
        let target = Target {
            operation,
            host: self.inner.host.clone(),
            repository: repository.to_owned(),
            reference: reference.to_owned(),
        };
        let check = reference::check_repository(repository)
            .and_then(|()| reference::check_reference(reference));
        match check {
            Ok(()) => Ok(target),
            Err(reason) => Err(RegistryError::InvalidReference {
                target: Box::new(target),
                reason,
            }),
        }
    }

    /// Sends a manifest request and reads the body, all within [`REQUEST_TIMEOUT`].
    async fn execute(
        &self,
        target: &Target,
        method: Method,
        body: Option<(HeaderValue, Bytes)>,
    ) -> Result<Response, RegistryError> {
        let url = self.url(&format!(
            "/v2/{}/manifests/{}",
            target.repository, target.reference
        ));
        self.request(target, method, &url, true, body).await
    }

    /// `scheme://host` + an absolute path, or a URL the registry gave as it is.
    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}://{}{path_or_url}", self.inner.scheme, self.inner.host)
        }
    }

    /// One request, within [`REQUEST_TIMEOUT`]; the registry's credentials go along when
    /// `authorized`. A challenge for a bearer token is answered once: the token is fetched (with
    /// the basic credentials where there are any, else anonymously) and the request sent again.
    async fn request(
        &self,
        target: &Target,
        method: Method,
        url: &str,
        authorized: bool,
        body: Option<(HeaderValue, Bytes)>,
    ) -> Result<Response, RegistryError> {
        let read = |slot: &RwLock<Option<HeaderValue>>| {
            slot.read().unwrap_or_else(|e| e.into_inner()).clone()
        };
        let auth = || {
            authorized
                .then(|| read(&self.inner.bearer).or_else(|| read(&self.inner.basic)))
                .flatten()
        };
        let response = self
            .timed(
                target,
                self.send(target, &method, url, auth(), body.clone()),
            )
            .await?;
        if !authorized || response.status != StatusCode::UNAUTHORIZED {
            return Ok(response);
        }
        let Some(challenge) = bearer_challenge(&response.headers) else {
            return Ok(response);
        };
        let token = self.fetch_token(target, &challenge).await?;
        *self.inner.bearer.write().unwrap_or_else(|e| e.into_inner()) = Some(token);
        self.timed(target, self.send(target, &method, url, auth(), body))
            .await
    }

    /// `work` within [`REQUEST_TIMEOUT`].
    async fn timed(
        &self,
        target: &Target,
        work: impl std::future::Future<Output = Result<Response, RegistryError>>,
    ) -> Result<Response, RegistryError> {
        let limit = self.inner.request_timeout;
        tokio::time::timeout(limit, work).await.unwrap_or_else(|_| {
            Err(RegistryError::Transport {
                target: Box::new(target.clone()),
                source: Box::new(Timeout(limit)),
            })
        })
    }

    async fn send(
        &self,
        target: &Target,
        method: &Method,
        url: &str,
        auth: Option<HeaderValue>,
        body: Option<(HeaderValue, Bytes)>,
    ) -> Result<Response, RegistryError> {
        let transport =
            |source: Box<dyn std::error::Error + Send + Sync>| RegistryError::Transport {
                target: Box::new(target.clone()),
                source,
            };
        let uri: Uri =
            url.parse()
                .map_err(|e: http::uri::InvalidUri| RegistryError::InvalidReference {
                    target: Box::new(target.clone()),
                    reason: format!("invalid URL: {e}"),
                })?;
        let mut req = Request::builder()
            .method(method.clone())
            .uri(uri)
            .header(USER_AGENT, USER_AGENT_VALUE);
        req = req.header(ACCEPT, MANIFEST_ACCEPT);
        if let Some(auth) = auth {
            req = req.header(AUTHORIZATION, auth);
        }
        let payload = match body {
            Some((content_type, bytes)) => {
                req = req.header(CONTENT_TYPE, content_type);
                bytes
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| transport(e.into()))?;
        let resp = self
            .inner
            .http
            .request(req)
            .await
            .map_err(|e| transport(e.into()))?;
        let (parts, body) = resp.into_parts();
        tracing::debug!(
            method = %method,
            url,
            status = parts.status.as_u16(),
            "registry request"
        );
        let body = match Limited::new(body, MAX_BODY_BYTES).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(e) if e.is::<LengthLimitError>() => {
                return Err(RegistryError::InvalidResponse {
                    target: Box::new(target.clone()),
                    message: format!("response body larger than {MAX_BODY_BYTES} bytes"),
                });
            }
            Err(e) => return Err(transport(e)),
        };
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }
}

/// `sha256:<hex>` of `bytes`.
pub(crate) fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Checks `bytes` against a `sha256:` or `sha512:` digest; `Err` carries what the bytes hash to.
pub(crate) fn verify_digest(expected: &str, bytes: &[u8]) -> Result<(), String> {
    let actual = match expected.split_once(':') {
        Some(("sha256", _)) => sha256_digest(bytes),
        Some(("sha512", _)) => format!("sha512:{:x}", Sha512::digest(bytes)),
        _ => {
            return Err(format!(
                "{} (cannot check {expected:?})",
                sha256_digest(bytes)
            ));
        }
    };
    if actual.eq_ignore_ascii_case(expected) {
        Ok(())
    } else {
        Err(actual)
    }
}

/// `Docker-Content-Digest`, if present; it must look like `sha256:<64 hex>` (or sha512).
fn header_digest(target: &Target, headers: &HeaderMap) -> Result<Option<String>, RegistryError> {
    let Some(value) = headers.get(DOCKER_CONTENT_DIGEST) else {
        return Ok(None);
    };
    let digest = value.to_str().ok().map(str::trim).filter(|d| is_digest(d));
    match digest {
        Some(d) => Ok(Some(d.to_owned())),
        None => Err(RegistryError::InvalidResponse {
            target: Box::new(target.clone()),
            message: format!("invalid Docker-Content-Digest header {value:?}"),
        }),
    }
}

/// The Content-Type, or the manifest's own `mediaType` when the registry sends a generic type.
fn manifest_media_type(headers: &HeaderMap, body: &[u8]) -> Result<String, String> {
    let header = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .unwrap_or_default();
    let essence = header.split(';').next().unwrap_or_default().trim();
    if essence.starts_with("application/vnd.") {
        return Ok(header.to_owned());
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType")]
        media_type: Option<String>,
    }
    serde_json::from_slice::<Probe>(body)
        .ok()
        .and_then(|p| p.media_type)
        .filter(|m| m.starts_with("application/vnd."))
        .ok_or_else(|| {
            format!("no manifest media type (Content-Type {header:?}, no mediaType in the body)")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_picks_scheme_and_hides_password() {
        let local = Registry::new("127.0.0.1:5000").unwrap();
        assert!(local.inner.basic.read().unwrap().is_none());
        local.set_login("AWS", "s3cret-token");
        assert_eq!(local.inner.scheme, "http");
        let debug = format!("{local:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("<redacted>"),
            "{debug}"
        );
        let basic = local.inner.basic.read().unwrap().clone().unwrap();
        assert!(basic.is_sensitive());
        assert!(!format!("{basic:?}").contains("QVdT"));
        let remote = Registry::new("123456789012.dkr.ecr.eu-west-1.amazonaws.com");
        // Fails only on a machine without CA certificates.
        if let Ok(remote) = remote {
            assert_eq!(remote.inner.scheme, "https");
        }
        assert!(matches!(
            Registry::new("https://x"),
            Err(RegistryError::InvalidHost { .. })
        ));
    }

    #[test]
    fn digest_verification() {
        let bytes = b"{}";
        let good = "sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a";
        assert_eq!(sha256_digest(bytes), good);
        assert_eq!(verify_digest(good, bytes), Ok(()));
        assert_eq!(
            verify_digest(&good.to_uppercase().replace("SHA256", "sha256"), bytes),
            Ok(())
        );
        let wrong = format!("sha256:{}", "0".repeat(64));
        assert_eq!(verify_digest(&wrong, bytes), Err(good.to_owned()));
        let sha512 = format!("sha512:{:x}", Sha512::digest(bytes));
        assert_eq!(verify_digest(&sha512, bytes), Ok(()));
        assert!(verify_digest("md5:abc", bytes).is_err());
        assert!(is_digest(good) && is_digest(&sha512));
        assert!(
            !is_digest("sha256:abc") && !is_digest("sha1:da39a3ee5e6b4b0d3255bfef95601890afd80709")
        );
    }

    #[test]
    fn media_type_from_header_or_body() {
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(OCI_MANIFEST));
        assert_eq!(
            manifest_media_type(&headers, b"{}"),
            Ok(OCI_MANIFEST.to_owned())
        );
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = format!(r#"{{"schemaVersion":2,"mediaType":"{OCI_INDEX}"}}"#);
        assert_eq!(
            manifest_media_type(&headers, body.as_bytes()),
            Ok(OCI_INDEX.to_owned())
        );
        assert!(manifest_media_type(&headers, b"{}").is_err());
    }

    /// A registry that only takes Bearer tokens from its own token endpoint, Docker Hub style.
    /// Returns the host and the log of "METHOD path auth" lines.
    #[tokio::test]
    async fn a_silent_registry_times_out() {
        // Accepts the connection (the kernel does, from the backlog) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let mut client = Registry::new(&host).unwrap();
        client.set_login("AWS", "pw");
        Arc::get_mut(&mut client.inner).unwrap().request_timeout = Duration::from_millis(300);
        let err = client.manifest_digest("team/app", "v1").await.unwrap_err();
        let RegistryError::Transport { source, .. } = &err else {
            panic!("{err:?}");
        };
        assert!(source.is::<Timeout>(), "{source:?}");
        assert_eq!(source.to_string(), "no complete response within 300ms");
        assert!(err.to_string().contains(&host), "{err}");
        drop(listener);
    }
}
