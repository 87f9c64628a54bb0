//! Base images without Docker Hub: with `base_image_mirror`, a Docker Hub base that the engine
//! does not have is read from the mirror (an ECR pull-through cache's prefix), offline, without an
//! edit of the Dockerfile; without it, the run fails naming the image.

use crate::harness::*;

/// An image that only the mirror under `prefix` holds, as `PREFIX/library/NAME:1` (NAME a Docker
/// Hub name that nothing has), with `/base.txt` saying `content`; returns NAME and the mirror's
/// reference. The engine does not have it.
fn only_in_the_mirror(prefix: &str, content: &str) -> (String, String) {
    let name = unique("someimage");
    let mirrored = format!("{prefix}/library/{name}");
    create_repository(&mirrored);
    (name, base_only_in_registry(&mirrored, content))
}

#[test]
fn docker_hub_bases_are_read_from_the_mirror() {
    let registry = &services().registry;
    let prefix = unique("e2e-mirror");
    let (name, mirror_ref) = only_in_the_mirror(&prefix, "from the mirror\n");

    let app_repository = unique("e2e-mirror-app");
    create_repository(&app_repository);
    let app = Workspace::empty();
    app.write("Dockerfile", &format!("FROM {name}:1\nCOPY a.txt /a\n"));
    app.write("a.txt", "a\n");
    let mirror = format!("{registry}/{prefix}");
    let build = || {
        app.ecr_build()
            .args(["build", "--registry", registry])
            .args(["--repository", &app_repository, "--name", "app"])
            .args(["--network", "none"])
            .env("ECR_BUILD_SHA", new_sha())
    };

    build().run().failure(1).stderr_has(&format!("{name}:1"));
    assert!(!image_exists(&format!("{name}:1")));

    let plan = app
        .ecr_build()
        .args([
            "plan",
            "--registry",
            registry,
            "--repository",
            &app_repository,
        ])
        .args(["--base-image-mirror", &format!("https://{mirror}/")])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(
        plan["images"][0]["base_images"],
        serde_json::json!({ format!("{name}:1"): mirror_ref })
    );

    let built = build()
        .args(["--base-image-mirror", &mirror])
        .run()
        .success();
    assert_eq!(built.result("app"), "pushed", "{}", built.stderr);
    let image = format!(
        "{registry}/{app_repository}:{}",
        built.summary("app").tags[0]
    );
    assert_eq!(
        docker_run(&image, &["cat", "/base.txt"]),
        "from the mirror\n"
    );
    // The engine now has it under its Docker Hub name, as the mirror holds it.
    assert_eq!(
        docker(&[
            "image",
            "inspect",
            "--format",
            "{{.Id}}",
            &format!("{name}:1")
        ]),
        docker(&["image", "inspect", "--format", "{{.Id}}", &mirror_ref])
    );

    // Where the base comes from is part of the recipe: without the mirror (the engine has the
    // base now) the image is built again, not found under the mirrored recipe.
    let unmirrored = build().run().success();
    assert_eq!(unmirrored.result("app"), "pushed", "{}", unmirrored.stderr);

    // A fresh host, the mirror from the environment: nothing changed, nothing is built, and a run
    // that builds nothing pulls nothing.
    docker(&["rmi", "-f", &format!("{name}:1"), &mirror_ref]);
    let again = build()
        .env("ECR_BUILD_BASE_IMAGE_MIRROR", &mirror)
        .run()
        .success();
    assert_eq!(again.result("app"), "reused", "{}", again.stderr);
    assert!(!image_exists(&format!("{name}:1")) && !image_exists(&mirror_ref));
}

#[test]
fn a_bad_mirror_is_named_before_anything_is_built() {
    let ws = Workspace::empty();
    ws.write("Dockerfile", "FROM scratch\n");
    for bad in ["docker-hub", "host.example/Upper"] {
        ws.ecr_build()
            .args(["plan", "--repository", "app", "--base-image-mirror", bad])
            .run()
            .failure(2)
            .stderr_has(&format!("base_image_mirror `{bad}`"));
    }
}

#[test]
fn copy_from_and_mount_from_images_are_read_from_the_mirror() {
    let registry = &services().registry;
    let prefix = unique("e2e-mirror");
    let (base, _) = only_in_the_mirror(&prefix, "base\n");
    let (copied, _) = only_in_the_mirror(&prefix, "copied\n");
    let (mounted, _) = only_in_the_mirror(&prefix, "mounted\n");
    let repository = unique("e2e-mirror-from");
    create_repository(&repository);
    let app = Workspace::empty();
    app.write(
        "Dockerfile",
        &format!(
            "FROM {base}:1\nCOPY --from={copied}:1 /base.txt /copied.txt\n\
             RUN --mount=type=bind,from={mounted}:1,target=/m cp /m/base.txt /mounted.txt\n"
        ),
    );
    let run = app
        .ecr_build()
        .args(["build", "--registry", registry, "--repository", &repository])
        .args(["--name", "app", "--network", "none"])
        .args(["--base-image-mirror", &format!("{registry}/{prefix}")])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let image = format!("{registry}/{repository}:{}", run.summary("app").tags[0]);
    for (path, content) in [
        ("/base.txt", "base\n"),
        ("/copied.txt", "copied\n"),
        ("/mounted.txt", "mounted\n"),
    ] {
        assert_eq!(docker_run(&image, &["cat", path]), content);
    }
}
