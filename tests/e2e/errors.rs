//! Bad input and unreachable services: the exit status and one line that names the bad thing.

use crate::harness::*;

fn single_image(ws: &Workspace) {
    ws.write(
        "Dockerfile",
        &format!("FROM {}\nRUN true\n", services().base_image),
    );
}

fn build_single(ws: &Workspace, repository: &str) -> EcrBuild {
    ws.build_one(repository, &services().registry, &new_sha())
}

#[test]
fn unreachable_docker_daemon_names_docker_host_and_privileged_mode() {
    let ws = Workspace::empty();
    single_image(&ws);
    let repository = unique("err-docker");
    create_repository(&repository);
    let socket = ws.path().join("no-daemon.sock");
    let run = build_single(&ws, &repository)
        .args(["--docker-timeout", "2"])
        .env("DOCKER_HOST", format!("unix://{}", socket.display()))
        .run()
        .failure(1)
        .stderr_has("Docker daemon not reachable")
        .stderr_has(&socket.display().to_string())
        .stderr_has("DOCKER_HOST")
        .stderr_has("privileged");
    assert!(run.stderr.contains("waiting up to 2 s"), "{}", run.stderr);
    assert!(!ws.exists("imagedefinitions.json"));
}

#[test]
fn missing_repository_is_named_before_any_build() {
    let ws = Workspace::empty();
    single_image(&ws);
    let repository = unique("err-norepo");
    build_single(&ws, &repository)
        .run()
        .failure(1)
        .stderr_has(&format!(
            "ECR repository not found in us-east-1: {repository}"
        ))
        .stderr_has("create-repository");
}

#[test]
fn missing_dockerfile_is_named() {
    let ws = Workspace::empty();
    ws.write("app.txt", "x");
    build_single(&ws, "err/nodockerfile")
        .args(["--dockerfile", "build/Dockerfile"])
        .run()
        .failure(2)
        .stderr_has(&ws.path().join("build/Dockerfile").display().to_string());
}

#[test]
fn missing_context_is_named() {
    let ws = Workspace::empty();
    build_single(&ws, "err/nocontext")
        .args(["--context", "services/api"])
        .run()
        .failure(2)
        .stderr_has("services/api");
}

#[test]
fn bad_tag_template_and_bad_rendered_tag_are_usage_errors() {
    let ws = Workspace::empty();
    single_image(&ws);
    build_single(&ws, "err/tags")
        .args(["--tag", "{commit}"])
        .run()
        .failure(2)
        .stderr_has("unknown placeholder `{commit}`");
    build_single(&ws, "err/tags")
        .args(["--tag", "release/{short_sha}"])
        .run()
        .failure(2)
        .stderr_has("renders to `release/");
    build_single(&ws, "err/tags")
        .args(["--tag", "{build_number}"])
        .run()
        .failure(2)
        .stderr_has("CODEBUILD_BUILD_NUMBER");
}

#[test]
fn unknown_config_key_names_file_line_and_key() {
    let ws = Workspace::empty();
    single_image(&ws);
    ws.write(
        "ecr-build.toml",
        "tags = [\"{sha}\"]\n\n[images.web]\nrepository = \"err/web\"\ncontxt = \".\"\n",
    );
    let run = ws
        .ecr_build()
        .args(["build"])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .failure(2);
    let expected = format!(
        "{}:5:1: unknown field `contxt`",
        ws.path().join("ecr-build.toml").display()
    );
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
}

#[test]
fn no_commit_sha_is_a_usage_error_outside_a_dry_run() {
    let ws = Workspace::empty();
    single_image(&ws);
    ws.ecr_build()
        .args([
            "build",
            "--repository",
            "err/nosha",
            "--registry",
            &services().registry,
        ])
        .env("GIT_CEILING_DIRECTORIES", ws.path().parent().unwrap())
        .run()
        .failure(2)
        .stderr_has("no commit SHA found")
        .stderr_has("CODEBUILD_RESOLVED_SOURCE_VERSION");
    ws.ecr_build()
        .args(["build", "--repository", "err/nosha", "--sha", "abc1234"])
        .run()
        .failure(2)
        .stderr_has("`abc1234` is not a 40-character hex commit SHA");
}

