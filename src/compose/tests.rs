use super::*;

struct Files(tempfile::TempDir);

impl Files {
    fn new(files: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            let path = dir.path().join(name);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        Files(dir)
    }

    fn load(&self, names: &[&str], env: &[(&str, &str)]) -> Result<Project, ComposeError> {
        self.load_with_profiles(names, env, &[])
    }

    fn load_with_profiles(
        &self,
        names: &[&str],
        env: &[(&str, &str)],
        profiles: &[&str],
    ) -> Result<Project, ComposeError> {
        let files: Vec<PathBuf> = names.iter().map(|n| self.0.path().join(n)).collect();
        let profiles: Vec<String> = profiles.iter().map(|p| (*p).to_owned()).collect();
        load(
            &files,
            env.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            &profiles,
        )
    }
}

fn sorted(pairs: &[(String, String)]) -> Vec<(String, String)> {
    let mut pairs = pairs.to_vec();
    pairs.sort();
    pairs
}

const APP: &str = r#"
x-args: &args
  GREETING: hi
services:
  web:
    image: 123456789012.dkr.ecr.eu-west-1.amazonaws.com/app/web:${APP_VERSION}
    build:
      context: ./web
      dockerfile: docker/Dockerfile
      args:
        <<: *args
        MODE: ${MODE:-prod}
      target: release
      secrets: [npmrc, {source: token, target: tok}]
    ports: ["80:80"]
    x-ecr-build:
      name: web-container
  worker:
    image: app/worker
    build: ./worker
  db:
    image: postgres:16
secrets:
  npmrc:
    file: ./npmrc
  token:
    environment: TOKEN
"#;

#[test]
fn services_with_build_become_images_and_the_others_are_ignored() {
    let files = Files::new(&[("compose.yaml", APP)]);
    let project = files
        .load(&["compose.yaml"], &[("APP_VERSION", "1.2.3")])
        .unwrap();
    let names: Vec<&str> = project
        .services
        .iter()
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(names, ["web", "worker"], "file order; db has no build");
    let web = &project.services[0];
    assert_eq!(
        web.registry.as_deref(),
        Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
    );
    assert_eq!(
        (web.repository.as_str(), web.tag.as_deref()),
        ("app/web", Some("1.2.3"))
    );
    assert_eq!(web.context, files.0.path().join("./web"));
    assert_eq!(web.dockerfile, Path::new("docker/Dockerfile"));
    assert_eq!(
        sorted(&web.args),
        [
            ("GREETING".into(), "hi".into()),
            ("MODE".into(), "prod".into())
        ]
    );
    assert_eq!(
        web.secrets,
        [
            (
                "npmrc".to_owned(),
                format!("file:{}", files.0.path().join("./npmrc").display())
            ),
            ("tok".to_owned(), "env:TOKEN".to_owned())
        ]
    );
    let ecr_build = web.ecr_build.as_ref().expect("the service's x-ecr-build");
    assert_eq!(
        ecr_build.get("name").and_then(Value::as_str),
        Some("web-container")
    );
    let worker = &project.services[1];
    assert_eq!(
        (worker.registry.as_deref(), worker.tag.as_deref()),
        (None, None)
    );
    assert_eq!(worker.context, files.0.path().join("./worker"));
}

#[test]
fn override_files_merge_in_order_and_args_lists_become_maps() {
    let overrides = "services:\n  web:\n    build:\n      args: [EXTRA=1, MODE=dev]\n      cache_from: [app/web:latest]\n";
    let files = Files::new(&[("compose.yaml", APP), ("compose.override.yaml", overrides)]);
    assert_eq!(
        default_files(files.0.path()).unwrap(),
        [
            files.0.path().join("compose.yaml"),
            files.0.path().join("compose.override.yaml")
        ]
    );
    let project = files
        .load(
            &["compose.yaml", "compose.override.yaml"],
            &[("APP_VERSION", "1")],
        )
        .unwrap();
    let web = &project.services[0];
    assert_eq!(
        sorted(&web.args),
        [
            ("EXTRA".into(), "1".into()),
            ("GREETING".into(), "hi".into()),
            ("MODE".into(), "dev".into())
        ]
    );
    assert_eq!(web.cache_from, ["app/web:latest"]);
}

#[test]
fn an_unset_variable_names_itself_the_file_and_the_service() {
    let files = Files::new(&[("compose.yaml", APP)]);
    let err = files.load(&["compose.yaml"], &[]).unwrap_err().to_string();
    assert!(err.contains("compose.yaml"), "{err}");
    assert!(
        err.contains("APP_VERSION") && err.contains("service web"),
        "{err}"
    );
    // The .env beside the first file gives it; the environment wins over it.
    let files = Files::new(&[("compose.yaml", APP), (".env", "APP_VERSION=from-dotenv\n")]);
    let tag = |env: &[(&str, &str)]| {
        files.load(&["compose.yaml"], env).unwrap().services[0]
            .tag
            .clone()
    };
    assert_eq!(tag(&[]).as_deref(), Some("from-dotenv"));
    assert_eq!(
        tag(&[("APP_VERSION", "from-env")]).as_deref(),
        Some("from-env")
    );
}

