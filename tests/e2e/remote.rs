//! Remote engines, as pipelines reach them: `tcp://` with TLS client certificates, and `ssh://`
//! through `docker system dial-stdio`. Both are the test engine itself, behind dockerd's own TLS
//! listener and a private sshd that scripts/services.sh started.

use std::time::{Duration, Instant};

use crate::harness::*;

/// PATH with the harness's `ssh` (its own key and known_hosts) first.
fn path_with(dir: &str) -> String {
    format!("{dir}:{}", std::env::var("PATH").unwrap_or_default())
}

/// One image whose RUN step reads a secret; its sha256 lands in the image.
fn secret_app() -> (Workspace, String, String) {
    let repository = unique("e2e-remote/app");
    create_repository(&repository);
    let value = format!("remote-secret-{}", new_sha());
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {} > /nonce\nRUN --mount=type=secret,id=token sha256sum /run/secrets/token | cut -c1-64 > /token.sha256\n",
            services().base_image,
            new_sha()
        ),
    );
    (ws, repository, value)
}

fn build(ws: &Workspace, repository: &str, value: &str, sha: &str) -> EcrBuild {
    ws.ecr_build()
        .args(["build", "--name", "app", "--repository", repository])
        .args(["--registry", &services().registry, "--network", "none"])
        .args(["--secret", "token=env:TOKEN"])
        .env("TOKEN", value)
        .env("ECR_BUILD_SHA", sha)
        .env_remove("DOCKER_TLS_VERIFY")
        .env_remove("DOCKER_CERT_PATH")
}

#[track_caller]
fn assert_built_with_the_secret(repository: &str, sha: &str, value: &str, run: &Run) {
    let image = format!("{}/{repository}:{sha}", services().registry);
    assert!(
        registry_digest(repository, sha).is_some(),
        "{image} was not pushed"
    );
    assert_eq!(
        docker_run(&image, &["cat", "/token.sha256"]).trim(),
        sha256_hex(value.as_bytes())
    );
    assert!(!run.stderr.contains(value) && !run.stdout.contains(value));
}

/// One error line, naming the host, within 5 s.
#[track_caller]
fn assert_refused_at_once(run: &Run, started: Instant, host: &str, cause: &str) {
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    let errors: Vec<&str> = run
        .stderr
        .lines()
        .filter(|l| l.starts_with("error: "))
        .collect();
    assert_eq!(errors.len(), 1, "{}", run.stderr);
    assert!(
        errors[0].contains(host) && errors[0].contains(cause),
        "{}",
        errors[0]
    );
    assert!(errors[0].chars().count() <= 300, "{}", errors[0]);
}

#[test]
fn a_build_with_a_secret_goes_through_a_tls_engine() {
    let (ws, repository, value) = secret_app();
    let sha = new_sha();
    let run = build(&ws, &repository, &value, &sha)
        .env("DOCKER_HOST", required("ECR_BUILD_TEST_TLS_HOST"))
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", required("ECR_BUILD_TEST_TLS_CERTS"))
        .run()
        .success()
        .no_ecr_secret();
    assert_built_with_the_secret(&repository, &sha, &value, &run);
}

#[test]
fn a_tls_engine_with_another_ca_fails_at_once_naming_the_host() {
    let (ws, repository, value) = secret_app();
    let host = required("ECR_BUILD_TEST_TLS_HOST");
    let started = Instant::now();
    let run = build(&ws, &repository, &value, &new_sha())
        .env("DOCKER_HOST", &host)
        .env("DOCKER_TLS_VERIFY", "1")
        .env("DOCKER_CERT_PATH", required("ECR_BUILD_TEST_TLS_WRONG_CA"))
        .run()
        .failure(1);
    assert_refused_at_once(
        &run,
        started,
        host.trim_start_matches("tcp://"),
        "certificate",
    );
    assert!(!ws.exists("imagedefinitions.json"));
}

#[test]
fn a_build_with_a_secret_goes_through_an_ssh_engine() {
    let (ws, repository, value) = secret_app();
    let sha = new_sha();
    let run = build(&ws, &repository, &value, &sha)
        .env("DOCKER_HOST", required("ECR_BUILD_TEST_SSH_HOST"))
        .env("PATH", path_with(&required("ECR_BUILD_TEST_SSH_BIN")))
        .run()
        .success()
        .no_ecr_secret();
    assert_built_with_the_secret(&repository, &sha, &value, &run);
}

#[test]
fn an_ssh_engine_that_refuses_the_key_fails_at_once_naming_the_host() {
    let (ws, repository, value) = secret_app();
    let host = required("ECR_BUILD_TEST_SSH_HOST");
    let started = Instant::now();
    let run = build(&ws, &repository, &value, &new_sha())
        .env("DOCKER_HOST", &host)
        .env(
            "PATH",
            path_with(&required("ECR_BUILD_TEST_SSH_WRONG_KEY_BIN")),
        )
        .run()
        .failure(1);
    assert_refused_at_once(&run, started, &host, "Permission denied");
}
