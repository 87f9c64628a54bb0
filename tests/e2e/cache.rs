//! BuildKit's cache on fresh hosts: where the engine can export it (the containerd image store), a
//! registry cache beside the image (`buildcache`) lets a new host rebuild only what changed, every
//! stage included; elsewhere the run builds with the inline cache and says so in one line.

use std::process::Command;

use crate::harness::*;

const CLASSIC_LINE: &str = "which cannot export BuildKit's cache: building with the inline cache only; \
     turn on the containerd image store";

const CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// A base image in the registry, which a fresh engine pulls (it has no image of its own).
fn base_in_registry(name: &str) -> String {
    let repository = unique(&format!("e2e-cache/{name}-base"));
    create_repository(&repository);
    let ws = Workspace::empty();
    ws.write("Dockerfile", &format!("FROM {}\n", services().base_image));
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .args([
            "--repository",
            &repository,
            "--network",
            "none",
            "--tag",
            "1",
        ])
        .args(["--cache", "off"])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    format!("{}/{repository}:1", services().registry)
}

/// An app whose dependency stage is not in the final image.
fn multi_stage_app(base: &str) -> Workspace {
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {base} AS deps\nCOPY deps.txt /deps.txt\nRUN cp /deps.txt /deps.out && echo installed-$((6*7))\n\
             FROM {base}\nCOPY --from=deps /deps.out /deps.out\nCOPY app.txt /app.txt\n"
        ),
    );
    ws.write("deps.txt", "deps\n");
    ws.write("app.txt", "one\n");
    ws
}

fn build_on(ws: &Workspace, docker_host: &str, repository: &str, extra: &[&str]) -> Run {
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .args([
            "--repository",
            repository,
            "--name",
            "app",
            "--network",
            "none",
        ])
        .args(extra)
        .env("DOCKER_HOST", docker_host)
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success()
}

/// The config media type of the manifest under `tag`.
fn config_media_type(repository: &str, tag: &str) -> String {
    registry_manifest(repository, tag)["config"]["mediaType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

#[test]
fn a_fresh_host_rebuilds_only_what_changed() {
    let base = base_in_registry("fresh");
    let repository = unique("e2e-cache/fresh");
    create_repository(&repository);
    let ws = multi_stage_app(&base);
    let mut first_host = PrivateDockerd::start_after(std::time::Duration::ZERO);
    first_host.wait_started();
    let first = build_on(&ws, &first_host.docker_host(), &repository, &[]);
    assert_eq!(first.result("app"), "pushed");
    drop(first_host);

    // A new CodeBuild host: an engine with no build cache and no images; one source file changed.
    ws.write("app.txt", "two\n");
    let mut second_host = PrivateDockerd::start_after(std::time::Duration::ZERO);
    second_host.wait_started();
    let second = build_on(&ws, &second_host.docker_host(), &repository, &[]);
    assert_eq!(second.result("app"), "pushed", "{}", second.stderr);
    let image = format!(
        "{}/{repository}:{}",
        services().registry,
        second.summary("app").tags[0]
    );
    // The step's output, which its command line does not hold.
    let deps_ran = second.stderr.contains("installed-42");
    if containerd_store() {
        assert_eq!(config_media_type(&repository, "buildcache"), CACHE_CONFIG);
        assert!(
            !deps_ran,
            "the dependency stage ran again:\n{}",
            second.stderr
        );
        assert!(
            second
                .stderr
                .contains("=> CACHED [deps 3/3] RUN cp /deps.txt"),
            "{}",
            second.stderr
        );
        assert!(!first.stderr.contains(CLASSIC_LINE), "{}", first.stderr);
    } else {
        // Inline cache only: the final image's layers, not the dependency stage's.
        assert!(registry_digest(&repository, "buildcache").is_none());
        assert!(deps_ran, "{}", second.stderr);
        assert_eq!(
            first.stderr.matches(CLASSIC_LINE).count(),
            1,
            "{}",
            first.stderr
        );
    }
    // The second host has the image it built.
    for (path, content) in [("/app.txt", "two\n"), ("/deps.out", "deps\n")] {
        let output = Command::new("docker")
            .args(["run", "--rm", "--network", "none", &image, "cat", path])
            .env("DOCKER_HOST", second_host.docker_host())
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&output.stdout),
            content,
            "{output:?}"
        );
    }
    // The run's tags and its ctx- tag name the image, never the cache.
    let summary = second.summary("app");
    assert_ne!(
        config_media_type(&repository, &summary.tags[0]),
        CACHE_CONFIG
    );
    drop(second_host);
}

#[test]
fn a_repository_that_refuses_to_move_buildcache_gets_the_inline_cache() {
    let repository = unique("e2e-cache/immutable");
    create_immutable_repository(&repository);
    let ws = multi_stage_app(&services().base_image);
    let run = build_on(&ws, &services().docker_host, &repository, &[]);
    assert_eq!(run.result("app"), "pushed");
    assert!(registry_digest(&repository, "buildcache").is_none());
    let immutable_line = format!(
        "repository {repository} does not let the tag buildcache move (its tags are immutable): \
         inline cache only; add the exclusion filter buildcache* to the repository's tag mutability"
    );
    let expected = match containerd_store() {
        true => immutable_line.as_str(),
        false => CLASSIC_LINE,
    };
    assert_eq!(run.stderr.matches(expected).count(), 1, "{}", run.stderr);
}

#[test]
fn cache_modes_and_their_repository_come_from_the_settings() {
    let repository = unique("e2e-cache/modes");
    let cache_repository = unique("e2e-cache/modes-cache");
    create_repository(&repository);
    create_repository(&cache_repository);
    let ws = multi_stage_app(&services().base_image);
    let run = build_on(
        &ws,
        &services().docker_host,
        &repository,
        &["--cache-repository", &cache_repository],
    );
    assert_eq!(run.result("app"), "pushed");
    assert!(registry_digest(&repository, "buildcache").is_none());
    assert_eq!(
        registry_digest(&cache_repository, "buildcache").is_some(),
        containerd_store()
    );
    // `inline` and `off` keep no registry cache and say nothing of one.
    for mode in ["inline", "off"] {
        let repository = unique(&format!("e2e-cache/{mode}"));
        create_repository(&repository);
        let run = ws
            .ecr_build()
            .args(["build", "--registry", &services().registry])
            .args(["--repository", &repository, "--network", "none"])
            .env("ECR_BUILD_CACHE", mode)
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .success();
        assert!(registry_digest(&repository, "buildcache").is_none());
        assert!(!run.stderr.contains(CLASSIC_LINE), "{}", run.stderr);
    }
}
