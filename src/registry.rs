//! A small client for the three Docker Registry HTTP API v2 calls that re-tagging needs:
//! HEAD, GET and PUT of a manifest.
//!
//! The "skip unchanged" feature uses it: when `repo:ctx-<digest>` already exists, the same manifest
//! bytes are PUT under the new tags, so no layer is pulled or pushed.
//!
//! - Every request carries an `Accept` header listing the four manifest media types. Without it,
//!   distribution answers with a converted schema1 manifest that has a different digest.
//! - Basic auth is sent preemptively; ECR (`AWS:<token>`) and distribution with htpasswd accept it.
//!   A `401` with a `WWW-Authenticate: Bearer realm=…` challenge (Docker Hub style) is answered by
//!   fetching a token from the realm with the same Basic credentials and retrying once.
//! - Loopback registries are spoken to over plain http (as the docker engine does), everything else
//!   over https with the platform's root certificates, using rustls with aws-lc-rs.
//! - The password only ever lives in a `HeaderValue` marked sensitive. Nothing here logs headers, and
//!   neither the errors nor the `Debug` output contain credentials or tokens.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper_rustls::{ConfigBuilderExt as _, HttpsConnector};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use sha2::{Digest as _, Sha256, Sha512};

/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST_V2: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list (multi-platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index (multi-platform).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// The `Accept` header of every manifest request. Never leave it out: see the module docs.
const MANIFEST_ACCEPT: &str = "application/vnd.docker.distribution.manifest.v2+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.oci.image.index.v1+json";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bounds a whole call, including a token round trip and reading the body.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Registries cap manifests at 4 MiB; anything much larger is not a manifest.
const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;
const DOCKER_CONTENT_DIGEST: &str = "docker-content-digest";
const USER_AGENT_VALUE: &str = concat!(env!("CARGO_PKG_NAME"), "/", env!("CARGO_PKG_VERSION"));

/// A manifest exactly as the registry stores it. PUT `bytes` unchanged to keep the digest.
#[derive(Clone, PartialEq, Eq)]
pub struct Manifest {
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

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Head,
    Get,
    Put,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Head => "checking manifest",
            Operation::Get => "fetching manifest",
            Operation::Put => "pushing manifest",
        })
    }
}

