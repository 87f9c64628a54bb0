//! The one error a command ends with. It knows its exit status, so nothing downstream has to guess
//! from the text or search a chain of causes.

use crate::config::ConfigError;
use crate::exec::ExecError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad usage or configuration, found before anything was built or pushed.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A build, push, registry or AWS step failed.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
    /// `exec` could not become its command.
    #[error(transparent)]
    Exec(#[from] ExecError),
    /// SIGINT or SIGTERM (CodeBuild's timeout sends one) ended the run.
    #[error("stopped by {name}: builds cancelled, no artifact written")]
    Interrupted { name: &'static str, number: u8 },
}

impl Error {
    /// 2 for bad usage or configuration, 1 for everything that failed while doing the work,
    /// 128 + the signal's number after a signal; `exec` exits 127 (or 126) as a shell would.
    pub fn code(&self) -> u8 {
        match self {
            Error::Config(_) => 2,
            Error::Failed(_) => 1,
            Error::Exec(exec) => exec.exit_code(),
            Error::Interrupted { number, .. } => 128 + number,
        }
    }

    /// Shorthand for the most common usage error: one line that names the bad thing and the fix.
    pub fn usage(message: impl Into<String>) -> Self {
        Error::Config(ConfigError::Usage(message.into()))
    }
}

/// Failures of the outside systems a build talks to: exit 1, the typed error kept as the source.
macro_rules! failed_from {
    ($($error:ty),*) => {$(
        impl From<$error> for Error {
            fn from(err: $error) -> Self {
                Error::Failed(anyhow::Error::new(err))
            }
        }
    )*};
}

impl From<crate::aws::AwsError> for Error {
    fn from(err: crate::aws::AwsError) -> Self {
        match err {
            crate::aws::AwsError::Config(message) => Error::usage(message),
            crate::aws::AwsError::Failed(err) => Error::Failed(err),
        }
    }
}

failed_from!(
    crate::docker::DockerError,
    crate::registry::RegistryError,
    crate::context::ContextError
);

pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_failure_has_its_exit_status() {
        assert_eq!(Error::usage("--jobs must be at least 1").code(), 2);
        assert_eq!(Error::from(anyhow::anyhow!("push failed")).code(), 1);
        let interrupted = Error::Interrupted {
            name: "SIGTERM",
            number: 15,
        };
        assert_eq!(interrupted.code(), 143);
        assert_eq!(Error::from(ExecError::Usage("no command".into())).code(), 2);
        let not_found = ExecError::Command {
            command: "nope".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert_eq!(Error::from(not_found).code(), 127);
    }

    #[test]
    fn the_message_is_the_inner_one() {
        let err = Error::from(anyhow::anyhow!("cause").context("image web: push failed"));
        assert_eq!(format!("{err:#}"), "image web: push failed: cause");
        assert_eq!(Error::usage("bad flag").to_string(), "bad flag");
    }
}
