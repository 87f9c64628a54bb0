//! `ecr-build exec`: the container entrypoint. Exports the SSM parameters under a prefix as environment
//! variables, then becomes the command (execvp, no shell): signals reach it directly and its exit status
//! is the container's. Without a prefix it makes no AWS call at all, so the same image runs anywhere.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::ffi::OsString;
use std::fmt;
use std::io;
use std::os::unix::process::CommandExt as _;

use crate::aws::{self, AwsError, Secret, ssm};
use crate::cli::ExecArgs;

/// The variable docker-entrypoint.sh scripts read the prefix from; used when neither `--ssm-path` nor
/// `ECR_BUILD_SSM_PATH` is given.
pub(crate) const LEGACY_PREFIX_VARIABLE: &str = "PARAMETER_STORE_PREFIX";

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// Bad prefix: exit 2.
    #[error("{0}")]
    Usage(String),
    /// Parameters that cannot become variables (two for one name, a name with nothing left): exit 2.
    #[error("{0}")]
    Parameters(String),
    /// execvp failed: exit 127 (126 when the file is there but cannot be run), as a shell does.
    #[error("cannot run {command}: {}", describe_exec_error(command, error))]
    Command { command: String, error: io::Error },
    /// Reading the parameters failed: exit 2 for AWS's configuration, else 1.
    #[error(transparent)]
    Aws(#[from] AwsError),
}

impl ExecError {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) | Self::Parameters(_) | Self::Aws(AwsError::Config(_)) => 2,
            Self::Aws(AwsError::Failed(_)) => 1,
            Self::Command { error, .. } if error.kind() == io::ErrorKind::PermissionDenied => 126,
            Self::Command { .. } => 127,
        }
    }
}

fn describe_exec_error(command: &str, error: &io::Error) -> String {
    if error.kind() == io::ErrorKind::NotFound && !command.contains('/') {
        "command not found in PATH".to_owned()
    } else {
        error.to_string()
    }
}

/// Where the parameters are: a hierarchy (`/app/prod`, read with GetParametersByPath) or a dotted
/// prefix of single-level names (`kptboard.prod`, listed with DescribeParameters).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Prefix {
    /// Starts with `/`, no trailing `/`.
    Path(String),
    /// No `/` at all, no trailing `.`.
    Dotted(String),
}

impl fmt::Display for Prefix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Path(path) => f.write_str(path),
            Self::Dotted(prefix) => f.write_str(prefix),
        }
    }
}

/// The prefix to read: `--ssm-path`/`ECR_BUILD_SSM_PATH`, else `PARAMETER_STORE_PREFIX`. An empty or
/// blank value counts as not given (like the shell's `${VAR:-...}`); none at all means no SSM.
pub(crate) fn resolve_prefix(
    flag: Option<&str>,
    legacy: Option<&str>,
) -> Result<Option<Prefix>, ExecError> {
    fn given(value: Option<&str>) -> Option<&str> {
        value.filter(|v| !v.trim().is_empty())
    }
    match given(flag).or(given(legacy)) {
        Some(raw) => parse_prefix(raw),
        None => Ok(None),
    }
}

pub(crate) fn parse_prefix(raw: &str) -> Result<Option<Prefix>, ExecError> {
    let raw = raw.trim();
    if raw.is_empty() {
        return Ok(None);
    }
    if raw.starts_with('/') {
        let path = raw.trim_end_matches('/');
        if path.is_empty() {
            return Err(ExecError::Usage(format!(
                "SSM prefix {raw:?} would export every parameter of the account: name the \
                 application's path, e.g. /myapp/prod"
            )));
        }
        return Ok(Some(Prefix::Path(path.to_owned())));
    }
    if raw.contains('/') {
        return Err(ExecError::Usage(format!(
            "SSM prefix {raw:?}: a parameter path starts with / (/{raw})"
        )));
    }
    let dotted = raw.trim_end_matches('.');
    if dotted.is_empty() {
        return Err(ExecError::Usage(format!(
            "SSM prefix {raw:?} names no parameters: give a path (/myapp/prod) or a dotted prefix \
             (myapp.prod)"
        )));
    }
    Ok(Some(Prefix::Dotted(dotted.to_owned())))
}

