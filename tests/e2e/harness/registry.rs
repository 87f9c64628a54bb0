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
