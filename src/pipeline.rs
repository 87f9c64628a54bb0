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
use crate::context::{self, PreparedImage, SyncRequest};
use crate::decide::{self, Action, Recipe, TagRules};
use crate::docker::{BuildRequest, BuiltImage, DockerError, Engine};
use crate::error::{Error, Result};
use crate::image::{BASES_LABEL, INPUTS_LABEL, RECIPE_LABEL, REVISION_LABEL};
use crate::reference;
use crate::reuse::ImageRegistry;

use crate::report::{self, ImageOutcome, InputsSource, PlanOutput, PlannedImage};
use crate::secrets::{self, SecretValues};
use crate::tags::{self, BuildEnv, RunTags};
use crate::{bases, git, multiarch, retry};

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
    /// Every image's base images, resolved once for the run (normalized reference → digest).
    bases: HashMap<String, std::result::Result<String, String>>,
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
    let outcome = |digest: String, result, inputs, note: String| ImageOutcome {
        name: name.clone(),
        repository_uri: repository_uri.clone(),
        digest,
        result,
        in_registry: run.access.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        inputs,
        note,
    };
    let plain_note = |result| report::inputs_note(&image.inputs, result, None, &[]);
    if !image.variants.is_empty() {
        let (digest, result, inputs) = multiarch::build_platforms(run, &image, &secrets).await?;
        return Ok(outcome(digest, result, inputs, plain_note(result)));
    }
    let recipe = RecipeBases::of(run, &image.recipe);
    let spec = BuildSpec {
        platform: image.plan.platforms.first().map(String::as_str),
        recipe: &recipe,
        tags: run.tags,
    };
    let Some(access) = &run.access else {
        let _slot = run.build_slot().await?;
        let built = build_image(run, &image, secrets, None, spec).await?;
        let result = "built (dry run, not pushed)";
        return Ok(outcome(
            built.id,
            result,
            InputsSource::NotYetKnown,
            plain_note(result),
        ));
    };
    let rules = run.rules_of(repository);
    let registry = run.image_registry(access, &image);
    let known = known_digest(run, &registry, &image, &recipe).await?;
    let (state, target) = (registry.look_up(
        known.digest.as_deref(),
        run.put_tags(),
        &rules,
        run.rebuild,
        run.revision(),
    ))
    .await?;
    let action = decide::decide(run.put_tags(), &state, &rules, run.rebuild)
        .map_err(|conflict| tag_conflict(&repository_uri, &image, conflict))?;
    match action {
        Action::Reuse { digest, put } => {
            let target = target.expect("reuse is decided on an image that was found");
            let ctx_tag = decide::context_tag(known.digest.as_deref().expect("found by it"));
            registry
                .put_reused(&target, &put, &repository_uri, &ctx_tag)
                .await?;
            Ok(outcome(
                digest,
                "reused",
                known.source,
                plain_note("reused"),
            ))
        }
        Action::Build { mut push } => {
            // What the image the run's tags name now was built from, to say what changed.
            let previous = registry.previous(run.put_tags()).await;
            let changed = (previous.as_ref())
                .filter(|_| !image.input_digests.is_empty())
                .map(|previous| decide::changed_inputs(&previous.inputs, &image.input_digests));
            let moved: Vec<String> = match (&previous, &recipe.bases) {
                (Some(previous), Ok(bases)) => (decide::moved_bases(&previous.bases, bases).iter())
                    .map(|base| bases::familiar(base).to_owned())
                    .collect(),
                _ => Vec::new(),
            };
            let _slot = run.build_slot().await?;
            let login = access.current().await?;
            let built = build_image(run, &image, secrets, Some(&login), spec).await?;
            if let Some(ctx_tag) = mark_built(&registry, &image, &recipe, &known, &built).await? {
                push.push(ctx_tag);
            }
            let digest = push_tags(run, access, &name, &repository_uri, &built.id, &push).await?;
            let note = report::inputs_note(&image.inputs, "pushed", changed.as_deref(), &moved);
            Ok(outcome(digest, "pushed", known.source, note))
        }
    }
}

/// A recipe with its base images resolved: its key, and the bases' digests or why they did not
/// resolve (then the image is built, and never found by a context digest).
pub(crate) struct RecipeBases {
    pub key: String,
    pub bases: std::result::Result<std::collections::BTreeMap<String, String>, String>,
}

impl RecipeBases {
    pub(crate) fn of(run: &RunContext<'_>, recipe: &Recipe) -> RecipeBases {
        let bases = bases::bases_of(recipe, &run.bases);
        RecipeBases {
            key: decide::recipe_key(&recipe.settings, bases.as_ref().ok()),
            bases,
        }
    }
}

/// What is known before a build of the way to find an image built from the same recipe and
/// files: its context digest, and what BuildKit's record of the recipe said it reads.
pub(crate) struct KnownDigest {
    pub digest: Option<String>,
    recorded: Option<Vec<SyncRequest>>,
    pub source: InputsSource,
}