#[test]
fn build_keys_ecr_build_cannot_honour_and_missing_images_are_named() {
    let ssh = "services:\n  web:\n    image: app/web\n    build:\n      context: .\n      ssh: [default]\n";
    let err = Files::new(&[("compose.yaml", ssh)])
        .load(&["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("service web") && err.contains("ssh"), "{err}");
    let no_image = "services:\n  web:\n    build: .\n";
    let err = Files::new(&[("compose.yaml", no_image)])
        .load(&["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("service web") && err.contains("no image"),
        "{err}"
    );
    let undefined = "services:\n  web:\n    image: app/web\n    build:\n      secrets: [nope]\n";
    let err = Files::new(&[("compose.yaml", undefined)])
        .load(&["compose.yaml"], &[])
        .unwrap_err()
        .to_string();
    assert!(err.contains("secret nope"), "{err}");
}

#[test]
fn image_references_split_as_docker_reads_them() {
    let split = |image| split_image(image).unwrap();
    assert_eq!(split("app/web"), (None, "app/web".into(), None));
    assert_eq!(split("web:1.0"), (None, "web".into(), Some("1.0".into())));
    assert_eq!(
        split("127.0.0.1:5000/app/web:v2"),
        (
            Some("127.0.0.1:5000".into()),
            "app/web".into(),
            Some("v2".into())
        )
    );
    assert_eq!(
        split("localhost/web"),
        (Some("localhost".into()), "web".into(), None)
    );
    assert!(split_image("app/web@sha256:abc").is_err());
    assert!(split_image("app/web:").is_err());
}

#[test]
fn profiles_enable_services_as_compose_does() {
    let files = Files::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: r.example/web\n    build: .\n  debug:\n    image: r.example/debug\n    \
         build: .\n    profiles: [debug]\n  tools:\n    image: r.example/tools\n    build: .\n    \
         profiles: [tools, debug]\n",
    )]);
    let names = |project: Project| -> Vec<String> {
        project.services.into_iter().map(|s| s.service).collect()
    };
    let none = files.load(&["compose.yaml"], &[]).unwrap();
    assert_eq!(names(none), ["web"]);
    let debug = files
        .load_with_profiles(&["compose.yaml"], &[], &["debug"])
        .unwrap();
    assert_eq!(names(debug), ["web", "debug", "tools"]);
    let from_env = files
        .load(&["compose.yaml"], &[("COMPOSE_PROFILES", "tools")])
        .unwrap();
    assert_eq!(names(from_env), ["web", "tools"]);
    let all = files
        .load_with_profiles(&["compose.yaml"], &[], &["*"])
        .unwrap();
    assert_eq!(names(all).len(), 3);
    // COMPOSE_PROFILES in .env counts too.
    std::fs::write(files.0.path().join(".env"), "COMPOSE_PROFILES=debug\n").unwrap();
    assert_eq!(names(files.load(&["compose.yaml"], &[]).unwrap()).len(), 3);
}

#[test]
fn args_without_a_value_come_from_the_environment_then_dotenv() {
    let files = Files::new(&[
        (
            "compose.yaml",
            "services:\n  web:\n    image: r.example/web\n    build:\n      context: .\n      \
             args:\n        FROM_ENV:\n        FROM_DOTENV:\n        NOWHERE:\n  list:\n    \
             image: r.example/list\n    build:\n      context: .\n      args: [FROM_ENV, FROM_DOTENV, NOWHERE]\n",
        ),
        (".env", "FROM_DOTENV=dot\nFROM_ENV=loses\n"),
    ]);
    let project = files
        .load(&["compose.yaml"], &[("FROM_ENV", "env")])
        .unwrap();
    for service in &project.services {
        assert_eq!(
            sorted(&service.args),
            [
                ("FROM_DOTENV".to_owned(), "dot".to_owned()),
                ("FROM_ENV".to_owned(), "env".to_owned())
            ],
            "{}: an arg set nowhere stays unset",
            service.service
        );
    }
}

