//! One run of `build` or `plan`. An image goes, top to bottom: its context is read and hashed
//! ([`context::prepare`]); the run's tags are rendered; [`build_one`] looks up what the registry holds, asks
//! [`decide`] what to do, and either re-tags the unchanged image or builds and pushes it; once every
//! image is done, the artifacts are written. Decisions are pure functions in other modules; this
//! module does the I/O in the order they say.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::artifacts;
use crate::aws::{self, ecr, ecr::EcrLogin, ecr::RegistryAccess};
use crate::config::{Builder, Plan};
use crate::context::{self, PreparedImage};
use crate::decide::{self, Action, TagRules};
use crate::docker::{BuildRequest, BuiltImage, DockerError, Engine};
use crate::dockerfile::ContextInputs;
use crate::error::{Error, Result};
use crate::image::{CONTEXT_DIGEST_LABEL, INPUTS_LABEL, REVISION_LABEL};
use crate::reference;
use crate::reuse::ImageRegistry;

use crate::report::{self, ImageOutcome, PlanOutput, PlannedImage};
use crate::secrets::{self, SecretValues};
use crate::tags::{self, BuildEnv, RunTags};
use crate::{git, multiarch, retry};

pub struct BuildSettings {
    pub dry_run: bool,
    /// Build even where the registry has an image of the same context digest.
    pub rebuild: bool,
    /// How long a push or registry call is retried while its faults are transient.
    pub retry_budget: Duration,
    pub jobs: usize,
    pub docker_timeout: Duration,
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

/// `ecr-build plan`: the JSON on stdout, nothing built.
pub async fn plan(plan: Plan, sha_flag: Option<&str>) -> Result<()> {
    let prepared = context::prepare(&plan).await?;
    let run_tags = run_tags(&plan, sha_flag, &prepared, false)?;
    let (registry, source) = ecr::offline_registry(plan.registry.as_deref());
    tracing::info!("registry {registry} (from {source})");
    let images = prepared
        .iter()
        .map(|p| {
            let uris = (run_tags.tags.iter())
                .map(|t| format!("{registry}/{}:{t}", p.plan.repository))
                .collect();
            PlannedImage::new(p, uris)
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

/// The parts of a run every image shares.
pub(crate) struct RunContext<'a> {
    engine: &'a Engine,
    pub(crate) registry: &'a str,
    pub(crate) tags: &'a [String],
    labels: Vec<(String, String)>,
    network: Option<&'a str>,
    builder: Builder,
    /// `None` in a dry run.
    pub(crate) access: Option<RegistryAccess>,
    /// Each repository's tag rules, from ECR.
    rules: HashMap<String, TagRules>,
    pub(crate) rebuild: bool,
    /// How long transient registry faults are retried, per call.
    retry_budget: Duration,
    /// `--jobs`: how many images build and push at once. Registry look-ups and re-tags of
    /// unchanged images need no slot.
    build_slots: tokio::sync::Semaphore,
    /// A fan-out job's part: only ctx- tags are pushed.
    pub(crate) partial: bool,
}

/// Images whose registry look-ups (and re-tags) go out at once.
const REGISTRY_FAN_OUT: usize = 32;

impl RunContext<'_> {
    /// One of the `--jobs` build slots, held while an image builds and pushes.
    pub(crate) async fn build_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        Ok(self
            .build_slots
            .acquire()
            .await
            .map_err(anyhow::Error::from)?)
    }

    /// The tags this run puts: none in a part of a fan-out.
    pub(crate) fn put_tags(&self) -> &[String] {
        if self.partial { &[] } else { self.tags }
    }

    /// `image`'s registry calls, retried within the run's budget.
    pub(crate) fn image_registry<'a>(
        &self,
        access: &'a RegistryAccess,
        image: &'a PreparedImage,
    ) -> ImageRegistry<'a> {
        ImageRegistry {
            access,
            image: &image.plan.name,
            repository: &image.plan.repository,
            retry_budget: self.retry_budget,
        }
    }

    /// `repository`'s tag rules, as ECR gave them; mutable where it gave none.
    pub(crate) fn rules_of(&self, repository: &str) -> TagRules {
        self.rules.get(repository).cloned().unwrap_or_default()
    }

    /// The commit images are labelled with, if the run has one.
    pub(crate) fn revision(&self) -> Option<&str> {
        (self.labels.iter())
            .find(|(name, _)| name == REVISION_LABEL)
            .map(|(_, value)| value.as_str())
    }
}