/// The context digest an earlier build of the same recipe would have been marked with: BuildKit's
/// record of what it read, digested over today's files (one registry GET); the whole tar for the
/// legacy builder. Unknown without a record, with `--rebuild`, or where a base did not resolve.
pub(crate) async fn known_digest(
    run: &RunContext<'_>,
    registry: &ImageRegistry<'_>,
    image: &PreparedImage,
    recipe: &RecipeBases,
) -> Result<KnownDigest> {
    let unknown = KnownDigest {
        digest: None,
        recorded: None,
        source: InputsSource::NotYetKnown,
    };
    if let Err(reason) = &recipe.bases {
        tracing::warn!(
            image = image.plan.name.as_str(),
            "{reason}: it is built, and not marked for reuse"
        );
        return Ok(unknown);
    }
    if run.builder == Builder::Legacy {
        let read = image
            .files
            .clone()
            .digest(b"")
            .map_err(anyhow::Error::from)?;
        return Ok(KnownDigest {
            digest: Some(decide::context_digest(&recipe.key, &read)),
            recorded: None,
            source: InputsSource::WholeContext,
        });
    }
    if run.rebuild {
        return Ok(unknown);
    }
    let Some(requests) = registry.record(&recipe.key).await? else {
        return Ok(unknown);
    };
    let read = image
        .files
        .requests_digest(&requests)
        .map_err(anyhow::Error::from)?;
    Ok(KnownDigest {
        digest: Some(decide::context_digest(&recipe.key, &read)),
        recorded: Some(requests),
        source: InputsSource::Recorded,
    })
}

/// After a build: the `ctx-` tag that finds the image again, from what BuildKit read (recorded
/// for the recipe where the record is new or differs); `None` where the image must not be found
/// by one: a base did not resolve, or BuildKit loaded an image the recipe does not name.
pub(crate) async fn mark_built(
    registry: &ImageRegistry<'_>,
    image: &PreparedImage,
    recipe: &RecipeBases,
    known: &KnownDigest,
    built: &BuiltImage,
) -> Result<Option<String>> {
    let not_marked = |reason: String| {
        tracing::warn!(
            image = image.plan.name.as_str(),
            "not marked for reuse ({reason}): the next run builds it again"
        );
        Ok(None)
    };
    let bases = match &recipe.bases {
        Ok(bases) => bases,
        Err(reason) => return not_marked(reason.clone()),
    };
    let unnamed = bases::unnamed_loaded(&built.loaded_images, bases);
    if !unnamed.is_empty() {
        return not_marked(format!(
            "BuildKit loaded {}, which ecr-build did not resolve before the build",
            unnamed.join(", ")
        ));
    }
    let digest = match &built.context_requests {
        // The legacy builder read the whole tar, whose digest was known before the build.
        None => match &known.digest {
            Some(digest) => digest.clone(),
            None => return not_marked("the context digest is not known".to_owned()),
        },
        Some(requests) => {
            let mut requests = requests.clone();
            requests.sort();
            requests.dedup();
            if known.recorded.as_ref() != Some(&requests) {
                registry.put_record(&recipe.key, &requests).await?;
            }
            let read = (image.files.requests_digest(&requests)).map_err(anyhow::Error::from)?;
            decide::context_digest(&recipe.key, &read)
        }
    };
    Ok(Some(decide::context_tag(&digest)))
}

/// A tag this run cannot put, naming the repository and the image's context digest.
pub(crate) fn tag_conflict(
    repository_uri: &str,
    image: &PreparedImage,
    conflict: decide::Conflict,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{repository_uri}:{conflict} (image {}, recipe {})",
        image.plan.name,
        &image.digest[..20]
    )
}

/// What one build makes: an image for `platform` (or the engine's own), labelled with its recipe
/// and bases, tagged locally with `tags`.
pub(crate) struct BuildSpec<'a> {
    pub platform: Option<&'a str>,
    pub recipe: &'a RecipeBases,
    pub tags: &'a [String],
}

/// The image's labels: the configured ones, the run's, its recipe, bases and inputs.
fn image_labels(
    run: &RunContext<'_>,
    image: &PreparedImage,
    recipe: &RecipeBases,
) -> Vec<(String, String)> {
    let mut labels = image.plan.labels.clone();
    labels.extend(run.labels.iter().cloned());
    labels.push((RECIPE_LABEL.into(), recipe.key.clone()));
    if let Ok(bases) = &recipe.bases
        && !bases.is_empty()
    {
        let bases = serde_json::to_string(bases).expect("strings serialize");
        labels.push((BASES_LABEL.into(), bases));
    }
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
    let labels = image_labels(run, image, spec.recipe);
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
    let recipes = (prepared.iter()).flat_map(|image| {
        std::iter::once(&image.recipe).chain(image.variants.iter().map(|v| &v.recipe))
    });
    let registries = bases::Registries {
        run_registry: &registry,
        access: access.as_ref(),
    };
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
        bases: resolved_bases,
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
