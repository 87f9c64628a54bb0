//! AWS clients. Endpoints, credentials and retries come from the standard chain (AWS_ENDPOINT_URL,
//! AWS_MAX_ATTEMPTS, AWS_RETRY_MODE, ...), so ecr-build behaves like the aws CLI it replaces.

pub(crate) mod ecr;
pub(crate) mod ssm;

use std::collections::HashMap;
use std::fmt;

use aws_config::meta::region::RegionProviderChain;
use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_ecr::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::FinalizerInterceptorContextRef;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use crate::decide::TagRules;
use crate::registry::Registry;

/// A value that must not be printed: `Debug` shows `***`, and there is no `Display`. Whoever reads one
/// from AWS registers it with [`crate::output::redactor`] first.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Secret(String);

impl Secret {
    /// Wraps a test value (values from SSM are registered with the redactor as they come).
    #[cfg(test)]
    pub(crate) fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The SDK's own error, kept whole as the source of ours: the message says what failed and the
/// fix; `-v` shows the SDK's details.
pub(crate) type SdkFailure = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a run that pushes needs from AWS, ready before anything is built.
pub(crate) struct Session {
    /// The registry pushed to: the configured one, or the ECR login's.
    pub registry: String,
    pub access: ecr::EcrRegistry,
    /// Each repository's tag rules.
    pub rules: HashMap<String, TagRules>,
    pub ssm: aws_sdk_ssm::Client,
    pub region: String,
}

/// The variables ecr-build reads for AWS besides the SDK's own, read once at the edge.
#[derive(Debug, Clone, Default)]
pub(crate) struct AwsEnv {
    /// AWS_ACCOUNT_ID and AWS_REGION (or AWS_DEFAULT_REGION): a dry run's registry.
    pub account_id: Option<String>,
    pub region: Option<String>,
    /// ECR_BUILD_AWS_MAX_ATTEMPTS, else the SDK's own AWS_MAX_ATTEMPTS.
    pub max_attempts: Option<String>,
}

impl AwsEnv {
    /// From the variables `lookup` gives (the process environment, at the edge); empty is unset.
    pub(crate) fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.trim().is_empty());
        Self {
            account_id: var("AWS_ACCOUNT_ID"),
            region: var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION")),
            max_attempts: var("ECR_BUILD_AWS_MAX_ATTEMPTS").or_else(|| var("AWS_MAX_ATTEMPTS")),
        }
    }
}

/// Why AWS cannot be used: its configuration (exit 2), or a call that failed (exit 1).
#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// No region, a bad retry setting: one line naming it and the fix.
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Logs in to ECR and checks every repository, naming all missing ones at once.
pub(crate) async fn connect(
    configured_registry: Option<&str>,
    repositories: &[&str],
    env: &AwsEnv,
) -> Result<Session, AwsError> {
    let sdk = load_config(configured_registry.and_then(region_of_ecr_host), env).await?;
    let region = sdk.region().map(ToString::to_string).unwrap_or_default();
    let ecr = aws_sdk_ecr::Client::from_conf(
        aws_sdk_ecr::config::Builder::from(&sdk)
            .interceptor(LogFailedAttempts)
            .build(),
    );
    let auth = ecr::EcrAuth::login(ecr.clone(), region.clone()).await?;
    let endpoint = auth.current().await?.endpoint;
    let registry = configured_registry.map_or(endpoint, str::to_owned);
    tracing::info!("logged in to ECR in {region}; pushing to {registry}");
    let rules = ecr::check_repositories(&ecr, &region, repositories).await?;
    let client = Registry::new(&registry).map_err(anyhow::Error::from)?;
    let ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&sdk)
            .interceptor(LogFailedAttempts)
            .build(),
    );
    Ok(Session {
        registry,
        access: ecr::EcrRegistry::new(auth, client),
        rules,
        ssm,
        region,
    })
}