/// The variable a parameter becomes: the part of its name below the prefix, segments joined with `_`,
/// uppercased, anything outside `[A-Za-z0-9_]` as `_`, and a leading `_` before a digit.
/// `/app/prod/db/PASSWORD` under `/app/prod` → `DB_PASSWORD`; `kptboard.prod.secret.key.base` under
/// `kptboard.prod` → `SECRET_KEY_BASE`.
pub(crate) fn variable_name(prefix: &Prefix, parameter: &str) -> Result<String, String> {
    let (rest, separator) = match prefix {
        Prefix::Path(path) => (
            parameter
                .strip_prefix(path.as_str())
                .and_then(|rest| rest.strip_prefix('/')),
            '/',
        ),
        // `/a.b` and `a.b` are the same single-level parameter.
        Prefix::Dotted(dotted) => (
            parameter
                .strip_prefix('/')
                .unwrap_or(parameter)
                .strip_prefix(dotted.as_str())
                .and_then(|rest| rest.strip_prefix('.')),
            '.',
        ),
    };
    let rest = rest.ok_or_else(|| format!("SSM parameter {parameter} is not under {prefix}"))?;
    let joined = rest
        .split(separator)
        .filter(|segment| !segment.is_empty())
        .collect::<Vec<_>>()
        .join("_");
    let mut name: String = joined
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        return Err(format!(
            "SSM parameter {parameter} has no name below {prefix}"
        ));
    }
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    Ok(name)
}

/// The variables to set for the command, sorted by name: every parameter under its
/// [`variable_name`], except those already set in the environment (`existing`) unless
/// `override_existing`. Two parameters for one variable are an error that names both.
pub(crate) fn environment_for(
    existing: impl Fn(&str) -> bool,
    parameters: &[(String, Secret)],
    prefix: &Prefix,
    override_existing: bool,
) -> Result<Vec<(String, Secret)>, ExecError> {
    let mut variables: BTreeMap<String, (&str, &Secret)> = BTreeMap::new();
    let mut problems = Vec::new();
    for (parameter, value) in parameters {
        match variable_name(prefix, parameter) {
            Ok(variable) => {
                if let Some((other, _)) = variables.get(&variable) {
                    problems.push(format!(
                        "SSM parameters {other} and {parameter} both become the variable {variable}"
                    ));
                } else {
                    variables.insert(variable, (parameter.as_str(), value));
                }
            }
            Err(problem) => problems.push(problem),
        }
    }
    if !problems.is_empty() {
        return Err(ExecError::Parameters(problems.join("; ")));
    }
    Ok(variables
        .into_iter()
        .filter(|(variable, _)| override_existing || !existing(variable))
        .map(|(variable, (_, value))| (variable, value.clone()))
        .collect())
}

/// Reads the parameters (if a prefix is given) and becomes the command. Returns only on failure.
pub(crate) async fn run(args: ExecArgs) -> Result<Infallible, ExecError> {
    let legacy = match std::env::var(LEGACY_PREFIX_VARIABLE) {
        Ok(value) => Some(value),
        Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => {
            return Err(ExecError::Usage(format!(
                "{LEGACY_PREFIX_VARIABLE} is not UTF-8"
            )));
        }
    };
    let prefix = resolve_prefix(args.ssm_path.as_deref(), legacy.as_deref())?;
    let variables = match prefix {
        None => Vec::new(),
        Some(prefix) => {
            let parameters = read_parameters(&prefix).await?;
            environment_for(
                |name| std::env::var_os(name).is_some(),
                &parameters,
                &prefix,
                args.override_existing,
            )?
        }
    };
    Err(exec(&args.command, &variables))
}

