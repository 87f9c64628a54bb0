//! `ecr-build build` end to end against the real engine, registry and moto.

use std::collections::BTreeSet;

use crate::harness::*;

/// The example app, pointed at this test's own repositories.
fn example_app(prefix: &str) -> (Workspace, String, String) {
    let (ws, web, worker) = Workspace::example_app_in(prefix);
    let config = ws.read("ecr-build.toml").replace(
        "tags = [\"{short_sha}\", \"latest\"]",
        "tags = [\"{short_sha}\", \"latest\", \"build-{build_number}\"]",
    );
    ws.write("ecr-build.toml", &config);
    create_repository(&web);
    create_repository(&worker);
    (ws, web, worker)
}

fn build(ws: &Workspace, sha: &str) -> EcrBuild {
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", sha)
        .env("CODEBUILD_BUILD_NUMBER", "17")
}

fn files_in_image(image: &str) -> BTreeSet<String> {
    docker_run(image, &["find", "/app", "-type", "f"])
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn two_image_app_is_built_tagged_pushed_and_described() {
    let (ws, web, worker) = example_app(&unique("e2e-app"));
    let sha = new_sha();
    let short = &sha[..7];
    let run = build(&ws, &sha).run().success().no_ecr_secret();

    let registry = &services().registry;
    let tags = [short.to_owned(), "latest".to_owned(), "build-17".to_owned()];
    for (name, repository) in [("web", &web), ("worker", &worker)] {
        let summary = run.summary(name);
        assert_eq!(summary.tags, tags);
        assert!(summary.digest.starts_with("sha256:"), "{}", summary.digest);
        for tag in &tags {
            assert_eq!(
                registry_digest(repository, tag).as_deref(),
                Some(summary.digest.as_str()),
                "{repository}:{tag} in the registry"
            );
        }
        // Plus the context digest tag that lets a later run skip an unchanged image, and the
        // record of what BuildKit read for its recipe.
        let stored = image_tags(repository);
        assert_eq!(
            registry_tags(repository).contains("buildcache"),
            containerd_store()
        );
        let extra: Vec<_> = stored.iter().filter(|t| !tags.contains(t)).collect();
        assert_eq!(stored.len(), tags.len() + 2, "{stored:?}");
        assert!(
            extra[0].starts_with("ctx-") && extra[0].len() == 24,
            "{stored:?}"
        );
        assert!(
            extra[1].starts_with("rcp-") && extra[1].len() == 24,
            "{stored:?}"
        );
        assert_eq!(
            registry_digest(repository, extra[0]).as_deref(),
            Some(summary.digest.as_str())
        );
    }
    assert!(
        run.stderr.contains("web | "),
        "build output is prefixed with the image name:\n{}",
        run.stderr
    );
    assert!(run.stderr.contains("worker | "), "{}", run.stderr);

    let web_uri = format!("{registry}/{web}:{short}");
    let worker_uri = format!("{registry}/{worker}:{short}");
    assert_eq!(
        ws.read("imagedefinitions.json"),
        format!(
            "[{{\"name\":\"web\",\"imageUri\":\"{web_uri}\"}},{{\"name\":\"worker\",\"imageUri\":\"{worker_uri}\"}}]\n"
        )
    );
    assert_eq!(
        ws.read("imageDetail.json"),
        format!("{{\"ImageURI\":\"{web_uri}\"}}\n")
    );
    let (web_digest, worker_digest) = (run.summary("web").digest, run.summary("worker").digest);
    assert_eq!(
        ws.read("build.json"),
        format!(
            "{{\"tag\":\"{short}\",\"images\":{{\"web\":\"{web_uri}\",\"worker\":\"{worker_uri}\"}},\
             \"digests\":{{\"web\":\"{web_digest}\",\"worker\":\"{worker_digest}\"}}}}\n"
        )
    );

    // The images run, with their build args and only the files .dockerignore let through.
    assert_eq!(
        docker_run(&web_uri, &[]),
        "web: hello from web (production)\n"
    );
    assert_eq!(
        docker_run(&worker_uri, &[]),
        "worker: hello from worker (development)\n"
    );
    let expected: BTreeSet<String> = [
        "/app/.dockerignore",
        "/app/ecr-build.toml",
        "/app/docker/Dockerfile",
        "/app/docs/README.md",
        "/app/src/app.sh",
        "/app/greeting",
        "/app/app_env",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect();
    assert_eq!(files_in_image(&web_uri), expected);

    let revision = docker(&[
        "image",
        "inspect",
        "--format",
        "{{index .Config.Labels \"org.opencontainers.image.revision\"}}",
        &web_uri,
    ]);
    assert_eq!(revision.trim(), sha);

    // The login went to the engine in a header only: nothing in the docker client's config.
    let config_dir = &services().docker_config;
    let written: Vec<_> = std::fs::read_dir(config_dir)
        .map(|d| d.collect())
        .unwrap_or_default();
    assert!(
        written.is_empty(),
        "{} has {written:?}",
        config_dir.display()
    );
}

#[test]
fn rerun_on_the_same_commit_changes_nothing() {
    let (ws, web, worker) = example_app(&unique("e2e-rerun"));
    let sha = new_sha();
    let first = build(&ws, &sha).run().success();
    let artifacts_before: Vec<String> = ["imagedefinitions.json", "imageDetail.json", "build.json"]
        .iter()
        .map(|f| ws.read(f))
        .collect();

    let second = build(&ws, &sha).run().success().no_ecr_secret();
    for name in ["web", "worker"] {
        assert_eq!(
            second.summary(name).digest,
            first.summary(name).digest,
            "{name} digest changed"
        );
    }
    let artifacts_after: Vec<String> = ["imagedefinitions.json", "imageDetail.json", "build.json"]
        .iter()
        .map(|f| ws.read(f))
        .collect();
    assert_eq!(artifacts_before, artifacts_after);
    assert_eq!(
        image_tags(&web).len(),
        5,
        "three tags, the context digest tag and the record of what BuildKit read"
    );
    assert_eq!(image_tags(&worker).len(), 5);
    let leftovers: Vec<_> = ws
        .entries()
        .into_iter()
        .filter(|e| e.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn failing_run_step_names_image_and_step_and_writes_no_artifact() {
    let (ws, web, worker) = example_app(&unique("e2e-fail"));
    build(&ws, &new_sha()).run().success();
    let before: Vec<(String, String)> = ["imagedefinitions.json", "imageDetail.json", "build.json"]
        .iter()
        .map(|f| (f.to_string(), ws.read(f)))
        .collect();

    let dockerfile = ws.read("docker/Dockerfile").replace(
        "FROM ${BASE} AS web\n",
        "FROM ${BASE} AS web\nRUN echo compiling assets && echo assets failed to compile && exit 3\n",
    );
    ws.write("docker/Dockerfile", &dockerfile);
    let sha = new_sha();
    let run = build(&ws, &sha)
        .run()
        .failure(1)
        .no_ecr_secret()
        .stderr_has("web")
        .stderr_has("echo compiling assets && echo assets failed to compile && exit 3")
        .stderr_has("assets failed to compile")
        .stderr_has("1 of 2 images failed (web)");
    assert!(run.stderr.contains("exit code: 3"), "{}", run.stderr);
    for (file, contents) in before {
        assert_eq!(
            ws.read(&file),
            contents,
            "{file} changed after a failed run"
        );
    }
    assert!(
        registry_digest(&web, &sha[..7]).is_none(),
        "the failed image was pushed"
    );
    // One image failing stops nothing else: the worker is pushed under the new commit, and the
    // summary on stdout says which image failed.
    assert!(
        run.stdout.lines().any(|l| l == "web failed"),
        "{}",
        run.stdout
    );
    assert!(run.summary("worker").digest.starts_with("sha256:"));
    assert_eq!(
        registry_digest(&worker, &sha[..7]),
        Some(run.summary("worker").digest)
    );
}

#[test]
fn legacy_builder_builds_and_pushes_too() {
    let (ws, web, _worker) = example_app(&unique("e2e-legacy"));
    let sha = new_sha();
    let run = build(&ws, &sha)
        .args(["--builder", "legacy"])
        .run()
        .success()
        .no_ecr_secret();
    let digest = run.summary("web").digest;
    assert_eq!(registry_digest(&web, &sha[..7]), Some(digest));
    let web_uri = format!("{}/{web}:{}", services().registry, &sha[..7]);
    assert_eq!(
        docker_run(&web_uri, &[]),
        "web: hello from web (production)\n"
    );
    assert!(run.stderr.contains("web | Step "), "{}", run.stderr);
}

#[test]
fn dry_run_needs_no_aws_and_pushes_nothing() {
    let (ws, web, _worker) = example_app(&unique("e2e-dry"));
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args(["build", "--dry-run"])
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", &sha)
        .env("CODEBUILD_BUILD_NUMBER", "3")
        // No credentials, no endpoint, no region: a dry run must not need any of them.
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_ENDPOINT_URL")
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .run()
        .success()
        .stderr_has("dry-run.invalid");
    let short = &sha[..7];
    let uri = format!("dry-run.invalid/{web}:{short}");
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("\"imageUri\":\"{uri}\""))
    );
    assert!(run.summary("web").digest.starts_with("sha256:"));
    assert_eq!(docker_run(&uri, &[]), "web: hello from web (production)\n");
    assert!(registry_tags(&web).is_empty(), "a dry run pushed");

    // With an account and region, the URIs are the account's ECR registry.
    let run = ws
        .ecr_build()
        .args(["build", "--dry-run"])
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", &sha)
        .env("CODEBUILD_BUILD_NUMBER", "3")
        .env("AWS_ACCOUNT_ID", "210987654321")
        .env("AWS_REGION", "eu-west-1")
        .env_remove("AWS_ENDPOINT_URL")
        .run()
        .success();
    assert!(run.stderr.contains("AWS_ACCOUNT_ID"), "{}", run.stderr);
    assert!(ws.read("imageDetail.json").contains(&format!(
        "210987654321.dkr.ecr.eu-west-1.amazonaws.com/{web}:{short}"
    )));
}

#[test]
fn dry_run_without_a_commit_tags_from_the_context_digest() {
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {}\nCOPY hello.txt /hello.txt\n",
            services().base_image
        ),
    );
    ws.write("hello.txt", "hi\n");
    // Outside any git checkout and with no CodeBuild variables: there is no commit.
    let dry_run = || {
        ws.ecr_build()
            .args(["build", "--dry-run", "--repository", "solo/app"])
            .args(["--network", "none", "--tag", "{short_sha}"])
            .env("GIT_CEILING_DIRECTORIES", ws.path().parent().unwrap())
            .run()
            .success()
    };
    let run = dry_run().stderr_has("derived from the context digest");
    let tag = &run.summary("app").tags[0];
    assert_eq!(tag.len(), 7);
    // Same files, same tag.
    let again = dry_run();
    assert_eq!(&again.summary("app").tags[0], tag);
}