/// What a call was about: every error carries one, so every message names the registry host,
/// the repository and the tag or digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub operation: Operation,
    pub host: String,
    pub repository: String,
    pub reference: String,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = if self.reference.contains(':') {
            '@'
        } else {
            ':'
        };
        write!(
            f,
            "{} {}/{}{sep}{}",
            self.operation, self.host, self.repository, self.reference
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The `host` given to [`RegistryClient::new`] is not `host[:port]`.
    #[error("invalid registry host {host:?}: {reason}")]
    InvalidHost { host: String, reason: &'static str },
    /// No usable TLS configuration (e.g. no root certificates on this machine).
    #[error("registry {host}: cannot set up TLS")]
    Tls {
        host: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A repository name or reference that would not make a valid request path.
    #[error("{target}: {reason}")]
    InvalidReference { target: Box<Target>, reason: String },
    /// 401 (or error code UNAUTHORIZED): wrong or missing credentials.
    #[error("{target}: unauthorized (HTTP 401): {message}")]
    Unauthorized {
        target: Box<Target>,
        message: String,
    },
    /// 403 or error code DENIED, e.g. ECR's "Your authorization token has expired".
    #[error("{target}: denied (HTTP {status}): {message}")]
    Denied {
        target: Box<Target>,
        status: u16,
        message: String,
    },
    /// Error code TAG_INVALID: on ECR, the tag exists in an immutable repository.
    #[error("{target}: tag invalid: {message}")]
    TagInvalid {
        target: Box<Target>,
        message: String,
    },
    /// 404 where the call cannot answer "absent", e.g. a PUT into a repository that does not exist.
    #[error("{target}: not found (HTTP 404{}): {message}", code_suffix(code))]
    NotFound {
        target: Box<Target>,
        code: Option<String>,
        message: String,
    },
    /// Any other error status; `code` and `message` come from the `{"errors":[…]}` body if there is one.
    #[error(
        "{target}: registry error (HTTP {status}{}): {message}",
        code_suffix(code)
    )]
    Status {
        target: Box<Target>,
        status: u16,
        code: Option<String>,
        message: String,
    },
    /// The manifest bytes do not hash to the digest the registry (or the reference) claims.
    #[error("{target}: digest mismatch: expected {expected}, the manifest bytes hash to {actual}")]
    DigestMismatch {
        target: Box<Target>,
        expected: String,
        actual: String,
    },
    /// A success status with a response we cannot use (bad digest header, schema1, no media type, …).
    #[error("{target}: unexpected response: {message}")]
    InvalidResponse {
        target: Box<Target>,
        message: String,
    },
    /// Connection refused or reset, DNS or TLS failure, connect timeout (10 s) or request timeout (60 s).
    /// The cause is in `source`; print the error with `{:#}` (anyhow) to see it.
    #[error("{target}: cannot reach the registry")]
    Transport {
        target: Box<Target>,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn code_suffix(code: &Option<String>) -> String {
    code.as_deref()
        .map(|c| format!(", {c}"))
        .unwrap_or_default()
}

impl RegistryError {
    /// Faults a later attempt can get past: the registry unreachable, or failing on its side (5xx).
    pub fn is_transient(&self) -> bool {
        match self {
            RegistryError::Transport { .. } => true,
            RegistryError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }

    /// The call this error belongs to (`None` for errors of [`RegistryClient::new`]).
    pub fn target(&self) -> Option<&Target> {
        match self {
            RegistryError::InvalidHost { .. } | RegistryError::Tls { .. } => None,
            RegistryError::InvalidReference { target, .. }
            | RegistryError::Unauthorized { target, .. }
            | RegistryError::Denied { target, .. }
            | RegistryError::TagInvalid { target, .. }
            | RegistryError::NotFound { target, .. }
            | RegistryError::Status { target, .. }
            | RegistryError::DigestMismatch { target, .. }
            | RegistryError::InvalidResponse { target, .. }
            | RegistryError::Transport { target, .. } => Some(target),
        }
    }
}

/// The request timeout, as the `source` of a [`RegistryError::Transport`].
#[derive(Debug, thiserror::Error)]
#[error("no complete response within {:?}", .0)]
pub struct Timeout(pub Duration);

/// Client for one registry. Cloning is cheap and shares the connection pool and cached tokens.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

struct Inner {
    /// `host[:port]` as given.
    host: String,
    /// `http` for loopback hosts, `https` otherwise.
    scheme: &'static str,
    username: String,
    /// `Basic base64(user:password)`, marked sensitive; `None` for anonymous access.
    basic: Option<HeaderValue>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    /// Bearer tokens from a token server, by repository (only for registries that challenge).
    bearer: Mutex<HashMap<String, HeaderValue>>,
    /// [`REQUEST_TIMEOUT`]; a field so that a test can shorten it.
    request_timeout: Duration,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("host", &self.inner.host)
            .field("scheme", &self.inner.scheme)
            .field("username", &self.inner.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// A response with its body read.
struct Response {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl RegistryClient {
    /// `host` is `host[:port]` (no scheme, no path). Loopback hosts (127.0.0.0/8, `localhost`,
    /// `[::1]`) use plain http, everything else https with the platform's root certificates.
    /// `username`/`password` are sent as Basic auth (ECR: `AWS` and the token's password); an empty
    /// username means anonymous.
    pub fn new(host: &str, username: &str, password: &str) -> Result<Self, RegistryError> {
        let invalid = |reason| RegistryError::InvalidHost {
            host: host.to_owned(),
            reason,
        };
        let name = host_name(host).map_err(invalid)?;
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

        let basic = (!username.is_empty()).then(|| {
            let encoded =
                base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"));
            sensitive(&format!("Basic {encoded}"))
        });
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                host: host.to_owned(),
                scheme,
                username: username.to_owned(),
                basic,
                http,
                bearer: Mutex::new(HashMap::new()),
                request_timeout: REQUEST_TIMEOUT,
            }),
        })
    }

    /// The `host[:port]` this client talks to.
    pub fn host(&self) -> &str {
        &self.inner.host
    }

    /// HEAD the manifest. `Ok(None)` on 404 (MANIFEST_UNKNOWN / NAME_UNKNOWN), otherwise the
    /// `Docker-Content-Digest` (falling back to a GET if a registry leaves the header out).
    pub async fn manifest_digest(
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
    pub async fn get_manifest(
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
        if media_type.contains("manifest.v1+") {
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
    pub async fn put_manifest(
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
        let check = validate_repository(repository).and_then(|()| validate_reference(reference));
        match check {
            Ok(()) => Ok(target),
            Err(reason) => Err(RegistryError::InvalidReference {
                target: Box::new(target),
                reason,
            }),
        }
    }

    /// Sends the request (with a token round trip if the registry asks for one) and reads the body,
    /// all within [`REQUEST_TIMEOUT`].
    async fn execute(
        &self,
        target: &Target,
        method: Method,
        body: Option<(HeaderValue, Bytes)>,
    ) -> Result<Response, RegistryError> {
        let url = format!(
            "{}://{}/v2/{}/manifests/{}",
            self.inner.scheme, self.inner.host, target.repository, target.reference
        );
        let work = async {
            let cached = self.cached_bearer(&target.repository);
            let auth = cached.clone().or_else(|| self.inner.basic.clone());
            let resp = self
                .send(target, &method, &url, true, auth, body.clone())
                .await?;
            if resp.status != StatusCode::UNAUTHORIZED {
                return Ok(resp);
            }
            let Some(challenge) = bearer_challenge(&resp.headers) else {
                return Ok(resp);
            };
            let token = self.fetch_token(target, &challenge).await?;
            self.store_bearer(&target.repository, token.clone());
            self.send(target, &method, &url, true, Some(token), body)
                .await
        };
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
        manifest_accept: bool,
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
        req = req.header(
            ACCEPT,
            if manifest_accept {
                MANIFEST_ACCEPT
            } else {
                "application/json"
            },
        );
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

    /// GET a token from the challenge's realm with the Basic credentials (Docker Hub style).
    async fn fetch_token(
        &self,
        target: &Target,
        challenge: &Challenge,
    ) -> Result<HeaderValue, RegistryError> {
        let invalid = |message: String| RegistryError::InvalidResponse {
            target: Box::new(target.clone()),
            message,
        };
        let realm: Uri = challenge
            .realm
            .parse()
            .map_err(|_| invalid(format!("invalid token realm {:?}", challenge.realm)))?;
        let realm_host = realm.host().unwrap_or_default();
        let realm_ok = match realm.scheme_str() {
            Some("https") => true,
            // Credentials travel to the realm: plain http only on this machine.
            Some("http") => is_loopback(realm_host.trim_start_matches('[').trim_end_matches(']')),
            _ => false,
        };
        if !realm_ok {
            return Err(invalid(format!(
                "refusing token realm {:?} (needs https, or http on loopback)",
                challenge.realm
            )));
        }
        let default_scope = || {
            let actions = if target.operation == Operation::Put {
                "pull,push"
            } else {
                "pull"
            };
            format!("repository:{}:{actions}", target.repository)
        };
        let mut query = Vec::new();
        if let Some(service) = &challenge.service {
            query.push(format!("service={}", query_encode(service)));
        }
        let scope = challenge.scope.clone().unwrap_or_else(default_scope);
        query.push(format!("scope={}", query_encode(&scope)));
        let sep = if challenge.realm.contains('?') {
            '&'
        } else {
            '?'
        };
        let url = format!("{}{sep}{}", challenge.realm, query.join("&"));

        let resp = self
            .send(
                target,
                &Method::GET,
                &url,
                false,
                self.inner.basic.clone(),
                None,
            )
            .await?;
        if !resp.status.is_success() {
            let mut err = classify(target.clone(), resp.status, &resp.body);
            if let RegistryError::Unauthorized { message, .. }
            | RegistryError::Denied { message, .. }
            | RegistryError::Status { message, .. } = &mut err
            {
                *message = format!("token server {realm_host}: {message}");
            }
            return Err(err);
        }
        let token = parse_token_response(&resp.body)
            .ok_or_else(|| invalid(format!("token server {realm_host} returned no token")))?;
        HeaderValue::from_str(&format!("Bearer {token}"))
            .map(|mut v| {
                v.set_sensitive(true);
                v
            })
            .map_err(|_| {
                invalid(format!(
                    "token server {realm_host} returned an invalid token"
                ))
            })
    }

    fn cached_bearer(&self, repository: &str) -> Option<HeaderValue> {
        let tokens = self.inner.bearer.lock().unwrap_or_else(|e| e.into_inner());
        tokens.get(repository).cloned()
    }

    fn store_bearer(&self, repository: &str, token: HeaderValue) {
        let mut tokens = self.inner.bearer.lock().unwrap_or_else(|e| e.into_inner());
        tokens.insert(repository.to_owned(), token);
    }
}

fn sensitive(value: &str) -> HeaderValue {
    // Only called with base64 / ASCII input.
    let mut v = HeaderValue::from_str(value).expect("ASCII header value");
    v.set_sensitive(true);
    v
}

/// `host[:port]` → the host name or address (IPv6 without brackets).
fn host_name(host: &str) -> Result<&str, &'static str> {
    if host.contains("://") {
        return Err("expected host[:port] without a scheme");
    }
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest.split_once(']').ok_or("missing ']'")?;
        addr.parse::<Ipv6Addr>()
            .map_err(|_| "invalid IPv6 address")?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("unexpected text after ']'")?),
        };
        (addr, port)
    } else {
        match host.split_once(':') {
            Some((name, port)) => (name, Some(port)),
            None => (host, None),
        }
    };
    if let Some(port) = port {
        if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) {
            return Err("the port must be a number");
        }
        port.parse::<u16>()
            .map_err(|_| "the port is out of range")?;
    }
    if name.is_empty() {
        return Err("empty host name");
    }
    if !host.starts_with('[')
        && !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-')
    {
        return Err("the host name may only contain letters, digits, '.' and '-'");
    }
    Ok(name)
}

/// 127.0.0.0/8, `localhost` and `::1` (the IPv6 address without brackets).
fn is_loopback(name: &str) -> bool {
    name.eq_ignore_ascii_case("localhost")
        || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Repository names as distribution defines them: lowercase path components of `[a-z0-9]`
/// joined by `.`, `_`, `__` or runs of `-`, separated by `/`.
fn validate_repository(repository: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("invalid repository name {repository:?}: {why}"));
    if repository.is_empty() || repository.len() > 255 {
        return bad("must be 1 to 255 characters");
    }
    for component in repository.split('/') {
        let bytes = component.as_bytes();
        let alnum = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !bytes.first().is_some_and(alnum) || !bytes.last().is_some_and(alnum) {
            return bad("each path component must start and end with a lowercase letter or digit");
        }
        for run in component.split(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            let ok = run.is_empty()
                || run == "."
                || run == "_"
                || run == "__"
                || run.bytes().all(|b| b == b'-');
            if !ok {
                return bad(
                    "only lowercase letters, digits and single separators (. _ __ -) are allowed",
                );
            }
        }
    }
    Ok(())
}

/// A tag (`[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`) or a digest (`algorithm:encoded`).
fn validate_reference(reference: &str) -> Result<(), String> {
    if let Some((algorithm, encoded)) = reference.split_once(':') {
        let algorithm_ok = !algorithm.is_empty()
            && algorithm.bytes().all(|b| {
                b.is_ascii_lowercase()
                    || b.is_ascii_digit()
                    || matches!(b, b'+' | b'.' | b'_' | b'-')
            });
        let encoded_ok = !encoded.is_empty()
            && encoded
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'));
        return if algorithm_ok && encoded_ok {
            Ok(())
        } else {
            Err(format!("invalid digest {reference:?}"))
        };
    }
    let bytes = reference.as_bytes();
    let valid = !bytes.is_empty()
        && bytes.len() <= 128
        && (bytes[0].is_ascii_alphanumeric() || bytes[0] == b'_')
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if valid {
        Ok(())
    } else {
        Err(format!(
            "invalid tag {reference:?}: 1 to 128 of [A-Za-z0-9_.-], not starting with '.' or '-'"
        ))
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{:x}", Sha256::digest(bytes))
}

/// Checks `bytes` against a `sha256:` or `sha512:` digest; `Err` carries what the bytes hash to.
pub fn verify_digest(expected: &str, bytes: &[u8]) -> Result<(), String> {
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

fn is_digest(s: &str) -> bool {
    let hex_len = match s.split_once(':') {
        Some(("sha256", hex)) => (hex, 64),
        Some(("sha512", hex)) => (hex, 128),
        _ => return false,
    };
    hex_len.0.len() == hex_len.1 && hex_len.0.bytes().all(|b| b.is_ascii_hexdigit())
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

/// Code and message from a distribution error body `{"errors":[{"code","message"}]}`.
/// Several errors are joined with "; "; the code is the first one's.
fn parse_error_body(body: &[u8]) -> Option<(Option<String>, String)> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
    }
    let parsed: Body = serde_json::from_slice(body).ok()?;
    let first = parsed.errors.first()?;
    let code = first.code.clone().filter(|c| !c.is_empty());
    let message = parsed
        .errors
        .iter()
        .filter_map(|e| {
            e.message
                .clone()
                .filter(|m| !m.is_empty())
                .or_else(|| e.code.clone())
        })
        .fold(Vec::<String>::new(), |mut seen, m| {
            if !seen.contains(&m) {
                seen.push(m);
            }
            seen
        })
        .join("; ");
    Some((code, message))
}

/// Turns an error response into the matching [`RegistryError`] variant.
fn classify(target: Target, status: StatusCode, body: &[u8]) -> RegistryError {
    let target = Box::new(target);
    let (code, message) = parse_error_body(body).unwrap_or_else(|| (None, body_excerpt(body)));
    let message = if message.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no details")
            .to_lowercase()
    } else {
        message
    };
    match code.as_deref() {
        Some("TAG_INVALID") => return RegistryError::TagInvalid { target, message },
        Some("UNAUTHORIZED") => return RegistryError::Unauthorized { target, message },
        Some("DENIED") => {
            return RegistryError::Denied {
                target,
                status: status.as_u16(),
                message,
            };
        }
        _ => {}
    }
    match status {
        StatusCode::UNAUTHORIZED => RegistryError::Unauthorized { target, message },
        StatusCode::FORBIDDEN => RegistryError::Denied {
            target,
            status: status.as_u16(),
            message,
        },
        StatusCode::NOT_FOUND => RegistryError::NotFound {
            target,
            code,
            message,
        },
        _ => RegistryError::Status {
            target,
            status: status.as_u16(),
            code,
            message,
        },
    }
}

/// The start of a non-JSON error body, on one line.
fn body_excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    one_line.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// A `WWW-Authenticate: Bearer …` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Challenge {
    realm: String,
    service: Option<String>,
    scope: Option<String>,
}

