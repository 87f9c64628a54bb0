//! `ecr-build exec`: SSM parameters into the environment, then the command in place of ecr-build.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader};
use std::time::{Duration, Instant};

use crate::harness::*;

/// `env -0` output as a map.
pub fn environment(stdout: &str) -> BTreeMap<String, String> {
    stdout
        .split('\0')
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (name, value) = entry.split_once('=').expect("NAME=VALUE");
            (name.to_owned(), value.to_owned())
        })
        .collect()
}

/// `ecr-build exec ARGS -- env -0` with extra variables, which must succeed and print nothing of its
/// own: the command's environment.
pub fn exec_env(args: &[&str], env: &[(&str, &str)]) -> BTreeMap<String, String> {
    let ws = Workspace::empty();
    let mut command = quiet_aws(ws.ecr_build(), &ws).args(["exec"]).args(args);
    for (name, value) in env {
        command = command.env(name, value);
    }
    let run = command.args(["--", "env", "-0"]).run().success();
    assert_eq!(run.stderr, "", "ecr-build printed something of its own");
    environment(&run.stdout)
}

/// The test services point AWS_CONFIG_FILE and AWS_SHARED_CREDENTIALS_FILE at absent files (so that no
/// developer's ~/.aws is read), which makes the SDK warn; a container has no such variables. Empty
/// files keep the SDK quiet without reading anything.
pub fn quiet_aws(command: EcrBuild, ws: &Workspace) -> EcrBuild {
    let empty = ws.write(".aws-empty", "");
    command
        .env("AWS_CONFIG_FILE", &empty)
        .env("AWS_SHARED_CREDENTIALS_FILE", &empty)
}

/// A port nothing listens on: an AWS call there fails at once.
fn closed_endpoint() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    format!("http://127.0.0.1:{port}")
}

/// A fresh parameter path, `/exec-1a2b3c4d/prod`.
fn unique_path(what: &str) -> String {
    format!("/{}/prod", unique(what))
}

#[test]
fn exec_exports_a_path_nested_and_decrypted() {
    let base = unique_path("exec-path");
    let password = format!("pw-{}", new_sha());
    put_parameter(&format!("{base}/DB_PASSWORD"), &password, true);
    put_parameter(&format!("{base}/db/host"), "db.internal", false);
    put_parameter(&format!("{base}/mail/smtp/user"), "mailer", false);
    put_parameter(&format!("{base}-other/LEAK"), "no", false);
    let env = exec_env(&["--ssm-path", &base], &[]);
    assert_eq!(env["DB_PASSWORD"], password, "SecureString decrypted");
    assert_eq!(env["DB_HOST"], "db.internal");
    assert_eq!(env["MAIL_SMTP_USER"], "mailer");
    assert!(!env.contains_key("LEAK"));
    // The env twin, with a trailing slash.
    let env = exec_env(&[], &[("ECR_BUILD_SSM_PATH", &format!("{base}/"))]);
    assert_eq!(env["DB_PASSWORD"], password);
    assert_eq!(env["MAIL_SMTP_USER"], "mailer");
}

#[test]
fn exec_exports_dotted_names_through_the_legacy_variable() {
    let prefix = format!("{}.prod", unique("kptboard"));
    let secret = format!("skb-{}", new_sha());
    put_parameter(&format!("{prefix}.secret.key.base"), &secret, true);
    put_parameter(
        &format!("{prefix}.database.url"),
        "postgres://db/app",
        false,
    );
    // Same start, different prefix: not exported.
    put_parameter(&format!("{prefix}uction.other"), "no", false);
    let env = exec_env(&[], &[("PARAMETER_STORE_PREFIX", &prefix)]);
    assert_eq!(env["SECRET_KEY_BASE"], secret);
    assert_eq!(env["DATABASE_URL"], "postgres://db/app");
    assert!(!env.contains_key("OTHER") && !env.contains_key("UCTION_OTHER"));
    // The flag wins over the legacy variable.
    let env = exec_env(
        &["--ssm-path", &format!("{prefix}.database")],
        &[("PARAMETER_STORE_PREFIX", "/nothing/here")],
    );
    assert_eq!(env["URL"], "postgres://db/app");
    assert!(!env.contains_key("SECRET_KEY_BASE"));
}

