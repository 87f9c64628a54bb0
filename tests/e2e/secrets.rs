//! Build secrets: served on the BuildKit session, never in the image, the output, the artifacts or on disk.

use crate::harness::*;

fn base() -> &'static str {
    &services().base_image
}

/// A Dockerfile that keeps only the secret's sha256, and prints the secret itself so masking is proven.
/// BuildKit's cache ignores secret values, as `docker build` does: a step unique to this call keeps an
/// earlier run's layer (hashed from another value) from being reused.
fn hashing_dockerfile(ids: &[&str]) -> String {
    let mut text = format!("FROM {}\nRUN echo {} > /nonce\n", base(), new_sha());
    for id in ids {
        text.push_str(&format!(
            "RUN --mount=type=secret,id={id} sha256sum /run/secrets/{id} | cut -c1-64 > /{id}.sha256 && echo \"value: $(cat /run/secrets/{id})\"\n"
        ));
    }
    text
}

fn image_file(image: &str, path: &str) -> String {
    docker_run(image, &["cat", path]).trim().to_owned()
}

#[test]
fn ssm_secret_reaches_the_run_step_and_nowhere_else() {
    let prefix = format!("/{}", unique("e2e-secret"));
    let value = format!("pw-{}", new_sha());
    let parameter = format!("{prefix}/DB_PASSWORD");
    put_parameter(&parameter, &value, true);
    let repository = unique("e2e-secret/web");
    create_repository(&repository);

    let ws = Workspace::empty();
    ws.write("Dockerfile", &hashing_dockerfile(&["db_password"]));
    ws.write(
        "ecr-build.toml",
        &format!(
            "network = \"none\"\n[images.web]\nrepository = \"{repository}\"\nsecrets = {{ db_password = \"ssm:{parameter}\" }}\n"
        ),
    );
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args(["build", "-v", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success()
        .no_ecr_secret()
        .stderr_has("value: ***");

    let image = format!("{}/{repository}:{sha}", services().registry);
    assert_eq!(
        image_file(&image, "/db_password.sha256"),
        sha256_hex(value.as_bytes())
    );
    assert!(!run.stdout.contains(&value), "stdout leaks the secret");
    assert!(!run.stderr.contains(&value), "stderr leaks the secret");
    let history = docker(&["history", "--no-trunc", &image]);
    assert!(!history.contains(&value), "docker history leaks the secret");
    let inspect = docker(&["image", "inspect", &image]);
    assert!(
        !inspect.contains(&value),
        "docker image inspect leaks the secret"
    );
    let saved = saved_image(&image);
    assert!(
        contains(&saved, &sha256_hex(value.as_bytes())),
        "the control value is in the saved image"
    );
    assert!(
        !contains(&saved, &value),
        "a layer of the image holds the secret"
    );
    // Where the engine exports BuildKit's cache, no blob of it holds the secret either.
    let cached = registry_tags(&repository).contains("buildcache");
    assert_eq!(cached, containerd_store());
    if cached {
        let cache = registry_manifest(&repository, "buildcache");
        let blobs = std::iter::once(&cache["config"]).chain(cache["layers"].as_array().unwrap());
        for blob in blobs {
            let digest = blob["digest"].as_str().unwrap();
            let bytes = uncompressed(registry_blob(&repository, digest));
            assert!(
                !contains(&bytes, &value),
                "the cache blob {digest} holds the secret"
            );
        }
        assert!(cache["layers"].as_array().unwrap().len() > 1, "{cache}");
    }
    for (path, bytes) in files_below(ws.path()) {
        assert!(
            !contains(&bytes, &value),
            "{} holds the secret",
            path.display()
        );
    }
    assert!(ws.exists("imagedefinitions.json"));
}

#[test]
fn many_parameters_across_images_and_one_missing_fail_before_any_build() {
    let prefix = format!("/{}", unique("e2e-many"));
    let mut web_secrets = Vec::new();
    let mut worker_secrets = Vec::new();
    for n in 0..11 {
        let name = format!("{prefix}/P{n}");
        put_parameter(&name, &format!("value-{n}-{}", new_sha()), n % 2 == 0);
        let entry = format!("p{n} = \"ssm:{name}\"");
        if n < 6 {
            web_secrets.push(entry)
        } else {
            worker_secrets.push(entry)
        }
    }
    let missing = format!("{prefix}/NOT_THERE");
    worker_secrets.push(format!("gone = \"ssm:{missing}\""));
    let web = unique("e2e-many/web");
    let worker = unique("e2e-many/worker");
    create_repository(&web);
    create_repository(&worker);
    let ws = Workspace::empty();
    ws.write("Dockerfile", &format!("FROM {}\nRUN true\n", base()));
    ws.write(
        "ecr-build.toml",
        &format!(
            "network = \"none\"\n[images.web]\nrepository = \"{web}\"\nsecrets = {{ {} }}\n\
             [images.worker]\nrepository = \"{worker}\"\nsecrets = {{ {} }}\n",
            web_secrets.join(", "),
            worker_secrets.join(", ")
        ),
    );
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .failure(1)
        .stderr_has(&format!("SSM parameters not found in us-east-1: {missing}"));
    assert!(
        !run.stderr.contains("building"),
        "a build started:\n{}",
        run.stderr
    );
    for repository in [&web, &worker] {
        assert!(!image_exists(&format!(
            "{}/{repository}:{sha}",
            services().registry
        )));
    }
    assert!(!ws.exists("imagedefinitions.json"));
}

#[test]
fn ssm_path_serves_nested_parameters_across_pages() {
    let prefix = format!("/{}/app", unique("e2e-path"));
    let mut values = Vec::new();
    for n in 0..12 {
        // Nested below the path too: the id is the last segment.
        let name = if n % 3 == 0 {
            format!("{prefix}/db/k{n}")
        } else {
            format!("{prefix}/k{n}")
        };
        let value = format!("v{n}-{}", new_sha());
        put_parameter(&name, &value, true);
        values.push((format!("k{n}"), value));
    }
    let repository = unique("e2e-path/app");
    create_repository(&repository);
    let ws = Workspace::empty();
    ws.write("Dockerfile", &hashing_dockerfile(&["k0", "k5", "k11"]));
    ws.write(
        "ecr-build.toml",
        &format!("network = \"none\"\nssm_path = \"{prefix}/\"\n[images.app]\nrepository = \"{repository}\"\n"),
    );
    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success();
    let image = format!("{}/{repository}:{sha}", services().registry);
    for (id, value) in values
        .iter()
        .filter(|(id, _)| ["k0", "k5", "k11"].contains(&id.as_str()))
    {
        assert_eq!(
            image_file(&image, &format!("/{id}.sha256")),
            sha256_hex(value.as_bytes()),
            "{id}"
        );
        assert!(!run.stderr.contains(value.as_str()), "stderr leaks {id}");
    }
}

#[test]
fn legacy_builder_refuses_secrets_unless_build_args_are_allowed() {
    let repository = unique("e2e-legacy-secret/app");
    create_repository(&repository);
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {}\nARG token\nRUN echo -n \"$token\" | sha256sum | cut -c1-64 > /token.sha256\n",
            base()
        ),
    );
    let config = |allow: bool| {
        format!(
            "network = \"none\"\nbuilder = \"legacy\"\n[images.app]\nrepository = \"{repository}\"\n\
             secrets = {{ token = \"env:APP_TOKEN\" }}\nallow_secret_build_args = {allow}\n"
        )
    };
    ws.write("ecr-build.toml", &config(false));
    let sha = new_sha();
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .env("APP_TOKEN", "tok-123456")
        .run()
        .failure(2)
        .stderr_has("image app has secrets, which only BuildKit can mount")
        .stderr_has("allow_secret_build_args");

    ws.write("ecr-build.toml", &config(true));
    ws.ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", &sha)
        .env("APP_TOKEN", "tok-123456")
        .run()
        .success()
        .stderr_has("app | warning: secrets token are also passed as build args");
    let image = format!("{}/{repository}:{sha}", services().registry);
    assert_eq!(
        image_file(&image, "/token.sha256"),
        sha256_hex(b"tok-123456")
    );
}

