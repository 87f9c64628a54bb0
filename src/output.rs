//! stderr logging: plain lines (CodeBuild logs are not a terminal), prefixed with the image they are about,
//! with every registered secret replaced by `***` before a byte leaves the process.

use std::fmt::{self, Write as _};
use std::io::{self, Write};
use std::sync::{Arc, RwLock};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::registry::LookupSpan;

/// `error: cause: cause's cause`: the outer message alone often hides what happened, and
/// `DisplayErrorContext` adds raw response dumps.
pub fn with_causes(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Values that must never be printed. Shared by the log writer and anything that prints build output.
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    secrets: Arc<RwLock<Vec<String>>>,
}

/// Shorter values would mask ordinary words; no secret we handle is that short.
const MIN_SECRET_LEN: usize = 4;

impl Redactor {
    pub fn add(&self, secret: &str) {
        if secret.len() < MIN_SECRET_LEN {
            return;
        }
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        if !secrets.iter().any(|s| s == secret) {
            secrets.push(secret.to_owned());
            // Longest first, so a secret that contains another is masked whole.
            secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    pub fn redact(&self, text: &str) -> String {
        let secrets = self.secrets.read().unwrap_or_else(|e| e.into_inner());
        secrets.iter().fold(text.to_owned(), |acc, secret| {
            acc.replace(secret.as_str(), "***")
        })
    }
}

/// The process-wide redactor the logger uses.
pub fn redactor() -> &'static Redactor {
    static REDACTOR: std::sync::OnceLock<Redactor> = std::sync::OnceLock::new();
    REDACTOR.get_or_init(Redactor::default)
}

/// Our crate at info (debug with -v); the AWS SDK at warn unless -v. bollard and hyper stay at warn
/// at every level: their debug output includes request headers, and X-Registry-Auth carries the password.
pub fn filter(verbose: u8, quiet: bool) -> EnvFilter {
    let directives = match (quiet, verbose) {
        (true, _) => "warn",
        (false, 0) => "warn,ecr_build=info",
        (false, 1) => "warn,ecr_build=debug,aws_config=info,aws_sdk_ecr=info,aws_sdk_ssm=info",
        (false, _) => {
            "warn,ecr_build=trace,aws_config=debug,aws_sdk_ecr=debug,aws_sdk_ssm=debug,aws_smithy_runtime=debug"
        }
    };
    EnvFilter::new(directives)
}

pub fn init(verbose: u8, quiet: bool) {
    tracing_subscriber::fmt()
        .with_env_filter(filter(verbose, quiet))
        .event_format(PlainLines)
        .with_writer(RedactingStderr)
        .init();
}

/// `web | Step 2/5 : RUN make`, `warning: ...`, `error: web: ...`.
struct PlainLines;

#[derive(Default)]
struct Fields {
    image: Option<String>,
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "image" => self.image = Some(value.to_owned()),
            "message" => self.message.push_str(value),
            name => {
                let _ = write!(self.rest, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        match field.name() {
            "image" => self.image = Some(format!("{value:?}")),
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            name => {
                let _ = write!(self.rest, " {name}={value:?}");
            }
        }
    }
}

impl<S, N> FormatEvent<S, N> for PlainLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Fields::default();
        event.record(&mut fields);
        let level = match *event.metadata().level() {
            Level::ERROR => "error: ",
            Level::WARN => "warning: ",
            Level::DEBUG => "debug: ",
            Level::TRACE => "trace: ",
            Level::INFO => "",
        };
        let crate_event = event.metadata().target().starts_with("ecr_build");
        let origin = if crate_event {
            String::new()
        } else {
            format!("[{}] ", event.metadata().target())
        };
        match fields.image {
            Some(image) => writeln!(
                writer,
                "{image} | {level}{origin}{}{}",
                fields.message, fields.rest
            ),
            None => writeln!(writer, "{level}{origin}{}{}", fields.message, fields.rest),
        }
    }
}

/// stderr, one write per event, secrets masked.
struct RedactingStderr;

impl<'a> MakeWriter<'a> for RedactingStderr {
    type Writer = RedactingStderr;

    fn make_writer(&'a self) -> Self::Writer {
        RedactingStderr
    }
}

impl Write for RedactingStderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        io::stderr()
            .lock()
            .write_all(redactor().redact(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_every_registered_secret_longest_first() {
        let redactor = Redactor::default();
        redactor.add("hunter2hunter2");
        redactor.add("hunter2");
        redactor.add("abc");
        assert_eq!(
            redactor.redact("pw=hunter2hunter2 and hunter2, abc"),
            "pw=*** and ***, abc"
        );
    }

    #[test]
    fn sdk_and_docker_client_stay_quiet_by_default() {
        let shown = filter(0, false).to_string();
        assert!(shown.contains("ecr_build=info"), "{shown}");
        for verbose in 0..4 {
            let shown = filter(verbose, false).to_string();
            assert!(
                !shown.contains("bollard") && !shown.contains("hyper"),
                "{shown}"
            );
        }
    }
}