#[test]
fn exec_existing_variables_win_unless_override() {
    let base = unique_path("exec-override");
    put_parameter(&format!("{base}/GREETING"), "from-ssm", false);
    put_parameter(&format!("{base}/OTHER"), "other-from-ssm", false);
    let set = [("GREETING", "from-env")];
    let env = exec_env(&["--ssm-path", &base], &set);
    assert_eq!(env["GREETING"], "from-env");
    assert_eq!(env["OTHER"], "other-from-ssm");
    let env = exec_env(&["--ssm-path", &base, "--override"], &set);
    assert_eq!(env["GREETING"], "from-ssm");
    let env = exec_env(
        &["--ssm-path", &base],
        &[("GREETING", "from-env"), ("ECR_BUILD_OVERRIDE", "true")],
    );
    assert_eq!(env["GREETING"], "from-ssm");
    // Set but empty is set.
    let env = exec_env(&["--ssm-path", &base], &[("GREETING", "")]);
    assert_eq!(env["GREETING"], "");
}

#[test]
fn exec_without_a_prefix_adds_nothing_and_calls_no_aws() {
    let closed = closed_endpoint();
    let endpoint = ("AWS_ENDPOINT_URL", closed.as_str());
    let empty_prefixes = [
        endpoint,
        ("ECR_BUILD_SSM_PATH", ""),
        ("PARAMETER_STORE_PREFIX", " "),
    ];
    type Case<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let cases: [Case; 3] = [
        (&[], &[endpoint]),
        (&["--ssm-path", ""], &[endpoint]),
        (&[], &empty_prefixes),
    ];
    for (args, set) in cases {
        let env = exec_env(args, set);
        // Every variable the command sees is one the test process has, with its value, or one that
        // the test sets, with the value it set.
        for (name, value) in &env {
            let expected = match set.iter().find(|(n, _)| n == name) {
                Some((_, v)) => Some(v.to_string()),
                None if name == "AWS_CONFIG_FILE" => continue,
                None if name == "AWS_SHARED_CREDENTIALS_FILE" => continue,
                None => std::env::var(name).ok(),
            };
            assert_eq!(
                expected.as_ref(),
                Some(value),
                "{name} was added or changed"
            );
        }
        assert_eq!(env["AWS_ENDPOINT_URL"], closed);
    }
    // With a prefix the same endpoint fails: the runs above made no call.
    Workspace::empty()
        .ecr_build()
        .args(["exec", "--ssm-path", "/app/prod", "--", "true"])
        .env("AWS_ENDPOINT_URL", &closed)
        .env("AWS_MAX_ATTEMPTS", "1")
        .run()
        .failure(1)
        .stderr_has("ssm:GetParametersByPath on path /app/prod failed in us-east-1");
}

#[test]
fn exec_passes_the_exit_status_through() {
    let run = Workspace::empty()
        .ecr_build()
        .args(["exec", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .run()
        .failure(7);
    assert_eq!(run.stdout, "out\n");
    assert_eq!(run.stderr, "err\n");
}

#[test]
fn exec_sigterm_reaches_the_command() {
    let base = unique_path("exec-signal");
    put_parameter(&format!("{base}/TOKEN"), "signal-token", true);
    let ws = Workspace::empty();
    let mut child = quiet_aws(ws.ecr_build(), &ws)
        .args(["exec", "--ssm-path", &base, "--"])
        .args([
            "sh",
            "-c",
            r#"trap "exit 42" TERM; echo "ready $TOKEN"; while :; do sleep 0.1; done"#,
        ])
        .spawn();
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "ready signal-token\n");
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "the command ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(42));
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(stderr, "");
}

#[test]
fn exec_missing_command_exits_127_naming_it() {
    let run = Workspace::empty()
        .ecr_build()
        .args(["exec", "--", "ecr-build-no-such-command", "--flag"])
        .run()
        .failure(127)
        .stderr_has("ecr-build-no-such-command");
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
}

#[test]
fn exec_two_parameters_for_one_variable_are_named() {
    let base = unique_path("exec-clash");
    put_parameter(&format!("{base}/db/PASSWORD"), "clash-one", true);
    put_parameter(&format!("{base}/DB_PASSWORD"), "clash-two", true);
    let run = Workspace::empty()
        .ecr_build()
        .args(["exec", "--ssm-path", &base, "--", "true"])
        .run()
        .failure(2)
        .stderr_has(&format!("{base}/db/PASSWORD"))
        .stderr_has(&format!("{base}/DB_PASSWORD"));
    for value in ["clash-one", "clash-two"] {
        assert!(!run.stderr.contains(value), "{}", run.stderr);
    }
}

#[test]
fn exec_bad_prefix_and_no_command_are_usage_errors() {
    Workspace::empty()
        .ecr_build()
        .args(["exec", "--ssm-path", "app/prod", "--", "true"])
        .run()
        .failure(2)
        .stderr_has("/app/prod");
    Workspace::empty()
        .ecr_build()
        .args(["exec", "--ssm-path", "/app/prod"])
        .run()
        .failure(2);
}
