//! One run of `build` or `plan`: contexts, tags, login, builds and pushes in parallel, artifacts, summary.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::artifacts::{self, ImageUri};
use crate::aws;
use crate::config::{Builder, ConfigError, ImagePlan, Plan, SecretSource};
use crate::context::{self, ContextFiles};
use crate::docker::{BuildRequest, DockerError, Engine};
use crate::registry::{Manifest, RegistryClient, RegistryError};
use crate::retry;
use crate::tags::{self, BuildEnv, TagVars};

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

/// The tags of this run and the commit they came from.
struct RunTags {
    /// `None` only in a dry run without any commit SHA.
    sha: Option<String>,
    tags: Vec<String>,
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

/// Walks every image's context (in parallel, off the async threads) and hashes it.
async fn prepare(plan: &Plan) -> Result<Vec<PreparedImage>> {
    let artifact_files = plan.artifacts.paths();
    let walks = plan.images.iter().cloned().map(|image| {
        let builder = plan.builder;
        let artifact_files = artifact_files.clone();
        tokio::task::spawn_blocking(move || -> Result<PreparedImage> {
            let mut files = context::collect(&image.context, &image.dockerfile).map_err(|err| {
                ConfigError::Invalid {
                    origin: format!("image {}", image.name),
                    message: err.to_string(),
                }
            })?;
            for path in files.withhold(&artifact_files) {
                tracing::debug!(
                    image = image.name.as_str(),
                    "not sending {path}: it is an artifact of ecr-build"
                );
            }
            let digest = files
                .digest(&digest_inputs(
                    &image,
                    builder,
                    files.dockerfile_in_context(),
                ))
                .with_context(|| {
                    format!(
                        "image {}: cannot hash the context {}",
                        image.name,
                        image.context.display()
                    )
                })?;
            tracing::debug!(
                image = image.name.as_str(),
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
        })
    });
    let mut prepared = Vec::with_capacity(plan.images.len());
    for walk in futures_util::future::join_all(walks).await {
        prepared.push(walk.context("context walk panicked")??);
    }
    Ok(prepared)
}

fn git_output(dir: &Path, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|err| format!("git could not run: {err}"))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(format!(
            "git rev-parse HEAD in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

/// Resolves the commit and renders every tag. A dry run without a commit tags with the contexts' digest.
fn resolve_tags(
    plan: &Plan,
    sha_flag: Option<&str>,
    prepared: &[PreparedImage],
    dry_run: bool,
) -> Result<RunTags> {
    let env = BuildEnv::from_process();
    let needs_sha = plan.tags.iter().any(|t| t.uses_sha());
    let sha = match tags::resolve_sha(sha_flag, &env, || {
        git_output(&plan.source_dir, &["rev-parse", "HEAD"])
    }) {
        Ok((sha, source)) => {
            tracing::info!("commit {sha} (from {source})");
            Some(sha)
        }
        Err(err @ tags::TagError::InvalidSha(_)) => {
            return Err(ConfigError::Usage(err.to_string()).into());
        }
        Err(err) if dry_run => {
            let fallback = combined_digest(prepared);
            tracing::warn!(
                "dry run: {err}; tagging with {} derived from the context digest instead",
                &fallback[..7]
            );
            Some(fallback)
        }
        Err(err) if needs_sha => return Err(ConfigError::Usage(err.to_string()).into()),
        Err(_) => None,
    };
    let vars = TagVars {
        sha: sha.clone(),
        build_number: env.build_number.clone(),
        build_id: env.build_id.as_deref().map(tags::build_id_suffix),
        branch: tags::resolve_branch(&env, || {
            git_output(&plan.source_dir, &["rev-parse", "--abbrev-ref", "HEAD"])
                .ok()
                .filter(|b| b != "HEAD")
        }),
    };
    let tags = plan
        .tags
        .iter()
        .map(|t| {
            t.render(&vars)
                .map_err(|e| ConfigError::Usage(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunTags { sha, tags })
}

/// A 40-hex stand-in for the commit, from every image's context digest.
fn combined_digest(prepared: &[PreparedImage]) -> String {
    let mut hasher = Sha256::new();
    for image in prepared {
        hasher.update(image.plan.name.as_bytes());
        hasher.update([0]);
        hasher.update(image.digest.as_bytes());
    }
    format!("{:x}", hasher.finalize())[..40].to_owned()
}

/// BuildKit refuses secrets over 500 KiB; say so before the build instead of in the middle of it.
const MAX_SECRET_BYTES: usize = 500 * 1024;

/// Secret values of one image, by id. Held in memory only, and served only on its build session.
type SecretValues = HashMap<String, Vec<u8>>;

/// Reads every image's secrets before any build starts: all SSM names of all images in batched
/// GetParameters calls (one error lists every missing name), each ssm_path once, then env: and file:.
/// `ssm` is `None` in a dry run, where ssm: sources must be replaced with --secret.
async fn resolve_secrets(
    plan: &Plan,
    ssm: Option<(&aws_sdk_ssm::Client, &str)>,
) -> Result<Vec<SecretValues>> {
    let mut from_ssm: HashMap<String, Vec<u8>> = HashMap::new();
    let mut by_path: HashMap<String, Vec<(String, Vec<u8>)>> = HashMap::new();
    match ssm {
        Some((client, region)) => {
            let mut names: Vec<String> = Vec::new();
            for image in &plan.images {
                for (_, source) in &image.secrets {
                    if let SecretSource::Ssm(name) = source {
                        if !names.contains(name) {
                            names.push(name.clone());
                        }
                    }
                }
            }
            if !names.is_empty() {
                for (name, value) in aws::ssm::get_parameters(client, region, &names).await? {
                    from_ssm.insert(name, value.expose().as_bytes().to_vec());
                }
            }
            for path in plan.images.iter().filter_map(|i| i.ssm_path.as_ref()) {
                if by_path.contains_key(path) {
                    continue;
                }
                let parameters = aws::ssm::get_parameters_by_path(client, region, path).await?;
                let secrets = parameters
                    .into_iter()
                    .map(|(name, value)| {
                        let id = name.rsplit('/').next().unwrap_or(&name).to_owned();
                        (id, value.expose().as_bytes().to_vec())
                    })
                    .collect();
                by_path.insert(path.clone(), secrets);
            }
        }
        None => {
            let needs_ssm: Vec<String> = plan
                .images
                .iter()
                .flat_map(|image| {
                    image
                        .secrets
                        .iter()
                        .filter(|(_, source)| matches!(source, SecretSource::Ssm(_)))
                        .map(move |(id, source)| format!("{}: {id} = {source}", image.name))
                })
                .collect();
            if !needs_ssm.is_empty() {
                return Err(ConfigError::Usage(format!(
                    "a dry run makes no AWS call, so these secrets have no value: {}; give each with \
                     --secret ID=env:VAR or --secret ID=file:PATH",
                    needs_ssm.join("; ")
                ))
                .into());
            }
            for image in plan.images.iter().filter(|i| i.ssm_path.is_some()) {
                tracing::warn!(
                    image = image.name.as_str(),
                    "dry run: ssm_path {} is not read (no AWS call); its secrets are left out unless given with --secret",
                    image.ssm_path.as_deref().unwrap_or_default()
                );
            }
        }
    }

    let mut resolved = Vec::with_capacity(plan.images.len());
    for image in &plan.images {
        let mut values = SecretValues::new();
        if let Some(path) = &image.ssm_path {
            for (id, value) in by_path.get(path).into_iter().flatten() {
                values.insert(id.clone(), value.clone());
            }
        }
        for (id, source) in &image.secrets {
            let value = match source {
                SecretSource::Ssm(name) => from_ssm
                    .get(name)
                    .cloned()
                    .with_context(|| format!("image {}: SSM parameter {name} for secret {id} was not returned", image.name))?,
                SecretSource::Env(var) => std::env::var_os(var)
                    .map(std::os::unix::ffi::OsStringExt::into_vec)
                    .ok_or_else(|| ConfigError::Usage(format!(
                        "image {}: secret {id} comes from environment variable {var}, which is not set",
                        image.name
                    )))?,
                SecretSource::File(path) => std::fs::read(path).map_err(|err| ConfigError::Usage(format!(
                    "image {}: secret {id} comes from {}: {err}",
                    image.name,
                    path.display()
                )))?,
            };
            if let Ok(text) = std::str::from_utf8(&value) {
                crate::output::redactor().add(text);
                crate::output::redactor().add(text.trim_end());
            }
            values.insert(id.clone(), value);
        }
        for (id, value) in &values {
            anyhow::ensure!(
                value.len() <= MAX_SECRET_BYTES,
                "image {}: secret {id} is {} bytes; BuildKit accepts at most {MAX_SECRET_BYTES}",
                image.name,
                value.len()
            );
        }
        resolved.push(values);
    }
    Ok(resolved)
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

#[derive(Serialize)]
struct PlanOutput<'a> {
    registry: &'a str,
    sha: Option<&'a str>,
    tags: &'a [String],
    images: Vec<PlannedImage<'a>>,
}

#[derive(Serialize)]
struct PlannedImage<'a> {
    name: &'a str,
    repository: &'a str,
    context: &'a Path,
    dockerfile: &'a Path,
    target: Option<&'a str>,
    context_digest: &'a str,
    uris: Vec<String>,
}

/// `ecr-build plan`: the JSON on stdout, nothing built.
pub async fn plan(plan: Plan, sha_flag: Option<&str>) -> Result<()> {
    let prepared = prepare(&plan).await?;
    let run_tags = resolve_tags(&plan, sha_flag, &prepared, false)?;
    let (registry, source) = offline_registry(&plan);
    tracing::info!("registry {registry} (from {source})");
    let output = PlanOutput {
        registry: &registry,
        sha: run_tags.sha.as_deref(),
        tags: &run_tags.tags,
        images: prepared
            .iter()
            .map(|p| PlannedImage {
                name: &p.plan.name,
                repository: &p.plan.repository,
                context: &p.plan.context,
                dockerfile: &p.plan.dockerfile,
                target: p.plan.target.as_deref(),
                context_digest: &p.digest,
                uris: run_tags
                    .tags
                    .iter()
                    .map(|t| format!("{registry}/{}:{t}", p.plan.repository))
                    .collect(),
            })
            .collect(),
    };
    println!("{}", serde_json::to_string_pretty(&output)?);
    Ok(())
}

/// What one image's build and push produced.
struct ImageOutcome {
    name: String,
    repository_uri: String,
    /// Registry manifest digest; in a dry run, the local image ID.
    digest: String,
    /// What happened: built and pushed, reused from an unchanged context, or built in a dry run.
    result: &'static str,
    seconds: f64,
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
    auth: Option<&'a aws::ecr::EcrAuth>,
    /// Repositories whose tags cannot be moved.
    immutable: HashSet<String>,
    rebuild: bool,
    /// How long transient registry faults are retried, per call.
    retry_budget: Duration,
}

impl RunContext<'_> {
    /// The current ECR login and a client of the registry's own API (to find and re-tag an image
    /// built from the same context), both with a token young enough for the next call.
    async fn registry_access(&self) -> Result<Option<(aws::ecr::EcrLogin, RegistryClient)>> {
        let Some(auth) = self.auth else {
            return Ok(None);
        };
        let login = auth.current().await?;
        let client = RegistryClient::new(self.registry, &login.username, login.password.expose())?;
        Ok(Some((login, client)))
    }

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

/// The tag that marks an image by the digest of everything that decided it.
pub fn context_tag(context_digest: &str) -> String {
    format!("ctx-{}", &context_digest[..20])
}

/// Puts `manifest` under `tag`: nothing to do where the tag already names it; an error where an
/// immutable repository has the tag on other content.
async fn put_tag(
    run: &RunContext<'_>,
    client: &RegistryClient,
    image: &str,
    repository: &str,
    tag: &str,
    manifest: &Manifest,
    immutable: bool,
) -> Result<()> {
    let existing = run
        .registry_call(image, &format!("looking up {repository}:{tag}"), || {
            client.manifest_digest(repository, tag)
        })
        .await?;
    match existing {
        Some(existing) if existing == manifest.digest => Ok(()),
        Some(existing) if immutable => anyhow::bail!(
            "{}/{repository}:{tag} already points at {existing}, not at {}, and the repository's tags are immutable",
            client.host(),
            manifest.digest
        ),
        _ => {
            run.registry_call(image, &format!("tagging {repository}:{tag}"), || {
                client.put_manifest(repository, tag, manifest)
            })
            .await?;
            Ok(())
        }
    }
}

async fn build_one(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
) -> Result<ImageOutcome> {
    let started = Instant::now();
    let name = image.plan.name.as_str();
    let repository_uri = format!("{}/{}", run.registry, image.plan.repository);
    let primary = format!("{repository_uri}:{}", run.tags[0]);
    let mut labels = run.labels.clone();
    labels.push((CONTEXT_DIGEST_LABEL.into(), image.digest.clone()));
    let dockerfile = image.files.dockerfile_in_context().to_owned();
    let access = run.registry_access().await?;
    // For pulls during the build (FROM or cache_from in the same registry).
    let registry_auth = access.as_ref().map(|(login, _)| {
        std::iter::once((
            run.registry.to_owned(),
            login.docker_credentials(run.registry),
        ))
        .collect()
    });
    tracing::info!(
        image = name,
        "building {primary} ({} files, {} bytes of context)",
        image.files.len(),
        image.files.total_bytes()
    );
    let repository = image.plan.repository.as_str();
    let immutable = run.immutable.contains(repository);
    let ctx_tag = context_tag(&image.digest);
    if let (Some((_, client)), false) = (&access, run.rebuild) {
        let unchanged = run
            .registry_call(name, &format!("looking up {repository}:{ctx_tag}"), || {
                client.get_manifest(repository, &ctx_tag)
            })
            .await?;
        if let Some(manifest) = unchanged {
            tracing::info!(
                image = name,
                "unchanged: {repository_uri}:{ctx_tag} is {}; tagging it instead of building",
                manifest.digest
            );
            for tag in run.tags {
                put_tag(run, client, name, repository, tag, &manifest, immutable).await?;
                tracing::info!(
                    image = name,
                    "tagged {repository_uri}:{tag} ({})",
                    manifest.digest
                );
            }
            return Ok(ImageOutcome {
                name: name.to_owned(),
                repository_uri,
                digest: manifest.digest,
                result: "reused",
                seconds: started.elapsed().as_secs_f64(),
            });
        }
    }
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
    let cache_from: Vec<String> = image
        .plan
        .cache_from
        .iter()
        .map(|reference| qualify_reference(run.registry, reference))
        .collect();
    if run.builder == Builder::Buildkit {
        // The pushed image carries its cache metadata, so cache_from on a fresh host reuses its layers.
        build_args.push(("BUILDKIT_INLINE_CACHE".into(), "1".into()));
    }
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
        registry_auth,
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
    // A long build can outlive the token it started with.
    let (digest, result) = match run.registry_access().await? {
        Some((login, client)) => {
            run.engine.tag(&image_id, &repository_uri, &ctx_tag).await?;
            // The context tag goes last: it marks an image whose every tag is in place.
            let mut pushed: Option<String> = None;
            for tag in run.tags.iter().chain([&ctx_tag]) {
                if immutable {
                    let existing = run
                        .registry_call(name, &format!("looking up {repository}:{tag}"), || {
                            client.manifest_digest(repository, tag)
                        })
                        .await?;
                    if let Some(existing) = existing {
                        anyhow::bail!(
                            "{repository_uri}:{tag} already exists ({existing}) and the repository's tags are \
                             immutable; this run built different content (context digest {})",
                            image.digest
                        );
                    }
                }
                let digest = retry::with_backoff(
                    name,
                    &format!("push of {repository_uri}:{tag}"),
                    run.retry_budget,
                    DockerError::is_transient,
                    || {
                        run.engine.push(
                            name,
                            &repository_uri,
                            tag,
                            Some(login.docker_credentials(run.registry)),
                        )
                    },
                )
                .await?;
                tracing::info!(image = name, "pushed {repository_uri}:{tag} ({digest})");
                if let Some(first) = &pushed {
                    anyhow::ensure!(
                        first == &digest,
                        "{repository_uri}:{tag} was stored as {digest}, but {} as {first}",
                        run.tags[0]
                    );
                }
                pushed = Some(digest);
            }
            (pushed.expect("a plan has at least one tag"), "pushed")
        }
        None => (image_id, "built (dry run, not pushed)"),
    };
    Ok(ImageOutcome {
        name: name.to_owned(),
        repository_uri,
        digest,
        result,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// `ecr-build build`.
pub async fn build(plan: Plan, sha_flag: Option<&str>, settings: BuildSettings) -> Result<()> {
    let prepared = prepare(&plan).await?;
    let run_tags = resolve_tags(&plan, sha_flag, &prepared, settings.dry_run)?;

    let auth;
    let secrets;
    let mut immutable = HashSet::new();
    let registry = if settings.dry_run {
        auth = None;
        let (registry, source) = offline_registry(&plan);
        tracing::info!(
            "dry run: registry {registry} (from {source}); nothing is pushed, no AWS call is made"
        );
        secrets = resolve_secrets(&plan, None).await?;
        registry
    } else {
        let region_hint = plan.registry.as_deref().and_then(aws::region_of_ecr_host);
        let sdk = aws::load_config(region_hint).await?;
        let region = sdk.region().map(ToString::to_string).unwrap_or_default();
        let ecr = aws_sdk_ecr::Client::from_conf(
            aws_sdk_ecr::config::Builder::from(&sdk)
                .interceptor(aws::LogFailedAttempts)
                .build(),
        );
        let ecr_auth = aws::ecr::EcrAuth::login(ecr.clone(), region.clone()).await?;
        let endpoint = ecr_auth.current().await?.endpoint;
        let registry = plan.registry.clone().unwrap_or(endpoint);
        tracing::info!("logged in to ECR in {region}; pushing to {registry}");
        let repositories: Vec<&str> = plan.images.iter().map(|i| i.repository.as_str()).collect();
        immutable = aws::ecr::check_repositories(&ecr, &region, &repositories).await?;
        auth = Some(ecr_auth);
        let ssm = aws_sdk_ssm::Client::from_conf(
            aws_sdk_ssm::config::Builder::from(&sdk)
                .interceptor(aws::LogFailedAttempts)
                .build(),
        );
        secrets = resolve_secrets(&plan, Some((&ssm, &region))).await?;
        registry
    };

    let engine = Engine::connect(settings.docker_timeout).await?;
    let mut labels = Vec::new();
    if let Some(sha) = &run_tags.sha {
        labels.push((REVISION_LABEL.to_owned(), sha.clone()));
    }
    let run = RunContext {
        engine: &engine,
        registry: &registry,
        tags: &run_tags.tags,
        labels,
        network: plan.network.as_deref(),
        builder: plan.builder,
        auth: auth.as_ref(),
        immutable,
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
                println!(
                    "{} {} {} tags={} digest={} seconds={:.1}",
                    outcome.name,
                    outcome.result,
                    outcome.repository_uri,
                    run_tags.tags.join(","),
                    outcome.digest,
                    outcome.seconds
                );
                succeeded.push(outcome);
            }
            Err(err) => {
                tracing::error!(image = name.as_str(), "{err:#}");
                println!("{name} failed");
                failed.push(name);
            }
        }
    }
    if !failed.is_empty() {
        anyhow::bail!(
            "{} of {total} image{} failed ({}); no artifact was written",
            failed.len(),
            if total == 1 { "" } else { "s" },
            failed.join(", ")
        );
    }

    let uris: Vec<ImageUri> = succeeded
        .iter()
        .map(|o| ImageUri {
            name: o.name.clone(),
            uri: format!("{}:{}", o.repository_uri, run_tags.tags[0]),
        })
        .collect();
    let rendered = artifacts::render(&plan.artifacts, &run_tags.tags[0], &uris)?;
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
    use std::path::PathBuf;

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
        let base = digest_inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile");
        let variants = [
            digest_inputs(&image(&[("A", "2")], None), Builder::Buildkit, "Dockerfile"),
            digest_inputs(
                &image(&[("A", "1")], Some("prod")),
                Builder::Buildkit,
                "Dockerfile",
            ),
            digest_inputs(&image(&[("A", "1")], None), Builder::Legacy, "Dockerfile"),
            digest_inputs(
                &image(&[("A", "1")], None),
                Builder::Buildkit,
                "other/Dockerfile",
            ),
            digest_inputs(
                &image(&[("A", "1\nbuild-arg=B=2")], None),
                Builder::Buildkit,
                "Dockerfile",
            ),
        ];
        let mut with_secret = image(&[("A", "1")], None);
        with_secret
            .secrets
            .push(("token".into(), SecretSource::Env("TOKEN".into())));
        let with_secret = digest_inputs(&with_secret, Builder::Buildkit, "Dockerfile");
        for variant in variants.iter().chain([&with_secret]) {
            assert_ne!(&base, variant);
        }
        // The source of a secret (and so its value) is not an input: only its id is.
        let mut other_source = image(&[("A", "1")], None);
        other_source
            .secrets
            .push(("token".into(), SecretSource::Ssm("/app/token".into())));
        assert_eq!(
            with_secret,
            digest_inputs(&other_source, Builder::Buildkit, "Dockerfile")
        );
        assert_eq!(
            base,
            digest_inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile")
        );
    }
}
