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
    /// Registers a value, and each of its lines on its own: build output is logged line by line,
    /// so a multi-line value (a PEM key, an .npmrc) never appears whole in one log line.
    pub fn add(&self, secret: &str) {
        let pieces = std::iter::once(secret)
            .chain(std::iter::once(secret.trim()))
            .chain(secret.lines().map(str::trim));
        let mut secrets = self.secrets.write().unwrap_or_else(|e| e.into_inner());
        for piece in pieces {
            if piece.len() >= MIN_SECRET_LEN && !secrets.iter().any(|s| s == piece) {
                secrets.push(piece.to_owned());
            }
        }
        // Longest first, so a secret that contains another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
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

/// Our crate at info (debug with -v); the AWS SDK at warn unless -v, but for its instance-metadata
/// probes, whose failures (no IMDS on a laptop) are expected and explained by our own error. bollard
/// and hyper stay at warn at every level: their debug output includes request headers, and
/// X-Registry-Auth carries the password.
pub fn log_levels(verbose: u8, quiet: bool) -> EnvFilter {
    let directives = match (quiet, verbose) {
        (true, _) => "warn,aws_config::imds=error",
        (false, 0) => "warn,ecr_build=info,aws_config::imds=error",
        (false, 1) => "warn,ecr_build=debug,aws_config=info,aws_sdk_ecr=info,aws_sdk_ssm=info",
        (false, _) => {
            "warn,ecr_build=trace,aws_config=debug,aws_sdk_ecr=debug,aws_sdk_ssm=debug,aws_smithy_runtime=debug"
        }
    };
    EnvFilter::new(directives)
}

pub fn init(verbose: u8, quiet: bool) {
    VERBOSE.store(verbose > 0, std::sync::atomic::Ordering::Relaxed);
    tracing_subscriber::fmt()
        .with_env_filter(log_levels(verbose, quiet))
        .event_format(PlainLines {
            whole_lines: verbose > 0,
        })
        .with_writer(RedactingStderr)
        .init();
}

/// Without -v no line ecr-build prints is longer than this: long enough for a message that names
/// the thing and the fix, short enough that an SDK's raw response dump cannot pass.
pub const MAX_LINE_CHARS: usize = 300;

/// `web | Step 2/5 : RUN make`, `warning: ...`, `error: web: ...`.
struct PlainLines {
    /// -v: other crates' events as they are; otherwise each on one line of at most MAX_LINE_CHARS.
    whole_lines: bool,
}

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
        if !crate_event && !self.whole_lines {
            fields.message = shorten(&one_line(&fields.message), MAX_LINE_CHARS / 2);
            fields.rest = shorten(&one_line(&fields.rest), MAX_LINE_CHARS / 4);
        }
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

/// -v, as [`init`] was told.
static VERBOSE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// An error with its causes: without -v one line of at most MAX_LINE_CHARS with the image prefix
/// (the message names the thing and the fix first; causes that do not fit are cut), with -v whole.
pub fn describe_error(err: &dyn std::error::Error) -> String {
    error_text(err, VERBOSE.load(std::sync::atomic::Ordering::Relaxed))
}

fn error_text(err: &dyn std::error::Error, verbose: bool) -> String {
    let text = one_line(&with_causes(err));
    if verbose {
        text
    } else {
        // Room for `image | error: ` before it; image names are short.
        shorten(&text, MAX_LINE_CHARS - 40)
    }
}

/// Control characters (newlines of a multi-line message) become spaces, runs of spaces one.
fn one_line(text: &str) -> String {
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// At most `max` characters, with `…` where text was cut.
pub fn shorten(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    const CUT: &str = " … (-v shows all)";
    let keep = max.saturating_sub(CUT.chars().count());
    let mut short: String = text.chars().take(keep).collect();
    short.push_str(CUT);
    short
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
    fn every_line_of_a_multi_line_secret_is_masked_on_its_own() {
        let redactor = Redactor::default();
        let key =
            "-----BEGIN KEY-----\nMIIEvQIBADANBgkq\r\n  hkiG9w0BAQEFAASC \nab\n-----END KEY-----\n";
        redactor.add(key);
        assert_eq!(redactor.redact(key), "***");
        assert_eq!(redactor.redact("web |    MIIEvQIBADANBgkq"), "web |    ***");
        assert_eq!(
            redactor.redact("x=hkiG9w0BAQEFAASC;y"),
            "x=***;y",
            "a line inside a longer log line"
        );
        assert_eq!(redactor.redact("-----END KEY-----"), "***");
        // Shorter than MIN_SECRET_LEN: left as it is (it would mask ordinary words).
        assert_eq!(redactor.redact("ab"), "ab");
    }

    #[test]
    fn final_errors_are_one_short_line_without_verbose() {
        let long = anyhow::anyhow!("{}\n{}", "raw response ".repeat(40), "dump")
            .context("no AWS region: set AWS_REGION");
        let long: &dyn std::error::Error = long.as_ref();
        let short = error_text(long, false);
        assert!(short.starts_with("no AWS region: set AWS_REGION: raw response"));
        assert!(short.chars().count() <= MAX_LINE_CHARS - 40);
        assert!(short.ends_with("(-v shows all)") && !short.contains('\n'));
        assert!(error_text(long, true).ends_with("dump"));
    }

    #[test]
    fn sdk_and_docker_client_stay_quiet_by_default() {
        let shown = log_levels(0, false).to_string();
        assert!(shown.contains("ecr_build=info"), "{shown}");
        for verbose in 0..4 {
            let shown = log_levels(verbose, false).to_string();
            assert!(
                !shown.contains("bollard") && !shown.contains("hyper"),
                "{shown}"
            );
        }
    }
}
