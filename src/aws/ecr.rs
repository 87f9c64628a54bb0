//! Amazon ECR: the registry login and the repository checks made before anything is built.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::SdkError;
use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
use aws_sdk_ecr::types::ImageTagMutability;
use base64::Engine as _;
use bollard::auth::DockerCredentials;

pub use super::Secret;
use crate::decide::TagRules;
use crate::output::redactor;
use crate::reference::normalize_registry;
use crate::registry::RegistryClient;

/// The registry credentials ECR hands out (valid 12 hours) and the registry they are for.
#[derive(Debug, Clone)]
pub struct EcrLogin {
    pub username: String,
    pub password: Secret,
    /// The registry host of the caller's account, from the token's proxy endpoint.
    pub endpoint: String,
}

impl EcrLogin {
    /// Credentials for the Engine API's X-Registry-Auth header: the only place the password goes.
    pub fn docker_credentials(&self, registry: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(self.username.clone()),
            password: Some(self.password.expose().to_owned()),
            serveraddress: Some(registry.to_owned()),
            ..DockerCredentials::default()
        }
    }
}

/// ecr:GetAuthorizationToken. The token and the password inside it are registered with the log redactor
/// before anything else can see them.
pub async fn login(client: &Client, region: &str) -> Result<EcrLogin> {
    let output = client.get_authorization_token().send().await.map_err(|err| {
        let message = if super::is_access_denied(&err) {
            format!(
                "ecr:GetAuthorizationToken was denied in {region}: the build role needs \
                 \"Action\": \"ecr:GetAuthorizationToken\" with \"Resource\": \"*\" (this action cannot be \
                 scoped to a repository)"
            )
        } else {
            format!("ecr:GetAuthorizationToken failed in {region}")
        };
        anyhow::Error::new(err).context(message)
    })?;
    let data = output.authorization_data().first().with_context(|| {
        format!("ecr:GetAuthorizationToken in {region} returned no authorization data")
    })?;
    let token = data
        .authorization_token()
        .with_context(|| format!("ecr:GetAuthorizationToken in {region} returned no token"))?;
    redactor().add(token);
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .with_context(|| format!("the ECR token from {region} is not base64 of user:password"))?;
    let (username, password) = decoded
        .split_once(':')
        .with_context(|| format!("the ECR token from {region} is not base64 of user:password"))?;
    redactor().add(password);
    let endpoint = data.proxy_endpoint().with_context(|| {
        format!("ecr:GetAuthorizationToken in {region} returned no proxy endpoint")
    })?;
    let endpoint =
        normalize_registry(endpoint).map_err(|m| anyhow::anyhow!("ECR proxy endpoint: {m}"))?;
    Ok(EcrLogin {
        username: username.to_owned(),
        password: Secret(password.to_owned()),
        endpoint,
    })
}

/// ECR tokens last 12 hours; a build that outlives one renews it before pushing.
const TOKEN_RENEWAL_AGE: Duration = Duration::from_secs(11 * 3600);

pub fn needs_renewal(age: Duration) -> bool {
    age >= TOKEN_RENEWAL_AGE
}

/// The run's ECR login, renewed when it is older than 11 hours.
pub struct EcrAuth {
    client: Client,
    region: String,
    current: tokio::sync::Mutex<(EcrLogin, Instant)>,
}

impl EcrAuth {
    pub async fn login(client: Client, region: String) -> Result<Self> {
        let first = login(&client, &region).await?;
        Ok(Self {
            client,
            region,
            current: tokio::sync::Mutex::new((first, Instant::now())),
        })
    }

    /// The login to use now.
    pub async fn current(&self) -> Result<EcrLogin> {
        let mut current = self.current.lock().await;
        if needs_renewal(current.1.elapsed()) {
            tracing::info!(
                "renewing the ECR login, which is {} hours old",
                current.1.elapsed().as_secs() / 3600
            );
            *current = (login(&self.client, &self.region).await?, Instant::now());
        }
        Ok(current.0.clone())
    }
}

/// The ECR login and the registry API client, one of each for the whole run; `current` keeps both
/// on a token young enough for the next call.
pub struct RegistryAccess {
    auth: EcrAuth,
    pub client: RegistryClient,
}

