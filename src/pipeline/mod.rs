//! One run of `build` or `plan`. An image goes, top to bottom: its context is read and hashed
//! ([`prepare::prepare`]); the run's tags are rendered; the registry and the secrets are reached;
//! the base images are resolved ([`bases::resolve_all`]); then each image is built or found
//! unchanged, for one platform ([`single`]) or several ([`platforms`]), both through the steps
//! they share ([`steps`]); once every image is done, the artifacts are written. Decisions are pure
//! functions in other modules; these modules do the I/O in the order they say.

mod platforms;
mod single;
mod steps;

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use crate::artifacts;
use crate::aws::AwsEnv;
use crate::aws::{self, ecr, ecr::EcrRegistry};
use crate::config::{Builder, Plan};
use crate::decide::TagRules;
use crate::docker::{Engine, HostEnv};
use crate::error::{Error, Result};
use crate::prepare::{self, PreparedImage};
use crate::reference::RepositoryUri;
use crate::registry::manifest::REVISION_LABEL;
use crate::report::{self, ImageOutcome, PlanOutput, PlannedImage};
use crate::secrets::{self, SecretValues};
use crate::tags::{self, BuildEnv, RunTags};
use crate::{bases, git};
use steps::RunContext;

/// The process environment as a run reads it, once, at the edge (the command): CodeBuild's
/// variables, the engine's address, AWS's account and region.
#[derive(Debug, Default)]
pub(crate) struct RunEnvironment {
    pub build: BuildEnv,
    pub host: HostEnv,
    pub aws: AwsEnv,
}

impl RunEnvironment {
    /// From the variables `lookup` gives.
    pub(crate) fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        Self {
            build: BuildEnv::from_lookup(lookup),
            host: HostEnv::from_lookup(lookup),
            aws: AwsEnv::from_lookup(lookup),
        }
    }
}

/// Images whose registry look-ups (and re-tags) go out at once.
const REGISTRY_FAN_OUT: usize = 32;

pub(crate) struct BuildSettings {
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
    prepared: &[PreparedImage],
    dry_run: bool,
    environment: &RunEnvironment,
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
    tags::resolve_run_tags(
        &plan.tags,
        plan.commit.as_deref(),
        &environment.build,
        |args| git::output(&plan.source_dir, args),
        stand_in,
    )
    .map_err(|err| Error::usage(err.to_string()))
}

