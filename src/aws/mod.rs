//! AWS clients. Endpoints, credentials and retries come from the standard chain (AWS_ENDPOINT_URL,
//! AWS_MAX_ATTEMPTS, AWS_RETRY_MODE, ...), so ecr-build behaves like the aws CLI it replaces.

pub mod ecr;
pub mod ssm;

use std::fmt;

use aws_config::meta::region::RegionProviderChain;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

/// A value that must not be printed: `Debug` shows `***`, and there is no `Display`. Whoever reads one
/// from AWS registers it with [`crate::output::redactor`] first.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value that is already registered with the redactor (or a test value).
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Loads the shared SDK configuration. `region_hint` (the region of an ECR registry host) is used only
/// when the environment names no region.
pub async fn load_config(region_hint: Option<String>) -> anyhow::Result<SdkConfig> {
    let region = RegionProviderChain::default_provider().or_else(region_hint.map(Region::new));
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .load()
        .await;
    anyhow::ensure!(
        config.region().is_some(),
        "no AWS region: set AWS_REGION (CodeBuild sets it), or give an ECR registry host such as \
         123456789012.dkr.ecr.eu-west-1.amazonaws.com"
    );
    Ok(config)
}

/// AWS answers AccessDeniedException (JSON services) or AccessDenied (query services, and IAM-enforcing
/// emulators), always with HTTP 403.
pub fn is_access_denied<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(err.code(), Some("AccessDeniedException" | "AccessDenied"))
        || err
            .raw_response()
            .is_some_and(|response| response.status().as_u16() == 403)
}

/// The region inside an ECR registry host: `123456789012.dkr.ecr.eu-west-1.amazonaws.com` → `eu-west-1`.
pub fn region_of_ecr_host(host: &str) -> Option<String> {
    let mut parts = host.split('.');
    let (_account, dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (dkr == "dkr" && ecr.starts_with("ecr") && parts.next() == Some("amazonaws"))
        .then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_comes_from_ecr_hosts_only() {
        assert_eq!(
            region_of_ecr_host("123456789012.dkr.ecr.eu-west-1.amazonaws.com").as_deref(),
            Some("eu-west-1")
        );
        assert_eq!(
            region_of_ecr_host("123456789012.dkr.ecr-fips.us-east-1.amazonaws.com").as_deref(),
            Some("us-east-1")
        );
        assert_eq!(region_of_ecr_host("127.0.0.1:5000"), None);
        assert_eq!(region_of_ecr_host("registry.example.com"), None);
    }
}