#[test]
fn extends_in_the_same_file_and_another_file_inherit_build_settings() {
    let files = Files::new(&[
        (
            "compose.yaml",
            "services:\n  base:\n    image: r.example/base\n    build:\n      context: ./app\n      \
             args: {LEVEL: base, KEEP: kept}\n      target: release\n  web:\n    extends: base\n    \
             image: r.example/web\n    build:\n      args: {LEVEL: web}\n  api:\n    extends:\n      \
             file: common/services.yaml\n      service: api-base\n    image: r.example/api\n",
        ),
        (
            "common/services.yaml",
            "services:\n  root:\n    build:\n      context: ./src\n      args: {FROM: root}\n  \
             api-base:\n    extends: root\n    build:\n      dockerfile: api.Dockerfile\n",
        ),
    ]);
    let project = files.load(&["compose.yaml"], &[]).unwrap();
    let by_name = |name: &str| {
        (project.services.iter())
            .find(|s| s.service == name)
            .unwrap_or_else(|| panic!("no {name}"))
    };
    let web = by_name("web");
    assert_eq!(
        sorted(&web.args),
        [
            ("KEEP".to_owned(), "kept".to_owned()),
            ("LEVEL".to_owned(), "web".to_owned())
        ]
    );
    assert_eq!(web.target.as_deref(), Some("release"));
    assert_eq!(web.context, files.0.path().join("./app"));
    let api = by_name("api");
    assert_eq!(api.context, files.0.path().join("common").join("./src"));
    assert_eq!(api.dockerfile, PathBuf::from("api.Dockerfile"));
    assert_eq!(api.args, [("FROM".to_owned(), "root".to_owned())]);
    let looped = Files::new(&[(
        "compose.yaml",
        "services:\n  a:\n    extends: b\n    image: r.example/a\n    build: .\n  b:\n    extends: a\n",
    )]);
    let err = looped.load(&["compose.yaml"], &[]).unwrap_err().to_string();
    assert!(err.contains("loop"), "{err}");
}

#[test]
fn include_adds_a_project_with_its_own_folder_and_env_file() {
    let files = Files::new(&[
        (
            "compose.yaml",
            "include:\n  - path: ../shared/compose.yaml\n    env_file: ../shared/custom.env\n  \
             - other/compose.yaml\nservices:\n  web:\n    image: r.example/web\n    build: .\n",
        ),
        (
            "../shared/compose.yaml",
            "services:\n  lib:\n    image: r.example/lib:${LIB_TAG}\n    build:\n      context: ./lib\n      \
             secrets: [token]\nsecrets:\n  token:\n    file: ./token.txt\n",
        ),
        ("../shared/custom.env", "LIB_TAG=from-custom\n"),
        (
            "other/compose.yaml",
            "services:\n  other:\n    image: r.example/other:${OTHER_TAG}\n    build: .\n",
        ),
        ("other/.env", "OTHER_TAG=from-other-dotenv\n"),
    ]);
    let root = files.0.path();
    let project = files.load(&["compose.yaml"], &[]).unwrap();
    let names: Vec<&str> = project
        .services
        .iter()
        .map(|s| s.service.as_str())
        .collect();
    assert_eq!(names, ["web", "lib", "other"]);
    let lib = &project.services[1];
    assert_eq!(lib.tag.as_deref(), Some("from-custom"));
    assert_eq!(lib.context, root.join("../shared").join("./lib"));
    assert_eq!(
        lib.secrets,
        [(
            "token".to_owned(),
            format!(
                "file:{}",
                root.join("../shared").join("./token.txt").display()
            )
        )]
    );
    let other = &project.services[2];
    assert_eq!(other.tag.as_deref(), Some("from-other-dotenv"));
    assert_eq!(other.context, root.join("other").join("."));
    let clash = Files::new(&[
        (
            "compose.yaml",
            "include: [sub/compose.yaml]\nservices:\n  web:\n    image: r.example/web\n    build: .\n",
        ),
        (
            "sub/compose.yaml",
            "services:\n  web:\n    image: r.example/other\n    build: .\n",
        ),
    ]);
    let err = clash.load(&["compose.yaml"], &[]).unwrap_err().to_string();
    assert!(err.contains("services.web"), "{err}");
}

#[test]
fn extension_keys_in_build_remote_contexts_and_unset_runtime_variables() {
    let files = Files::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: r.example/web\n    build:\n      context: .\n      \
         x-notes: anything\n    environment:\n      - DB_PASSWORD=${DB_PASSWORD}\n  db:\n    \
         image: postgres:${PG_VERSION}\n",
    )]);
    let project = files.load(&["compose.yaml"], &[]).unwrap();
    assert_eq!(
        project.services.len(),
        1,
        "runtime keys warn, they do not stop the run"
    );
    for build in [
        "https://github.com/docker/example.git#main",
        "git@github.com:docker/example.git",
    ] {
        let remote = Files::new(&[(
            "compose.yaml",
            &format!("services:\n  web:\n    image: r.example/web\n    build: \"{build}\"\n")[..],
        )]);
        let err = remote.load(&["compose.yaml"], &[]).unwrap_err().to_string();
        assert!(
            err.contains("remote context") && err.contains(build),
            "{err}"
        );
    }
    let strict = Files::new(&[(
        "compose.yaml",
        "services:\n  web:\n    image: r.example/web\n    build:\n      context: .\n      \
         args: {TOKEN: \"${TOKEN}\"}\n",
    )]);
    let err = strict.load(&["compose.yaml"], &[]).unwrap_err().to_string();
    assert!(
        err.contains("TOKEN") && err.contains("service web"),
        "{err}"
    );
}
