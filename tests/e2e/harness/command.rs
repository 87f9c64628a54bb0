//! The real binary: run in a workspace with the services' environment, its output and exit
//! status read back; or watched while it runs, and signalled.

use super::*;

pub struct EcrBuild {
    command: Command,
}

/// Variables a developer's or CodeBuild's environment could carry into a test run.
const SCRUBBED: &[&str] = &[
    "CODEBUILD_RESOLVED_SOURCE_VERSION",
    "CODEBUILD_SOURCE_VERSION",
    "CODEBUILD_BUILD_NUMBER",
    "CODEBUILD_BUILD_ID",
    "CODEBUILD_WEBHOOK_TRIGGER",
    "AWS_ACCOUNT_ID",
    "AWS_PROFILE",
];

impl EcrBuild {
    pub(super) fn new(dir: &Path) -> Self {
        let mut command = Command::new(env!("CARGO_BIN_EXE_ecr-build"));
        command.current_dir(dir);
        for name in SCRUBBED {
            command.env_remove(name);
        }
        for (name, _) in std::env::vars() {
            if name.starts_with("ECR_BUILD_") && !name.starts_with("ECR_BUILD_TEST_") {
                command.env_remove(name);
            }
        }
        Self { command }
    }

    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        self.command.args(args);
        self
    }

    pub fn env(mut self, name: &str, value: impl AsRef<std::ffi::OsStr>) -> Self {
        self.command.env(name, value);
        self
    }

    pub fn env_remove(mut self, name: &str) -> Self {
        self.command.env_remove(name);
        self
    }

    pub fn run(mut self) -> Run {
        let output = self.command.output().expect("ecr-build runs");
        Run::from(output)
    }
}

