//! One run of `build` or `plan`. An image goes, top to bottom: its context is read and hashed
//! ([`prepare`]); the run's tags are rendered; [`build_one`] looks up what the registry holds, asks
//! [`decide`] what to do, and either re-tags the unchanged image or builds and pushes it; once every
//! image is done, the artifacts are written. Decisions are pure functions in other modules; this
//! module does the I/O in the order they say.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::artifacts::{self, ImageUri};
use crate::aws::{self, ecr::EcrAuth, ecr::EcrLogin};
use crate::config::{Builder, ConfigError, ImagePlan, Plan};
use crate::context::{self, ContextFiles};
use crate::decide::{self, Action, RegistryState, TagRules};
use crate::docker::{BuildRequest, DockerError, Engine};
use crate::error::{Error, Result};
use crate::registry::{Manifest, RegistryClient, RegistryError};
use crate::report::{self, ImageOutcome, PlanOutput, PlannedImage};
use crate::secrets::{self, SecretValues};
use crate::tags::{self, BuildEnv, RunTags};
use crate::{git, retry};

/// Used when a dry run has no registry from the config, the flags or AWS_ACCOUNT_ID + region.
pub const DRY_RUN_PLACEHOLDER_REGISTRY: &str = "dry-run.invalid";
pub const REVISION_LABEL: &str = "org.opencontainers.image.revision";
pub const CONTEXT_DIGEST_LABEL: &str = "dev.ecr-build.context-digest";

pub struct BuildSettings {
    pub dry_run: bool,
    /// Build even where the registry has an image of the same context digest.
    pub rebuild: bool,
    /// How long a push or registry call is retried while its faults are transient.
    pub retry_budget: Duration,
    pub jobs: usize,
    pub docker_timeout: Duration,
}

/// An image whose context has been read: the files to send and their digest.
struct PreparedImage {
    plan: ImagePlan,
    files: ContextFiles,
    digest: String,
}

/// Everything that decides an image besides its files; hashed into the context digest. JSON, so no two
/// different inputs can produce the same bytes.
fn digest_inputs(image: &ImagePlan, builder: Builder, dockerfile_in_context: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "builder": format!("{builder:?}"),
        "dockerfile": dockerfile_in_context,
        "target": image.target,
        "build_args": image.build_args,
        "secret_ids": image.secrets.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        "ssm_path": image.ssm_path,
    }))
    .expect("plain values serialize")
}

/// Walks and hashes every image's context, in parallel, off the async threads. The run's own
/// artifacts and output files are never sent.
async fn prepare(plan: &Plan) -> Result<Vec<PreparedImage>> {
    let mut withheld = plan.artifacts.paths();
    withheld.extend(context::own_output_files());
    let walks = plan.images.iter().cloned().map(|image| {
        let builder = plan.builder;
        let withheld = withheld.clone();
        tokio::task::spawn_blocking(move || prepare_one(image, builder, &withheld))
    });
    let mut prepared = Vec::with_capacity(plan.images.len());
    for walk in futures_util::future::join_all(walks).await {
        prepared.push(walk.context("context walk panicked")??);
    }
    Ok(prepared)
}

fn prepare_one(image: ImagePlan, builder: Builder, withheld: &[PathBuf]) -> Result<PreparedImage> {
    let name = image.name.as_str();
    let mut files = context::collect(&image.context, &image.dockerfile).map_err(|err| {
        ConfigError::Invalid {
            origin: format!("image {name}"),
            message: err.to_string(),
        }
    })?;
    for path in files.withhold(withheld) {
        tracing::debug!(image = name, "not sending {path}: ecr-build writes it");
    }
    let inputs = digest_inputs(&image, builder, files.dockerfile_in_context());
    let digest = files.digest(&inputs).with_context(|| {
        format!(
            "image {name}: cannot hash the context {}",
            image.context.display()
        )
    })?;
    tracing::debug!(
        image = name,
        "context {}: {} files, {} bytes, digest {digest}",
        image.context.display(),
        files.len(),
        files.total_bytes()
    );
    Ok(PreparedImage {
        plan: image,
        files,
        digest,
    })
}

