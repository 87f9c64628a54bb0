//! BuildKit builds through the Docker Engine API with a build session that serves the context,
//! the Dockerfile and BuildKit secrets.
//!
//! bollard 0.21.1's `Docker::build_image` opens the session itself and serves only Auth (plus
//! FileSend for `outputs`); its session types (`GrpcServer`, `AuthProvider`, `SecretProvider`,
//! `Driver`) are `pub(crate)`. The generated gRPC servers and messages are public, though
//! (`bollard::moby`, `bollard::health`), so this module:
//!
//! 1. opens `POST /session` itself (HTTP/1.1 `Upgrade: h2c` over the engine connection) and
//!    serves Health + Auth + Secrets + FileSync ([`super::filesync`]) on the upgraded connection
//!    with hyper's HTTP/2 server and tonic's `Routes`;
//! 2. sends `POST /build?version=2&session=<id>&remote=client-session&…` itself, with an empty
//!    body (BuildKit reads the context through the session), and decodes the JSON-lines answer
//!    into `bollard::models::BuildInfo` with the same error mapping as `build_image` (an
//!    `errorDetail` becomes `Error::DockerStreamError`), so the caller's loop over the stream
//!    stays what it is for `build_image`.
//!
//! Secret values are held in memory and never logged; only their ids are.

use std::collections::{BTreeSet, HashMap};
use std::io;
use std::sync::{Arc, Mutex};

use bollard::auth::DockerCredentials;
use bollard::errors::Error;
use bollard::health::health_check_response::ServingStatus;
use bollard::health::health_server::{Health, HealthServer};
use bollard::health::{
    HealthCheckRequest, HealthCheckResponse, HealthListRequest, HealthListResponse,
};
use bollard::moby::buildkit::secrets::v1::secrets_server::{Secrets, SecretsServer};
use bollard::moby::buildkit::secrets::v1::{GetSecretRequest, GetSecretResponse};
use bollard::moby::filesync::v1::auth_server::{Auth, AuthServer};
use bollard::moby::filesync::v1::file_sync_server::FileSyncServer;
use bollard::moby::filesync::v1::{
    CredentialsRequest, CredentialsResponse, FetchTokenRequest, FetchTokenResponse,
    GetTokenAuthorityRequest, GetTokenAuthorityResponse, VerifyTokenAuthorityRequest,
    VerifyTokenAuthorityResponse,
};
use bollard::models::{BuildInfo, ErrorDetail};
use bollard::query_parameters::BuildImageOptions;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use http::header::{CONNECTION, HOST, UPGRADE};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio_util::codec::{FramedRead, LinesCodec, LinesCodecError};
use tokio_util::io::StreamReader;
use tonic::Status;
use tonic::server::NamedService;

use super::filesync::ContextSync;
use super::host::EngineAddr;

/// An error answer (not 2xx/101) as bollard reports it: the JSON `message` or the raw body.
pub(super) async fn server_error(response: Response<Incoming>) -> Error {
    let status_code = response.status().as_u16();
    let body = match response.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(err) => return err.into(),
    };
    let message = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
        .unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_owned());
    Error::DockerResponseServerError {
        status_code,
        message,
    }
}

// ---------------------------------------------------------------------------------------------
// The session's gRPC services
// ---------------------------------------------------------------------------------------------

/// BuildKit's session manager checks `grpc.health.v1.Health/Check` every second and drops the
/// session when it fails.
struct SessionHealth;