#[test]
fn ecr_password_is_never_printed_even_verbose() {
    let (ws, _web, _worker) = example_app(&unique("e2e-secret"));
    for verbosity in ["-v", "-vv"] {
        let run = build(&ws, &new_sha())
            .args([verbosity])
            .run()
            .success()
            .no_ecr_secret();
        assert!(
            run.stderr.contains("debug: "),
            "{verbosity} shows debug lines:\n{}",
            run.stderr
        );
    }
}

#[test]
fn plan_prints_images_tags_and_uris_without_building() {
    let (ws, web, worker) = example_app(&unique("e2e-plan"));
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args([
            "plan",
            "--registry",
            "111122223333.dkr.ecr.eu-central-1.amazonaws.com",
        ])
        .env("CODEBUILD_RESOLVED_SOURCE_VERSION", &sha)
        .env("CODEBUILD_BUILD_NUMBER", "5")
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&run.stdout).expect("plan is JSON");
    assert_eq!(plan["sha"], sha.as_str());
    let short = &sha[..7];
    assert_eq!(
        plan["tags"],
        serde_json::json!([short, "latest", "build-5"])
    );
    let images = plan["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    assert_eq!(images[0]["name"], "web");
    assert_eq!(images[1]["name"], "worker");
    assert_eq!(images[1]["repository"], worker.as_str());
    assert_eq!(
        images[0]["uris"][0],
        format!("111122223333.dkr.ecr.eu-central-1.amazonaws.com/{web}:{short}").as_str()
    );
    assert_eq!(images[0]["context_digest"].as_str().unwrap().len(), 64);
    assert!(!ws.exists("imagedefinitions.json"));
    assert!(registry_tags(&web).is_empty());
}

