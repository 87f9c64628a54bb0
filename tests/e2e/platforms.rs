//! Multi-platform images: each platform built with BuildKit's `platform` (TARGETARCH set; a RUN
//! step under QEMU for arm64), pushed under its own `ctx-` tag, and an image index under the run's
//! tags that lists them.

use std::path::Path;

use crate::harness::*;

/// A Dockerfile whose RUN step writes the machine it ran on, from `FROM scratch` and the
/// busybox of the target architecture (nothing can be pulled).
fn app(repository: &str, platforms: &str) -> Workspace {
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!(
            "FROM scratch\nARG TARGETARCH\nCOPY bin/busybox-${{TARGETARCH}} /bin/busybox\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox uname -m > /arch && echo {} > /nonce\"]\n",
            new_sha()
        ),
    );
    let bin = ws.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let arm64 = required("ECR_BUILD_TEST_BUSYBOX_ARM64");
    std::fs::copy("/bin/busybox", bin.join("busybox-amd64")).unwrap();
    std::fs::copy(Path::new(&arm64), bin.join("busybox-arm64")).unwrap();
    // busybox-static:s390x, beside the arm64 one: no binfmt handler runs it here.
    let s390x = Path::new(&arm64)
        .parent()
        .unwrap()
        .join("../../s390x/bin/busybox");
    std::fs::copy(s390x, bin.join("busybox-s390x")).unwrap();
    ws.write(
        "ecr-build.toml",
        &format!("network = \"none\"\nplatforms = [{platforms}]\n[images.app]\nrepository = \"{repository}\"\n"),
    );
    ws
}

fn build(ws: &Workspace, sha: &str) -> Run {
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", sha)
        .run()
}

