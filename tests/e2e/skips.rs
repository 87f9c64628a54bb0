//! Skips that cannot be stale: for each way a skip once went wrong (an image reused while BuildKit
//! would build another), an unchanged run reuses the image, and the edit that matters builds it
//! again with the edit in it. What decides is what BuildKit read, recorded per recipe, and the
//! base images' digests.

use crate::harness::*;

/// An app of one image: the files (`{base}` stands for the test base image), pushed to a
/// repository of its own.
struct App {
    ws: Workspace,
    repository: String,
}

impl App {
    fn new(name: &str, files: &[(&str, &str)]) -> App {
        let repository = unique(&format!("e2e-skip/{name}"));
        create_repository(&repository);
        let ws = Workspace::empty();
        for (path, content) in files {
            ws.write(path, &content.replace("{base}", &services().base_image));
        }
        App { ws, repository }
    }

    fn build(&self) -> Run {
        self.ws
            .ecr_build()
            .args(["build", "--registry", &services().registry])
            .args(["--repository", &self.repository, "--name", "app"])
            .args(["--network", "none"])
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .success()
    }

    /// Runs `command` in the image the run pushed.
    fn image_says(&self, run: &Run, command: &[&str]) -> String {
        let image = format!(
            "{}/{}:{}",
            services().registry,
            self.repository,
            run.summary("app").tags[0]
        );
        docker_run(&image, command)
    }

    /// Built, then reused while nothing changed (so the skip works at all), then built again once
    /// `edit` is written: the rebuilt image answers `probe` with `expected`.
    #[track_caller]
    fn rebuilds_after(&self, edit: &[(&str, &str)], probe: &[&str], expected: &str) {
        let first = self.build();
        assert_eq!(first.result("app"), "pushed");
        let unchanged = self.build();
        assert_eq!(unchanged.result("app"), "reused", "{}", unchanged.stderr);
        for (path, content) in edit {
            self.ws.write(path, content);
        }
        let edited = self.build();
        assert_eq!(
            edited.result("app"),
            "pushed",
            "the edit of {edit:?} was skipped:\n{}",
            edited.stderr
        );
        assert_eq!(self.image_says(&edited, probe), expected);
        // Where the inputs came from: nothing was recorded before the first build.
        for (run, source) in [
            (&first, "not-yet-known"),
            (&unchanged, "recorded"),
            (&edited, "recorded"),
        ] {
            let line = run.summary_line("app");
            assert!(line.contains(&format!(" inputs={source} ")), "{line}");
        }
    }
}

fn engine_major() -> u32 {
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    version.trim().split('.').next().unwrap().parse().unwrap()
}

#[test]
fn an_arg_whose_default_names_another_arg() {
    let dockerfiles = [
        "FROM {base}\nARG APP=web\nARG SRC=apps/${APP}\nCOPY ${SRC} /app/\n",
        "FROM {base}\nARG APP\nARG SRC=apps/${APP:-web}\nCOPY ${SRC} /app/\n",
        "ARG APP=web\nARG SRC=apps/${APP}\nFROM {base}\nARG SRC\nCOPY ${SRC} /app/\n",
    ];
    for dockerfile in dockerfiles {
        let app = App::new(
            "nested-arg",
            &[
                ("Dockerfile", dockerfile),
                ("apps/web/page.txt", "web one\n"),
                ("apps/api/page.txt", "api\n"),
            ],
        );
        app.rebuilds_after(
            &[("apps/web/page.txt", "web two\n")],
            &["cat", "/app/page.txt"],
            "web two\n",
        );
    }
}

