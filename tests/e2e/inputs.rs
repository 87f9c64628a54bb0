//! Skip by what each Dockerfile reads: an image whose Dockerfile's inputs did not change is
//! reused, whatever else changed in a shared context; and BuildKit itself agrees.

use std::collections::HashMap;

use crate::harness::*;

/// The usual Fargate task from one repository: nginx copies its config and `public/`, php copies
/// `app/`, and a third image copies everything.
fn two_services(prefix: &str) -> (Workspace, [String; 3]) {
    let ws = Workspace::empty();
    let base = &services().base_image;
    let repositories = [
        format!("{prefix}/nginx"),
        format!("{prefix}/php"),
        format!("{prefix}/all"),
    ];
    for repository in &repositories {
        create_repository(repository);
    }
    ws.write(
        "ecr-build.toml",
        &format!(
            "network = \"none\"\ntags = [\"{{short_sha}}\", \"latest\"]\n\n\
             [images.nginx]\nrepository = \"{}\"\ndockerfile = \"docker/nginx/Dockerfile\"\n\n\
             [images.php]\nrepository = \"{}\"\ndockerfile = \"docker/php/Dockerfile\"\n\n\
             [images.all]\nrepository = \"{}\"\ndockerfile = \"docker/all/Dockerfile\"\n",
            repositories[0], repositories[1], repositories[2]
        ),
    );
    ws.write(
        "docker/nginx/Dockerfile",
        &format!("FROM {base}\nCOPY docker/nginx/default.conf /etc/nginx/conf.d/\nCOPY public /srv/public\n"),
    );
    ws.write("docker/nginx/default.conf", "server { listen 80; }\n");
    ws.write(
        "docker/php/Dockerfile",
        &format!("FROM {base} AS deps\nCOPY composer.json /app/\nFROM deps\nCOPY app /app/src\n"),
    );
    ws.write(
        "docker/all/Dockerfile",
        &format!("FROM {base}\nCOPY . /x\n"),
    );
    ws.write(".dockerignore", "*.log\n");
    ws.write("composer.json", "{}\n");
    ws.write("app/index.php", "<?php echo 'hi';\n");
    ws.write("app/lib/util.php", "<?php\n");
    ws.write("public/index.html", "<h1>hi</h1>\n");
    ws.write("debug.log", "noise\n");
    (ws, repositories)
}

