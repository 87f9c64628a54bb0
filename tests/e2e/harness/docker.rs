//! The engine, through the docker client of the engine's own version: images, processes, a
//! dockerd of one test's own.

use std::io::{Read as _, Write as _};

use super::*;

/// Docker's client (an observer here: it inspects and runs what ecr-build built).
#[track_caller]
pub fn docker(args: &[&str]) -> String {
    String::from_utf8_lossy(&docker_bytes(args)).into_owned()
}

/// Runs an image's default command with no network and returns its stdout.
pub fn docker_run(image: &str, command: &[&str]) -> String {
    let mut args = vec!["run", "--rm", "--network", "none", image];
    args.extend_from_slice(command);
    docker(&args)
}

/// The docker client's raw stdout (for `docker save`).
#[track_caller]
pub fn docker_bytes(args: &[&str]) -> Vec<u8> {
    let output = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", &services().docker_host)
        .output()
        .expect("docker client runs");
    assert!(
        output.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// What an image is, leaving out when it was built: its layers (diff IDs) and its config. The
/// classic image store gives two builds of the same inputs one image ID; the containerd image
/// store stamps each build with its own time, so there the ID cannot judge.
#[track_caller]
pub fn image_content(reference: &str) -> String {
    let format = "{{json .RootFS.Layers}} {{json .Config}}";
    docker(&["image", "inspect", "--format", format, reference])
}

/// A blob of `docker save` as a tar: the containerd image store saves layers gzipped.
pub fn uncompressed(blob: Vec<u8>) -> Vec<u8> {
    if !blob.starts_with(&[0x1f, 0x8b]) {
        return blob;
    }
    let mut gzip = Command::new("gzip")
        .arg("-dc")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip runs");
    let mut stdin = gzip.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(&blob));
    let output = gzip.wait_with_output().unwrap();
    writer.join().unwrap().unwrap();
    assert!(output.status.success(), "gzip -dc failed");
    output.stdout
}

/// Every byte `docker save IMAGE` holds, each layer uncompressed.
pub fn saved_image(image: &str) -> Vec<u8> {
    let saved = docker_bytes(&["save", image]);
    let mut bytes = Vec::new();
    for entry in tar::Archive::new(saved.as_slice()).entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut blob = Vec::new();
        entry.read_to_end(&mut blob).unwrap();
        bytes.extend(uncompressed(blob));
    }
    bytes
}

/// Whether the engine under test keeps its images in the containerd image store (the one that
/// can export BuildKit's cache).
pub fn containerd_store() -> bool {
    docker(&["info", "--format", "{{json .DriverStatus}}"]).contains("io.containerd.snapshotter")
}

pub fn image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .env("DOCKER_HOST", &services().docker_host)
        .output()
        .expect("docker client runs")
        .status
        .success()
}

/// A dockerd of one test's own, started in the background after a delay exactly as
/// scripts/services.sh starts the shared one, and stopped (with everything it started) on drop.
pub struct PrivateDockerd {
    dir: PathBuf,
    starter: Option<std::thread::JoinHandle<Output>>,
}

fn services_sh(script: &str, dir: &Path) -> Command {
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg(format!(
            "source {}/scripts/services.sh && {script}",
            env!("CARGO_MANIFEST_DIR")
        ))
        .arg("services.sh")
        .arg(dir)
        // Its own data-root, never a reused one that the shared dockerd may hold.
        .env_remove("ECR_BUILD_DOCKER_DATA")
        .stdin(std::process::Stdio::null());
    command
}

/// Runs a function of scripts/services.sh against the shared engine; panics with its output if it fails.
#[track_caller]
pub fn services_function(script: &str) {
    services_function_on(&services().docker_host, script);
}

