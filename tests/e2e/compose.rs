//! Compose files as the list of images: end to end against the registry and moto, and what
//! ecr-build reads from them compared with what Docker Compose 2.40 itself reads
//! (`docker compose config --format json`).

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::Value;

use crate::harness::*;

const DOCKERFILE: &str = "ARG BASE\nFROM ${BASE}\nARG SERVICE\nARG FROM_OVERRIDE=no\nRUN echo \"$SERVICE $FROM_OVERRIDE\" > /info\n";

/// A two-service app and a database, in a Compose file and its override.
fn compose_app(web: &str, worker: &str) -> Workspace {
    let ws = Workspace::empty();
    ws.write("Dockerfile", DOCKERFILE);
    ws.write(
        "compose.yaml",
        &format!(
            "services:\n  web:\n    image: {registry}/{web}:${{APP_VERSION}}\n    build:\n      context: .\n      args:\n        BASE: {base}\n        SERVICE: web\n  worker:\n    image: {registry}/{worker}:${{APP_VERSION}}\n    build:\n      context: .\n      args: [BASE={base}, SERVICE=worker]\n  db:\n    image: postgres:16\n    environment:\n      POSTGRES_PASSWORD: example\nx-ecr-build:\n  tags: [\"{{short_sha}}\"]\n  network: none\n",
            registry = services().registry,
            base = services().base_image,
        ),
    );
    ws.write(
        "compose.override.yaml",
        "services:\n  web:\n    build:\n      args:\n        FROM_OVERRIDE: \"yes\"\n",
    );
    ws
}

#[test]
fn a_compose_app_is_built_and_pushed_under_its_interpolated_tag() {
    let (web, worker) = (unique("e2e-compose/web"), unique("e2e-compose/worker"));
    create_repository(&web);
    create_repository(&worker);
    let ws = compose_app(&web, &worker);
    let sha = new_sha();
    let build = || {
        ws.ecr_build()
            .args([
                "build",
                "--compose",
                "compose.yaml",
                "--compose",
                "compose.override.yaml",
            ])
            .env("ECR_BUILD_SHA", &sha)
    };
    // APP_VERSION unset: exit 2 naming it, the file and the service; nothing built, no artifact.
    build()
        .run()
        .failure(2)
        .stderr_has("APP_VERSION")
        .stderr_has("compose.yaml")
        .stderr_has("service web");
    assert!(registry_tags(&web).is_empty() && !ws.exists("imagedefinitions.json"));

    let run = build()
        .env("APP_VERSION", "1.4.2")
        .run()
        .success()
        .no_ecr_secret();
    assert!(
        !run.stdout.lines().any(|line| line.starts_with("db ")),
        "the database is no image:\n{}",
        run.stdout
    );
    for (name, repository, info) in [("web", &web, "web yes"), ("worker", &worker, "worker no")] {
        let summary = run.summary(name);
        assert_eq!(summary.tags, ["1.4.2".to_owned(), sha[..7].to_owned()]);
        assert_eq!(registry_digest(repository, "1.4.2"), Some(summary.digest));
        let image = format!("{}/{repository}:1.4.2", services().registry);
        assert_eq!(docker_run(&image, &["cat", "/info"]).trim(), info);
    }
    assert_eq!(
        ws.read("imagedefinitions.json"),
        format!(
            "[{{\"name\":\"web\",\"imageUri\":\"{r}/{web}:1.4.2\"}},{{\"name\":\"worker\",\"imageUri\":\"{r}/{worker}:1.4.2\"}}]\n",
            r = services().registry
        )
    );
    // With no ecr-build.toml and no --compose, Compose's default files are used, and said so.
    let plan = ws
        .ecr_build()
        .args(["plan"])
        .env("APP_VERSION", "1.4.2")
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success()
        .stderr_has("compose.yaml and ");
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(plan["images"][0]["build_args"]["FROM_OVERRIDE"], "yes");
    // An ecr-build.toml may name the Compose files, and its settings come first.
    ws.write(
        "ecr-build.toml",
        "compose = [\"compose.yaml\"]\ntags = [\"t-{short_sha}\"]\n",
    );
    let plan = ws
        .ecr_build()
        .args(["plan"])
        .env("APP_VERSION", "2.0")
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success();
    let plan: Value = serde_json::from_str(&plan.stdout).unwrap();
    assert_eq!(
        plan["tags"],
        serde_json::json!(["2.0", format!("t-{}", &sha[..7])])
    );
    assert_eq!(
        plan["images"][0]["build_args"].get("FROM_OVERRIDE"),
        None,
        "no override file now"
    );
}