/// The run's tags; a dry run without a commit tags with a hash of every image's context digest.
fn run_tags(
    plan: &Plan,
    sha_flag: Option<&str>,
    prepared: &[PreparedImage],
    dry_run: bool,
) -> Result<RunTags> {
    let stand_in = dry_run.then(|| {
        let mut hasher = Sha256::new();
        for image in prepared {
            hasher.update(image.plan.name.as_bytes());
            hasher.update([0]);
            hasher.update(image.digest.as_bytes());
        }
        format!("{:x}", hasher.finalize())[..40].to_owned()
    });
    let git = |args: &[&str]| git::output(&plan.source_dir, args);
    tags::resolve_run_tags(
        &plan.tags,
        sha_flag,
        &BuildEnv::from_process(),
        git,
        stand_in,
    )
    .map_err(|err| Error::usage(err.to_string()))
}

/// The registry of a dry run or a plan, and where it came from.
fn offline_registry(plan: &Plan) -> (String, &'static str) {
    if let Some(registry) = &plan.registry {
        return (registry.clone(), "the config or --registry");
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

/// `ecr-build plan`: the JSON on stdout, nothing built.
pub async fn plan(plan: Plan, sha_flag: Option<&str>) -> Result<()> {
    let prepared = prepare(&plan).await?;
    let run_tags = run_tags(&plan, sha_flag, &prepared, false)?;
    let (registry, source) = offline_registry(&plan);
    tracing::info!("registry {registry} (from {source})");
    let images = prepared
        .iter()
        .map(|p| PlannedImage {
            name: &p.plan.name,
            repository: &p.plan.repository,
            context: &p.plan.context,
            dockerfile: &p.plan.dockerfile,
            target: p.plan.target.as_deref(),
            context_digest: &p.digest,
            uris: (run_tags.tags.iter())
                .map(|t| format!("{registry}/{}:{t}", p.plan.repository))
                .collect(),
        })
        .collect();
    let output = PlanOutput {
        registry: &registry,
        sha: run_tags.sha.as_deref(),
        tags: &run_tags.tags,
        images,
    };
    report::print_plan(&output).context("cannot print the plan")?;
    Ok(())
}

/// The ECR login and the registry API client, one for the whole run; `current` keeps both on a
/// token young enough for the next call.
struct RegistryAccess {
    auth: EcrAuth,
    client: RegistryClient,
}

impl RegistryAccess {
    async fn current(&self) -> Result<EcrLogin> {
        let login = self.auth.current().await?;
        self.client
            .set_login(&login.username, login.password.expose());
        Ok(login)
    }
}

/// The parts of a run every image shares.
struct RunContext<'a> {
    engine: &'a Engine,
    registry: &'a str,
    tags: &'a [String],
    labels: Vec<(String, String)>,
    network: Option<&'a str>,
    builder: Builder,
    /// `None` in a dry run.
    access: Option<RegistryAccess>,
    /// Each repository's tag rules, from ECR.
    rules: HashMap<String, TagRules>,
    rebuild: bool,
    /// How long transient registry faults are retried, per call.
    retry_budget: Duration,
}

impl RunContext<'_> {
    /// A registry API call, retried while its faults are transient.
    async fn registry_call<T, F, Fut>(
        &self,
        image: &str,
        what: &str,
        call: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        retry::with_backoff(
            image,
            what,
            self.retry_budget,
            RegistryError::is_transient,
            call,
        )
        .await
    }
}

/// The tag that marks an image by the digest of everything that decided it.
pub fn context_tag(context_digest: &str) -> String {
    format!("ctx-{}", &context_digest[..20])
}

