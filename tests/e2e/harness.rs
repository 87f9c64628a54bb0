//! Shared test harness: the services scripts/test.sh started (dockerd, registry, moto), a workspace per
//! test, the real binary, and small clients to look at what it did.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The password moto's ECR token decodes to, and the token itself: neither may ever be printed.
pub const ECR_PASSWORD: &str = "123456789012-auth-token";
pub const ECR_TOKEN_BASE64: &str = "QVdTOjEyMzQ1Njc4OTAxMi1hdXRoLXRva2Vu";

pub struct Services {
    pub docker_host: String,
    pub registry: String,
    pub aws_endpoint: String,
    pub base_image: String,
    pub docker_config: PathBuf,
}

/// A variable scripts/test.sh sets for the tests.
pub fn required(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: the end-to-end tests run against the services that scripts/test.sh starts; run scripts/test.sh")
    })
}

pub fn services() -> &'static Services {
    static SERVICES: OnceLock<Services> = OnceLock::new();
    SERVICES.get_or_init(|| Services {
        docker_host: required("DOCKER_HOST"),
        registry: required("ECR_BUILD_TEST_REGISTRY"),
        aws_endpoint: required("AWS_ENDPOINT_URL"),
        base_image: required("ECR_BUILD_TEST_BASE_IMAGE"),
        docker_config: PathBuf::from(required("DOCKER_CONFIG")),
    })
}

