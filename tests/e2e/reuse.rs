//! Skip what did not change: an image whose context digest tag is in the registry is re-tagged, not rebuilt.

use crate::harness::*;

fn app(prefix: &str, immutable: bool) -> (Workspace, String, String) {
    let (ws, web, worker) = Workspace::example_app_in(prefix);
    for repository in [&web, &worker] {
        if immutable {
            create_immutable_repository(repository)
        } else {
            create_repository(repository)
        }
    }
    (ws, web, worker)
}

fn build(ws: &Workspace, sha: &str) -> Run {
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", sha)
        .run()
}

const REVISION: &str = "org.opencontainers.image.revision";
const CONTEXT: &str = "dev.ecr-build.context-digest";

#[test]
fn same_content_new_commit_builds_nothing_and_restamps_it() {
    let (ws, web, worker) = app(&unique("e2e-reuse"), false);
    let first_sha = new_sha();
    let first = build(&ws, &first_sha).success();
    assert_eq!(first.result("web"), "pushed");
    let blobs = (registry_layer_count(&web), registry_layer_count(&worker));
    assert!(blobs.0 > 0);

    let sha = new_sha();
    let short = &sha[..7];
    let second = build(&ws, &sha)
        .success()
        .no_ecr_secret()
        .stderr_has("unchanged:");
    for (name, repository) in [("web", &web), ("worker", &worker)] {
        assert_eq!(second.result(name), "reused");
        let digest = second.summary(name).digest;
        assert_ne!(
            digest,
            first.summary(name).digest,
            "{name}: a new config for the new commit"
        );
        assert_eq!(
            registry_digest(repository, short).as_deref(),
            Some(digest.as_str())
        );
        // The same layers; the config names the new commit and the same context.
        assert_eq!(
            registry_layers(repository, short),
            registry_layers(repository, &first_sha[..7])
        );
        let config = registry_config(repository, short);
        let old_config = registry_config(repository, &first_sha[..7]);
        assert_eq!(config["config"]["Labels"][REVISION], sha.as_str());
        assert_eq!(
            config["config"]["Labels"][CONTEXT],
            old_config["config"]["Labels"][CONTEXT]
        );
        // Nothing was built or tagged in the engine for the new commit.
        assert!(
            !image_exists(&format!("{}/{repository}:{short}", services().registry)),
            "{name} was built"
        );
    }
    assert!(
        !second.stderr.contains("=> "),
        "a build ran:\n{}",
        second.stderr
    );
    // One small blob each (the new config), no layer.
    assert_eq!(
        (registry_layer_count(&web), registry_layer_count(&worker)),
        (blobs.0 + 1, blobs.1 + 1),
        "only the config blob is new"
    );
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("{web}:{short}\""))
    );

    // The same commit again: the same digest, nothing new in the registry.
    let again = build(&ws, &sha).success();
    assert_eq!(again.summary("web").digest, second.summary("web").digest);
    assert_eq!(registry_layer_count(&web), blobs.0 + 1);

    // --rebuild builds anyway.
    let forced = ws
        .ecr_build()
        .args(["build", "--rebuild", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    assert_eq!(forced.result("web"), "pushed");
}

#[test]
fn a_sent_byte_rebuilds_and_an_ignored_byte_does_not() {
    let (ws, web, _worker) = app(&unique("e2e-bytes"), false);
    let first = build(&ws, &new_sha()).success();

    // src/debug.log is excluded by .dockerignore.
    ws.write("src/debug.log", "another line of debug output\n");
    let ignored_sha = new_sha();
    let ignored = build(&ws, &ignored_sha).success();
    assert_eq!(ignored.result("web"), "reused");
    assert_eq!(
        registry_layers(&web, &ignored_sha[..7]),
        registry_layers(&web, &first.summary("web").digest)
    );

    let script = ws.read("src/app.sh");
    ws.write("src/app.sh", &script.replace("echo \"$1:", "echo  \"$1:"));
    let sha = new_sha();
    let changed = build(&ws, &sha).success();
    assert_eq!(changed.result("web"), "pushed");
    assert_ne!(changed.summary("web").digest, first.summary("web").digest);
    assert_eq!(
        registry_digest(&web, &sha[..7]),
        Some(changed.summary("web").digest)
    );
}

#[test]
fn same_tree_in_two_folders_has_one_digest() {
    let a = Workspace::example_app();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = Workspace::example_app();
    // Different mtimes and a different creation order of the same files.
    std::fs::remove_file(b.path().join("src/app.sh")).unwrap();
    b.write("src/app.sh", &a.read("src/app.sh"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        b.path().join("src/app.sh"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let digest = |ws: &Workspace| -> Vec<String> {
        let run = ws
            .ecr_build()
            .args(["plan", "--sha", &"a".repeat(40)])
            .run()
            .success();
        let plan: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
        plan["images"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["context_digest"].as_str().unwrap().to_owned())
            .collect()
    };
    assert_eq!(digest(&a), digest(&b));
}

#[test]
fn immutable_repository_accepts_the_same_digest_and_refuses_another() {
    let (ws, web, _worker) = app(&unique("e2e-immutable"), true);
    let sha = new_sha();
    let first = build(&ws, &sha).success();
    let before = ws.read("imagedefinitions.json");

    // Same commit, same content: the tags already point at these digests.
    let again = build(&ws, &sha).success();
    assert_eq!(again.summary("web").digest, first.summary("web").digest);

    // Same commit, other content: the tag would have to move.
    let script = ws.read("src/app.sh");
    ws.write("src/app.sh", &format!("{script}# changed\n"));
    build(&ws, &sha)
        .failure(1)
        .stderr_has(&format!("{web}:{} already exists", &sha[..7]))
        .stderr_has("immutable");
    assert_eq!(ws.read("imagedefinitions.json"), before);
}

#[test]
fn cache_from_reuses_pushed_layers_on_a_host_without_build_cache() {
    let repository = unique("e2e-cache/app");
    create_repository(&repository);
    let ws = Workspace::empty();
    // FROM scratch: the fresh engine below has no base image, and needs none.
    ws.write("Dockerfile", "FROM scratch\nCOPY layer.bin /layer.bin\n");
    ws.write("layer.bin", &new_sha().repeat(1000));
    let build = |sha: &str, docker_host: &str, extra: &[&str]| {
        ws.ecr_build()
            .args(["build", "--name", "app", "--repository", &repository])
            .args(["--registry", &services().registry, "--network", "none"])
            .args(["--tag", "{short_sha}", "--tag", "latest"])
            .args(extra)
            .env("ECR_BUILD_SHA", sha)
            .env("DOCKER_HOST", docker_host)
            .run()
            .success()
    };
    let first = build(&new_sha(), &services().docker_host, &[]);
    let blobs_before = registry_layer_count(&repository);

    // A new CodeBuild host: an engine with no build cache and no images.
    let mut fresh = PrivateDockerd::start_after(std::time::Duration::ZERO);
    fresh.wait_started();
    let second = build(
        &new_sha(),
        &fresh.docker_host(),
        &["--rebuild", "--cache-from", &format!("{repository}:latest")],
    );
    assert!(
        second
            .stderr
            .contains("=> CACHED [1/1] COPY layer.bin /layer.bin"),
        "the pushed layer was not reused:\n{}",
        second.stderr
    );
    // The new commit's label makes a new image config, but the layer is the pushed one: only the
    // config blob is new in the repository.
    assert_ne!(second.summary("app").digest, first.summary("app").digest);
    assert_eq!(registry_layer_count(&repository), blobs_before + 1);
}

/// A repository with ECR's tag mutability and WILDCARD exclusion filters.
fn repository_with_exclusions(name: &str, mutability: &str, filters: &[&str]) {
    let filters: Vec<_> = filters
        .iter()
        .map(|f| serde_json::json!({"filterType": "WILDCARD", "filter": f}))
        .collect();
    ecr_call(
        "CreateRepository",
        serde_json::json!({
            "repositoryName": name,
            "imageTagMutability": mutability,
            "imageTagMutabilityExclusionFilters": filters,
        }),
    );
}

fn single_image(ws: &Workspace, repository: &str, sha: &str, tags: &[&str]) -> Run {
    let mut command = ws
        .ecr_build()
        .args(["build", "--name", "app", "--repository", repository])
        .args(["--registry", &services().registry, "--network", "none"]);
    for tag in tags {
        command = command.args(["--tag", tag]);
    }
    command.env("ECR_BUILD_SHA", sha).run()
}

fn app_dockerfile(ws: &Workspace, content: &str) {
    ws.write(
        "Dockerfile",
        &format!("FROM {}\nCOPY app.txt /app.txt\n", services().base_image),
    );
    ws.write("app.txt", content);
}

#[test]
fn latest_moves_on_every_run_of_an_immutable_except_latest_repository() {
    let repository = unique("e2e-excl/immutable");
    repository_with_exclusions(&repository, "IMMUTABLE_WITH_EXCLUSION", &["latest"]);
    let ws = Workspace::empty();
    let tags = ["{short_sha}", "latest"];
    app_dockerfile(&ws, "one");
    let first = single_image(&ws, &repository, &new_sha(), &tags).success();
    app_dockerfile(&ws, "two");
    let second = single_image(&ws, &repository, &new_sha(), &tags).success();
    assert_eq!(second.result("app"), "pushed");
    assert_eq!(
        registry_digest(&repository, "latest"),
        Some(second.summary("app").digest)
    );
    // Unchanged content for a third commit: re-stamped, and latest moves to it too.
    let third_sha = new_sha();
    let third = single_image(&ws, &repository, &third_sha, &tags).success();
    assert_eq!(third.result("app"), "reused");
    let digests = [&first, &second, &third].map(|run| run.summary("app").digest);
    assert!(
        digests[0] != digests[1] && digests[1] != digests[2],
        "{digests:?}"
    );
    assert_eq!(
        registry_digest(&repository, "latest").as_ref(),
        Some(&digests[2])
    );
    assert_eq!(
        registry_digest(&repository, &third_sha[..7]).as_ref(),
        Some(&digests[2])
    );
}

#[test]
fn an_immutable_release_tag_of_a_mutable_repository_is_refused_at_other_content() {
    let repository = unique("e2e-excl/mutable");
    repository_with_exclusions(&repository, "MUTABLE_WITH_EXCLUSION", &["release-*"]);
    let ws = Workspace::empty();
    let tags = ["release-7", "latest"];
    app_dockerfile(&ws, "one");
    let first = single_image(&ws, &repository, &new_sha(), &tags).success();
    let before = ws.read("imagedefinitions.json");
    app_dockerfile(&ws, "two");
    single_image(&ws, &repository, &new_sha(), &tags)
        .failure(1)
        .stderr_has(&format!("{repository}:release-7 already exists"))
        .stderr_has("immutable");
    assert_eq!(
        registry_digest(&repository, "release-7"),
        Some(first.summary("app").digest)
    );
    assert_eq!(
        ws.read("imagedefinitions.json"),
        before,
        "the earlier artifact stays"
    );
    // latest alone is mutable there: it moves.
    let moved = single_image(&ws, &repository, &new_sha(), &["latest"]).success();
    assert_eq!(
        registry_digest(&repository, "latest"),
        Some(moved.summary("app").digest)
    );
}

#[test]
fn digest_uris_name_exactly_what_the_registry_holds() {
    let (ws, web, worker) = app(&unique("e2e-digest-uri"), false);
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args([
            "build",
            "--image-uri",
            "digest",
            "--registry",
            &services().registry,
        ])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success();
    let definitions: serde_json::Value =
        serde_json::from_str(&ws.read("imagedefinitions.json")).unwrap();
    let build: serde_json::Value = serde_json::from_str(&ws.read("build.json")).unwrap();
    for (index, (name, repository)) in [("web", &web), ("worker", &worker)].into_iter().enumerate()
    {
        let digest = registry_digest(repository, &sha[..7]).unwrap();
        assert_eq!(run.summary(name).digest, digest);
        assert_eq!(
            definitions[index]["imageUri"],
            format!("{}/{repository}@{digest}", services().registry).as_str()
        );
        assert_eq!(build["digests"][name], digest.as_str());
        assert_eq!(build["images"][name], definitions[index]["imageUri"]);
    }
    let detail: serde_json::Value = serde_json::from_str(&ws.read("imageDetail.json")).unwrap();
    assert_eq!(detail["ImageURI"], definitions[0]["imageUri"]);
    // The env twin, and the default (tag) for a later run.
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .env("ECR_BUILD_IMAGE_URI", "digest")
        .run()
        .success();
    assert!(ws.read("imagedefinitions.json").contains('@'));
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success();
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("{web}:{}\"", &sha[..7]))
    );
}

#[test]
fn only_some_images_make_a_part_that_a_full_run_completes() {
    let (ws, web, worker) = app(&unique("e2e-only"), false);
    let sha = new_sha();
    let part = ws
        .ecr_build()
        .args([
            "build",
            "--only",
            "worker",
            "--registry",
            &services().registry,
        ])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success()
        .stderr_has("no artifact written");
    assert!(
        !part.stdout.lines().any(|line| line.starts_with("web ")),
        "{}",
        part.stdout
    );
    assert_eq!(part.result("worker"), "pushed");
    assert!(!ws.exists("imagedefinitions.json"));
    assert!(registry_tags(&web).is_empty(), "web is no part of it");
    let worker_tags = image_tags(&worker);
    let (ctx, record): (Vec<_>, Vec<_>) = worker_tags.iter().partition(|t| t.starts_with("ctx-"));
    assert!(
        ctx.len() == 1 && record.len() == 1 && record[0].starts_with("rcp-"),
        "a part pushes under its ctx- tag only, and records what BuildKit read: {worker_tags:?}"
    );
    let full = build(&ws, &sha).success();
    assert_eq!(full.result("worker"), "reused");
    assert_eq!(full.result("web"), "pushed");
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("{worker}:{}\"", &sha[..7]))
    );
}