/// One image, from its prepared context to its outcome.
async fn build_one(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
) -> Result<ImageOutcome> {
    let started = Instant::now();
    let name = image.plan.name.clone();
    let repository = image.plan.repository.as_str();
    let repository_uri = format!("{}/{repository}", run.registry);
    let ctx_tag = context_tag(&image.digest);
    let outcome = |digest: String, result| ImageOutcome {
        name: name.clone(),
        repository_uri: repository_uri.clone(),
        digest,
        result,
        seconds: started.elapsed().as_secs_f64(),
    };
    let Some(access) = &run.access else {
        let image_id = build_image(run, image, secrets, None).await?;
        return Ok(outcome(image_id, "built (dry run, not pushed)"));
    };
    let rules = run.rules.get(repository).copied().unwrap_or_default();
    let (state, unchanged) = look_up(run, access, &image, &ctx_tag, rules).await?;
    let action =
        decide::decide(run.tags, &ctx_tag, &state, rules, run.rebuild).map_err(|conflict| {
            anyhow::anyhow!(
                "{repository_uri}:{conflict} (context digest {})",
                image.digest
            )
        })?;
    match action {
        Action::Reuse { digest, put } => {
            tracing::info!(
                image = name.as_str(),
                "unchanged: {repository_uri}:{ctx_tag} is {digest}; tagging it instead of building"
            );
            let manifest = unchanged.expect("reuse is decided on a manifest that was found");
            for tag in put {
                run.registry_call(&name, &format!("tagging {repository}:{tag}"), || {
                    access.client.put_manifest(repository, &tag, &manifest)
                })
                .await?;
                tracing::info!(
                    image = name.as_str(),
                    "tagged {repository_uri}:{tag} ({digest})"
                );
            }
            Ok(outcome(digest, "reused"))
        }
        Action::Build { push } => {
            let login = access.current().await?;
            let image_id = build_image(run, image, secrets, Some(&login)).await?;
            let digest = push_tags(run, access, &name, &repository_uri, &image_id, &push).await?;
            Ok(outcome(digest, "pushed"))
        }
    }
}

/// What the registry holds: the image of the same context digest (its manifest, to put under the
/// run's tags byte for byte), and the tags the decision needs.
async fn look_up(
    run: &RunContext<'_>,
    access: &RegistryAccess,
    image: &PreparedImage,
    ctx_tag: &str,
    rules: TagRules,
) -> Result<(RegistryState, Option<Manifest>)> {
    let (name, repository) = (image.plan.name.as_str(), image.plan.repository.as_str());
    access.current().await?;
    let mut state = RegistryState::default();
    let mut unchanged = None;
    if !run.rebuild {
        unchanged = run
            .registry_call(name, &format!("looking up {repository}:{ctx_tag}"), || {
                access.client.get_manifest(repository, ctx_tag)
            })
            .await?;
        state.unchanged = unchanged.as_ref().map(|m: &Manifest| m.digest.clone());
    }
    for tag in decide::tags_to_look_up(run.tags, rules, state.unchanged.is_some()) {
        let digest = run
            .registry_call(name, &format!("looking up {repository}:{tag}"), || {
                access.client.manifest_digest(repository, tag)
            })
            .await?;
        if let Some(digest) = digest {
            state.existing.insert(tag.to_owned(), digest);
        }
    }
    Ok((state, unchanged))
}