#[test]
fn dry_run_needs_a_stand_in_for_ssm_secrets() {
    let ws = Workspace::empty();
    ws.write("Dockerfile", &hashing_dockerfile(&["db_password"]));
    ws.write(
        "ecr-build.toml",
        "network = \"none\"\n[images.web]\nrepository = \"dry/web\"\nsecrets = { db_password = \"ssm:/app/DB_PASSWORD\" }\n",
    );
    let sha = new_sha();
    ws.ecr_build()
        .args(["build", "--dry-run"])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .failure(2)
        .stderr_has("web: db_password = ssm:/app/DB_PASSWORD")
        .stderr_has("--secret");
    ws.write("local-password.txt", "from-a-file");
    ws.ecr_build()
        .args([
            "build",
            "--dry-run",
            "--secret",
            "db_password=file:local-password.txt",
        ])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success()
        .stderr_has("value: ***");
    let image = format!("dry-run.invalid/dry/web:{sha}");
    assert_eq!(
        image_file(&image, "/db_password.sha256"),
        sha256_hex(b"from-a-file")
    );
}

#[test]
fn every_line_of_a_multi_line_secret_is_masked_in_the_build_output() {
    let nonce = new_sha();
    let key = format!(
        "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0B{}\nAQEFAASCBKcwggSjAgEAAoIB{}\n  AQC7VJTUt9Us8cKjMzEfYyjiWA4R  \n-----END PRIVATE KEY-----\n",
        &nonce[..16],
        &nonce[16..32]
    );
    let ws = Workspace::empty();
    // The key comes out whole, line by line, and with a prefix that makes each line part of a longer one.
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {}\nRUN echo {} > /nonce\nRUN --mount=type=secret,id=key cat /run/secrets/key && sed 's/^/key line: /' /run/secrets/key\n",
            base(),
            new_sha()
        ),
    );
    let run = ws
        .ecr_build()
        .args([
            "build",
            "--dry-run",
            "--name",
            "app",
            "--repository",
            "e2e/multiline",
        ])
        .args([
            "--network",
            "none",
            "--tag",
            "{short_sha}",
            "--secret",
            "key=env:PRIVATE_KEY",
        ])
        .env("ECR_BUILD_SHA", new_sha())
        .env("PRIVATE_KEY", &key)
        .run()
        .success()
        .stderr_has("key line: ***");
    for line in key.lines().map(str::trim).filter(|l| !l.is_empty()) {
        assert!(
            !run.stderr.contains(line),
            "stderr shows the key line {line:?}:\n{}",
            run.stderr
        );
        assert!(
            !run.stdout.contains(line),
            "stdout shows the key line {line:?}"
        );
    }
}

#[test]
fn two_ssm_path_parameters_for_one_secret_id_are_an_error_naming_both() {
    let prefix = format!("/{}/prod", unique("e2e-clash"));
    let db = format!("{prefix}/db/PASSWORD");
    let cache = format!("{prefix}/cache/PASSWORD");
    put_parameter(&db, "db-pw-value", true);
    put_parameter(&cache, "cache-pw-value", true);
    let repository = unique("e2e-clash/app");
    create_repository(&repository);
    let ws = Workspace::empty();
    ws.write("Dockerfile", &format!("FROM {}\nRUN true\n", base()));
    ws.write(
        "ecr-build.toml",
        &format!("network = \"none\"\nssm_path = \"{prefix}/\"\n[images.app]\nrepository = \"{repository}\"\n"),
    );
    let run = ws
        .ecr_build()
        .args(["build", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .failure(2)
        .stderr_has(&db)
        .stderr_has(&cache)
        .stderr_has("both become secret id PASSWORD");
    assert!(!run.stderr.contains("pw-value"), "{}", run.stderr);
    assert!(registry_tags(&repository).is_empty(), "nothing is pushed");
    assert!(!ws.exists("imagedefinitions.json"));
}