/// Loads the shared SDK configuration. `region_hint` (the region of an ECR registry host) is used only
/// when the environment names no region.
pub(crate) async fn load_config(
    region_hint: Option<String>,
    env: &AwsEnv,
) -> Result<SdkConfig, AwsError> {
    let region = RegionProviderChain::default_provider().or_else(region_hint.map(Region::new));
    let config = aws_config::defaults(BehaviorVersion::latest())
        .region(region)
        .retry_config(retry_config(env.max_attempts.as_deref())?)
        .load()
        .await;
    if config.region().is_none() {
        return Err(AwsError::Config(
            "no AWS region: set AWS_REGION (CodeBuild sets it), or give an ECR registry host such as \
             123456789012.dkr.ecr.eu-west-1.amazonaws.com with --registry"
                .to_owned(),
        ));
    }
    Ok(config)
}

/// Throttling and 5xx are retried in adaptive mode (a client-side rate limiter on top of backoff),
/// AWS_MAX_ATTEMPTS times in all, 5 unless set: one CodeBuild project's burst must not fail a deploy.
fn retry_config(max_attempts: Option<&str>) -> Result<RetryConfig, AwsError> {
    let attempts = match max_attempts.map(str::trim).filter(|v| !v.is_empty()) {
        None => DEFAULT_MAX_ATTEMPTS,
        Some(value) => value
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                AwsError::Config(format!(
                    "AWS_MAX_ATTEMPTS / ECR_BUILD_AWS_MAX_ATTEMPTS `{value}` is not a whole number of at least 1"
                ))
            })?,
    };
    Ok(RetryConfig::adaptive().with_max_attempts(attempts))
}

const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// Logs every failed attempt of an AWS call with its cause: a warning where the SDK retries it
/// (no answer, throttling, a server error), else at debug level, as the caller reports the error
/// (a missing repository is an expected answer, not a warning).
#[derive(Debug)]
pub(crate) struct LogFailedAttempts;

impl Intercept for LogFailedAttempts {
    fn name(&self) -> &'static str {
        "LogFailedAttempts"
    }

    fn read_after_attempt(
        &self,
        context: &FinalizerInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        if let Some(Err(err)) = context.output_or_error() {
            let status = context.response().map(|r| r.status().as_u16());
            let cause = format!(
                "{}{}",
                status.map(|s| format!("HTTP {s}: ")).unwrap_or_default(),
                crate::output::with_causes(err)
            );
            if status.is_none_or(|s| s == 429 || s >= 500) || cause.contains("Throttl") {
                tracing::warn!(
                    "AWS call attempt failed ({}); retrying if attempts remain",
                    crate::output::shorten(&cause, crate::output::MAX_LINE_CHARS - 80)
                );
            } else {
                tracing::debug!("AWS call failed ({cause})");
            }
        }
        Ok(())
    }
}

/// AWS answers AccessDeniedException (JSON services) or AccessDenied (query services, and IAM-enforcing
/// emulators), always with HTTP 403.
pub(crate) fn is_access_denied<E: ProvideErrorMetadata>(err: &SdkError<E, HttpResponse>) -> bool {
    matches!(err.code(), Some("AccessDeniedException" | "AccessDenied"))
        || err
            .raw_response()
            .is_some_and(|response| response.status().as_u16() == 403)
}

/// The region inside an ECR registry host: `123456789012.dkr.ecr.eu-west-1.amazonaws.com` → `eu-west-1`.
pub(crate) fn region_of_ecr_host(host: &str) -> Option<String> {
    let mut parts = host.split('.');
    let (_account, dkr, ecr, region) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    (dkr == "dkr" && ecr.starts_with("ecr") && parts.next() == Some("amazonaws"))
        .then(|| region.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_default_to_five_and_must_be_positive() {
        assert_eq!(retry_config(None).unwrap().max_attempts(), 5);
        assert_eq!(retry_config(Some("8")).unwrap().max_attempts(), 8);
        assert!(retry_config(Some("0")).is_err());
        assert!(retry_config(Some("many")).is_err());
    }

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