/// Builds the image and tags it locally with every run tag; returns the image ID.
async fn build_image(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
    login: Option<&EcrLogin>,
) -> Result<String> {
    let name = image.plan.name.as_str();
    let repository_uri = format!("{}/{}", run.registry, image.plan.repository);
    let primary = format!("{repository_uri}:{}", run.tags[0]);
    let mut labels = run.labels.clone();
    labels.push((CONTEXT_DIGEST_LABEL.into(), image.digest.clone()));
    let mut build_args = image.plan.build_args.clone();
    if image.plan.allow_secret_build_args && !secrets.is_empty() {
        tracing::warn!(
            image = name,
            "secrets {} are also passed as build args (allow_secret_build_args): anyone who can pull \
             this image can read them in its history",
            secrets.keys().cloned().collect::<Vec<_>>().join(", ")
        );
        for (id, value) in &secrets {
            build_args.push((id.clone(), String::from_utf8_lossy(value).into_owned()));
        }
    }
    if run.builder == Builder::Buildkit {
        // The pushed image carries its cache metadata, so cache_from on a fresh host reuses its layers.
        build_args.push(("BUILDKIT_INLINE_CACHE".into(), "1".into()));
    }
    let cache_from: Vec<String> = (image.plan.cache_from.iter())
        .map(|reference| qualify_reference(run.registry, reference))
        .collect();
    tracing::info!(
        image = name,
        "building {primary} ({} files, {} bytes of context)",
        image.files.len(),
        image.files.total_bytes()
    );
    let dockerfile = image.files.dockerfile_in_context().to_owned();
    let request = BuildRequest {
        image: name,
        cache_from: &cache_from,
        reference: &primary,
        dockerfile: &dockerfile,
        target: image.plan.target.as_deref(),
        network: run.network,
        builder: run.builder,
        build_args: &build_args,
        labels: &labels,
        // For pulls during the build (FROM or cache_from in the same registry).
        registry_auth: login.map(|login| {
            HashMap::from([(
                run.registry.to_owned(),
                login.docker_credentials(run.registry),
            )])
        }),
        secrets,
    };
    let image_id = run
        .engine
        .build(request, image.files.into_tar_stream())
        .await?;
    tracing::info!(image = name, "built {primary} ({image_id})");
    for tag in &run.tags[1..] {
        run.engine.tag(&image_id, &repository_uri, tag).await?;
    }
    Ok(image_id)
}

/// Pushes `push` in order; every tag must be stored under the same digest, which is returned.
async fn push_tags(
    run: &RunContext<'_>,
    access: &RegistryAccess,
    name: &str,
    repository_uri: &str,
    image_id: &str,
    push: &[String],
) -> Result<String> {
    let mut pushed: Option<String> = None;
    for tag in push {
        if !run.tags.contains(tag) {
            run.engine.tag(image_id, repository_uri, tag).await?;
        }
        // A long build can outlive the token it started with.
        let login = access.current().await?;
        let digest = retry::with_backoff(
            name,
            &format!("push of {repository_uri}:{tag}"),
            run.retry_budget,
            DockerError::is_transient,
            || {
                run.engine.push(
                    name,
                    repository_uri,
                    tag,
                    Some(login.docker_credentials(run.registry)),
                )
            },
        )
        .await?;
        tracing::info!(image = name, "pushed {repository_uri}:{tag} ({digest})");
        if let Some(first) = &pushed {
            if first != &digest {
                return Err(anyhow::anyhow!(
                    "{repository_uri}:{tag} was stored as {digest}, but {} as {first}",
                    push[0]
                )
                .into());
            }
        }
        pushed = Some(digest);
    }
    Ok(pushed.expect("a plan has at least one tag"))
}

/// `myapp/web:latest` is in the run's registry; `host.example:5000/x:y` or `localhost/x` names its own.
fn qualify_reference(registry: &str, reference: &str) -> String {
    let first = reference.split('/').next().unwrap_or_default();
    let has_host = reference.contains('/')
        && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_host {
        reference.to_owned()
    } else {
        format!("{registry}/{reference}")
    }
}