fn bearer_challenge(headers: &HeaderMap) -> Option<Challenge> {
    headers
        .get_all(WWW_AUTHENTICATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_bearer_challenge)
}

/// Parses `Bearer realm="…",service="…",scope="…"` (quoted or bare values, any order).
fn parse_bearer_challenge(header: &str) -> Option<Challenge> {
    let header = header.trim_start();
    let (scheme, rest) = header.split_at(header.find(' ').unwrap_or(header.len()));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut params = HashMap::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let key: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if key.is_empty() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue;
        }
        while chars.next_if(|c| *c == ' ').is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value.extend(std::iter::from_fn(|| chars.next_if(|c| *c != ',')));
            value = value.trim().to_owned();
        }
        params.insert(key, value);
    }
    Some(Challenge {
        realm: params.remove("realm").filter(|r| !r.is_empty())?,
        service: params.remove("service"),
        scope: params.remove("scope"),
    })
}

/// `token` or `access_token` from a token server's JSON answer.
fn parse_token_response(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct TokenResponse {
        token: Option<String>,
        access_token: Option<String>,
    }
    let parsed: TokenResponse = serde_json::from_slice(body).ok()?;
    parsed
        .token
        .filter(|t| !t.is_empty())
        .or(parsed.access_token.filter(|t| !t.is_empty()))
}