/// A fresh 40-hex commit SHA, different for every call in this process.
pub fn new_sha() -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let seed = format!(
        "{}-{n}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    );
    sha256_hex(seed.as_bytes())[..40].to_owned()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A temporary directory holding a copy of a project.
pub struct Workspace {
    pub dir: tempfile::TempDir,
}

impl Workspace {
    pub fn empty() -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// A copy of examples/app whose two images push to `PREFIX/web` and `PREFIX/worker`; returns
    /// those repository names too.
    pub fn example_app_in(prefix: &str) -> (Self, String, String) {
        let ws = Self::example_app();
        let web = format!("{prefix}/web");
        let worker = format!("{prefix}/worker");
        let config = ws
            .read("ecr-build.toml")
            .replace("ecr-build-example/web", &web)
            .replace("ecr-build-example/worker", &worker);
        ws.write("ecr-build.toml", &config);
        (ws, web, worker)
    }

    /// A copy of examples/app.
    pub fn example_app() -> Self {
        let ws = Self::empty();
        copy_tree(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/app"),
            ws.path(),
        );
        ws
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn write(&self, relative: &str, contents: &str) -> PathBuf {
        let path = self.path().join(relative);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, contents).unwrap();
        path
    }

    pub fn read(&self, relative: &str) -> String {
        let path = self.path().join(relative);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    pub fn exists(&self, relative: &str) -> bool {
        self.path().join(relative).exists()
    }

    /// Names of every entry directly in the workspace.
    pub fn entries(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect()
    }

    /// The command, run in the workspace with the test services' environment.
    pub fn ecr_build(&self) -> EcrBuild {
        EcrBuild::new(self.path())
    }
}

fn copy_tree(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

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
    fn new(dir: &Path) -> Self {
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

/// xorshift64: the same sequence for the same seed.
pub struct Rng(pub u64);

impl Rng {
    pub fn below(&mut self, bound: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % bound as u64) as usize
    }

    pub fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }
}

pub struct Summary {
    pub tags: Vec<String>,
    pub digest: String,
}

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

fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn registry_auth() -> String {
    format!("Basic {ECR_TOKEN_BASE64}")
}

/// HEAD of a manifest in the test registry: `Some(digest)` if the tag exists.
pub fn registry_digest(repository: &str, tag: &str) -> Option<String> {
    registry_digest_at(&services().registry, repository, tag)
}

/// A manifest in the test registry, as JSON.
pub fn registry_manifest(repository: &str, reference: &str) -> serde_json::Value {
    serde_json::from_slice(&registry_get(&format!(
        "/v2/{repository}/manifests/{reference}"
    )))
    .expect("a manifest is JSON")
}

/// The image config an image manifest in the test registry names, as JSON.
pub fn registry_config(repository: &str, reference: &str) -> serde_json::Value {
    let manifest = registry_manifest(repository, reference);
    let digest = manifest["config"]["digest"]
        .as_str()
        .expect("a config blob");
    serde_json::from_slice(&registry_get(&format!("/v2/{repository}/blobs/{digest}")))
        .expect("a config is JSON")
}

/// The layer digests an image manifest in the test registry names.
pub fn registry_layers(repository: &str, reference: &str) -> Vec<String> {
    registry_manifest(repository, reference)["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|layer| layer["digest"].as_str().unwrap().to_owned())
        .collect()
}

#[track_caller]
fn registry_get(path: &str) -> Vec<u8> {
    let url = format!("http://{}{path}", services().registry);
    let mut response = http()
        .get(&url)
        .header("Authorization", &registry_auth())
        .header("Accept", MANIFEST_TYPES)
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    assert_eq!(response.status().as_u16(), 200, "GET {url}");
    response.body_mut().read_to_vec().unwrap()
}

/// Every tag of a repository in the test registry.
pub fn registry_tags(repository: &str) -> BTreeSet<String> {
    let url = format!("http://{}/v2/{repository}/tags/list", services().registry);
    let mut response = http()
        .get(&url)
        .header("Authorization", &registry_auth())
        .call()
        .unwrap_or_else(|e| panic!("GET {url}: {e}"));
    if response.status().as_u16() == 404 {
        return BTreeSet::new();
    }
    let body: serde_json::Value =
        serde_json::from_str(&response.body_mut().read_to_string().unwrap()).unwrap();
    body["tags"]
        .as_array()
        .map(|tags| {
            tags.iter()
                .map(|t| t.as_str().unwrap().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Calls an action of an AWS JSON 1.1 service on the moto at `endpoint`. moto checks no signature
/// (unless IAM is enforced, and then not for its first INITIAL_NO_AUTH_ACTION_COUNT calls).
fn aws_json_call(
    endpoint: &str,
    target: &str,
    service: &str,
    action: &str,
    body: serde_json::Value,
) -> serde_json::Value {
    let mut response = http()
        .post(endpoint)
        .header("X-Amz-Target", &format!("{target}.{action}"))
        .header("Content-Type", "application/x-amz-json-1.1")
        .header(
            "Authorization",
            &format!("AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/{service}/aws4_request, SignedHeaders=host, Signature=0"),
        )
        .send(body.to_string())
        .unwrap_or_else(|e| panic!("{service} {action}: {e}"));
    let status = response.status().as_u16();
    let text = response.body_mut().read_to_string().unwrap();
    assert_eq!(status, 200, "{service} {action}: {text}");
    serde_json::from_str(&text).unwrap()
}

/// Calls an ECR action on the shared moto.
pub fn ecr_call(action: &str, body: serde_json::Value) -> serde_json::Value {
    aws_json_call(
        &services().aws_endpoint,
        "AmazonEC2ContainerRegistry_V20150921",
        "ecr",
        action,
        body,
    )
}

pub fn create_repository(name: &str) {
    ecr_call(
        "CreateRepository",
        serde_json::json!({ "repositoryName": name }),
    );
}

/// A unique repository name prefix per test, so tests share the services without meeting.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &new_sha()[..8])
}

/// A moto server of one test's own, for behaviour the shared one must not have (IAM enforcement).
pub struct PrivateMoto {
    child: std::process::Child,
    pub endpoint: String,
}

impl PrivateMoto {
    pub fn start(env: &[(&str, &str)]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let child = Command::new(required("ECR_BUILD_TEST_MOTO_SERVER"))
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("moto_server starts");
        let moto = Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "moto_server on port {port} did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        moto
    }

    /// Makes an IAM user allowed only `policy`, and returns its access key id and secret key.
    /// Takes three of the calls moto makes before it enforces IAM.
    pub fn user_with_policy(&self, user: &str, policy: &str) -> (String, String) {
        self.iam(&[("Action", "CreateUser"), ("UserName", user)]);
        let key = self.iam(&[("Action", "CreateAccessKey"), ("UserName", user)]);
        self.iam(&[
            ("Action", "PutUserPolicy"),
            ("UserName", user),
            ("PolicyName", "only-this"),
            ("PolicyDocument", policy),
        ]);
        (
            xml_value(&key, "AccessKeyId"),
            xml_value(&key, "SecretAccessKey"),
        )
    }

    /// An IAM (query protocol) action; returns the XML answer.
    pub fn iam(&self, params: &[(&str, &str)]) -> String {
        let form: Vec<String> = params
            .iter()
            .chain(&[("Version", "2010-05-08")])
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect();
        let mut response = http()
            .post(&self.endpoint)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .header(
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=testing/20260101/us-east-1/iam/aws4_request, SignedHeaders=host, Signature=0",
            )
            .send(form.join("&"))
            .expect("IAM call");
        let text = response.body_mut().read_to_string().unwrap();
        assert_eq!(response.status().as_u16(), 200, "IAM {params:?}: {text}");
        text
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn form_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text between `<tag>` and `</tag>`.
pub fn xml_value(xml: &str, tag: &str) -> String {
    let start = xml
        .find(&format!("<{tag}>"))
        .unwrap_or_else(|| panic!("no <{tag}> in {xml}"))
        + tag.len()
        + 2;
    let end = xml[start..].find(&format!("</{tag}>")).unwrap() + start;
    xml[start..end].to_owned()
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

/// Calls an SSM action on the moto at `endpoint`.
pub fn ssm_call_at(endpoint: &str, action: &str, body: serde_json::Value) -> serde_json::Value {
    aws_json_call(endpoint, "AmazonSSM", "ssm", action, body)
}

/// Creates or overwrites a parameter in the shared moto: a SecureString (default KMS key) if `secure`.
pub fn put_parameter(name: &str, value: &str, secure: bool) {
    put_parameter_at(&services().aws_endpoint, name, value, secure);
}

pub fn put_parameter_at(endpoint: &str, name: &str, value: &str, secure: bool) {
    ssm_call_at(
        endpoint,
        "PutParameter",
        serde_json::json!({
            "Name": name,
            "Value": value,
            "Type": if secure { "SecureString" } else { "String" },
            "Overwrite": true,
        }),
    );
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

pub fn image_exists(reference: &str) -> bool {
    Command::new("docker")
        .args(["image", "inspect", reference])
        .env("DOCKER_HOST", &services().docker_host)
        .output()
        .expect("docker client runs")
        .status
        .success()
}

/// Every file below `dir`, with its bytes.
pub fn files_below(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            found.extend(files_below(&entry.path()));
        } else if kind.is_file() {
            found.push((entry.path(), std::fs::read(entry.path()).unwrap()));
        }
    }
    found
}

pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Layers the test registry has linked into a repository: unchanged when nothing was pushed to it.
pub fn registry_layer_count(repository: &str) -> usize {
    let dir = PathBuf::from(required("ECR_BUILD_TEST_DIR"))
        .join("registry-data/docker/registry/v2/repositories")
        .join(repository)
        .join("_layers/sha256");
    std::fs::read_dir(&dir).map_or(0, |entries| entries.count())
}

pub fn create_immutable_repository(name: &str) {
    ecr_call(
        "CreateRepository",
        serde_json::json!({ "repositoryName": name, "imageTagMutability": "IMMUTABLE" }),
    );
}

// ---------------------------------------------------------------------------------------------------
// Fault injection (tests/e2e/faults.rs): services of a test's own that it may stop and start, runs
// that the test watches and signals while they go, and views of the engine's processes.

/// HEAD of a manifest in the registry at `host` (same credentials as the shared one): `Some(digest)`
/// if the tag exists.
pub fn registry_digest_at(host: &str, repository: &str, tag: &str) -> Option<String> {
    let url = format!("http://{host}/v2/{repository}/manifests/{tag}");
    let response = http()
        .head(&url)
        .header("Accept", MANIFEST_TYPES)
        .header("Authorization", &registry_auth())
        .call()
        .unwrap_or_else(|e| panic!("HEAD {url}: {e}"));
    match response.status().as_u16() {
        200 => Some(
            response
                .headers()
                .get("docker-content-digest")
                .expect("Docker-Content-Digest header")
                .to_str()
                .unwrap()
                .to_owned(),
        ),
        404 => None,
        other => panic!("HEAD {url}: status {other}"),
    }
}

/// A docker-registry of one test's own, with the shared one's configuration (same htpasswd, so
/// moto's ECR token logs in) but its own port and storage, so that the test can stop it and start it
/// again without disturbing the tests that share the services.
pub struct PrivateRegistry {
    /// Holds the configuration, the log and the storage; removed on drop.
    _dir: tempfile::TempDir,
    config: PathBuf,
    log: PathBuf,
    port: u16,
    child: Option<std::process::Child>,
}

impl PrivateRegistry {
    /// Starts it and waits until `/v2/` answers 401.
    pub fn start() -> Self {
        let shared = std::fs::read_to_string(required("ECR_BUILD_TEST_REGISTRY_CONFIG"))
            .expect("the shared registry's configuration");
        let dir = tempfile::Builder::new()
            .prefix("ecrf-registry.")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).unwrap();
        let mut registry = Self {
            config: dir.path().join("registry.yml"),
            log: dir.path().join("registry.log"),
            _dir: dir,
            port: 0,
            child: None,
        };
        let mut last_error = String::new();
        // Another process may take the free port before the registry binds it: try another one.
        for _ in 0..3 {
            registry.port = free_port();
            let addr = registry.host();
            let text: String = shared
                .lines()
                .map(|line| {
                    let indent = &line[..line.len() - line.trim_start().len()];
                    let key = line.trim_start();
                    if key.starts_with("rootdirectory:") {
                        format!("{indent}rootdirectory: \"{}\"\n", data.display())
                    } else if key.starts_with("addr:") {
                        format!("{indent}addr: \"{addr}\"\n")
                    } else {
                        format!("{line}\n")
                    }
                })
                .collect();
            assert!(
                text.contains(&addr) && text.contains("rootdirectory"),
                "unexpected registry configuration:\n{shared}"
            );
            std::fs::write(&registry.config, text).unwrap();
            match registry.try_start() {
                Ok(()) => return registry,
                Err(error) => {
                    last_error = error;
                    registry.stop();
                }
            }
        }
        panic!("the private registry did not start: {last_error}");
    }

    fn try_start(&mut self) -> Result<(), String> {
        assert!(self.child.is_none(), "the private registry is running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let mut command = Command::new("docker-registry");
        command
            .arg("serve")
            .arg(&self.config)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // REGISTRY_* variables override the file.
        for (name, _) in std::env::vars() {
            if name.starts_with("REGISTRY_") {
                command.env_remove(name);
            }
        }
        let child = command
            .spawn()
            .map_err(|e| format!("docker-registry: {e}"))?;
        self.child = Some(child);
        let url = format!("http://{}/v2/", self.host());
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Ok(response) = http().get(&url).call()
                && response.status().as_u16() == 401
            {
                return Ok(());
            }
            if let Ok(Some(status)) = self.child.as_mut().unwrap().try_wait() {
                self.child = None;
                return Err(format!(
                    "docker-registry exited ({status}):\n{}",
                    self.log_text()
                ));
            }
            if std::time::Instant::now() > deadline {
                return Err(format!(
                    "docker-registry did not answer on {url} within 30 s:\n{}",
                    self.log_text()
                ));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// `127.0.0.1:PORT`, as `--registry` takes it.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it (as a crash would): from now on connections to its port are refused.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same storage.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        if let Err(error) = self.try_start() {
            panic!("the private registry did not restart: {error}");
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// HEAD of a manifest in this registry.
    pub fn digest(&self, repository: &str, tag: &str) -> Option<String> {
        registry_digest_at(&self.host(), repository, tag)
    }
}

impl Drop for PrivateRegistry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
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
    let output = services_sh(script, Path::new(env!("CARGO_MANIFEST_DIR")))
        .env("DOCKER_HOST", &services().docker_host)
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

impl Drop for PrivateDockerd {
    fn drop(&mut self) {
        // A start still under way must end first, or it would start a dockerd after the stop.
        if let Some(starter) = self.starter.take() {
            let _ = starter.join();
        }
        let _ = services_sh("ecr_build_stop_services \"$1\"", &self.dir).output();
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