/// Logs in to ECR and checks every repository; the registry is the config's or the login's.
async fn connect_aws(
    plan: &Plan,
) -> Result<(
    String,
    RegistryAccess,
    HashMap<String, TagRules>,
    aws_sdk_ssm::Client,
    String,
)> {
    let region_hint = plan.registry.as_deref().and_then(aws::region_of_ecr_host);
    let sdk = aws::load_config(region_hint).await?;
    let region = sdk.region().map(ToString::to_string).unwrap_or_default();
    let ecr = aws_sdk_ecr::Client::from_conf(
        aws_sdk_ecr::config::Builder::from(&sdk)
            .interceptor(aws::LogFailedAttempts)
            .build(),
    );
    let auth = EcrAuth::login(ecr.clone(), region.clone()).await?;
    let endpoint = auth.current().await?.endpoint;
    let registry = plan.registry.clone().unwrap_or(endpoint);
    tracing::info!("logged in to ECR in {region}; pushing to {registry}");
    let repositories: Vec<&str> = plan.images.iter().map(|i| i.repository.as_str()).collect();
    let rules = aws::ecr::check_repositories(&ecr, &region, &repositories).await?;
    let client = RegistryClient::new(&registry).map_err(anyhow::Error::from)?;
    let ssm = aws_sdk_ssm::Client::from_conf(
        aws_sdk_ssm::config::Builder::from(&sdk)
            .interceptor(aws::LogFailedAttempts)
            .build(),
    );
    Ok((
        registry,
        RegistryAccess { auth, client },
        rules,
        ssm,
        region,
    ))
}