/// Runs a function of scripts/services.sh against the engine at `docker_host`; panics with its
/// output if it fails.
#[track_caller]
pub fn services_function_on(docker_host: &str, script: &str) {
    let output = services_sh(script, Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("DOCKER_HOST", docker_host)
        .output()
        .expect("bash runs");
    assert!(
        output.status.success(),
        "{script} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

impl PrivateDockerd {
    /// Starts it after `delay` on a thread; `docker_host()` is known at once.
    pub fn start_after(delay: std::time::Duration) -> Self {
        // Short: dockerd's and containerd's unix sockets live below it.
        let dir = tempfile::Builder::new()
            .prefix("ecrf.")
            .tempdir_in("/tmp")
            .expect("temp dir")
            .keep();
        let start_dir = dir.clone();
        let starter = std::thread::spawn(move || {
            std::thread::sleep(delay);
            services_sh("ecr_build_start_dockerd \"$1\"", &start_dir)
                .output()
                .expect("bash runs")
        });
        Self {
            dir,
            starter: Some(starter),
        }
    }

    pub fn docker_host(&self) -> String {
        format!("unix://{}/docker.sock", self.dir.display())
    }

    /// Waits for the start to finish; panics with its log if it failed.
    #[track_caller]
    pub fn wait_started(&mut self) {
        if let Some(starter) = self.starter.take() {
            let output = starter.join().expect("the start thread");
            assert!(
                output.status.success(),
                "ecr_build_start_dockerd failed:\n{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

impl PrivateDockerd {
    /// Makes the tests' base image (`services().base_image`) in this engine, as in the shared one.
    #[track_caller]
    pub fn add_base_image(&self) {
        services_function_on(&self.docker_host(), "ecr_build_base_image \"\"");
    }
}

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        // A start still under way must end first, or it would start a dockerd after the stop.
        if let Some(starter) = self.starter.take() {
            let _ = starter.join();
        }
        let _ = services_sh("ecr_build_stop_services \"$1\"", &self.dir).output();
    }
}

/// Pids of the processes whose argument vector is exactly `argv` (the program's file name is
/// compared, not its path), anywhere on the machine: BuildKit's RUN steps are not containers that
/// `docker ps` lists, but their processes are in /proc.
pub fn processes_running(argv: &[&str]) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline
            .strip_suffix(b"\0")
            .unwrap_or(&cmdline)
            .split(|b| *b == 0)
            .collect();
        let matches = args.len() == argv.len()
            && args.iter().zip(argv).enumerate().all(|(i, (have, want))| {
                let have = if i == 0 {
                    have.rsplit(|b| *b == b'/').next().unwrap_or(have)
                } else {
                    have
                };
                have == want.as_bytes()
            });
        // A zombie has an empty cmdline, so it never matches: only live processes count.
        if matches {
            found.push(pid);
        }
    }
    found
}

/// The shared dockerd's pid (scripts/services.sh has it write a pidfile).
pub fn dockerd_pid() -> u32 {
    let path = PathBuf::from(required("ECR_BUILD_TEST_DIR")).join("docker.pid");
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// How many descriptors a process has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// Every container the shared engine has, running or not.
pub fn container_ids() -> BTreeSet<String> {
    docker(&["ps", "-aq", "--no-trunc"])
        .lines()
        .map(str::to_owned)
        .collect()
}

/// A docker client config folder with Docker 28's buildx plugin, where the services have it
/// (`ECR_BUILD_TEST_BUILDX` is empty for Docker 20.10): `None` without it.
pub fn buildx_config() -> Option<tempfile::TempDir> {
    let buildx = std::env::var("ECR_BUILD_TEST_BUILDX").unwrap_or_default();
    if buildx.is_empty() {
        return None;
    }
    let config = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(config.path().join("cli-plugins")).unwrap();
    std::os::unix::fs::symlink(&buildx, config.path().join("cli-plugins/docker-buildx")).unwrap();
    Some(config)
}

/// Runs `command`, which must succeed; its output.
#[track_caller]
pub fn output_of(command: &mut std::process::Command) -> Output {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}
