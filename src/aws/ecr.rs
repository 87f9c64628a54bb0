//! Amazon ECR: the registry login and the repository checks made before anything is built.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use aws_sdk_ecr::Client;
use aws_sdk_ecr::error::SdkError;
use aws_sdk_ecr::operation::describe_repositories::DescribeRepositoriesError;
use aws_sdk_ecr::types::{ImageTagMutability, ImageTagMutabilityExclusionFilter, RctAppliedFor};
use base64::Engine as _;
use bollard::auth::DockerCredentials;

pub(crate) use super::Secret;
use crate::decide::TagRules;
use crate::output::redactor;
use crate::reference::normalize_registry;
use crate::registry::Registry;

/// The registry credentials ECR hands out (valid 12 hours) and the registry they are for.
#[derive(Debug, Clone)]
pub(crate) struct EcrLogin {
    pub username: String,
    pub password: Secret,
    /// The registry host of the caller's account, from the token's proxy endpoint.
    pub endpoint: String,
}

impl EcrLogin {
    /// Credentials for the Engine API's X-Registry-Auth header: the only place the password goes.
    pub(crate) fn docker_credentials(&self, registry: &str) -> DockerCredentials {
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
pub(crate) async fn login(client: &Client, region: &str) -> Result<EcrLogin> {
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

pub(crate) fn needs_renewal(age: Duration) -> bool {
    age >= TOKEN_RENEWAL_AGE
}

/// The run's ECR login, renewed when it is older than 11 hours.
pub(crate) struct EcrAuth {
    client: Client,
    region: String,
    current: tokio::sync::Mutex<(EcrLogin, Instant)>,
}

impl EcrAuth {
    pub(crate) async fn login(client: Client, region: String) -> Result<Self> {
        let first = login(&client, &region).await?;
        Ok(Self {
            client,
            region,
            current: tokio::sync::Mutex::new((first, Instant::now())),
        })
    }

    /// The login to use now.
    pub(crate) async fn current(&self) -> Result<EcrLogin> {
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
pub(crate) struct EcrRegistry {
    auth: EcrAuth,
    pub client: Registry,
}

impl EcrRegistry {
    pub(crate) fn new(auth: EcrAuth, client: Registry) -> Self {
        Self { auth, client }
    }

    pub(crate) async fn current(&self) -> Result<EcrLogin> {
        let login = self.auth.current().await?;
        self.client
            .set_login(&login.username, login.password.expose());
        Ok(login)
    }
}

/// Used when a dry run has no registry from the config, the flags or AWS_ACCOUNT_ID + region.
pub(crate) const DRY_RUN_PLACEHOLDER_REGISTRY: &str = "dry-run.invalid";

/// The registry a dry run or a plan names without asking AWS, and where it came from.
pub(crate) fn offline_registry(
    configured: Option<&str>,
    env: &super::AwsEnv,
) -> (String, &'static str) {
    if let Some(registry) = configured {
        return (registry.to_owned(), "the config or --registry");
    }
    match (env.account_id.clone(), env.region.clone()) {
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

/// Fails, naming every missing repository at once, before a single image is built; a missing
/// repository that a creation template applied to CREATE_ON_PUSH covers is fine: the push creates it.
/// Returns each repository's tag rules (for one still to be created, its template's).
pub(crate) async fn check_repositories(
    client: &Client,
    region: &str,
    repositories: &[&str],
) -> Result<HashMap<String, TagRules>> {
    if let Some(rules) = describe_together(client, repositories).await {
        return Ok(rules);
    }
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
                let repository = output.repositories().first();
                let rule = tag_rules(
                    repository.and_then(|r| r.image_tag_mutability()),
                    repository.map_or(&[], |r| r.image_tag_mutability_exclusion_filters()),
                );
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
            Err(err) => {
                let denied = super::is_access_denied(&err);
                let message = if denied {
                    format!(
                        "ecr:DescribeRepositories on repository {name} was denied in {region}: the build \
                         role needs it on the repository's ARN"
                    )
                } else {
                    format!("ecr:DescribeRepositories on repository {name} failed in {region}")
                };
                return Err(anyhow::Error::new(err).context(message));
            }
        }
    }
    if !missing.is_empty() {
        allow_create_on_push(client, region, missing, &mut rules).await?;
    }
    Ok(rules)
}

/// The usual case in one call (ECR takes up to 100 names): every repository there and readable.
/// `None` where that call fails (one missing, one denied), for the lookups name by name to say which.
async fn describe_together(
    client: &Client,
    repositories: &[&str],
) -> Option<HashMap<String, TagRules>> {
    let mut names: Vec<String> = repositories.iter().map(|name| (*name).to_owned()).collect();
    names.sort_unstable();
    names.dedup();
    if names.len() < 2 || names.len() > 100 {
        return None;
    }
    let output = (client.describe_repositories())
        .set_repository_names(Some(names.clone()))
        .send()
        .await
        .ok()?;
    let rules: HashMap<String, TagRules> = (output.repositories().iter())
        .filter_map(|repository| {
            let rule = tag_rules(
                repository.image_tag_mutability(),
                repository.image_tag_mutability_exclusion_filters(),
            );
            Some((repository.repository_name()?.to_owned(), rule))
        })
        .collect();
    names
        .iter()
        .all(|name| rules.contains_key(name))
        .then_some(rules)
}

/// The rules of one repository; an unknown mutability (a newer ECR) counts as immutable, so a tag
/// is never moved where ECR might refuse it.
fn tag_rules(
    mutability: Option<&ImageTagMutability>,
    exclusions: &[ImageTagMutabilityExclusionFilter],
) -> TagRules {
    let filters: Vec<&str> = exclusions.iter().map(|f| f.filter()).collect();
    match mutability {
        None | Some(ImageTagMutability::Mutable) => TagRules::mutable(),
        Some(ImageTagMutability::Immutable) => TagRules::immutable(),
        Some(ImageTagMutability::ImmutableWithExclusion) => {
            TagRules::with_exclusions(true, &filters)
        }
        Some(ImageTagMutability::MutableWithExclusion) => {
            TagRules::with_exclusions(false, &filters)
        }
        Some(other) => {
            tracing::warn!(
                "unknown image tag mutability {}: treating every tag as immutable",
                other.as_str()
            );
            TagRules::immutable()
        }
    }
}

/// A repository creation template: which repositories it creates on push, with which tag rules.
#[derive(Debug, Clone)]
pub(crate) struct CreationTemplate {
    /// `ROOT`, or a namespace such as `prod` (for `prod/...`).
    pub prefix: String,
    pub create_on_push: bool,
    pub rules: TagRules,
}

/// The template ECR creates `repository` from on push: the one with the longest matching prefix
/// among those applied to CREATE_ON_PUSH, else `ROOT`'s.
pub(crate) fn template_for<'a>(
    repository: &str,
    templates: &'a [CreationTemplate],
) -> Option<&'a CreationTemplate> {
    let on_push = templates.iter().filter(|t| t.create_on_push);
    let namespace = on_push
        .clone()
        .filter(|t| t.prefix != "ROOT")
        .filter(|t| {
            let prefix = t.prefix.trim_end_matches('/');
            repository
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'))
        })
        .max_by_key(|t| t.prefix.len());
    namespace.or_else(|| on_push.clone().find(|t| t.prefix == "ROOT"))
}

/// Takes the missing repositories that a template creates on push; fails naming the others.
async fn allow_create_on_push(
    client: &Client,
    region: &str,
    missing: Vec<&str>,
    rules: &mut HashMap<String, TagRules>,
) -> Result<()> {
    let templates = creation_templates(client).await;
    let mut not_created = Vec::new();
    for name in missing {
        match templates
            .as_deref()
            .ok()
            .and_then(|t| template_for(name, t))
        {
            Some(template) => {
                tracing::info!(
                    "ECR repository {name} does not exist yet: the push creates it from the creation \
                     template {}",
                    template.prefix
                );
                rules.insert(name.to_owned(), template.rules.clone());
            }
            None => not_created.push(name),
        }
    }
    if not_created.is_empty() {
        return Ok(());
    }
    let message = format!(
        "ECR repository not found in {region}: {} (create it first, e.g. aws ecr create-repository \
         --repository-name {}, or add a repository creation template applied to CREATE_ON_PUSH)",
        not_created.join(", "),
        not_created[0]
    );
    Err(match templates {
        Ok(_) => anyhow::anyhow!(message),
        // The templates could not be read (denied, or an emulator without them): the cause says why.
        Err(cause) => anyhow::Error::from_boxed(cause)
            .context("no repository creation template could be read")
            .context(message),
    })
}

/// ecr:DescribeRepositoryCreationTemplates, every page. Asked only when a repository is missing,
/// and not retried: the answer only decides between two errors and a push that creates it.
async fn creation_templates(client: &Client) -> Result<Vec<CreationTemplate>, super::SdkFailure> {
    let once = aws_sdk_ecr::config::Builder::default()
        .retry_config(aws_config::retry::RetryConfig::standard().with_max_attempts(1));
    let mut templates = Vec::new();
    let mut next_token = None;
    loop {
        let page = client
            .describe_repository_creation_templates()
            .set_next_token(next_token)
            .customize()
            .config_override(once.clone())
            .send()
            .await
            .map_err(Box::new)?;
        for template in page.repository_creation_templates() {
            templates.push(CreationTemplate {
                prefix: template.prefix().unwrap_or_default().to_owned(),
                create_on_push: template
                    .applied_for()
                    .contains(&RctAppliedFor::CreateOnPush),
                rules: tag_rules(
                    template.image_tag_mutability(),
                    template.image_tag_mutability_exclusion_filters(),
                ),
            });
        }
        next_token = page.next_token().map(str::to_owned);
        if next_token.is_none() {
            return Ok(templates);
        }
    }
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

    fn template(prefix: &str, create_on_push: bool) -> CreationTemplate {
        CreationTemplate {
            prefix: prefix.into(),
            create_on_push,
            rules: TagRules::mutable(),
        }
    }

    #[test]
    fn the_most_specific_create_on_push_template_applies_else_root() {
        let templates = [
            template("ROOT", true),
            template("prod", true),
            template("prod/team", true),
            template("cache", false),
        ];
        let prefix = |repository| template_for(repository, &templates).map(|t| t.prefix.as_str());
        assert_eq!(prefix("prod/team/web"), Some("prod/team"));
        assert_eq!(prefix("prod/web"), Some("prod"));
        assert_eq!(
            prefix("production/web"),
            Some("ROOT"),
            "a prefix is a whole namespace"
        );
        assert_eq!(
            prefix("cache/web"),
            Some("ROOT"),
            "not applied to CREATE_ON_PUSH"
        );
        assert_eq!(prefix("web"), Some("ROOT"));
        assert_eq!(
            template_for("web", &templates[1..]).map(|t| t.prefix.as_str()),
            None
        );
        assert!(template_for("cache/web", &[template("cache", false)]).is_none());
    }

    #[test]
    fn every_mutability_becomes_per_tag_rules() {
        let filter = |text: &str| {
            ImageTagMutabilityExclusionFilter::builder()
                .filter_type(aws_sdk_ecr::types::ImageTagMutabilityExclusionFilterType::Wildcard)
                .filter(text)
                .build()
                .unwrap()
        };
        let latest = [filter("latest"), filter("dev-*")];
        let rules = tag_rules(Some(&ImageTagMutability::ImmutableWithExclusion), &latest);
        assert!(!rules.is_immutable("latest") && !rules.is_immutable("dev-1"));
        assert!(rules.is_immutable("abc1234") && rules.is_immutable("latest2"));
        let release = [filter("release-*")];
        let rules = tag_rules(Some(&ImageTagMutability::MutableWithExclusion), &release);
        assert!(rules.is_immutable("release-1.2") && !rules.is_immutable("latest"));
        assert!(tag_rules(Some(&ImageTagMutability::Immutable), &[]).is_immutable("x"));
        assert!(!tag_rules(None, &[]).is_immutable("x"));
        let unknown = ImageTagMutability::from("IMMUTABLE_SOMEHOW");
        assert!(tag_rules(Some(&unknown), &[]).is_immutable("x"));
    }

    mod replayed {
        //! Exact ECR requests and answers, where moto 5.2 has no creation templates.

        use super::super::*;
        use aws_sdk_ecr::config::{BehaviorVersion, Credentials, Region};
        use aws_smithy_http_client::test_util::{ReplayEvent, StaticReplayClient};
        use aws_smithy_types::body::SdkBody;

        const ENDPOINT: &str = "https://api.ecr.eu-west-1.amazonaws.com/";

        fn call(action: &str, body: &str, status: u16, answer: &str) -> ReplayEvent {
            ReplayEvent::new(
                http::Request::builder()
                    .uri(ENDPOINT)
                    .header(
                        "x-amz-target",
                        format!("AmazonEC2ContainerRegistry_V20150921.{action}"),
                    )
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(SdkBody::from(body.to_owned()))
                    .unwrap(),
                http::Response::builder()
                    .status(status)
                    .header("content-type", "application/x-amz-json-1.1")
                    .body(SdkBody::from(answer.to_owned()))
                    .unwrap(),
            )
        }

        fn not_found(repository: &str) -> ReplayEvent {
            call(
                "DescribeRepositories",
                &format!(r#"{{"repositoryNames":["{repository}"]}}"#),
                400,
                &format!(
                    r#"{{"__type":"RepositoryNotFoundException","message":"The repository with name '{repository}' does not exist in the registry with id '123456789012'"}}"#
                ),
            )
        }

        fn client(events: Vec<ReplayEvent>) -> (Client, StaticReplayClient) {
            let http = StaticReplayClient::new(events);
            let config = aws_sdk_ecr::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("eu-west-1"))
                .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
                .http_client(http.clone())
                .build();
            (Client::from_conf(config), http)
        }

        #[tokio::test]
        async fn a_repository_a_template_creates_on_push_passes_with_the_template_s_rules() {
            let templates = r#"{"registryId":"123456789012","repositoryCreationTemplates":[
                {"prefix":"cache","appliedFor":["PULL_THROUGH_CACHE"]},
                {"prefix":"prod","appliedFor":["REPLICATION","CREATE_ON_PUSH"],
                 "imageTagMutability":"IMMUTABLE_WITH_EXCLUSION",
                 "imageTagMutabilityExclusionFilters":[{"filterType":"WILDCARD","filter":"latest"}]}]}"#;
            let (client, http) = client(vec![
                not_found("prod/web"),
                call("DescribeRepositoryCreationTemplates", "{}", 200, templates),
            ]);
            let rules = check_repositories(&client, "eu-west-1", &["prod/web"])
                .await
                .unwrap();
            assert!(rules["prod/web"].is_immutable("abc1234"));
            assert!(!rules["prod/web"].is_immutable("latest"));
            http.assert_requests_match(&[]);
        }

        #[tokio::test]
        async fn a_repository_no_template_creates_is_named_with_both_fixes() {
            let templates = r#"{"repositoryCreationTemplates":[{"prefix":"cache","appliedFor":["CREATE_ON_PUSH"]}]}"#;
            let (client, http) = client(vec![
                not_found("prod/web"),
                call("DescribeRepositoryCreationTemplates", "{}", 200, templates),
            ]);
            let err = check_repositories(&client, "eu-west-1", &["prod/web"])
                .await
                .unwrap_err();
            let message = format!("{err:#}");
            assert!(
                message.contains("ECR repository not found in eu-west-1: prod/web"),
                "{message}"
            );
            assert!(message.contains("CREATE_ON_PUSH"), "{message}");
            http.assert_requests_match(&[]);
        }

        #[tokio::test]
        async fn templates_that_cannot_be_read_leave_the_repository_missing_and_say_why() {
            let denied = r#"{"__type":"AccessDeniedException","message":"not authorized to perform: ecr:DescribeRepositoryCreationTemplates"}"#;
            let (client, http) = client(vec![
                not_found("prod/web"),
                call("DescribeRepositoryCreationTemplates", "{}", 403, denied),
            ]);
            let err = check_repositories(&client, "eu-west-1", &["prod/web"])
                .await
                .unwrap_err();
            let message = format!("{err:#}");
            assert!(
                message.starts_with("ECR repository not found in eu-west-1: prod/web"),
                "{message}"
            );
            assert!(
                message.contains("no repository creation template could be read")
                    && message.contains("AccessDeniedException"),
                "{message}"
            );
            // One attempt only: the answer decides between two errors.
            assert_eq!(http.actual_requests().count(), 2);
        }
    }
}