#[test]
fn two_platforms_make_an_index_of_two_images_each_built_for_its_architecture() {
    let repository = unique("e2e-platforms/app");
    create_repository(&repository);
    let ws = app(&repository, "\"linux/amd64\", \"linux/arm64\"");
    let sha = new_sha();
    let run = build(&ws, &sha).success();
    assert_eq!(run.summary("app").tags, std::slice::from_ref(&sha));
    let index = registry_manifest(&repository, &sha);
    assert_eq!(
        index["mediaType"],
        "application/vnd.oci.image.index.v1+json"
    );
    assert_eq!(
        index["annotations"]["org.opencontainers.image.revision"],
        sha.as_str()
    );
    assert_eq!(
        registry_digest(&repository, &sha),
        Some(run.summary("app").digest)
    );
    let children = index["manifests"].as_array().unwrap();
    let platforms: Vec<(&str, &str)> = (children.iter())
        .map(|c| {
            (
                c["platform"]["os"].as_str().unwrap(),
                c["platform"]["architecture"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(platforms, [("linux", "amd64"), ("linux", "arm64")]);
    for (child, (platform, machine)) in children
        .iter()
        .zip([("linux/amd64", "x86_64"), ("linux/arm64", "aarch64")])
    {
        let digest = child["digest"].as_str().unwrap();
        let config = registry_config(&repository, digest);
        assert_eq!(config["architecture"], platform.rsplit('/').next().unwrap());
        // What the RUN step wrote: it ran under that architecture. The engine has the image
        // under the ctx- tag that names it in the registry.
        let ctx = (registry_tags(&repository).into_iter())
            .filter(|tag| tag.starts_with("ctx-"))
            .find(|tag| registry_digest(&repository, tag).as_deref() == Some(digest))
            .unwrap_or_else(|| panic!("no ctx- tag names {digest}"));
        let image = format!("{}/{repository}:{ctx}", services().registry);
        assert_eq!(
            docker(&[
                "run",
                "--rm",
                "--platform",
                platform,
                &image,
                "/bin/busybox",
                "cat",
                "/arch"
            ])
            .trim(),
            machine
        );
    }
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("{repository}:{sha}\""))
    );
    // Each platform keeps a registry cache of its own where the engine can export one.
    let caches: Vec<String> = (registry_tags(&repository).into_iter())
        .filter(|tag| tag.starts_with("buildcache"))
        .collect();
    match containerd_store() {
        true => {
            assert_eq!(caches, ["buildcache-amd64", "buildcache-arm64"]);
            let digests: Vec<_> = (caches.iter())
                .map(|tag| {
                    let cache = registry_manifest(&repository, tag);
                    assert_eq!(
                        cache["config"]["mediaType"],
                        "application/vnd.buildkit.cacheconfig.v0"
                    );
                    registry_digest(&repository, tag)
                })
                .collect();
            assert_ne!(digests[0], digests[1]);
        }
        false => assert!(caches.is_empty(), "{caches:?}"),
    }

    // Nothing changed, new commit: every platform is reused, a new index names the new commit.
    let next = new_sha();
    let again = build(&ws, &next).success();
    assert!(
        !again.stderr.contains("=> "),
        "a build ran:\n{}",
        again.stderr
    );
    let reused = registry_manifest(&repository, &next);
    assert_eq!(reused["manifests"], index["manifests"]);
    assert_eq!(
        reused["annotations"]["org.opencontainers.image.revision"],
        next.as_str()
    );
}

#[test]
fn a_platform_the_engine_cannot_run_fails_its_image_naming_the_platform() {
    let repository = unique("e2e-platforms/bad");
    create_repository(&repository);
    let ws = app(&repository, "\"linux/amd64\", \"linux/arm/v7\"");
    // No arm busybox: TARGETARCH=arm has no binary to copy.
    build(&ws, &new_sha()).failure(1).stderr_has("linux/arm/v7");
    assert!(!ws.exists("imagedefinitions.json"));
    let unknown = app(&repository, "\"linux/amd64\", \"linux/arm65\"");
    build(&unknown, &new_sha())
        .failure(2)
        .stderr_has("linux/arm65");
}

#[test]
fn a_fan_out_over_two_engines_then_a_full_run_that_builds_nothing() {
    let repository = unique("e2e-platforms/fanout");
    create_repository(&repository);
    let ws = app(&repository, "\"linux/amd64\", \"linux/arm64\"");
    // Two hosts, one platform each, at the same time: CodeBuild batch jobs.
    let mut hosts = [
        PrivateDockerd::start_after(std::time::Duration::ZERO),
        PrivateDockerd::start_after(std::time::Duration::ZERO),
    ];
    for host in &mut hosts {
        host.wait_started();
    }
    let sha = new_sha();
    let jobs = std::thread::scope(|scope| {
        let handles: Vec<_> = (hosts.iter())
            .zip(["linux/amd64", "linux/arm64"])
            .map(|(host, platform)| {
                let (ws, sha, docker_host) = (&ws, &sha, host.docker_host());
                scope.spawn(move || {
                    ws.ecr_build()
                        .args(["build", "--registry", &services().registry])
                        .env("ECR_BUILD_PLATFORM", platform)
                        .env("ECR_BUILD_SHA", sha)
                        .env("DOCKER_HOST", docker_host)
                        .run()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    for job in jobs {
        let job = job.success().stderr_has("no artifact written");
        assert_eq!(job.summary("app").tags, std::slice::from_ref(&sha));
    }
    assert!(
        !ws.exists("imagedefinitions.json"),
        "a part writes no artifact"
    );
    assert_eq!(
        registry_digest(&repository, &sha),
        None,
        "a part puts no run tag"
    );

    // The full run finds every part: it builds nothing, puts the index, writes the artifacts.
    let full = build(&ws, &sha).success();
    assert!(
        !full.stderr.contains("=> "),
        "a build ran:\n{}",
        full.stderr
    );
    assert!(full.stdout.contains("app reused "), "{}", full.stdout);
    let index = registry_manifest(&repository, &sha);
    assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
    assert_eq!(
        registry_digest(&repository, &sha),
        Some(full.summary("app").digest)
    );
    assert!(
        ws.read("imagedefinitions.json")
            .contains(&format!("{repository}:{sha}\""))
    );
    assert!(
        !image_exists(&format!("{}/{repository}:{sha}", services().registry)),
        "the full run's engine built nothing"
    );
    // Nothing changed: every platform is reused again.
    let again = build(&ws, &new_sha()).success();
    assert!(
        !again.stderr.contains("=> "),
        "a build ran:\n{}",
        again.stderr
    );
}
