//! The engine's errors, each naming what failed and the fix; which push faults pass.

use bollard::errors::Error as BollardError;

#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    #[error(
        "Docker daemon not reachable at {host} after {waited} s: {cause}. Start dockerd or set DOCKER_HOST; \
         in CodeBuild the project needs privileged mode (privilegedMode: true) to run Docker"
    )]
    Unreachable {
        host: String,
        waited: u64,
        cause: String,
    },
    /// A remote engine refused us: a certificate, a key, ssh. Waiting would not help.
    #[error("Docker daemon at {host}: {cause}")]
    RemoteRefused { host: String, cause: String },
    #[error("build failed{}: {message}", step.as_ref().map(|s| format!(" at step `{s}`")).unwrap_or_default())]
    BuildFailed {
        step: Option<String>,
        message: String,
    },
    #[error("build ended without an image ID")]
    NoImageId,
    #[error("cannot tag {image} as {reference}")]
    Tag {
        image: String,
        reference: String,
        source: BollardError,
    },
    #[error("push of {reference} failed: {message}{}", push_hint(message))]
    PushFailed { reference: String, message: String },
    #[error("pull of {reference} failed: {message}")]
    PullFailed { reference: String, message: String },
    #[error("push of {reference} ended without a digest")]
    NoDigest { reference: String },
    #[error("Docker Engine API")]
    Api(#[from] BollardError),
}

impl DockerError {
    /// Faults a later attempt can get past: the registry unreachable or failing on its side. A push
    /// is idempotent, so pushing again is safe. Refusals (denied, unauthorized, tag invalid, ...) are final.
    pub fn is_transient(&self) -> bool {
        match self {
            DockerError::PushFailed { message, .. } => is_transient_registry_message(message),
            DockerError::NoDigest { .. } => true,
            _ => false,
        }
    }

    /// BuildKit lost a layer's snapshot to the garbage collector while it unpacked the image
    /// (moby/buildkit#6521 and its kin, on the containerd image store; fixed upstream by #6558):
    /// nothing was wrong with the build, and the next attempt finds every step in its cache. A
    /// RUN that failed is never one, whatever its command line says: its message ends with its
    /// exit code.
    pub fn is_lost_snapshot(&self) -> bool {
        matches!(self, DockerError::BuildFailed { message, .. }
            if message.contains("snapshot")
                && message.trim_end().ends_with("does not exist: not found"))
    }
}

fn is_transient_registry_message(message: &str) -> bool {
    const REFUSALS: [&str; 6] = [
        "denied",
        "unauthorized",
        "tag invalid",
        "name unknown",
        "manifest invalid",
        "blob unknown",
    ];
    const PASSING: [&str; 11] = [
        "connection refused",
        "connection reset",
        "broken pipe",
        "eof",
        "timeout",
        "no route to host",
        "500 internal server error",
        "502 bad gateway",
        "503 service unavailable",
        "504 gateway",
        "too many requests",
    ];
    let lower = message.trim_start().to_ascii_lowercase();
    !REFUSALS.iter().any(|refusal| lower.starts_with(refusal))
        && PASSING.iter().any(|fault| lower.contains(fault))
}

fn push_hint(message: &str) -> &'static str {
    let lower = message.trim_start().to_ascii_lowercase();
    if lower.starts_with("tag invalid") {
        " (the repository's tags are immutable and this tag already exists)"
    } else if lower.starts_with("denied") || lower.starts_with("unauthorized") {
        " (check the build role's ecr:InitiateLayerUpload/UploadLayerPart/CompleteLayerUpload/PutImage \
         permissions on the repository, and that the ECR token is fresh)"
    } else if lower.contains("name unknown") || lower.contains("does not exist") {
        " (create the repository first)"
    } else {
        ""
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_passing_registry_faults_are_transient() {
        for message in [
            "Get \"http://127.0.0.1:5999/v2/\": dial tcp 127.0.0.1:5999: connect: connection refused",
            "Put \"http://r/v2/a/blobs/uploads/x\": read tcp: connection reset by peer",
            "received unexpected HTTP status: 503 Service Unavailable",
            "received unexpected HTTP status: 500 Internal Server Error",
            "Patch \"http://r/v2/\": EOF",
        ] {
            assert!(is_transient_registry_message(message), "{message}");
        }
        for message in [
            "denied: Your authorization token has expired. Reauthenticate and try again.",
            "unauthorized: authentication required",
            "tag invalid: The image tag 'v1' already exists and cannot be overwritten because the repository is immutable",
            "name unknown: The repository with name 'x' does not exist",
            "something else entirely",
        ] {
            assert!(!is_transient_registry_message(message), "{message}");
        }
    }

    #[test]
    fn only_a_snapshot_the_engine_lost_is_built_again() {
        let failed = |step: &str, message: &str| DockerError::BuildFailed {
            step: Some(step.to_owned()),
            message: message.to_owned(),
        };
        for (step, message) in [
            (
                "exporting to image",
                "failed to prepare extraction snapshot \"extract-316870553-xNeJ sha256:86296d89\": \
                 parent snapshot sha256:e5c67d61 does not exist: not found",
            ),
            (
                "RUN make",
                "snapshot extract-2tnrifjtpyxujo9lliuz0e5bz sha256:f4b82550 does not exist: not found",
            ),
        ] {
            assert!(failed(step, message).is_lost_snapshot(), "{message}");
        }
        for message in [
            "process \"/bin/sh -c make\" did not complete successfully: exit code: 2",
            "process \"/bin/sh -c echo snapshot x does not exist: not found; exit 1\" did not \
             complete successfully: exit code: 1",
            "failed to compute cache key: \"/app\": not found",
            "pull access denied, repository does not exist or may require authorization",
        ] {
            assert!(!failed("RUN make", message).is_lost_snapshot(), "{message}");
        }
        let push = DockerError::PushFailed {
            reference: "r/a:1".to_owned(),
            message: "snapshot sha256:1 does not exist: not found".to_owned(),
        };
        assert!(!push.is_lost_snapshot());
    }

    #[test]
    fn push_hints_follow_the_error_prefix() {
        assert!(push_hint("tag invalid: The image tag 'v1' already exists").contains("immutable"));
        assert!(push_hint("denied: Your authorization token has expired.").contains("token"));
        assert!(push_hint("unauthorized: authentication required").contains("permissions"));
        assert_eq!(push_hint("connection refused"), "");
    }
}