#[tonic::async_trait]
impl Health for SessionHealth {
    async fn check(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, Status> {
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    async fn list(
        &self,
        _request: tonic::Request<HealthListRequest>,
    ) -> Result<tonic::Response<HealthListResponse>, Status> {
        Err(Status::unimplemented("health list is not served"))
    }

    type WatchStream = futures_util::stream::Empty<Result<HealthCheckResponse, Status>>;

    async fn watch(
        &self,
        _request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, Status> {
        Err(Status::unimplemented("health watch is not served"))
    }
}

/// Registry credentials for pulls during the build (`FROM <ecr>/…`), by registry host as BuildKit
/// asks for it (`123456789012.dkr.ecr.eu-west-1.amazonaws.com`, `127.0.0.1:5000`). ECR answers with a
/// Basic challenge, so BuildKit only calls `Credentials`; `FetchToken` (Bearer registries) is left
/// unimplemented here.
struct SessionAuth {
    credentials: HashMap<String, DockerCredentials>,
}

#[tonic::async_trait]
impl Auth for SessionAuth {
    async fn credentials(
        &self,
        request: tonic::Request<CredentialsRequest>,
    ) -> Result<tonic::Response<CredentialsResponse>, Status> {
        let host = &request.get_ref().host;
        tracing::debug!("build session: credentials asked for {host}");
        let response = match self.credentials.get(host) {
            Some(DockerCredentials {
                identitytoken: Some(token),
                ..
            }) => CredentialsResponse {
                username: String::new(),
                secret: token.clone(),
            },
            Some(DockerCredentials {
                username: Some(username),
                password: Some(password),
                ..
            }) => CredentialsResponse {
                username: username.clone(),
                secret: password.clone(),
            },
            _ => CredentialsResponse::default(), // anonymous
        };
        Ok(tonic::Response::new(response))
    }

    async fn fetch_token(
        &self,
        request: tonic::Request<FetchTokenRequest>,
    ) -> Result<tonic::Response<FetchTokenResponse>, Status> {
        tracing::debug!("build session: token asked for {}", request.get_ref().host);
        Err(Status::unimplemented(
            "FetchToken is not served by ecr-build",
        ))
    }

    async fn get_token_authority(
        &self,
        _request: tonic::Request<GetTokenAuthorityRequest>,
    ) -> Result<tonic::Response<GetTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }

    async fn verify_token_authority(
        &self,
        _request: tonic::Request<VerifyTokenAuthorityRequest>,
    ) -> Result<tonic::Response<VerifyTokenAuthorityResponse>, Status> {
        Err(Status::unavailable("client-side authentication disabled"))
    }
}

/// Secret values, held in memory only, and the ids the build asked for.
///
/// An id the store does not have is answered with gRPC NOT_FOUND, BuildKit's convention: a mount
/// without `required` is then left out (the file is absent) and a `required` one fails its step.
pub(super) struct SecretStore {
    values: HashMap<String, Vec<u8>>,
    missing: Mutex<BTreeSet<String>>,
}

impl SecretStore {
    pub(super) fn new(values: HashMap<String, Vec<u8>>) -> Self {
        Self {
            values,
            missing: Mutex::default(),
        }
    }

    /// Ids the build asked for that the store does not have.
    pub(super) fn missing(&self) -> Vec<String> {
        self.missing
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .collect()
    }

    fn known_ids(&self) -> String {
        let mut ids: Vec<&str> = self.values.keys().map(String::as_str).collect();
        ids.sort_unstable();
        if ids.is_empty() {
            "none".to_owned()
        } else {
            ids.join(", ")
        }
    }
}

#[tonic::async_trait]
impl Secrets for SecretStore {
    async fn get_secret(
        &self,
        request: tonic::Request<GetSecretRequest>,
    ) -> Result<tonic::Response<GetSecretResponse>, Status> {
        let id = &request.get_ref().id;
        match self.values.get(id) {
            Some(value) => {
                tracing::debug!("build session: served secret {id}");
                Ok(tonic::Response::new(GetSecretResponse {
                    data: value.clone(),
                }))
            }
            None => {
                tracing::debug!("build session: secret {id} asked for but not configured");
                self.missing
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(id.clone());
                Err(Status::not_found(format!(
                    "secret `{id}` is not configured for this image (configured: {})",
                    self.known_ids()
                )))
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// POST /session
// ---------------------------------------------------------------------------------------------

/// An open build session. Dropping it closes the connection, and the engine forgets the session.
pub(super) struct BuildSession {
    secrets: Arc<SecretStore>,
    context: Arc<ContextSync>,
    conn: tokio::task::JoinHandle<()>,
}

impl BuildSession {
    pub(super) fn secrets(&self) -> &SecretStore {
        &self.secrets
    }

    pub(super) fn context(&self) -> &ContextSync {
        &self.context
    }
}

impl Drop for BuildSession {
    fn drop(&mut self) {
        self.conn.abort();
    }
}

/// Opens session `id` on the engine, serving Health, Auth, Secrets and the build's context on it. When this returns,
/// the engine has registered the session (BuildKit's `Manager.HandleHTTPRequest` adds it to its
/// table before it releases the lock it holds across the 101 answer), so `/build` can follow.
///
/// `api_prefix` is `""` (unversioned, what bollard 0.21.1 sends) or `"/v1.41"`.
pub(super) async fn open_session(
    engine: &EngineAddr,
    api_prefix: &str,
    id: &str,
    name: &str,
    secrets: Arc<SecretStore>,
    credentials: HashMap<String, DockerCredentials>,
    context: ContextSync,
) -> Result<BuildSession, Error> {
    let methods = [
        format!("/{}/Credentials", AuthServer::<SessionAuth>::NAME),
        format!("/{}/FetchToken", AuthServer::<SessionAuth>::NAME),
        format!("/{}/GetSecret", SecretsServer::<SecretStore>::NAME),
        format!("/{}/DiffCopy", FileSyncServer::<ContextSync>::NAME),
    ];
    let mut request = Request::post(format!("{api_prefix}/session"))
        .header(HOST, "docker")
        .header(CONNECTION, "Upgrade")
        .header(UPGRADE, "h2c")
        .header("X-Docker-Expose-Session-Uuid", id)
        .header("X-Docker-Expose-Session-Name", name)
        // Keys the engine's kept copy of a synced directory: the same context folder finds it.
        .header("X-Docker-Expose-Session-Sharedkey", context.shared_key());
    for method in &methods {
        request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
    }
    let response = engine.send(request.body(Empty::<Bytes>::new())?).await?;
    if response.status() != StatusCode::SWITCHING_PROTOCOLS {
        return Err(server_error(response).await);
    }
    let upgraded = hyper::upgrade::on(response).await?;
    let context = Arc::new(context);

    let routes = tonic::service::Routes::new(HealthServer::new(SessionHealth))
        .add_service(AuthServer::new(SessionAuth { credentials }))
        .add_service(SecretsServer::from_arc(Arc::clone(&secrets)))
        .add_service(FileSyncServer::from_arc(Arc::clone(&context)));
    let conn = tokio::spawn(async move {
        let service = hyper_util::service::TowerToHyperService::new(routes);
        let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .serve_connection(upgraded, service)
            .await;
        if let Err(err) = served {
            tracing::debug!("build session ended: {err}");
        }
    });
    Ok(BuildSession {
        secrets,
        context,
        conn,
    })
}

// ---------------------------------------------------------------------------------------------
// POST /build
// ---------------------------------------------------------------------------------------------

/// Sends `/build` with `options` (which must carry `version=2`, the session id and
/// `remote=client-session`) and no body; yields the engine's JSON messages as `BuildInfo`, an
/// `errorDetail` as `Err(Error::DockerStreamError)`, exactly like bollard's `build_image`.
pub(super) async fn post_build(
    engine: &EngineAddr,
    api_prefix: &str,
    options: &BuildImageOptions,
) -> Result<impl Stream<Item = Result<BuildInfo, Error>> + Send + Unpin + use<>, Error> {
    let query = serde_urlencoded::to_string(options)?;
    let request = Request::post(format!("{api_prefix}/build?{query}"))
        .header(HOST, "docker")
        .body(Empty::<Bytes>::new())?;
    let response = engine.send(request).await?;
    if !response.status().is_success() {
        return Err(server_error(response).await);
    }
    let reader = StreamReader::new(
        response
            .into_body()
            .into_data_stream()
            .map_err(io::Error::other),
    );
    let lines = FramedRead::new(reader, LinesCodec::new());
    Ok(lines.filter_map(|line| futures_util::future::ready(decode_build_line(line))))
}

/// One line of the `/build` answer. bollard's `BuildInfoAux` decodes the BuildKit `aux`
/// (base64 protobuf `StatusResponse`) in its serde impl, so plain serde_json is enough.
fn decode_build_line(line: Result<String, LinesCodecError>) -> Option<Result<BuildInfo, Error>> {
    let line = match line {
        Ok(line) => line,
        Err(LinesCodecError::Io(err)) => return Some(Err(Error::from(err))),
        Err(err) => return Some(Err(Error::from(io::Error::other(err)))),
    };
    if line.trim().is_empty() {
        return None;
    }
    Some(match serde_json::from_str::<BuildInfo>(&line) {
        Ok(BuildInfo {
            error_detail:
                Some(ErrorDetail {
                    message: Some(error),
                    ..
                }),
            ..
        }) => Err(Error::DockerStreamError { error }),
        Ok(info) => Ok(info),
        Err(err) => Err(Error::from(err)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use bollard::moby::buildkit::v1::{StatusResponse, Vertex, VertexLog};
    use bollard::models::BuildInfoAux;
    use prost::Message as _;

    fn decode(line: &str) -> Option<Result<BuildInfo, Error>> {
        decode_build_line(Ok(line.to_owned()))
    }

    #[test]
    fn legacy_lines_and_the_image_id_decode_as_bollard_decodes_them() {
        let info = decode(r#"{"stream":"Step 1/2 : FROM base\n"}"#)
            .unwrap()
            .unwrap();
        assert_eq!(info.stream.as_deref(), Some("Step 1/2 : FROM base\n"));
        let info = decode(r#"{"aux":{"ID":"sha256:abc"}}"#).unwrap().unwrap();
        assert!(
            matches!(info.aux, Some(BuildInfoAux::Default(ref image)) if image.id.as_deref() == Some("sha256:abc"))
        );
        assert!(decode("   ").is_none(), "blank lines are skipped");
    }

    #[test]
    fn buildkit_status_is_decoded_from_base64_protobuf() {
        let status = StatusResponse {
            vertexes: vec![Vertex {
                digest: "sha256:v1".into(),
                name: "[2/2] RUN make".into(),
                ..Vertex::default()
            }],
            logs: vec![VertexLog {
                vertex: "sha256:v1".into(),
                msg: b"compiling\n".to_vec(),
                ..VertexLog::default()
            }],
            ..StatusResponse::default()
        };
        let aux = base64::engine::general_purpose::STANDARD.encode(status.encode_to_vec());
        let line = format!(r#"{{"id":"moby.buildkit.trace","aux":"{aux}"}}"#);
        let info = decode(&line).unwrap().unwrap();
        match info.aux {
            Some(BuildInfoAux::BuildKit(decoded)) => {
                assert_eq!(decoded.vertexes[0].name, "[2/2] RUN make");
                assert_eq!(decoded.logs[0].msg, b"compiling\n");
            }
            other => panic!("not a BuildKit status: {other:?}"),
        }
    }

    #[test]
    fn an_error_detail_becomes_a_stream_error_and_garbage_an_error() {
        let line = r#"{"errorDetail":{"message":"executor failed running [/bin/sh -c false]: exit code: 1"},"error":"executor failed"}"#;
        match decode(line).unwrap() {
            Err(Error::DockerStreamError { error }) => assert!(error.contains("exit code: 1")),
            other => panic!("{other:?}"),
        }
        assert!(decode("{not json").unwrap().is_err());
        let too_long = decode_build_line(Err(LinesCodecError::MaxLineLengthExceeded));
        assert!(too_long.unwrap().is_err());
    }

    #[tokio::test]
    async fn secrets_are_served_by_id_and_unknown_ids_are_remembered() {
        let store = SecretStore::new(HashMap::from([("token".to_owned(), b"s3cret".to_vec())]));
        let answer = store
            .get_secret(tonic::Request::new(GetSecretRequest {
                id: "token".into(),
                ..GetSecretRequest::default()
            }))
            .await
            .unwrap();
        assert_eq!(answer.get_ref().data, b"s3cret");
        let missing = store
            .get_secret(tonic::Request::new(GetSecretRequest {
                id: "npmrc".into(),
                ..GetSecretRequest::default()
            }))
            .await
            .unwrap_err();
        assert_eq!(missing.code(), tonic::Code::NotFound);
        assert!(
            missing.message().contains("configured: token"),
            "{}",
            missing.message()
        );
        assert!(!missing.message().contains("s3cret"));
        assert_eq!(store.missing(), ["npmrc"]);
    }
}