/// Percent-encodes a query value (everything but RFC 3986 unreserved characters).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            operation: Operation::Put,
            host: "reg.example:5000".into(),
            repository: "team/app".into(),
            reference: "v1".into(),
        }
    }

    #[test]
    fn error_body_parsing() {
        let body = br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{"Tag":"nope"}}]}"#;
        assert_eq!(
            parse_error_body(body),
            Some((Some("MANIFEST_UNKNOWN".into()), "manifest unknown".into()))
        );
        let two = br#"{"errors":[{"code":"A","message":"first"},{"code":"B"},{"code":"C","message":"first"}]}"#;
        assert_eq!(
            parse_error_body(two),
            Some((Some("A".into()), "first; B".into()))
        );
        assert_eq!(parse_error_body(b"<html>bad gateway</html>"), None);
        assert_eq!(parse_error_body(br#"{"errors":[]}"#), None);
    }

    #[test]
    fn classification() {
        let ecr_immutable = br#"{"errors":[{"code":"TAG_INVALID","message":"The image tag 'v1' already exists in the 'team/app' repository and cannot be overwritten because the repository is immutable."}]}"#;
        let err = classify(target(), StatusCode::BAD_REQUEST, ecr_immutable);
        assert!(
            matches!(&err, RegistryError::TagInvalid { message, .. } if message.contains("immutable"))
        );
        assert_eq!(
            err.to_string(),
            "pushing manifest reg.example:5000/team/app:v1: tag invalid: The image tag 'v1' already \
             exists in the 'team/app' repository and cannot be overwritten because the repository is immutable."
        );

        let expired = br#"{"errors":[{"code":"DENIED","message":"Your authorization token has expired. Reauthenticate and try again."}]}"#;
        assert!(matches!(
            classify(target(), StatusCode::FORBIDDEN, expired),
            RegistryError::Denied { status: 403, .. }
        ));
        assert!(matches!(
            classify(target(), StatusCode::FORBIDDEN, b""),
            RegistryError::Denied { status: 403, .. }
        ));
        let err = classify(target(), StatusCode::UNAUTHORIZED, b"");
        assert!(matches!(&err, RegistryError::Unauthorized { .. }));
        assert_eq!(
            err.to_string(),
            "pushing manifest reg.example:5000/team/app:v1: unauthorized (HTTP 401): unauthorized"
        );
        let err = classify(
            target(),
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        );
        assert!(
            matches!(&err, RegistryError::NotFound { code: Some(c), .. } if c == "NAME_UNKNOWN")
        );
        let err = classify(
            target(),
            StatusCode::BAD_REQUEST,
            br#"{"errors":[{"code":"MANIFEST_BLOB_UNKNOWN","message":"blob unknown to registry"}]}"#,
        );
        assert_eq!(
            err.to_string(),
            "pushing manifest reg.example:5000/team/app:v1: registry error (HTTP 400, \
             MANIFEST_BLOB_UNKNOWN): blob unknown to registry"
        );
        let err = classify(
            target(),
            StatusCode::BAD_GATEWAY,
            b"<html>\n  Bad\tgateway </html>",
        );
        assert!(
            matches!(&err, RegistryError::Status { status: 502, code: None, message, .. } if message == "<html> Bad gateway </html>")
        );
        let err = classify(target(), StatusCode::INTERNAL_SERVER_ERROR, b"");
        assert!(
            matches!(&err, RegistryError::Status { message, .. } if message == "internal server error")
        );
    }

    #[test]
    fn target_display_uses_at_for_digests() {
        let mut t = target();
        t.operation = Operation::Head;
        t.reference = format!("sha256:{}", "a".repeat(64));
        assert_eq!(
            t.to_string(),
            format!(
                "checking manifest reg.example:5000/team/app@sha256:{}",
                "a".repeat(64)
            )
        );
    }

    #[test]
    fn challenge_parsing() {
        let hub = r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push""#;
        assert_eq!(
            parse_bearer_challenge(hub),
            Some(Challenge {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:samalba/my-app:pull,push".into()),
            })
        );
        let odd = r#"bearer  scope="a:b:pull" , realm=https://h/t?x=1, error="invalid_token", service="s\"q""#;
        assert_eq!(
            parse_bearer_challenge(odd),
            Some(Challenge {
                realm: "https://h/t?x=1".into(),
                service: Some("s\"q".into()),
                scope: Some("a:b:pull".into()),
            })
        );
        assert_eq!(
            parse_bearer_challenge(r#"Basic realm="ecr-build-test""#),
            None
        );
        assert_eq!(parse_bearer_challenge(r#"Bearer service="x""#), None);
        assert_eq!(parse_bearer_challenge("Bearer"), None);

        let mut headers = HeaderMap::new();
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="r""#),
        );
        headers.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer realm="https://a/t""#),
        );
        assert_eq!(
            bearer_challenge(&headers).map(|c| c.realm),
            Some("https://a/t".to_owned())
        );
    }

    #[test]
    fn token_response_parsing() {
        assert_eq!(
            parse_token_response(br#"{"token":"t1","expires_in":300}"#),
            Some("t1".into())
        );
        assert_eq!(
            parse_token_response(br#"{"access_token":"t2"}"#),
            Some("t2".into())
        );
        assert_eq!(
            parse_token_response(br#"{"token":"","access_token":"t3"}"#),
            Some("t3".into())
        );
        assert_eq!(parse_token_response(br#"{}"#), None);
        assert_eq!(parse_token_response(b"nope"), None);
    }

    #[test]
    fn loopback_detection() {
        for host in [
            "127.0.0.1:5000",
            "127.1.2.3",
            "localhost",
            "LOCALHOST:80",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(host_name(host).unwrap()), "{host}");
        }
        for host in [
            "123456789012.dkr.ecr.eu-west-1.amazonaws.com",
            "10.0.0.1:5000",
            "[fe80::1]:443",
            "localhost.example.com",
            "128.0.0.1",
        ] {
            assert!(!is_loopback(host_name(host).unwrap()), "{host}");
        }
        for host in [
            "",
            "https://h",
            "h:",
            "h:x",
            "h:70000",
            "[::1",
            "[zz]:1",
            "a/b",
            "::1",
            "u@h",
        ] {
            assert!(host_name(host).is_err(), "{host:?}");
        }
    }

    #[test]
    fn client_picks_scheme_and_hides_password() {
        let local = RegistryClient::new("127.0.0.1:5000", "AWS", "s3cret-token").unwrap();
        assert_eq!(local.inner.scheme, "http");
        let debug = format!("{local:?}");
        assert!(
            !debug.contains("s3cret") && debug.contains("<redacted>"),
            "{debug}"
        );
        let basic = local.inner.basic.as_ref().unwrap();
        assert!(basic.is_sensitive());
        assert!(!format!("{basic:?}").contains("QVdT"));
        let remote =
            RegistryClient::new("123456789012.dkr.ecr.eu-west-1.amazonaws.com", "AWS", "x");
        // Fails only on a machine without CA certificates.
        if let Ok(remote) = remote {
            assert_eq!(remote.inner.scheme, "https");
        }
        assert!(matches!(
            RegistryClient::new("https://x", "", ""),
            Err(RegistryError::InvalidHost { .. })
        ));
    }

    #[test]
    fn name_validation() {
        for repo in ["app", "team/app", "a.b_c__d---e/f0", "123456789012/x"] {
            assert_eq!(validate_repository(repo), Ok(()), "{repo}");
        }
        for repo in [
            "", "App", "/a", "a/", "a//b", "a..b", "a___b", "-a", "a b", "a?b", "a#b", "../x",
            "a/%2e",
        ] {
            assert!(validate_repository(repo).is_err(), "{repo:?}");
        }
        let digest = format!("sha256:{}", "0".repeat(64));
        for reference in ["latest", "ctx-0123abcd", "_x", "V1.2-rc_3", digest.as_str()] {
            assert_eq!(validate_reference(reference), Ok(()), "{reference}");
        }
        for reference in [
            "",
            ".x",
            "-x",
            "a/b",
            "a?b",
            "a b",
            "sha256:",
            ":abc",
            "SHA256:ab",
            &"x".repeat(129),
        ] {
            assert!(validate_reference(reference).is_err(), "{reference:?}");
        }
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
    fn fake_token_registry() -> (String, Arc<Mutex<Vec<String>>>) {
        use std::io::{BufRead as _, BufReader, Write as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (realm_host, server_log) = (host.clone(), log.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let mut stream = stream.unwrap();
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                reader.read_line(&mut request_line).unwrap();
                let mut auth = String::from("-");
                loop {
                    let mut line = String::new();
                    reader.read_line(&mut line).unwrap();
                    if line.trim().is_empty() {
                        break;
                    }
                    let header = line.split_once(':');
                    if let Some((_, value)) =
                        header.filter(|(name, _)| name.eq_ignore_ascii_case("authorization"))
                    {
                        auth = value.trim().to_owned();
                    }
                }
                let mut parts = request_line.split_whitespace();
                let (method, path) = (parts.next().unwrap(), parts.next().unwrap());
                server_log
                    .lock()
                    .unwrap()
                    .push(format!("{method} {path} {auth}"));
                let digest = format!("sha256:{}", "ab".repeat(32));
                let (status, headers, body) = if path.starts_with("/token?") {
                    match auth.as_str() {
                        "Basic QVdTOnB3" => ("200 OK", String::new(), r#"{"token":"tok-1"}"#),
                        "Basic QVdTOnB3Mg==" => {
                            ("200 OK", String::new(), r#"{"access_token":"tok-stale"}"#)
                        }
                        _ => (
                            "401 Unauthorized",
                            String::new(),
                            r#"{"details":"incorrect username or password"}"#,
                        ),
                    }
                } else if auth == "Bearer tok-1" {
                    ("200 OK", format!("Docker-Content-Digest: {digest}\r\n"), "")
                } else {
                    let challenge = format!(
                        "WWW-Authenticate: Bearer realm=\"http://{realm_host}/token\",service=\"fake-registry\",scope=\"repository:team/app:pull\"\r\n"
                    );
                    (
                        "401 Unauthorized",
                        challenge,
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}"#,
                    )
                };
                let length = if method == "HEAD" { 0 } else { body.len() };
                let body = if method == "HEAD" { "" } else { body };
                write!(
                    stream,
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {length}\r\nConnection: close\r\n\r\n{body}"
                )
                .unwrap();
            }
        });
        (host, log)
    }

    #[tokio::test]
    async fn bearer_challenge_flow() {
        let (host, log) = fake_token_registry();
        let digest = format!("sha256:{}", "ab".repeat(32));
        let client = RegistryClient::new(&host, "AWS", "pw").unwrap();
        assert_eq!(
            client.manifest_digest("team/app", "v1").await.unwrap(),
            Some(digest.clone())
        );
        // The token is reused for the repository: one request, no challenge.
        assert_eq!(
            client.manifest_digest("team/app", "v1").await.unwrap(),
            Some(digest)
        );
        let token_query = "/token?service=fake-registry&scope=repository%3Ateam%2Fapp%3Apull";
        assert_eq!(
            *log.lock().unwrap(),
            [
                "HEAD /v2/team/app/manifests/v1 Basic QVdTOnB3".to_owned(),
                format!("GET {token_query} Basic QVdTOnB3"),
                "HEAD /v2/team/app/manifests/v1 Bearer tok-1".to_owned(),
                "HEAD /v2/team/app/manifests/v1 Bearer tok-1".to_owned(),
            ]
        );

        // The token server rejects the credentials.
        let wrong = RegistryClient::new(&host, "AWS", "wrong").unwrap();
        let err = wrong.get_manifest("team/app", "v1").await.unwrap_err();
        assert!(matches!(err, RegistryError::Unauthorized { .. }), "{err:?}");
        assert!(err.to_string().contains("token server 127.0.0.1"), "{err}");
        assert!(!format!("{err:?}").contains("wrong"), "{err:?}");

        // The token server hands out a token that the registry still rejects.
        let stale = RegistryClient::new(&host, "AWS", "pw2").unwrap();
        let err = stale.get_manifest("team/app", "v1").await.unwrap_err();
        assert!(
            matches!(&err, RegistryError::Unauthorized { message, .. } if message == "authentication required"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_silent_registry_times_out() {
        // Accepts the connection (the kernel does, from the backlog) but never answers.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let host = listener.local_addr().unwrap().to_string();
        let mut client = RegistryClient::new(&host, "AWS", "pw").unwrap();
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

    #[test]
    fn query_encoding() {
        assert_eq!(
            query_encode("repository:team/app:pull,push"),
            "repository%3Ateam%2Fapp%3Apull%2Cpush"
        );
    }
}