/// `ecr-build plan`: the JSON on stdout, nothing built.
pub(crate) async fn plan(plan: Plan, environment: &RunEnvironment) -> Result<()> {
    let withheld = plan.artifacts.paths();
    let prepared = prepare::prepare(&plan, &withheld).await?;
    let run_tags = run_tags(&plan, &prepared, false, environment)?;
    let (registry, source) = ecr::offline_registry(plan.registry.as_deref(), &environment.aws);
    tracing::info!("registry {registry} (from {source})");
    let registries = bases::Registries {
        run_registry: &registry,
        access: None,
        mirror: plan.base_image_mirror.as_deref(),
    };
    let images = prepared
        .iter()
        .map(|p| {
            let uris = (run_tags.tags.iter())
                .map(|t| RepositoryUri::new(&registry, &p.plan.repository).tagged(t))
                .collect();
            PlannedImage::new(p, uris, |base| registries.source_of(base))
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

/// One image, from its prepared context to its outcome: for one platform or several.
async fn build_one(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
) -> Result<ImageOutcome> {
    match image.variants.is_empty() {
        true => single::build(run, image, secrets).await,
        false => platforms::build(run, image, secrets).await,
    }
}

/// The registry, its access and tag rules, and every image's secrets: from AWS, or for a dry run
/// without it.
async fn remote_side(
    plan: &Plan,
    dry_run: bool,
    env: &AwsEnv,
) -> Result<(
    String,
    Option<EcrRegistry>,
    HashMap<String, TagRules>,
    Vec<SecretValues>,
)> {
    let (registry, session) = match dry_run {
        true => {
            let (registry, source) = ecr::offline_registry(plan.registry.as_deref(), env);
            tracing::info!(
                "dry run: registry {registry} (from {source}); nothing is pushed, no AWS call is made"
            );
            (registry, None)
        }
        false => {
            // A cache repository of its own is checked too, and its tag rules are known.
            let mut checked = std::collections::HashSet::new();
            let repositories: Vec<&str> = (plan.images.iter().map(|i| i.repository.as_str()))
                .chain(plan.images.iter().map(|i| i.cache_repository()))
                .filter(|repository| checked.insert(*repository))
                .collect();
            let session = aws::connect(plan.registry.as_deref(), &repositories, env).await?;
            (session.registry.clone(), Some(session))
        }
    };
    let ssm = (session.as_ref()).map(|session| (&session.ssm, session.region.as_str()));
    let secrets = secrets::resolve(plan, ssm).await?;
    Ok(match session {
        Some(session) => (registry, Some(session.access), session.rules, secrets),
        None => (registry, None, HashMap::new(), secrets),
    })
}

/// Every image, at most [`REGISTRY_FAN_OUT`] at once (builds wait for a `--jobs` slot): each
/// one's name and outcome, in plan order.
async fn build_all(
    run: &RunContext<'_>,
    prepared: Vec<PreparedImage>,
    secrets: Vec<SecretValues>,
) -> Vec<(String, Result<ImageOutcome>)> {
    let mut outcomes: Vec<(usize, String, Result<ImageOutcome>)> =
        futures_util::stream::iter(prepared.into_iter().zip(secrets).enumerate())
            .map(|(index, (image, secrets))| async move {
                let name = image.plan.name.clone();
                (index, name, build_one(run, image, secrets).await)
            })
            .buffer_unordered(REGISTRY_FAN_OUT)
            .collect()
            .await;
    outcomes.sort_by_key(|(index, _, _)| *index);
    (outcomes.into_iter())
        .map(|(_, name, outcome)| (name, outcome))
        .collect()
}

/// One line, once, where images want a registry cache that the engine cannot export.
fn say_if_no_registry_cache(run: &RunContext<'_>, images: &[PreparedImage]) {
    let wanted =
        (images.iter()).any(|image| image.plan.cache_mode(run.cache).wants_registry_cache());
    let pushes = run.access.is_some();
    if wanted && run.builder == Builder::Buildkit && pushes && !run.engine.can_export_cache() {
        tracing::warn!(
            "the engine keeps its images in the classic image store, which cannot export BuildKit's \
             cache: building with the inline cache only; turn on the containerd image store \
             (\"features\": {{\"containerd-snapshotter\": true}} in the daemon's daemon.json) for a \
             registry cache"
        );
    }
}

/// `ecr-build build`.
pub(crate) async fn build(
    plan: Plan,
    settings: BuildSettings,
    environment: &RunEnvironment,
) -> Result<()> {
    // The artifacts this run writes are never sent with a context.
    let withheld = plan.artifacts.paths();
    // A run that pushes knows its tags without the contexts: a missing commit fails before any call.
    let early_tags = match settings.dry_run {
        false => Some(run_tags(&plan, &[], false, environment)?),
        true => None,
    };
    // No idle waits: the contexts are walked and hashed while ECR logs in, the repositories are
    // checked, the secrets are read and the engine is reached (CodeBuild's dockerd may be starting).
    let ((prepared, engine), (registry, access, rules, secrets)) = tokio::try_join!(
        async {
            tokio::try_join!(prepare::prepare(&plan, &withheld), async {
                Ok(Engine::connect(settings.docker_timeout, &environment.host).await?)
            })
        },
        remote_side(&plan, settings.dry_run, &environment.aws),
    )?;
    let run_tags = match early_tags {
        Some(tags) => tags,
        None => run_tags(&plan, &prepared, true, environment)?,
    };
    let labels = (run_tags.sha.iter())
        .map(|sha| (REVISION_LABEL.to_owned(), sha.clone()))
        .collect();
    let registries = bases::Registries {
        run_registry: &registry,
        access: access.as_ref(),
        mirror: plan.base_image_mirror.as_deref(),
    };
    let recipes = (prepared.iter()).flat_map(|image| {
        std::iter::once(&image.recipe).chain(image.variants.iter().map(|v| &v.recipe))
    });
    let resolved_bases = bases::resolve_all(&engine, &registries, recipes).await;
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
        cache: plan.cache,
        bases: resolved_bases,
        base_image_mirror: plan.base_image_mirror.as_deref(),
        mirrored: Default::default(),
    };
    say_if_no_registry_cache(&run, &prepared);
    let succeeded = report::summarize(build_all(&run, prepared, secrets).await, &run_tags.tags)?;
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
