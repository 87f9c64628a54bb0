//! The custom CodeBuild image (docker/Dockerfile), built and used as CodeBuild uses it: a
//! privileged container that starts its own Docker engine (start-dockerd), then `ecr-build build`
//! of the example app against the test registry and moto.
//!
//! Its base image is made here (debootstrap of bookworm, imported), and it takes the ecr-build
//! binary under test instead of compiling one. On Docker 28 the container runs `--privileged`, as
//! CodeBuild runs it. This machine's capability bounding set lacks CAP_SYS_RESOURCE, and Docker
//! 20.10's `--privileged` then fails ("unable to apply caps"): there the container gets every other
//! capability, no seccomp or AppArmor profile, unmasked system paths and writable cgroups, which is
//! what privileged mode gives dockerd.

use std::path::Path;

use crate::harness::*;

const BASE: &str = "ecr-build-test/bookworm:base";

/// The image, built by ecr-build itself from docker/Dockerfile with ECR_BUILD_FROM=prebuilt.
fn build_the_image() -> String {
    services_function(&format!("ecr_build_bookworm_image {BASE}"));
    let context = Workspace::empty();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in ["docker/Dockerfile", "docker/start-dockerd.sh"] {
        std::fs::create_dir_all(context.path().join("docker")).unwrap();
        // std::fs::copy keeps the script's executable bit.
        std::fs::copy(repo.join(file), context.path().join(file)).unwrap();
    }
    std::fs::create_dir_all(context.path().join("target/release")).unwrap();
    std::fs::copy(
        env!("CARGO_BIN_EXE_ecr-build"),
        context.path().join("target/release/ecr-build"),
    )
    .unwrap();
    let tag = format!("test-{}", &new_sha()[..12]);
    context
        .ecr_build()
        .args([
            "build",
            "--dry-run",
            "--name",
            "codebuild",
            "--repository",
            "ecr-build/codebuild",
        ])
        .args(["--dockerfile", "docker/Dockerfile", "--tag", &tag])
        // RUN apt-get install docker.io: Debian's package registry, through the host's network.
        .args(["--network", "host"])
        .args(["--build-arg", &format!("BASE_IMAGE={BASE}")])
        .args(["--build-arg", "ECR_BUILD_FROM=prebuilt"])
        // This machine's package mirror serves a frozen snapshot of sid, whose Release file has expired.
        .args([
            "--build-arg",
            "APT_OPTIONS=-o Acquire::Check-Valid-Until=false",
        ])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    format!("dry-run.invalid/ecr-build/codebuild:{tag}")
}

#[test]
fn the_custom_codebuild_image_starts_docker_and_builds_the_example_app() {
    let image = build_the_image();
    let (ws, web, worker) = Workspace::example_app_in(&unique("e2e-codebuild"));
    create_repository(&web);
    create_repository(&worker);
    // The inner engine pulls nothing either: it gets the example's base image as a tarball.
    let seed = tempfile::tempdir().unwrap();
    let base_tar = seed.path().join("base.tar");
    docker(&[
        "save",
        "-o",
        base_tar.to_str().unwrap(),
        &services().base_image,
    ]);
    let cgroup_parent = format!("/{}/codebuild", required("ECR_BUILD_TEST_CGROUP_PARENT"));
    let sha = new_sha();
    let mount = |from: &Path, to: &str| format!("{}:{to}", from.display());
    let env = |name: &str| format!("{name}={}", required(name));
    let mut args: Vec<String> = ["run", "--rm", "--network", "host", "-w", "/src"]
        .map(str::to_owned)
        .into();
    // Docker 28 grants privileged mode with the capabilities the machine has; Docker 20.10 asks for
    // every capability and fails, so there it is spelt out without CAP_SYS_RESOURCE.
    if std::env::var("ECR_BUILD_ENGINE").is_ok_and(|engine| engine.starts_with("28")) {
        args.push("--privileged".into());
    } else {
        let privileges = [
            "--cap-add=ALL",
            "--cap-drop=SYS_RESOURCE",
            "--security-opt=seccomp=unconfined",
            "--security-opt=apparmor=unconfined",
            "--security-opt=systempaths=unconfined",
            "--volume=/sys/fs/cgroup:/sys/fs/cgroup:rw",
        ];
        args.extend(privileges.map(str::to_owned));
    }
    args.extend(["-v".into(), mount(ws.path(), "/src")]);
    args.extend(["-v".into(), mount(seed.path(), "/seed:ro")]);
    for variable in [
        format!(
            "DOCKERD_FLAGS=--iptables=false --bridge=none --storage-driver=native --cgroup-parent={cgroup_parent}"
        ),
        env("AWS_ENDPOINT_URL"),
        env("AWS_ACCESS_KEY_ID"),
        env("AWS_SECRET_ACCESS_KEY"),
        env("AWS_REGION"),
        "AWS_EC2_METADATA_DISABLED=true".into(),
        format!("CODEBUILD_RESOLVED_SOURCE_VERSION={sha}"),
    ] {
        args.extend(["-e".into(), variable]);
    }
    args.push(image.clone());
    args.extend([
        "sh".into(),
        "-c".into(),
        format!(
            "docker load -q -i /seed/base.tar >/dev/null \
             && docker version --format 'engine {{{{.Server.Version}}}}' \
             && docker info --format 'store {{{{json .DriverStatus}}}}' \
             && ecr-build build --registry {}",
            services().registry
        ),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let stdout = docker(&args);
    let short = &sha[..7];
    // A supported engine, with the containerd image store on: ecr-build keeps a registry cache.
    let engine = stdout
        .lines()
        .find_map(|l| l.strip_prefix("engine "))
        .unwrap_or_default();
    assert!(engine.starts_with("28."), "{stdout}");
    assert!(stdout.contains("io.containerd.snapshotter"), "{stdout}");
    assert!(registry_digest(&web, "buildcache").is_some(), "{stdout}");
    for (name, repository) in [("web", &web), ("worker", &worker)] {
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&format!("{name} pushed ")))
            .unwrap_or_else(|| panic!("{name} was not pushed:\n{stdout}"));
        let digest = registry_digest(repository, short).expect("pushed under the commit's tag");
        assert!(line.contains(&format!("digest={digest}")), "{line}");
    }
    let definitions = ws.read("imagedefinitions.json");
    assert!(
        definitions.contains(&format!("{}/{web}:{short}\"", services().registry)),
        "{definitions}"
    );
    assert!(ws.exists("imageDetail.json") && ws.exists("build.json"));
    docker(&["rmi", &image]);
}
