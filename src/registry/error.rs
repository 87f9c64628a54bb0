//! What a registry call was about, and how it failed: every error names the registry host, the
//! repository and the tag or digest.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

/// Which call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    Head,
    Get,
    Put,
    HeadBlob,
    GetBlob,
    PushBlob,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Operation::Head => "checking manifest",
            Operation::Get => "fetching manifest",
            Operation::Put => "pushing manifest",
            Operation::HeadBlob => "checking blob",
            Operation::GetBlob => "fetching blob",
            Operation::PushBlob => "pushing blob",
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
    /// The `host` given to [`Registry::new`] is not `host[:port]`.
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

    /// The call this error belongs to (`None` for errors of [`Registry::new`]).
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
pub(crate) struct Timeout(pub Duration);

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
pub(super) fn classify(target: Target, status: StatusCode, body: &[u8]) -> RegistryError {
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
}