#[test]
fn dockerfile_outside_the_context_is_supported() {
    let ws = Workspace::empty();
    ws.write("app/hello.txt", "hello\n");
    ws.write(
        "docker/app.Dockerfile",
        &format!("FROM {}\nCOPY . /ctx\n", services().base_image),
    );
    let run = ws
        .ecr_build()
        .args([
            "build",
            "--dry-run",
            "--repository",
            "outside/app",
            "--network",
            "none",
        ])
        .args([
            "--context",
            "app",
            "--dockerfile",
            "../docker/app.Dockerfile",
            "--tag",
            "t",
        ])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    assert!(run.summary("app").digest.starts_with("sha256:"));
    let listing = docker_run(
        "dry-run.invalid/outside/app:t",
        &["find", "/ctx", "-type", "f"],
    );
    // Through the build session the Dockerfile travels apart: nothing generated lands in `COPY .`.
    assert_eq!(listing.lines().collect::<Vec<_>>(), ["/ctx/hello.txt"]);
}

#[test]
fn output_redirected_into_the_context_is_never_sent() {
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!("FROM {}\nCOPY . /ctx/\n", services().base_image),
    );
    ws.write("app.txt", "app");
    let sha = new_sha();
    let build = || {
        ws.ecr_build()
            .args([
                "build",
                "--dry-run",
                "-v",
                "--name",
                "app",
                "--repository",
                "e2e/logs",
            ])
            .args(["--network", "none", "--tag", "{short_sha}"])
            .env("ECR_BUILD_SHA", &sha)
            // `ecr-build build > build.log 2> build.err`, run in the context folder.
            .run_into(&ws.path().join("build.log"), &ws.path().join("build.err"))
            .success()
    };
    let first = build();
    let files: BTreeSet<String> = docker_run(
        &first.summary("app").digest,
        &["find", "/ctx", "-type", "f"],
    )
    .lines()
    .map(str::to_owned)
    .collect();
    assert_eq!(
        files,
        BTreeSet::from(["/ctx/Dockerfile".to_owned(), "/ctx/app.txt".to_owned()])
    );
    // The log files are not part of the context digest either: the next run builds the same image.
    // (Read before it: the containerd image store drops an image whose only tag moves.)
    let built = image_content(&first.summary("app").digest);
    let again = build().summary("app").digest;
    assert_eq!(image_content(&again), built);
}