async fn read_parameters(prefix: &Prefix) -> Result<Vec<(String, Secret)>, AwsError> {
    let env = aws::AwsEnv::from_lookup(&|name| std::env::var(name).ok());
    let config = aws::load_config(None, &env).await?;
    let region = config.region().map(ToString::to_string).unwrap_or_default();
    let client = aws_sdk_ssm::Client::new(&config);
    match prefix {
        Prefix::Path(path) => Ok(ssm::get_parameters_by_path(&client, &region, path).await?),
        Prefix::Dotted(dotted) => {
            let names = ssm::names_beginning_with(&client, &region, &format!("{dotted}.")).await?;
            Ok(ssm::get_parameters(&client, &region, &names).await?)
        }
    }
}

/// execvp: on success this process is the command and nothing after this runs.
fn exec(command: &[OsString], variables: &[(String, Secret)]) -> ExecError {
    let Some((program, args)) = command.split_first() else {
        return ExecError::Usage(
            "no command to run: ecr-build exec [OPTIONS] -- CMD [ARGS...]".into(),
        );
    };
    let error = std::process::Command::new(program)
        .args(args)
        .envs(variables.iter().map(|(name, value)| (name, value.expose())))
        .exec();
    ExecError::Command {
        command: program.to_string_lossy().into_owned(),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Prefix {
        Prefix::Path(p.into())
    }

    fn dotted(p: &str) -> Prefix {
        Prefix::Dotted(p.into())
    }

    fn params(list: &[(&str, &str)]) -> Vec<(String, Secret)> {
        list.iter()
            .map(|(name, value)| (name.to_string(), Secret::new(*value)))
            .collect()
    }

    fn shown(variables: Vec<(String, Secret)>) -> Vec<(String, String)> {
        variables
            .into_iter()
            .map(|(name, value)| (name, value.expose().to_owned()))
            .collect()
    }

    #[test]
    fn prefixes_are_paths_or_dotted() {
        assert_eq!(parse_prefix("/app/prod").unwrap(), Some(path("/app/prod")));
        assert_eq!(parse_prefix("/app/prod/").unwrap(), Some(path("/app/prod")));
        assert_eq!(parse_prefix(" /app ").unwrap(), Some(path("/app")));
        assert_eq!(
            parse_prefix("kptboard.prod").unwrap(),
            Some(dotted("kptboard.prod"))
        );
        assert_eq!(
            parse_prefix("kptboard.prod.").unwrap(),
            Some(dotted("kptboard.prod"))
        );
        assert_eq!(parse_prefix("app").unwrap(), Some(dotted("app")));
        assert_eq!(parse_prefix("").unwrap(), None);
        assert_eq!(parse_prefix("  ").unwrap(), None);
        for bad in ["/", "//", "app/prod", ".", ".."] {
            let err = parse_prefix(bad).unwrap_err();
            assert!(matches!(err, ExecError::Usage(_)), "{bad}: {err}");
            assert_eq!(err.exit_code(), 2);
        }
        assert!(
            parse_prefix("app/prod")
                .unwrap_err()
                .to_string()
                .contains("/app/prod")
        );
    }

    #[test]
    fn the_flag_wins_over_the_legacy_variable() {
        assert_eq!(
            resolve_prefix(Some("/a"), Some("/b")).unwrap(),
            Some(path("/a"))
        );
        assert_eq!(resolve_prefix(None, Some("/b")).unwrap(), Some(path("/b")));
        assert_eq!(resolve_prefix(None, None).unwrap(), None);
        // Empty is not given.
        assert_eq!(
            resolve_prefix(Some(""), Some("/b")).unwrap(),
            Some(path("/b"))
        );
        assert_eq!(resolve_prefix(Some(" "), Some("")).unwrap(), None);
        assert_eq!(resolve_prefix(None, Some("")).unwrap(), None);
    }

    #[test]
    fn hierarchical_names_lose_the_prefix_and_join_segments() {
        let prefix = path("/app/prod");
        assert_eq!(
            variable_name(&prefix, "/app/prod/DB_PASSWORD").unwrap(),
            "DB_PASSWORD"
        );
        assert_eq!(
            variable_name(&prefix, "/app/prod/db/PASSWORD").unwrap(),
            "DB_PASSWORD"
        );
        assert_eq!(
            variable_name(&prefix, "/app/prod/mail/smtp/host").unwrap(),
            "MAIL_SMTP_HOST"
        );
        assert_eq!(
            variable_name(&prefix, "/app/prod/secret.key-base").unwrap(),
            "SECRET_KEY_BASE"
        );
        assert_eq!(
            variable_name(&prefix, "/app/prod/3scale").unwrap(),
            "_3SCALE"
        );
        assert_eq!(variable_name(&prefix, "/app/prod/café").unwrap(), "CAF_");
        // Only whole segments match: /app/production is not under /app/prod.
        assert!(variable_name(&prefix, "/app/production/X").is_err());
        assert!(variable_name(&prefix, "/app/prod").is_err());
    }

    #[test]
    fn dotted_names_lose_the_prefix_and_join_segments() {
        let prefix = dotted("kptboard.prod");
        assert_eq!(
            variable_name(&prefix, "kptboard.prod.secret.key.base").unwrap(),
            "SECRET_KEY_BASE"
        );
        assert_eq!(
            variable_name(&prefix, "/kptboard.prod.db_password").unwrap(),
            "DB_PASSWORD"
        );
        assert_eq!(
            variable_name(&prefix, "kptboard.prod.2fa.key").unwrap(),
            "_2FA_KEY"
        );
        assert!(variable_name(&prefix, "kptboard.production.x").is_err());
        assert!(variable_name(&prefix, "kptboard.prod.").is_err());
    }

    #[test]
    fn existing_variables_win_unless_overridden() {
        let parameters = params(&[("/app/HOME", "/srv"), ("/app/DB", "pw")]);
        let existing = |name: &str| name == "HOME";
        assert_eq!(
            shown(environment_for(existing, &parameters, &path("/app"), false).unwrap()),
            [("DB".to_owned(), "pw".to_owned())]
        );
        assert_eq!(
            shown(environment_for(existing, &parameters, &path("/app"), true).unwrap()),
            [
                ("DB".to_owned(), "pw".to_owned()),
                ("HOME".to_owned(), "/srv".to_owned())
            ]
        );
        assert!(
            environment_for(|_| false, &[], &path("/app"), false)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn two_parameters_for_one_variable_are_named() {
        let parameters = params(&[
            ("/app/db/PASSWORD", "a"),
            ("/app/DB_PASSWORD", "b"),
            ("/app/ok", "c"),
        ]);
        let err = environment_for(|_| false, &parameters, &path("/app"), false).unwrap_err();
        let message = err.to_string();
        assert!(message.contains("/app/db/PASSWORD"), "{message}");
        assert!(message.contains("/app/DB_PASSWORD"), "{message}");
        assert!(message.contains("DB_PASSWORD"), "{message}");
        assert_eq!(err.exit_code(), 2);
        // Also when the variable exists already and would not be set anyway.
        assert!(environment_for(|_| true, &parameters, &path("/app"), false).is_err());
    }

    #[test]
    fn exec_failures_exit_like_a_shell() {
        let missing = exec(&[OsString::from("ecr-build-no-such-command")], &[]);
        assert_eq!(missing.exit_code(), 127);
        assert_eq!(
            missing.to_string(),
            "cannot run ecr-build-no-such-command: command not found in PATH"
        );
        let directory = exec(&[OsString::from("/")], &[]);
        assert_eq!(directory.exit_code(), 126, "{directory}");
        assert!(directory.to_string().starts_with("cannot run /: "));
    }
}
