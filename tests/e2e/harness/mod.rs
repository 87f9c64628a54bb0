//! Shared test harness: the services scripts/test.sh started (dockerd, registry, moto), a workspace per
//! test, the real binary, and small clients to look at what it did.

mod aws;
mod command;
mod docker;
mod registry;
mod workspace;

pub use aws::*;
pub use command::*;
pub use docker::*;
pub use registry::*;
pub use workspace::*;

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

/// A unique repository name prefix per test, so tests share the services without meeting.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", &new_sha()[..8])
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

pub(super) fn http() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into()
}
