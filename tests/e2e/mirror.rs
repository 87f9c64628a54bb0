//! Base images without Docker Hub: with `base_image_mirror`, a Docker Hub base that the engine
//! does not have is read from the mirror (an ECR pull-through cache's prefix), offline, without an
//! edit of the Dockerfile; without it, the run fails naming the image.

use crate::harness::*;

#[test]
fn docker_hub_bases_are_read_from_the_mirror() {
    let registry = &services().registry;
    // A Docker Hub name that nothing has: only the mirror holds it, as `PREFIX/library/NAME:1`.
    let name = unique("someimage");
    let prefix = unique("e2e-mirror");
    let mirrored = format!("{prefix}/library/{name}");
    create_repository(&mirrored);
    let base = Workspace::empty();
    base.write(
        "Dockerfile",
        &format!("FROM {}\nCOPY base.txt /base.txt\n", services().base_image),
    );
    base.write("base.txt", "from the mirror\n");
    base.ecr_build()
        .args(["build", "--registry", registry, "--repository", &mirrored])
        .args(["--network", "none", "--tag", "1"])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let mirror_ref = format!("{registry}/{mirrored}:1");
    docker(&["rmi", "-f", &mirror_ref]);

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

    // A fresh host, the mirror from the environment: nothing changed, nothing is built.
    docker(&["rmi", "-f", &format!("{name}:1"), &mirror_ref]);
    let again = build()
        .env("ECR_BUILD_BASE_IMAGE_MIRROR", &mirror)
        .run()
        .success();
    assert_eq!(again.result("app"), "reused", "{}", again.stderr);

    // Where the base comes from is part of the recipe: without the mirror (the engine has the
    // base now) the image is built again, not found under the mirrored recipe.
    let unmirrored = build().run().success();
    assert_eq!(unmirrored.result("app"), "pushed", "{}", unmirrored.stderr);
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