/// The build of an image for one platform (or none): under the run's tags.
fn single_spec<'a>(run: &'a RunContext<'_>, image: &'a PreparedImage) -> BuildSpec<'a> {
    BuildSpec {
        platform: image.plan.platforms.first().map(String::as_str),
        context_digest: &image.digest,
        tags: run.tags,
    }
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
    let ctx_tag = decide::context_tag(&image.digest);
    let outcome_with = |digest: String, result, changed: Option<Vec<String>>| ImageOutcome {
        name: name.clone(),
        repository_uri: repository_uri.clone(),
        digest,
        result,
        in_registry: run.access.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        note: report::inputs_note(&image.inputs, result, changed.as_deref()),
    };
    let outcome = |digest: String, result| outcome_with(digest, result, None);
    if !image.variants.is_empty() {
        let (digest, result) = multiarch::build_platforms(run, &image, &secrets).await?;
        return Ok(outcome(digest, result));
    }
    let Some(access) = &run.access else {
        let _slot = run.build_slot().await?;
        let spec = single_spec(run, &image);
        let built = build_image(run, &image, secrets, None, spec).await?;
        return Ok(outcome(built.id, "built (dry run, not pushed)"));
    };
    let rules = run.rules_of(repository);
    let registry = run.image_registry(access, &image);
    let (state, target) = (registry.look_up(
        &image.digest,
        run.put_tags(),
        &rules,
        run.rebuild,
        run.revision(),
    ))
    .await?;
    let action = decide::decide(run.put_tags(), &ctx_tag, &state, &rules, run.rebuild)
        .map_err(|conflict| tag_conflict(&repository_uri, &image, conflict))?;
    match action {
        Action::Reuse { digest, put } => {
            let target = target.expect("reuse is decided on an image that was found");
            registry
                .put_reused(&target, &put, &repository_uri, &ctx_tag)
                .await?;
            Ok(outcome(digest, "reused"))
        }
        Action::Build { push } => {
            // What the image the run's tags name now read, to say which input changed.
            let changed = match image.input_digests.is_empty() {
                true => None,
                false => (registry.previous_inputs(run.put_tags()).await)
                    .map(|previous| decide::changed_inputs(&previous, &image.input_digests)),
            };
            let _slot = run.build_slot().await?;
            let login = access.current().await?;
            let spec = single_spec(run, &image);
            let built = build_image(run, &image, secrets, Some(&login), spec).await?;
            // The `ctx-` tag goes last: without it, the image is pushed but never reused.
            let push = match reusable_by_digest(&image, &built) {
                true => push,
                false => push.into_iter().filter(|tag| *tag != ctx_tag).collect(),
            };
            let digest = push_tags(run, access, &name, &repository_uri, &built.id, &push).await?;
            Ok(outcome_with(digest, "pushed", changed))
        }
    }
}

/// A tag this run cannot put, naming the repository and the image's context digest.
pub(crate) fn tag_conflict(
    repository_uri: &str,
    image: &PreparedImage,
    conflict: decide::Conflict,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{repository_uri}:{conflict} (context digest {})",
        image.digest
    )
}

/// What one build makes: an image for `platform` (or the engine's own), labelled with its context
/// digest, tagged locally with `tags`.
pub(crate) struct BuildSpec<'a> {
    pub platform: Option<&'a str>,
    pub context_digest: &'a str,
    pub tags: &'a [String],
}

/// The image's labels: the configured ones, the run's, its context digest and its inputs.
fn image_labels(
    run: &RunContext<'_>,
    image: &PreparedImage,
    context_digest: &str,
) -> Vec<(String, String)> {
    let mut labels = image.plan.labels.clone();
    labels.extend(run.labels.iter().cloned());
    labels.push((CONTEXT_DIGEST_LABEL.into(), context_digest.to_owned()));
    if !image.input_digests.is_empty() {
        let inputs = serde_json::to_string(&image.input_digests).expect("strings serialize");
        labels.push((INPUTS_LABEL.into(), inputs));
    }
    labels
}

/// Builds the image and tags it locally with every tag of `spec`.
pub(crate) async fn build_image(
    run: &RunContext<'_>,
    image: &PreparedImage,
    secrets: SecretValues,
    login: Option<&EcrLogin>,
    spec: BuildSpec<'_>,
) -> Result<BuiltImage> {
    let name = image.plan.name.as_str();
    let repository_uri = format!("{}/{}", run.registry, image.plan.repository);
    let primary = format!("{repository_uri}:{}", spec.tags[0]);
    let labels = image_labels(run, image, spec.context_digest);
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
        .map(|reference| reference::qualify_reference(run.registry, reference))
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
        network: image.plan.network.as_deref().or(run.network),
        platform: spec.platform,
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
    let built = (run.engine).build(request, image.files.clone()).await;
    let built = match (built, spec.platform) {
        (Err(err), Some(platform)) if err.to_string().contains("exec format error") => {
            return Err(anyhow::Error::new(err)
                .context(format!(
                    "the engine cannot run {platform} programs: register QEMU's binfmt handlers on the \
                     host (in privileged mode: docker run --privileged tonistiigi/binfmt --install all), \
                     or build {platform} on a host of its own (ecr-build build --platform {platform})"
                ))
                .into());
        }
        (built, _) => built?,
    };
    tracing::info!(image = name, "built {primary} ({})", built.id);
    for tag in &spec.tags[1..] {
        run.engine.tag(&built.id, &repository_uri, tag).await?;
    }
    Ok(built)
}