#[test]
fn a_base_image_s_env_through_a_stage() {
    let prefix = unique("e2e-skip-env");
    let base = Workspace::empty();
    base.write(
        "Dockerfile",
        &format!("FROM {}\nENV CFG=production\n", services().base_image),
    );
    let base_tag = &new_sha()[..12];
    base.ecr_build()
        .args([
            "build",
            "--dry-run",
            "--repository",
            &format!("{prefix}/envbase"),
        ])
        .args(["--network", "none", "--tag", base_tag])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let dockerfile = format!(
        "FROM dry-run.invalid/{prefix}/envbase:{base_tag} AS base\nFROM base AS build\n\
         COPY config/${{CFG}}.json /cfg.json\n"
    );
    let app = App::new(
        "base-env",
        &[
            ("Dockerfile", &dockerfile),
            ("config/production.json", "{\"v\":1}\n"),
            ("config/staging.json", "{}\n"),
        ],
    );
    app.rebuilds_after(
        &[("config/production.json", "{\"v\":2}\n")],
        &["cat", "/cfg.json"],
        "{\"v\":2}\n",
    );
}

#[test]
fn env_that_names_a_variable_set_on_the_same_line() {
    let app = App::new(
        "env-line",
        &[
            (
                "Dockerfile",
                "FROM {base}\nENV DIR=old\nENV DIR=new SRC=$DIR\nCOPY $SRC /x/\n",
            ),
            ("old/f.txt", "old one\n"),
            ("new/f.txt", "new\n"),
        ],
    );
    app.rebuilds_after(
        &[("old/f.txt", "old two\n")],
        &["cat", "/x/f.txt"],
        "old two\n",
    );
}

#[test]
fn a_source_that_starts_with_a_hash() {
    let app = App::new(
        "hash-name",
        &[
            ("Dockerfile", "FROM {base}\nCOPY #notes.txt /x/\n"),
            ("#notes.txt", "first\n"),
        ],
    );
    app.rebuilds_after(
        &[("#notes.txt", "second\n")],
        &["cat", "/x/#notes.txt"],
        "second\n",
    );
}

#[test]
fn a_heredoc_whose_delimiter_has_a_dash() {
    if engine_major() < 23 {
        // Docker 20.10's built-in frontend has no heredocs: the body would be instructions.
        return;
    }
    let app = App::new(
        "heredoc-dash",
        &[
            (
                "Dockerfile",
                "FROM {base}\nCOPY app.txt /a\nRUN <<EOT-1 cat > /notes\nFROM scratch AS other\nEOT-1\n",
            ),
            ("app.txt", "one\n"),
        ],
    );
    app.rebuilds_after(&[("app.txt", "two\n")], &["cat", "/a"], "two\n");
}

#[test]
fn a_bind_mount_whose_source_is_a_nested_arg() {
    if engine_major() < 23 {
        // Docker 20.10's built-in frontend asks the file sync for `${SRC}` unexpanded, so such a
        // build fails there with the docker CLI too ("/${SRC}" not found).
        return;
    }
    let app = App::new(
        "bind-arg",
        &[
            (
                "Dockerfile",
                "FROM {base}\nARG DIR=data\nARG SRC=${DIR}/sub\n\
                 RUN --mount=type=bind,source=${SRC},target=/m cat /m/f.txt > /out\n",
            ),
            ("data/sub/f.txt", "one\n"),
        ],
    );
    app.rebuilds_after(&[("data/sub/f.txt", "two\n")], &["cat", "/out"], "two\n");
}