/// `ecr-build build`.
pub async fn build(plan: Plan, sha_flag: Option<&str>, settings: BuildSettings) -> Result<()> {
    let prepared = prepare(&plan).await?;
    let run_tags = run_tags(&plan, sha_flag, &prepared, settings.dry_run)?;
    let (registry, access, rules, secrets) = if settings.dry_run {
        let (registry, source) = offline_registry(&plan);
        tracing::info!(
            "dry run: registry {registry} (from {source}); nothing is pushed, no AWS call is made"
        );
        (
            registry,
            None,
            HashMap::new(),
            secrets::resolve(&plan, None).await?,
        )
    } else {
        let (registry, access, rules, ssm, region) = connect_aws(&plan).await?;
        let secrets = secrets::resolve(&plan, Some((&ssm, &region))).await?;
        (registry, Some(access), rules, secrets)
    };
    let engine = Engine::connect(settings.docker_timeout).await?;
    let labels = (run_tags.sha.iter())
        .map(|sha| (REVISION_LABEL.to_owned(), sha.clone()))
        .collect();
    let run = RunContext {
        engine: &engine,
        registry: &registry,
        tags: &run_tags.tags,
        labels,
        network: plan.network.as_deref(),
        builder: plan.builder,
        access,
        rules,
        rebuild: settings.rebuild,
        retry_budget: settings.retry_budget,
    };
    let total = prepared.len();
    let mut outcomes: Vec<(usize, String, Result<ImageOutcome>)> =
        futures_util::stream::iter(prepared.into_iter().zip(secrets).enumerate())
            .map(|(index, (image, secrets))| {
                let run = &run;
                async move {
                    let name = image.plan.name.clone();
                    (index, name, build_one(run, image, secrets).await)
                }
            })
            .buffer_unordered(settings.jobs)
            .collect()
            .await;
    outcomes.sort_by_key(|(index, _, _)| *index);

    // The summary names every image, failed or not, before the run's verdict.
    let mut succeeded = Vec::new();
    let mut failed = Vec::new();
    for (_, name, outcome) in outcomes {
        match outcome {
            Ok(outcome) => {
                report::print_summary_line(&name, Some(&outcome), &run_tags.tags);
                succeeded.push(outcome);
            }
            Err(err) => {
                tracing::error!(image = name.as_str(), "{err:#}");
                report::print_summary_line(&name, None, &run_tags.tags);
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        return Err(anyhow::anyhow!(
            "{} of {total} image{} failed ({}); no artifact was written",
            failed.len(),
            if total == 1 { "" } else { "s" },
            failed.join(", ")
        )
        .into());
    }
    write_artifacts(&plan, &run_tags.tags[0], &succeeded)
}

/// The deploy stage's files, only after every image of the run is in place.
fn write_artifacts(plan: &Plan, primary_tag: &str, images: &[ImageOutcome]) -> Result<()> {
    let uris: Vec<ImageUri> = images
        .iter()
        .map(|o| ImageUri {
            name: o.name.clone(),
            uri: format!("{}:{primary_tag}", o.repository_uri),
        })
        .collect();
    let rendered = artifacts::render(&plan.artifacts, primary_tag, &uris)?;
    for path in artifacts::write_all(&plan.artifacts.dir, &rendered)? {
        tracing::info!("wrote {}", path.display());
    }
    if plan.artifacts.image_detail.is_none() && plan.images.len() > 1 {
        tracing::info!(
            "imageDetail.json not written: set [artifacts] image_detail to the image CodeDeploy deploys"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;

    fn image(args: &[(&str, &str)], target: Option<&str>) -> ImagePlan {
        ImagePlan {
            name: "web".into(),
            repository: "app/web".into(),
            context: PathBuf::from("/c"),
            dockerfile: PathBuf::from("/c/Dockerfile"),
            target: target.map(str::to_owned),
            build_args: args
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            secrets: Vec::new(),
            ssm_path: None,
            allow_secret_build_args: false,
            cache_from: Vec::new(),
        }
    }

    #[test]
    fn cache_references_default_to_the_run_registry() {
        let registry = "1.dkr.ecr.eu-west-1.amazonaws.com";
        assert_eq!(
            qualify_reference(registry, "app/web:latest"),
            format!("{registry}/app/web:latest")
        );
        assert_eq!(
            qualify_reference(registry, "web:latest"),
            format!("{registry}/web:latest")
        );
        assert_eq!(
            qualify_reference(registry, "127.0.0.1:5000/app/web:latest"),
            "127.0.0.1:5000/app/web:latest"
        );
        assert_eq!(
            qualify_reference(registry, "localhost/web:1"),
            "localhost/web:1"
        );
        assert_eq!(
            qualify_reference(registry, "2.dkr.ecr.us-east-1.amazonaws.com/x:y"),
            "2.dkr.ecr.us-east-1.amazonaws.com/x:y"
        );
    }

    #[test]
    fn digest_inputs_separate_everything_that_decides_the_image() {
        let inputs =
            |image: &ImagePlan, builder, dockerfile| digest_inputs(image, builder, dockerfile);
        let base = inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile");
        let mut with_secret = image(&[("A", "1")], None);
        with_secret
            .secrets
            .push(("token".into(), SecretSource::Env("TOKEN".into())));
        let variants = [
            inputs(&image(&[("A", "2")], None), Builder::Buildkit, "Dockerfile"),
            inputs(
                &image(&[("A", "1")], Some("prod")),
                Builder::Buildkit,
                "Dockerfile",
            ),
            inputs(&image(&[("A", "1")], None), Builder::Legacy, "Dockerfile"),
            inputs(
                &image(&[("A", "1")], None),
                Builder::Buildkit,
                "other/Dockerfile",
            ),
            inputs(
                &image(&[("A", "1\nbuild-arg=B=2")], None),
                Builder::Buildkit,
                "Dockerfile",
            ),
            inputs(&with_secret, Builder::Buildkit, "Dockerfile"),
        ];
        for variant in &variants {
            assert_ne!(&base, variant);
        }
        // The source of a secret (and so its value) is not an input: only its id is.
        let mut other_source = image(&[("A", "1")], None);
        other_source
            .secrets
            .push(("token".into(), SecretSource::Ssm("/app/token".into())));
        assert_eq!(
            variants[5],
            inputs(&other_source, Builder::Buildkit, "Dockerfile")
        );
        assert_eq!(
            base,
            inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile")
        );
    }
}