/// Whether a built image may be found again by its context digest: not where the digest covers
/// only what the Dockerfile reads and a base image's ONBUILD triggers (which it cannot see) ran.
fn reusable_by_digest(image: &PreparedImage, built: &BuiltImage) -> bool {
    let narrow = matches!(image.inputs, ContextInputs::Paths(_));
    if narrow && built.ran_base_triggers {
        tracing::warn!(
            image = image.plan.name.as_str(),
            "its base image ran ONBUILD triggers, which may read any file of the context: it is \
             not marked by what its Dockerfile reads, so the next run builds it again"
        );
        return false;
    }
    true
}

/// Pushes `push` in order; every tag must be stored under the same digest, which is returned.
pub(crate) async fn push_tags(
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
        if let Some(first) = &pushed
            && first != &digest
        {
            return Err(anyhow::anyhow!(
                "{repository_uri}:{tag} was stored as {digest}, but {} as {first}",
                push[0]
            )
            .into());
        }
        pushed = Some(digest);
    }
    Ok(pushed.expect("a plan has at least one tag"))
}

/// The registry, its access and tag rules, and every image's secrets: from AWS, or for a dry run
/// without it.
async fn remote_side(
    plan: &Plan,
    dry_run: bool,
) -> Result<(
    String,
    Option<RegistryAccess>,
    HashMap<String, TagRules>,
    Vec<SecretValues>,
)> {
    if dry_run {
        let (registry, source) = ecr::offline_registry(plan.registry.as_deref());
        tracing::info!(
            "dry run: registry {registry} (from {source}); nothing is pushed, no AWS call is made"
        );
        let secrets = secrets::resolve(plan, None).await?;
        return Ok((registry, None, HashMap::new(), secrets));
    }
    let repositories: Vec<&str> = plan.images.iter().map(|i| i.repository.as_str()).collect();
    let aws = aws::connect(plan.registry.as_deref(), &repositories).await?;
    let secrets = secrets::resolve(plan, Some((&aws.ssm, &aws.region))).await?;
    Ok((aws.registry, Some(aws.access), aws.rules, secrets))
}

/// `ecr-build build`.
pub async fn build(plan: Plan, sha_flag: Option<&str>, settings: BuildSettings) -> Result<()> {
    // A run that pushes knows its tags without the contexts: a missing commit fails before any call.
    let early_tags = match settings.dry_run {
        false => Some(run_tags(&plan, sha_flag, &[], false)?),
        true => None,
    };
    // No idle waits: the contexts are walked and hashed while ECR logs in, the repositories are
    // checked, the secrets are read and the engine is reached (CodeBuild's dockerd may be starting).
    let ((prepared, engine), (registry, access, rules, secrets)) = tokio::try_join!(
        async {
            tokio::try_join!(context::prepare(&plan), async {
                Ok(Engine::connect(settings.docker_timeout).await?)
            })
        },
        remote_side(&plan, settings.dry_run),
    )?;
    let run_tags = match early_tags {
        Some(tags) => tags,
        None => run_tags(&plan, sha_flag, &prepared, true)?,
    };
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
        build_slots: tokio::sync::Semaphore::new(settings.jobs),
        partial: plan.partial,
    };
    let mut outcomes: Vec<(usize, String, Result<ImageOutcome>)> =
        futures_util::stream::iter(prepared.into_iter().zip(secrets).enumerate())
            .map(|(index, (image, secrets))| {
                let run = &run;
                async move {
                    let name = image.plan.name.clone();
                    (index, name, build_one(run, image, secrets).await)
                }
            })
            .buffer_unordered(REGISTRY_FAN_OUT)
            .collect()
            .await;
    outcomes.sort_by_key(|(index, _, _)| *index);
    let outcomes = outcomes
        .into_iter()
        .map(|(_, name, outcome)| (name, outcome));
    let succeeded = report::summarize(outcomes.collect(), &run_tags.tags)?;
    if plan.partial {
        tracing::info!(
            "a part (--only, --platform): pushed under ctx- tags only, no artifact written; a full run \
             finds every part, puts the tags and indexes, and writes the artifacts"
        );
        return Ok(());
    }
    Ok(artifacts::write_for(
        &plan.artifacts,
        plan.images.len() > 1,
        &run_tags.tags[0],
        &succeeded,
    )?)
}