/// One finished run of the binary.
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(output: Output) -> Self {
        Self {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn success(self) -> Self {
        assert_eq!(
            self.code, 0,
            "expected success\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn failure(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "expected exit {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }

    #[track_caller]
    pub fn stderr_has(self, needle: &str) -> Self {
        assert!(
            self.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            self.stderr
        );
        self
    }

    /// Neither stream carries the ECR password or the token it came in.
    #[track_caller]
    pub fn no_ecr_secret(self) -> Self {
        for secret in [ECR_PASSWORD, ECR_TOKEN_BASE64] {
            assert!(!self.stdout.contains(secret), "stdout leaks {secret}");
            assert!(!self.stderr.contains(secret), "stderr leaks {secret}");
        }
        self
    }

    /// The summary line of one image: `NAME pushed URI tags=… digest=… seconds=… (note)`.
    #[track_caller]
    pub fn summary_line(&self, image: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(image))
            .unwrap_or_else(|| panic!("no summary line for {image} in stdout:\n{}", self.stdout))
    }

    /// What the run did with one image: `pushed`, `reused`, ...
    #[track_caller]
    pub fn result(&self, image: &str) -> &str {
        self.summary_line(image).split_whitespace().nth(1).unwrap()
    }

    /// The tags and digest of one image's summary line.
    #[track_caller]
    pub fn summary(&self, image: &str) -> Summary {
        let line = self.summary_line(image);
        let field = |key: &str| {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("no {key}= in {line:?}"))
                .to_owned()
        };
        Summary {
            tags: field("tags").split(',').map(str::to_owned).collect(),
            digest: field("digest"),
        }
    }
}

pub struct Summary {
    pub tags: Vec<String>,
    pub digest: String,
}

impl EcrBuild {
    /// Starts the command with stdout and stderr piped, for tests that talk to it while it runs.
    pub fn spawn(mut self) -> std::process::Child {
        self.command
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("ecr-build starts")
    }

    /// Runs the command with stdout and stderr going to these files, as `> out 2> err` would.
    pub fn run_into(mut self, stdout: &Path, stderr: &Path) -> Run {
        let file = |path: &Path| std::fs::File::create(path).expect("output file");
        let status = self
            .command
            .stdout(file(stdout))
            .stderr(file(stderr))
            .status()
            .expect("ecr-build runs");
        let read = |path: &Path| std::fs::read_to_string(path).expect("output file is read back");
        Run {
            code: status.code().unwrap_or(-1),
            stdout: read(stdout),
            stderr: read(stderr),
        }
    }
}

/// A run of the binary that the test watches (stderr line by line) and may signal while it runs.
/// Dropping it kills the process if it is still running.
pub struct Running {
    child: std::process::Child,
    stdout: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    stderr: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
    started: std::time::Instant,
}

/// How a watched run ended.
pub struct Finished {
    pub run: Run,
    pub status: std::process::ExitStatus,
    /// From the start of the run.
    pub elapsed: std::time::Duration,
}

impl EcrBuild {
    /// Starts the command with both streams collected in the background.
    pub fn start(self) -> Running {
        let started = std::time::Instant::now();
        let mut child = self.spawn();
        let mut readers = Vec::new();
        let mut collect = |mut stream: Box<dyn std::io::Read + Send>| {
            let buffer = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let sink = buffer.clone();
            readers.push(std::thread::spawn(move || {
                let mut chunk = [0u8; 8192];
                loop {
                    match stream.read(&mut chunk) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => sink.lock().unwrap().extend_from_slice(&chunk[..n]),
                    }
                }
            }));
            buffer
        };
        let stdout = collect(Box::new(child.stdout.take().unwrap()));
        let stderr = collect(Box::new(child.stderr.take().unwrap()));
        Running {
            child,
            stdout,
            stderr,
            readers,
            started,
        }
    }

    /// Runs the command, killing it (and failing the test) if it takes longer than `limit`.
    #[track_caller]
    pub fn run_within(self, limit: std::time::Duration) -> Finished {
        self.start().finish_within(limit)
    }
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stderr_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stderr.lock().unwrap()).into_owned()
    }

    pub fn stdout_so_far(&self) -> String {
        String::from_utf8_lossy(&self.stdout.lock().unwrap()).into_owned()
    }

    /// Waits until a complete stderr line satisfies `wanted`; fails the test if the run ends first or
    /// `limit` passes.
    #[track_caller]
    pub fn wait_for_stderr_line(
        &mut self,
        what: &str,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) {
        self.wait_for_stderr(what, limit, |stderr| stderr.lines().any(&wanted));
    }

    /// Waits until stderr, up to its last complete line, satisfies `wanted`; fails the test if the
    /// run ends first or `limit` passes.
    #[track_caller]
    pub fn wait_for_stderr(
        &mut self,
        what: &str,
        limit: std::time::Duration,
        wanted: impl Fn(&str) -> bool,
    ) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let stderr = self.stderr_so_far();
            // Only lines that have their newline: a half-written one may still change.
            if wanted(&stderr[..stderr.rfind('\n').map_or(0, |i| i + 1)]) {
                return;
            }
            let exited = self.child.try_wait().expect("try_wait");
            assert!(
                exited.is_none() && std::time::Instant::now() < deadline,
                "{} before stderr showed {what}\n--- stdout\n{}\n--- stderr\n{stderr}",
                match exited {
                    Some(status) => format!("ecr-build ended ({status})"),
                    None => format!("{limit:?} passed"),
                },
                self.stdout_so_far(),
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// Sends a signal by name (`TERM`, `INT`, ...).
    #[track_caller]
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{name} {} failed", self.pid());
    }

    /// The end of the run if it comes within `limit`; `None` (and the process still running) if not.
    pub fn try_finish_within(&mut self, limit: std::time::Duration) -> Option<Finished> {
        let deadline = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let elapsed = self.started.elapsed();
        for reader in self.readers.drain(..) {
            let _ = reader.join();
        }
        Some(Finished {
            run: Run {
                code: status.code().unwrap_or(-1),
                stdout: self.stdout_so_far(),
                stderr: self.stderr_so_far(),
            },
            status,
            elapsed,
        })
    }

    /// The end of the run; kills it and fails the test if it takes longer than `limit`.
    #[track_caller]
    pub fn finish_within(&mut self, limit: std::time::Duration) -> Finished {
        match self.try_finish_within(limit) {
            Some(finished) => finished,
            None => {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!(
                    "ecr-build did not finish within {limit:?}; killed it\n--- stdout\n{}\n--- stderr\n{}",
                    self.stdout_so_far(),
                    self.stderr_so_far()
                );
            }
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