#[test]
fn no_config_and_no_repository_is_a_usage_error() {
    let ws = Workspace::empty();
    ws.ecr_build()
        .args(["build"])
        .run()
        .failure(2)
        .stderr_has("no ecr-build.toml or Compose file in");
}

#[test]
fn access_denied_on_get_authorization_token_names_the_action_and_resource() {
    // moto enforces IAM after the first three calls: the ones that make a user who may not log in.
    let moto = PrivateMoto::start(&[("INITIAL_NO_AUTH_ACTION_COUNT", "3")]);
    let policy = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ecr:DescribeRepositories","Resource":"*"}]}"#;
    let (key_id, secret_key) = moto.user_with_policy("builder", policy);
    let ws = Workspace::empty();
    single_image(&ws);
    build_single(&ws, "err/denied")
        .env("AWS_ENDPOINT_URL", &moto.endpoint)
        .env("AWS_ACCESS_KEY_ID", key_id)
        .env("AWS_SECRET_ACCESS_KEY", secret_key)
        .env("AWS_MAX_ATTEMPTS", "1")
        .run()
        .failure(1)
        .stderr_has("ecr:GetAuthorizationToken was denied in us-east-1")
        .stderr_has("\"Resource\": \"*\"");
    assert!(!ws.exists("imagedefinitions.json"));
}

#[test]
fn absurd_values_are_usage_errors_that_name_them() {
    let ws = Workspace::empty();
    single_image(&ws);
    build_single(&ws, "err/absurd")
        .args(["--jobs", "0"])
        .run()
        .failure(2)
        .stderr_has("--jobs must be at least 1");
    build_single(&ws, "err/absurd")
        .args(["--docker-timeout=-5"])
        .run()
        .failure(2)
        .stderr_has("--docker-timeout");
    build_single(&ws, "err/absurd")
        .env("AWS_MAX_ATTEMPTS", "0")
        .run()
        .failure(2)
        .stderr_has("AWS_MAX_ATTEMPTS / ECR_BUILD_AWS_MAX_ATTEMPTS `0`");
    ws.write("ecr-build.toml", "[images.web\nrepository = \"err/web\"\n");
    let run = ws.ecr_build().args(["build", "--dry-run"]).run().failure(2);
    let expected = format!("{}:1:", ws.path().join("ecr-build.toml").display());
    assert!(run.stderr.contains(&expected), "{}", run.stderr);
    assert_eq!(run.stderr.lines().count(), 1, "one line: {}", run.stderr);
}

#[test]
fn no_aws_region_is_one_short_line_without_sdk_dumps() {
    // Instance metadata that never answers, as on a laptop: the SDK's region probes time out.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let imds = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let held: Vec<_> = listener.incoming().take(16).collect();
        std::thread::sleep(std::time::Duration::from_secs(30));
        drop(held);
    });
    let (ws, _, _) = Workspace::example_app_in(&unique("e2e-region"));
    let run = ws
        .ecr_build()
        .args(["build"])
        .env("ECR_BUILD_SHA", new_sha())
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .env_remove("AWS_EC2_METADATA_DISABLED")
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", &imds)
        .run()
        .failure(2)
        .stderr_has("no AWS region: set AWS_REGION");
    for line in run.stderr.lines() {
        assert!(
            line.chars().count() <= 300,
            "a line of {} characters: {line}",
            line.chars().count()
        );
        assert!(
            !line.contains("IMDS") && !line.contains("FailedToLoadToken"),
            "{line}"
        );
    }
    assert!(!ws.exists("imagedefinitions.json"));
}