impl RegistryAccess {
    pub fn new(auth: EcrAuth, client: RegistryClient) -> Self {
        Self { auth, client }
    }

    pub async fn current(&self) -> Result<EcrLogin> {
        let login = self.auth.current().await?;
        self.client
            .set_login(&login.username, login.password.expose());
        Ok(login)
    }
}

/// Used when a dry run has no registry from the config, the flags or AWS_ACCOUNT_ID + region.
pub const DRY_RUN_PLACEHOLDER_REGISTRY: &str = "dry-run.invalid";

/// The registry a dry run or a plan names without asking AWS, and where it came from.
pub fn offline_registry(configured: Option<&str>) -> (String, &'static str) {
    if let Some(registry) = configured {
        return (registry.to_owned(), "the config or --registry");
    }
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let region = var("AWS_REGION").or_else(|| var("AWS_DEFAULT_REGION"));
    match (var("AWS_ACCOUNT_ID"), region) {
        (Some(account), Some(region)) => (
            format!("{account}.dkr.ecr.{region}.amazonaws.com"),
            "AWS_ACCOUNT_ID and AWS_REGION",
        ),
        _ => (
            DRY_RUN_PLACEHOLDER_REGISTRY.to_owned(),
            "a placeholder: set registry, --registry, or AWS_ACCOUNT_ID and AWS_REGION",
        ),
    }
}

/// Fails, naming every missing repository at once, before a single image is built. Returns each
/// repository's tag rules.
pub async fn check_repositories(
    client: &Client,
    region: &str,
    repositories: &[&str],
) -> Result<HashMap<String, TagRules>> {
    let lookups = repositories.iter().map(|name| async move {
        let result = client
            .describe_repositories()
            .repository_names(*name)
            .send()
            .await;
        (*name, result)
    });
    let mut missing = Vec::new();
    let mut rules = HashMap::new();
    for (name, result) in futures_util::future::join_all(lookups).await {
        match result {
            Ok(output) => {
                // By name: this SDK version knows IMMUTABLE_WITH_EXCLUSION only as an unknown variant.
                let tags_immutable = output.repositories().iter().any(|r| {
                    r.image_tag_mutability().is_some_and(|m| {
                        m.as_str()
                            .starts_with(ImageTagMutability::Immutable.as_str())
                    })
                });
                let rule = if tags_immutable {
                    TagRules::Immutable
                } else {
                    TagRules::Mutable
                };
                rules.insert(name.to_owned(), rule);
            }
            Err(SdkError::ServiceError(err))
                if matches!(
                    err.err(),
                    DescribeRepositoriesError::RepositoryNotFoundException(_)
                ) =>
            {
                missing.push(name);
            }
            Err(err) if super::is_access_denied(&err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "ecr:DescribeRepositories on repository {name} was denied in {region}: the build role \
                     needs it on the repository's ARN"
                )));
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                    "ecr:DescribeRepositories on repository {name} failed in {region}"
                )));
            }
        }
    }
    anyhow::ensure!(
        missing.is_empty(),
        "ECR repository not found in {region}: {} (create it first, e.g. aws ecr create-repository \
         --repository-name {})",
        missing.join(", "),
        missing[0]
    );
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_renewed_an_hour_before_they_expire() {
        assert!(!needs_renewal(Duration::from_secs(0)));
        assert!(!needs_renewal(Duration::from_secs(11 * 3600 - 1)));
        assert!(needs_renewal(Duration::from_secs(11 * 3600)));
        assert!(needs_renewal(Duration::from_secs(13 * 3600)));
    }

    #[test]
    fn secrets_do_not_print() {
        let secret = Secret("hunter2".into());
        assert_eq!(format!("{secret:?}"), "***");
        let login = EcrLogin {
            username: "AWS".into(),
            password: secret,
            endpoint: "r".into(),
        };
        assert!(!format!("{login:?}").contains("hunter2"));
        assert_eq!(
            login.docker_credentials("r").password.as_deref(),
            Some("hunter2")
        );
    }
}