/// Projects that exercise what ecr-build reads: override files, list and map args, every form of
/// interpolation, `.env`, `dockerfile_inline`, secrets.
const CASES: &[(&str, &[(&str, &str)])] = &[
    (
        "overrides-and-interpolation",
        &[
            (
                "compose.yaml",
                "x-common: &common\n  COMMON: shared\nservices:\n  api:\n    image: 127.0.0.1:5000/team/api:${TAG:-latest}\n    build:\n      context: ./api\n      dockerfile: build/Dockerfile\n      target: ${TARGET-release}\n      args:\n        <<: *common\n        PLAIN: $PLAIN\n        BRACED: ${PLAIN}\n        EMPTY_DEFAULT: ${EMPTY:-fallback}\n        DASH_DEFAULT: ${EMPTY-kept-empty}\n        NESTED: ${UNSET:-${ALSO_UNSET:-${FROM_DOTENV}}}\n        REQUIRED: ${PLAIN:?plain is needed}\n        ALTERNATE: ${PLAIN:+alternate}\n        DOLLARS: price $$5\n      labels: [team=core, \"tier=${TIER:-backend}\"]\n      cache_from: [team/api:cache]\n      network: host\n      platforms: [linux/amd64]\n    ports: [\"8080:8080\"]\n  cache:\n    image: redis:7\n",
            ),
            (
                "compose.override.yaml",
                "services:\n  api:\n    build:\n      args: [OVERRIDE=1, PLAIN=overridden]\n      cache_from: [team/api:latest]\n      labels:\n        tier: frontend\n",
            ),
            (".env", "FROM_DOTENV=dotenv-value\nTAG=from-dotenv\n"),
            ("api/build/Dockerfile", "FROM scratch AS release\n"),
        ],
    ),
    (
        "inline-and-secrets",
        &[(
            "compose.yaml",
            "services:\n  job:\n    image: team/job\n    build:\n      context: .\n      dockerfile_inline: |\n        FROM scratch\n        COPY . /\n      secrets:\n        - npmrc\n        - source: token\n          target: api_token\nsecrets:\n  npmrc:\n    file: ./secrets/npmrc\n  token:\n    environment: API_TOKEN\n",
        )],
    ),
    (
        "short-forms",
        &[
            (
                "docker-compose.yml",
                "services:\n  web:\n    image: web:${VERSION:?set VERSION}\n    build: ./web\n  worker:\n    image: worker\n    build:\n      context: worker\n",
            ),
            ("web/Dockerfile", "FROM scratch\n"),
            ("worker/Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "profiles",
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    image: team/web\n    build: .\n  debug:\n    image: team/debug\n    build: .\n    profiles: [debug]\n  tools:\n    image: team/tools\n    build: .\n    profiles: [tools]\n  db:\n    image: postgres:16\n    profiles: [debug]\n",
            ),
            ("Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "extends-across-files",
        &[
            (
                "compose.yaml",
                "services:\n  base:\n    image: team/base\n    build:\n      context: ./app\n      args: {LEVEL: base, KEEP: kept}\n      target: release\n  web:\n    extends: base\n    image: team/web\n    build:\n      args: {LEVEL: web}\n  api:\n    extends:\n      file: common/services.yaml\n      service: api-base\n    image: team/api\n",
            ),
            (
                "common/services.yaml",
                "services:\n  root:\n    build:\n      context: ./src\n      args: {FROM: root}\n  api-base:\n    extends: root\n    build:\n      dockerfile: api.Dockerfile\n      labels: [tier=api]\n",
            ),
            ("app/Dockerfile", "FROM scratch AS release\n"),
            ("common/src/api.Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "include-with-its-own-env",
        &[
            (
                "compose.yaml",
                "include:\n  - path: ./other/../shared/compose.yaml\n    project_directory: other/../shared\n  - path: other/compose.yaml\n    env_file: other/custom.env\nservices:\n  web:\n    image: team/web\n    build: .\n",
            ),
            (
                "shared/compose.yaml",
                "services:\n  lib:\n    image: team/lib\n    build:\n      context: ./lib\n      args: [LIB_TAG, \"INTERPOLATED=${LIB_TAG}\"]\n",
            ),
            ("shared/.env", "LIB_TAG=from-shared-dotenv\n"),
            (
                "other/compose.yaml",
                "services:\n  other:\n    image: team/other\n    build:\n      context: .\n      args: {OTHER_TAG: \"${OTHER_TAG}\"}\n",
            ),
            ("other/custom.env", "OTHER_TAG=from-custom-env\n"),
            ("Dockerfile", "FROM scratch\n"),
            ("shared/lib/Dockerfile", "FROM scratch\n"),
            ("other/Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "args-without-value",
        &[
            (
                "compose.yaml",
                "services:\n  map:\n    image: team/map\n    build:\n      context: .\n      args:\n        FROM_ENV:\n        FROM_DOTENV:\n        NOWHERE:\n  list:\n    image: team/list\n    build:\n      context: .\n      args: [FROM_ENV, FROM_DOTENV, NOWHERE, GIVEN=yes]\n",
            ),
            (
                ".env",
                "FROM_DOTENV=dotenv-value\nFROM_ENV=the-environment-wins\n",
            ),
            ("Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "dotenv-forms",
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    image: team/web:${TAG}\n    build:\n      context: .\n      args:\n        TAG: ${TAG}\n        MULTI: ${MULTI}\n        SINGLE: ${SINGLE}\n        EXPORTED: ${EXPORTED}\n        COMMENTED: ${COMMENTED}\n        ESCAPED: ${ESCAPED}\n        FROM_ENV_FIRST: ${FROM_ENV_FIRST}\n        HASH: ${HASH}\n",
            ),
            (
                ".env",
                "# the base\nBASE=base-1\nTAG=${BASE}-x\nMULTI=\"first line\nsecond \\\"quoted\\\" line\"\nSINGLE='${BASE} stays $literal'\nexport EXPORTED=exported\nCOMMENTED=value # a comment\nESCAPED=\"tab\\there \\$BASE\"\nFROM_ENV_FIRST=${PLAIN}-from-dotenv\nHASH=a#b\n",
            ),
            ("Dockerfile", "FROM scratch\n"),
        ],
    ),
    (
        "extension-keys-in-build",
        &[
            (
                "compose.yaml",
                "services:\n  web:\n    image: team/web\n    build:\n      context: .\n      x-notes: built by ecr-build\n      x-owner: {team: core}\n      args: {A: b}\n    environment:\n      - DB_PASSWORD=${DB_PASSWORD}\n",
            ),
            ("Dockerfile", "FROM scratch\n"),
        ],
    ),
];

const ENV: &[(&str, &str)] = &[
    ("PLAIN", "plain-value"),
    ("EMPTY", ""),
    ("VERSION", "3.1"),
    ("COMPOSE_PROFILES", "debug"),
    ("FROM_ENV", "from-the-environment"),
];

/// What Docker Compose reads for every service that builds.
fn compose_config(dir: &Path, files: &[&str]) -> BTreeMap<String, Value> {
    let mut command = std::process::Command::new(required("ECR_BUILD_TEST_COMPOSE"));
    command.current_dir(dir).env_remove("COMPOSE_FILE");
    for file in files {
        command.args(["-f", file]);
    }
    for (name, value) in ENV {
        command.env(name, value);
    }
    let output = output_of(command.args(["config", "--format", "json"]));
    let model: Value = serde_json::from_slice(&output.stdout).unwrap();
    let services = model["services"].as_object().unwrap();
    (services.iter())
        .filter(|(_, s)| s.get("build").is_some())
        .map(|(name, s)| (name.clone(), s.clone()))
        .collect()
}

/// What ecr-build reads, from `plan`'s JSON.
fn ecr_build_plan(ws: &Workspace, files: &[&str]) -> BTreeMap<String, Value> {
    let mut run = ws.ecr_build().args(["plan", "--sha", &"a".repeat(40)]);
    for file in files {
        run = run.args(["--compose", file]);
    }
    for (name, value) in ENV {
        run = run.env(name, value);
    }
    let plan: Value = serde_json::from_str(&run.run().success().stdout).unwrap();
    (plan["images"].as_array().unwrap().iter())
        .map(|image| (image["name"].as_str().unwrap().to_owned(), image.clone()))
        .collect()
}

fn object_of_strings(value: &Value) -> BTreeMap<String, String> {
    (value.as_object().into_iter().flatten())
        .filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_owned())))
        .collect()
}

/// `docker compose config` writes a literal `$` as `$$`, so that its output reads back the same.
fn unescaped(values: BTreeMap<String, String>) -> BTreeMap<String, String> {
    (values.into_iter())
        .map(|(k, v)| (k, v.replace("$$", "$")))
        .collect()
}

#[test]
fn what_ecr_build_reads_equals_what_docker_compose_reads() {
    for (case, files) in CASES {
        let ws = Workspace::empty();
        for (name, text) in *files {
            ws.write(name, text);
        }
        // The files named on the command line: those at the top; the others are extended or
        // included.
        let names: Vec<&str> = (files.iter())
            .map(|(name, _)| *name)
            .filter(|name| name.ends_with(".yaml") || name.ends_with(".yml"))
            .filter(|name| !name.contains('/'))
            .collect();
        let theirs = compose_config(ws.path(), &names);
        let ours = ecr_build_plan(&ws, &names);
        assert_eq!(
            theirs.keys().collect::<Vec<_>>(),
            ours.keys().collect::<Vec<_>>(),
            "{case}: the services that build"
        );
        for (service, compose) in &theirs {
            let (build, ours) = (&compose["build"], &ours[service]);
            let context = build["context"].as_str().unwrap();
            assert_eq!(ours["context"], context, "{case} {service}: context");
            if let Some(inline) = build.get("dockerfile_inline") {
                assert_eq!(&ours["dockerfile_inline"], inline, "{case} {service}");
            } else {
                let dockerfile = Path::new(context).join(build["dockerfile"].as_str().unwrap());
                assert_eq!(
                    ours["dockerfile"],
                    dockerfile.to_str().unwrap(),
                    "{case} {service}"
                );
            }
            let null = Value::Null;
            assert_eq!(
                &ours["target"],
                build.get("target").unwrap_or(&null),
                "{case} {service}: target"
            );
            assert_eq!(
                object_of_strings(&ours["build_args"]),
                unescaped(object_of_strings(&build["args"])),
                "{case} {service}: args"
            );
            assert_eq!(
                object_of_strings(&ours["labels"]),
                unescaped(object_of_strings(&build["labels"])),
                "{case} {service}: labels"
            );
            let list = |v: Option<&Value>| v.cloned().unwrap_or(Value::Array(Vec::new()));
            assert_eq!(
                list(Some(&ours["cache_from"])),
                list(build.get("cache_from")),
                "{case} {service}: cache_from"
            );
            assert_eq!(
                &ours["network"],
                build.get("network").unwrap_or(&null),
                "{case} {service}: network"
            );
            assert_eq!(
                ours["platforms"],
                list(build.get("platforms")),
                "{case} {service}: platforms"
            );
            let secret_ids: Vec<String> = (build
                .get("secrets")
                .and_then(Value::as_array)
                .into_iter()
                .flatten())
            .map(|s| {
                s.get("target")
                    .unwrap_or(&s["source"])
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
            let our_ids: Vec<String> = ours["secrets"]
                .as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect();
            let mut sorted = secret_ids.clone();
            sorted.sort();
            assert_eq!(our_ids, sorted, "{case} {service}: secrets");
            // image: [REGISTRY/]REPO[:TAG]: the repository, and the registry and the primary tag
            // where it names them (a run's tags apply to every image it pushes).
            let image = compose["image"].as_str().unwrap();
            let (name, tag) = match image.rsplit_once(':') {
                Some((name, tag)) if !tag.contains('/') => (name, Some(tag)),
                _ => (image, None),
            };
            let uri = ours["uris"][0].as_str().unwrap();
            let (our_name, our_tag) = uri.rsplit_once(':').unwrap();
            assert!(
                our_name == name || our_name.ends_with(&format!("/{name}")),
                "{case} {service}: {uri} for {image}"
            );
            if let Some(tag) = tag {
                assert_eq!(our_tag, tag, "{case} {service}: {uri} for {image}");
            }
        }
    }
}

/// An app whose images come through a profile-only service, an `extends` chain and an included
/// file: ecr-build builds and pushes exactly what `docker compose build` builds, with the same
/// args, read back from the images.
#[test]
fn profiles_extends_and_include_build_what_docker_compose_builds() {
    let prefix = unique("e2e-compose-model");
    let registry = &services().registry;
    let base = &services().base_image;
    let ws = Workspace::empty();
    let dockerfile = "ARG BASE\nFROM ${BASE}\nARG SERVICE\nARG LEVEL=none\nARG TOKEN=none\nARG LIBV=none\n\
                      RUN echo \"$SERVICE $LEVEL $TOKEN $LIBV\" > /info\n";
    ws.write("Dockerfile", dockerfile);
    ws.write("lib/Dockerfile", dockerfile);
    ws.write(
        "compose.yaml",
        &format!(
            "include:\n  - lib/compose.yaml\nservices:\n  base:\n    image: {registry}/{prefix}/base\n    \
             build:\n      context: .\n      network: none\n      args: {{BASE: {base}, LEVEL: base, SERVICE: base}}\n  \
             web:\n    extends: base\n    image: {registry}/{prefix}/web\n    build:\n      args: {{LEVEL: web, SERVICE: web}}\n  \
             api:\n    extends: web\n    image: {registry}/{prefix}/api\n    build:\n      args:\n        SERVICE: api\n        TOKEN:\n  \
             debug:\n    image: {registry}/{prefix}/debug\n    profiles: [debug]\n    build:\n      context: .\n      \
             network: none\n      args: {{BASE: {base}, SERVICE: debug}}\nx-ecr-build:\n  tags: [\"{{short_sha}}\"]\n"
        ),
    );
    ws.write(
        "lib/compose.yaml",
        &format!(
            "services:\n  lib:\n    image: {registry}/{prefix}/lib\n    build:\n      context: .\n      \
             network: none\n      args: {{BASE: {base}, SERVICE: lib, LIBV: \"${{LIBV}}\"}}\n"
        ),
    );
    ws.write("lib/.env", "LIBV=from-lib-dotenv\n");
    ws.write(".env", "TOKEN=from-dotenv\n");
    let built = ["base", "web", "api", "lib"];
    for service in built.iter().chain(&["debug"]) {
        create_repository(&format!("{prefix}/{service}"));
    }

    // What Docker Compose builds: the images it tags `:latest`.
    // Without buildx (Docker 20.10), Compose builds through the Engine API.
    let config = buildx_config().unwrap_or_else(|| tempfile::tempdir().unwrap());
    output_of(
        std::process::Command::new(required("ECR_BUILD_TEST_COMPOSE"))
            .current_dir(ws.path())
            .env("DOCKER_HOST", &services().docker_host)
            .env("DOCKER_CONFIG", config.path())
            .env_remove("COMPOSE_PROFILES")
            .args(["build"]),
    );
    let composed = |service: &str| format!("{registry}/{prefix}/{service}:latest");
    let built_by_compose: Vec<&str> = (built.iter().chain(&["debug"]))
        .copied()
        .filter(|service| image_exists(&composed(service)))
        .collect();
    assert_eq!(built_by_compose, built, "what docker compose build built");

    let sha = new_sha();
    let run = ws
        .ecr_build()
        .args(["build", "--registry", registry])
        .env("ECR_BUILD_SHA", &sha)
        .env_remove("COMPOSE_PROFILES")
        .run()
        .success();
    let pushed: Vec<&str> = (run.stdout.lines())
        .filter(|line| line.split_whitespace().nth(1) == Some("pushed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    assert_eq!(pushed, built, "{}", run.stdout);
    for service in built {
        let ours = format!("{registry}/{prefix}/{service}:{}", &sha[..7]);
        assert_eq!(
            docker_run(&ours, &["cat", "/info"]),
            docker_run(&composed(service), &["cat", "/info"]),
            "{service}: the args of its image"
        );
    }
    assert_eq!(
        docker_run(
            &format!("{registry}/{prefix}/api:{}", &sha[..7]),
            &["cat", "/info"]
        ),
        "api web from-dotenv none\n"
    );
    // The profile enabled: the debug service too.
    let with_debug = ws
        .ecr_build()
        .args(["plan", "--profile", "debug"])
        .env("ECR_BUILD_SHA", &sha)
        .run()
        .success();
    let plan: Value = serde_json::from_str(&with_debug.stdout).unwrap();
    let names: Vec<&str> = (plan["images"].as_array().unwrap().iter())
        .map(|image| image["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["base", "web", "api", "debug", "lib"]);
}
