//! The context through the build session's file sync: a warm engine asks only for what changed,
//! and what it receives is always what was hashed.

use std::time::Duration;

use crate::harness::*;

/// The files the main transfer of `image`'s context sent, from `-v`'s
/// `build session: context: N entries offered, K files sent: [a, b]` lines: the transfer that
/// offered most (BuildKit also asks for `.dockerignore` alone).
fn context_files_sent(stderr: &str, image: &str) -> Vec<String> {
    let prefix = format!("{image} | debug: build session: context: ");
    let transfers: Vec<(usize, Vec<String>)> = stderr
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .map(|rest| {
            let offered = rest.split_whitespace().next().unwrap().parse().unwrap();
            let list = &rest[rest.find('[').unwrap() + 1..rest.rfind(']').unwrap()];
            let files = list
                .split(", ")
                .filter(|name| !name.is_empty())
                .map(str::to_owned)
                .collect();
            (offered, files)
        })
        .collect();
    assert!(
        !transfers.is_empty(),
        "no context transfer logged:\n{stderr}"
    );
    transfers
        .into_iter()
        .max_by_key(|(offered, _)| *offered)
        .unwrap()
        .1
}

fn app(ws: &Workspace) {
    ws.write(
        "Dockerfile",
        &format!("FROM {}\nCOPY . /ctx\n", services().base_image),
    );
    ws.write(".dockerignore", "*.log\n");
    ws.write("a.txt", "a\n");
    ws.write("b.txt", "b\n");
    ws.write("sub/c.txt", "c\n");
    ws.write("noise.log", "ignored\n");
}

fn dry_run(ws: &Workspace, tag: &str) -> Run {
    ws.ecr_build()
        .args(["build", "-v", "--dry-run", "--repository", "filesync/app"])
        .args(["--network", "none", "--tag", tag])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success()
}

#[test]
fn a_warm_engine_asks_only_for_the_file_that_changed() {
    let ws = Workspace::empty();
    app(&ws);
    let tag = unique("warm");
    let first = dry_run(&ws, &tag);
    let mut sent = context_files_sent(&first.stderr, "app");
    sent.sort();
    assert_eq!(
        sent,
        [".dockerignore", "Dockerfile", "a.txt", "b.txt", "sub/c.txt"]
    );

    ws.write("b.txt", "b, changed\n");
    // An ignored file that changes is neither hashed nor offered.
    ws.write("noise.log", "more noise\n");
    let second = dry_run(&ws, &tag);
    assert_eq!(context_files_sent(&second.stderr, "app"), ["b.txt"]);
    let image = format!("dry-run.invalid/filesync/app:{tag}");
    assert_eq!(docker_run(&image, &["cat", "/ctx/b.txt"]), "b, changed\n");
    assert_eq!(docker_run(&image, &["cat", "/ctx/a.txt"]), "a\n");
    assert_eq!(
        docker_run(&image, &["ls", "/ctx"])
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["Dockerfile", "a.txt", "b.txt", "sub"]
    );
}

/// Two images built one after the other (`--jobs 1`): `first` runs a step that sleeps, and while
/// it does, `second`'s context has been hashed but not yet served.
fn two_images(ws: &Workspace) {
    // A new RUN_ID each time, so that the sleeping step is never a cached one.
    ws.write(
        "ecr-build.toml",
        &format!(
            "network = \"none\"\n\n[images.first]\nrepository = \"filesync/first\"\n\
             context = \"first\"\nbuild_args = {{ RUN_ID = \"{}\" }}\n\n\
             [images.second]\nrepository = \"filesync/second\"\ncontext = \"second\"\n",
            new_sha()
        ),
    );
    let base = &services().base_image;
    ws.write(
        "first/Dockerfile",
        &format!("FROM {base}\nARG RUN_ID\nRUN echo $RUN_ID && sleep 3\n"),
    );
    ws.write(
        "second/Dockerfile",
        &format!("FROM {base}\nCOPY data.txt /\n"),
    );
    ws.write("second/data.txt", "as hashed\n");
}

/// Starts the two-image run, tagged `tag`, and once `first`'s sleeping step runs, calls `change`.
fn run_changing_second_while_first_builds(ws: &Workspace, tag: &str, change: impl FnOnce()) -> Run {
    let mut running = ws
        .ecr_build()
        .args(["build", "-v", "--dry-run", "--jobs", "1", "--tag", tag])
        .env("ECR_BUILD_SHA", new_sha())
        .start();
    running.wait_for_stderr_line("first's sleeping step", Duration::from_secs(60), |line| {
        line.starts_with("first | ") && line.contains("sleep 3")
    });
    assert!(
        !running
            .stderr_so_far()
            .contains("second | debug: build session"),
        "second was served before first's step ran: the test's premise does not hold"
    );
    change();
    running.finish_within(Duration::from_secs(120)).run
}

#[test]
fn a_file_rewritten_after_it_was_hashed_fails_its_image_naming_it() {
    let ws = Workspace::empty();
    two_images(&ws);
    let data = ws.path().join("second/data.txt");
    let run = run_changing_second_while_first_builds(&ws, &unique("rewritten"), || {
        std::fs::write(&data, "rewritten\n").unwrap();
    })
    .failure(1)
    .stderr_has("1 of 2 images failed");
    let line = run
        .stderr
        .lines()
        .find(|line| line.contains("differs from what was hashed"))
        .unwrap_or_else(|| panic!("no line names the change:\n{}", run.stderr));
    assert!(line.contains(data.to_str().unwrap()), "{line}");
    assert!(line.len() < 300, "{line}");
    assert!(!ws.exists("imagedefinitions.json"));
}

#[test]
fn a_file_that_grew_after_it_was_hashed_is_sent_as_it_was_hashed() {
    let ws = Workspace::empty();
    two_images(&ws);
    let data = ws.path().join("second/data.txt");
    let tag = unique("grew");
    let run = run_changing_second_while_first_builds(&ws, &tag, || {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&data)
            .unwrap();
        std::io::Write::write_all(&mut file, b"a log line\n").unwrap();
    })
    .success();
    assert_eq!(
        docker_run(
            &format!("dry-run.invalid/filesync/second:{tag}"),
            &["cat", "/data.txt"]
        ),
        "as hashed\n",
        "{}",
        run.stderr
    );
}
