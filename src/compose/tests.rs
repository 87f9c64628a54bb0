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

    fn load(&self, names: &[&str], env: &[(&str, &str)]) -> Result<Project, ConfigError> {
        let files: Vec<PathBuf> = names.iter().map(|n| self.0.path().join(n)).collect();
        load(
            &files,
            env.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
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
    assert_eq!(web.settings.name.as_deref(), Some("web-container"));
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