#[test]
fn a_dockerfile_s_own_ignore_file_decides_what_is_sent() {
    let app = App::new(
        "own-ignore",
        &[
            ("web.Dockerfile", "FROM {base}\nCOPY . /x/\n"),
            // The root file would leave data/ out; the Dockerfile's own file wins.
            (".dockerignore", "data\n"),
            ("web.Dockerfile.dockerignore", "secret.txt\n"),
            ("secret.txt", "not for the image\n"),
            ("data/f.txt", "one\n"),
        ],
    );
    // The artifacts go elsewhere: buildx below sends the folder as it is.
    let artifacts = tempfile::tempdir().unwrap();
    let build = |app: &App| {
        app.ws
            .ecr_build()
            .args(["build", "--registry", &services().registry])
            .args(["--repository", &app.repository, "--name", "app"])
            .args(["--network", "none", "--dockerfile", "web.Dockerfile"])
            .args([
                std::ffi::OsStr::new("--output-dir"),
                artifacts.path().as_os_str(),
            ])
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .success()
    };
    let first = build(&app);
    assert_eq!(first.result("app"), "pushed");
    let listing = app.image_says(&first, &["ls", "/x"]);
    assert!(!listing.contains("secret.txt"), "{listing}");
    assert!(listing.contains("data"), "{listing}");
    assert_eq!(build(&app).result("app"), "reused");
    app.ws.write("data/f.txt", "two\n");
    let edited = build(&app);
    assert_eq!(edited.result("app"), "pushed", "{}", edited.stderr);
    assert_eq!(app.image_says(&edited, &["cat", "/x/data/f.txt"]), "two\n");
    // What the root .dockerignore would have sent instead is no input: no rebuild.
    app.ws.write("secret.txt", "still not for the image\n");
    assert_eq!(build(&app).result("app"), "reused");
    if let Some(config) = buildx_config() {
        // The same files as `docker buildx build` (Docker 28's client) sends.
        let tag = format!("buildx-own-ignore:{}", &new_sha()[..12]);
        output_of(
            std::process::Command::new(required("ECR_BUILD_TEST_DOCKER_CLI"))
                .env("DOCKER_CONFIG", config.path())
                .args(["buildx", "build", "--network", "none", "-t", &tag])
                .args(["-f", "web.Dockerfile", "."])
                .current_dir(app.ws.path()),
        );
        assert_eq!(
            docker_run(&tag, &["ls", "-R", "/x"]),
            app.image_says(&edited, &["ls", "-R", "/x"])
        );
    }
}

#[test]
fn a_base_image_tag_that_moved() {
    let base_repository = unique("e2e-skip/moving-base");
    create_repository(&base_repository);
    let registry = &services().registry;
    // As on a fresh host: the engine does not have it, BuildKit pulls it.
    let push_base = |content: &str| base_only_in_registry(&base_repository, content);
    push_base("base one\n");
    let app = App::new(
        "moved-base",
        &[
            (
                "Dockerfile",
                &format!("FROM {registry}/{base_repository}:1\nCOPY a.txt /a\n"),
            ),
            ("a.txt", "a\n"),
        ],
    );
    // `latest` names the image a run replaces: what it was built on is known.
    let build = || {
        app.ws
            .ecr_build()
            .args(["build", "--registry", registry])
            .args(["--repository", &app.repository, "--name", "app"])
            .args([
                "--network",
                "none",
                "--tag",
                "{short_sha}",
                "--tag",
                "latest",
            ])
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .success()
    };
    assert_eq!(build().result("app"), "pushed");
    assert_eq!(build().result("app"), "reused");
    push_base("base two\n");
    let moved = build();
    assert_eq!(moved.result("app"), "pushed", "{}", moved.stderr);
    assert!(
        moved
            .summary_line("app")
            .ends_with(&format!(" (base {registry}/{base_repository}:1 moved)")),
        "{}",
        moved.stdout
    );
    assert_eq!(app.image_says(&moved, &["cat", "/base.txt"]), "base two\n");
    assert_eq!(build().result("app"), "reused");
}

#[test]
fn bad_dockerfiles_stop_plan_and_build_before_anything_is_built() {
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!("FROM {} AS deps\nCOPYY a /a\n", services().base_image),
    );
    for command in [&["plan"][..], &["build", "--dry-run"]] {
        ws.ecr_build()
            .args(command)
            .args(["--repository", "bad/dockerfile"])
            .args(["--network", "none"])
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .failure(2)
            .stderr_has("Dockerfile: line 2: unknown instruction `COPYY`");
    }
    ws.write(
        "Dockerfile",
        &format!(
            "FROM {0} AS deps\nFROM {0} AS release\n",
            services().base_image
        ),
    );
    ws.ecr_build()
        .args(["build", "--dry-run", "--repository", "bad/dockerfile"])
        .args(["--network", "none", "--target", "prod"])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .failure(2)
        .stderr_has("there is no stage named `prod`; its stages are: deps, release");
}