fn build(ws: &Workspace) -> Run {
    ws.ecr_build()
        .args(["build", "-v", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success()
}

#[track_caller]
fn assert_results(run: &Run, expected: [(&str, &str); 3]) {
    for (image, result) in expected {
        assert_eq!(
            run.result(image),
            result,
            "{image}\n{}\n{}",
            run.stdout,
            run.stderr
        );
    }
}

#[test]
fn a_change_rebuilds_only_the_images_whose_dockerfiles_read_it() {
    let (ws, _) = two_services(&unique("e2e-inputs"));
    let plan = ws
        .ecr_build()
        .args(["plan", "--registry", &services().registry])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let inputs: HashMap<&str, &serde_json::Value> = plan["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| (image["name"].as_str().unwrap(), &image["inputs"]))
        .collect();
    assert_eq!(
        *inputs["nginx"],
        serde_json::json!({"paths": ["docker/nginx/default.conf", "public"]})
    );
    assert_eq!(
        *inputs["php"],
        serde_json::json!({"paths": ["app", "composer.json"]})
    );
    assert!(
        inputs["all"]["whole_context"]
            .as_str()
            .unwrap()
            .contains("COPY ."),
        "{}",
        inputs["all"]
    );

    let first = build(&ws);
    assert_results(
        &first,
        [("nginx", "pushed"), ("php", "pushed"), ("all", "pushed")],
    );
    assert!(
        first
            .stderr
            .lines()
            .any(|l| l.starts_with("all | debug: the whole context is an input")),
        "-v says why:\n{}",
        first.stderr
    );

    ws.write("app/lib/util.php", "<?php // changed\n");
    let php_changed = build(&ws);
    assert_results(
        &php_changed,
        [("nginx", "reused"), ("php", "pushed"), ("all", "pushed")],
    );
    let line = |image| php_changed.summary_line(image);
    assert!(
        line("nginx").ends_with(" (its inputs did not change)"),
        "{}",
        line("nginx")
    );
    assert!(line("php").ends_with(" (app changed)"), "{}", line("php"));
    assert!(
        line("all").ends_with(" (it reads the whole context)"),
        "{}",
        line("all")
    );

    ws.write("public/index.html", "<h1>changed</h1>\n");
    let public_changed = build(&ws);
    assert_results(
        &public_changed,
        [("nginx", "pushed"), ("php", "reused"), ("all", "pushed")],
    );

    assert!(
        (public_changed.stdout.lines())
            .any(|l| l.starts_with("nginx pushed") && l.ends_with(" (public changed)")),
        "{}",
        public_changed.stdout
    );

    ws.write("debug.log", "more noise\n");
    let ignored_changed = build(&ws);
    assert_results(
        &ignored_changed,
        [("nginx", "reused"), ("php", "reused"), ("all", "reused")],
    );

    ws.write("README.md", "a file no Dockerfile names\n");
    let other_changed = build(&ws);
    assert_results(
        &other_changed,
        [("nginx", "reused"), ("php", "reused"), ("all", "pushed")],
    );
}

#[test]
fn an_image_whose_base_runs_onbuild_triggers_is_rebuilt_when_what_they_read_changes() {
    let prefix = unique("e2e-onbuild");
    let ws = Workspace::empty();
    // A base image whose trigger copies the whole context into its children.
    ws.write(
        "base/Dockerfile",
        &format!("FROM {}\nONBUILD COPY . /app\n", services().base_image),
    );
    let base_tag = &new_sha()[..12];
    ws.ecr_build()
        .args([
            "build",
            "--dry-run",
            "--repository",
            &format!("{prefix}/base"),
        ])
        .args(["--network", "none", "--context", "base", "--tag", base_tag])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let repository = format!("{prefix}/app");
    create_repository(&repository);
    ws.write(
        "app/Dockerfile",
        &format!("FROM dry-run.invalid/{prefix}/base:{base_tag}\nCOPY x.txt /x\n"),
    );
    ws.write("app/x.txt", "x\n");
    ws.write("app/other.txt", "first\n");
    let build = || {
        ws.ecr_build()
            .args([
                "build",
                "--registry",
                &services().registry,
                "--repository",
                &repository,
            ])
            .args(["--network", "none", "--context", "app"])
            .env("ECR_BUILD_SHA", new_sha())
            .run()
            .success()
    };
    // BuildKit runs the trigger, so what it read includes the trigger's `COPY .`.
    let first = build();
    assert_eq!(first.result("app"), "pushed");
    assert_eq!(build().result("app"), "reused");
    // A file only the trigger reads: the image is built again and holds it.
    ws.write("app/other.txt", "second\n");
    let second = build();
    assert_eq!(second.result("app"), "pushed");
    let image = format!(
        "{}/{repository}:{}",
        services().registry,
        second.summary("app").tags[0]
    );
    assert_eq!(docker_run(&image, &["cat", "/app/other.txt"]), "second\n");
    assert_eq!(build().result("app"), "reused");
}

/// A corpus of Dockerfiles in the forms the analysis reads, over one tree.
const CORPUS: &[&str] = &[
    "FROM {base}\nCOPY app /app\nCOPY conf/*.ini /etc/\n",
    "FROM {base} AS deps\nCOPY lib/a.txt /deps/\nFROM {base} AS unused\nCOPY docs /docs\n\
     FROM deps\nCOPY --from=deps /deps /final\nCOPY [\"app/main.txt\", \"/main\"]\n",
    "ARG DIR=conf\nFROM {base}\nARG DIR\nARG EXTRA\nENV SUB=$DIR\nCOPY ${SUB}/ /c/\nCOPY lib${EXTRA:+/x} /lib\n",
    "FROM {base}\nRUN --mount=type=bind,source=docs/guide.md,target=/g cat /g > /guide\nCOPY app/sub /sub\n",
    "FROM {base}\nWORKDIR /w\nCOPY app/main.txt \\\n  lib/ \\\n  ./\n",
    "FROM {base}\nCOPY . /everything\n",
];

/// Forms that Docker 20.10's built-in frontend does not know (heredocs, `--exclude`), for the
/// engines whose frontend does (Docker 23 and later). `--parents` is still a labs flag in Docker
/// 28.5's built-in frontend: unit tests only.
const NEWER_CORPUS: &[&str] = &[
    "FROM {base}\nRUN <<EOF\nmkdir /made\nEOF\nCOPY <<-END /etc/note\n\tCOPY . /not-an-instruction\n\tEND\nCOPY app/main.txt /m\n",
    "FROM {base}\nCOPY --exclude=*.md app/sub/*.txt docs/ /p/\n",
    "FROM {base}\nCOPY --link --chmod=600 conf/a.ini lib/ /l/\n",
];

/// The files the edits pick from: some read by every Dockerfile above, some by none.
const TREE: &[&str] = &[
    "app/main.txt",
    "app/sub/one.txt",
    "app/sub/two.txt",
    "conf/a.ini",
    "conf/b.txt",
    "lib/a.txt",
    "lib/b.txt",
    "docs/guide.md",
    "docs/other.md",
    "other/x.txt",
    "notes.log",
];

/// One dry-run build with `--rebuild` at a fixed commit: its context digest (from `plan`) and
/// what BuildKit builds ([`image_content`]).
fn digest_and_image(ws: &Workspace, sha: &str, tag: &str) -> (String, String) {
    let plan = ws
        .ecr_build()
        .args(["plan", "--repository", "diff/inputs", "--network", "none"])
        .env("ECR_BUILD_SHA", sha)
        .run()
        .success();
    let plan: serde_json::Value = serde_json::from_str(&plan.stdout).unwrap();
    let digest = plan["images"][0]["context_digest"]
        .as_str()
        .unwrap()
        .to_owned();
    let build = ws
        .ecr_build()
        .args([
            "build",
            "--dry-run",
            "--rebuild",
            "--repository",
            "diff/inputs",
        ])
        .args(["--network", "none", "--tag", tag])
        .env("ECR_BUILD_SHA", sha)
        .run()
        .success();
    (digest, image_content(&build.summary("inputs").digest))
}

#[test]
fn an_unchanged_digest_is_an_image_buildkit_builds_all_from_cache() {
    let sha = new_sha();
    let mut rng = Rng(0x1a2b_3c4d_5e6f_7081 ^ u64::from_str_radix(&sha[..8], 16).unwrap());
    let mut skipped = 0;
    let version = docker(&["version", "--format", "{{.Server.Version}}"]);
    let major: u32 = version.trim().split('.').next().unwrap().parse().unwrap();
    let newer: &[&str] = if major >= 23 { NEWER_CORPUS } else { &[] };
    for (index, dockerfile) in CORPUS.iter().chain(newer).enumerate() {
        let ws = Workspace::empty();
        ws.write(
            "Dockerfile",
            &dockerfile.replace("{base}", &services().base_image),
        );
        ws.write(".dockerignore", "*.log\n");
        for path in TREE {
            ws.write(path, &format!("{path}\n"));
        }
        let tag = format!("{}-{index}", &sha[..12]);
        let (mut digest, mut image) = digest_and_image(&ws, &sha, &tag);
        for round in 0..6 {
            let path = TREE[rng.below(TREE.len())];
            match rng.below(3) {
                0 => {
                    ws.write(path, &format!("{path} edited in round {round}\n"));
                }
                1 => {
                    let dir = std::path::Path::new(path)
                        .parent()
                        .unwrap()
                        .to_str()
                        .unwrap();
                    ws.write(&format!("{dir}/new{round}.txt"), "new\n");
                }
                _ => {
                    use std::os::unix::fs::PermissionsExt;
                    let mode = if round % 2 == 0 { 0o600 } else { 0o644 };
                    std::fs::set_permissions(
                        ws.path().join(path),
                        std::fs::Permissions::from_mode(mode),
                    )
                    .unwrap();
                }
            }
            let (new_digest, new_image) = digest_and_image(&ws, &sha, &tag);
            if new_digest == digest {
                skipped += 1;
                assert_eq!(
                    new_image, image,
                    "Dockerfile {index} after editing {path}: ecr-build would skip it, but \
                     BuildKit built another image:\n{dockerfile}"
                );
            }
            (digest, image) = (new_digest, new_image);
        }
    }
    // The corpus and edits are meant to skip often; a run that never skips proves nothing.
    assert!(skipped >= 5, "only {skipped} edits left a digest unchanged");
}
