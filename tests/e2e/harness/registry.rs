//! The test registry, looked at through its HTTP API; and a registry of one test's own that
//! the test may stop and start.

use super::*;

const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

fn registry_auth() -> String {
    format!("Basic {ECR_TOKEN_BASE64}")
}

/// HEAD of a manifest in the test registry: `Some(digest)` if the tag exists.
/// Pushes a base image (the test base with `/base.txt` saying `content`) as `repository:1` in the
/// test registry, and removes it from the engine, as on a fresh host: a build that uses it pulls
/// it. Returns its reference.
pub fn base_only_in_registry(repository: &str, content: &str) -> String {
    let registry = &services().registry;
    let ws = Workspace::empty();
    ws.write(
        "Dockerfile",
        &format!("FROM {}\nCOPY base.txt /base.txt\n", services().base_image),
    );
    ws.write("base.txt", content);
    (ws.ecr_build())
        .args(["build", "--registry", registry, "--repository", repository])
        .args(["--network", "none", "--tag", "1"])
        .env("ECR_BUILD_SHA", new_sha())
        .run()
        .success();
    let reference = format!("{registry}/{repository}:1");
    docker(&["rmi", "-f", &reference]);
    reference
}

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

/// The tags of a repository in the test registry that name images: BuildKit's cache (`buildcache`,
/// which an engine with the containerd image store keeps beside each image) left out.
pub fn image_tags(repository: &str) -> BTreeSet<String> {
    (registry_tags(repository).into_iter())
        .filter(|tag| !tag.starts_with("buildcache"))
        .collect()
}

/// A blob of a repository in the test registry.
pub fn registry_blob(repository: &str, digest: &str) -> Vec<u8> {
    registry_get(&format!("/v2/{repository}/blobs/{digest}"))
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

/// Layers the test registry has linked into a repository: unchanged when nothing was pushed to it.
pub fn registry_layer_count(repository: &str) -> usize {
    let dir = PathBuf::from(required("ECR_BUILD_TEST_DIR"))
        .join("registry-data/docker/registry/v2/repositories")
        .join(repository)
        .join("_layers/sha256");
    std::fs::read_dir(&dir).map_or(0, |entries| entries.count())
}

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

/// A docker-registry of one test's own, started by `scripts/services.sh registry` as the shared one
/// is (same htpasswd, so moto's ECR token logs in) but on its own port and storage, so that the
/// test can stop it and start it again without disturbing the tests that share the services.
pub struct PrivateRegistry {
    /// Holds the configuration, the log and the storage; removed on drop.
    dir: tempfile::TempDir,
    host: String,
    pid: Option<u32>,
}

impl PrivateRegistry {
    /// Starts it; the script waits until `/v2/` answers 401.
    pub fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("ecrf-registry.")
            .tempdir()
            .expect("temp dir");
        let mut registry = Self {
            dir,
            host: String::new(),
            pid: None,
        };
        if let Err(error) = registry.run_script(None) {
            panic!("the private registry did not start: {error}");
        }
        registry
    }

    fn run_script(&mut self, port: Option<&str>) -> Result<(), String> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/services.sh");
        let mut command = Command::new("bash");
        command.arg(script).arg("registry").arg(self.dir.path());
        command.args(port).stdin(std::process::Stdio::null());
        let output = command.output().map_err(|e| format!("bash: {e}"))?;
        if !output.status.success() {
            return Err(format!(
                "{}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.log_text()
            ));
        }
        self.host = String::from_utf8_lossy(&output.stdout).trim().to_owned();
        let pid = std::fs::read_to_string(self.dir.path().join("run/registry.pid")).unwrap();
        self.pid = Some(pid.trim().parse().expect("a pid"));
        Ok(())
    }

    /// `127.0.0.1:PORT`, as `--registry` takes it.
    pub fn host(&self) -> String {
        self.host.clone()
    }

    /// Kills it (as a crash would): from now on connections to its port are refused.
    pub fn stop(&mut self) {
        if let Some(pid) = self.pid.take() {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            // Not our child: wait until the kernel has let it go, port and all.
            let proc = PathBuf::from(format!("/proc/{pid}"));
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while proc.exists() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
    }

    /// Starts it again on the same port, with the same storage.
    #[track_caller]
    pub fn restart(&mut self) {
        self.stop();
        let port = self.host.rsplit_once(':').expect("host:port").1.to_owned();
        if let Err(error) = self.run_script(Some(&port)) {
            panic!("the private registry did not restart: {error}");
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
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
