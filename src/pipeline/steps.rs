//! The steps that every image's way shares, for one platform or several: the run's shared
//! parts, a recipe's key, the context digest known before a build (BuildKit's record), the build,
//! the mark it gets after it, and the push.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::aws::ecr::{EcrLogin, EcrRegistry};
use crate::bases;
use crate::cache;
use crate::config::{Builder, CacheMode};
use crate::context::SyncRequest;
use crate::decide::{self, Recipe, TagRules};
use crate::docker::{BuildRequest, BuiltImage, CacheSpec, DockerError, Engine};
use crate::error::Result;
use crate::prepare::PreparedImage;
use crate::reference;
use crate::reference::RepositoryUri;
use crate::registry::manifest::{BASES_LABEL, INPUTS_LABEL, RECIPE_LABEL, REVISION_LABEL};
use crate::report::{self, ImageOutcome, InputsSource, Outcome};
use crate::retry;
use crate::reuse::Repository;
use crate::secrets::SecretValues;

/// The parts of a run every image shares.
pub(super) struct RunContext<'a> {
    pub(super) engine: &'a Engine,
    pub(super) registry: &'a str,
    pub(super) tags: &'a [String],
    pub(super) labels: Vec<(String, String)>,
    pub(super) network: Option<&'a str>,
    pub(super) builder: Builder,
    /// `None` in a dry run.
    pub(super) access: Option<EcrRegistry>,
    /// Each repository's tag rules, from ECR.
    pub(super) rules: HashMap<String, TagRules>,
    pub(super) rebuild: bool,
    /// How long transient registry faults are retried, per call.
    pub(super) retry_budget: Duration,
    /// `--jobs`: how many images build and push at once. Registry look-ups and re-tags of
    /// unchanged images need no slot.
    pub(super) build_slots: tokio::sync::Semaphore,
    /// A fan-out job's part: only ctx- tags are pushed.
    pub(super) partial: bool,
    /// Every image's cache, unless the image sets its own.
    pub(super) cache: CacheMode,
    /// Every image's base images, resolved once for the run (normalized reference → digest).
    pub(super) bases: HashMap<String, std::result::Result<String, String>>,
    /// Where Docker Hub's base images are read from instead, if anywhere.
    pub(super) base_image_mirror: Option<&'a str>,
    /// The bases put in the engine from the mirror (and for which platform), each once a run,
    /// when the first image that builds on it is built.
    pub(super) mirrored: tokio::sync::Mutex<MirroredBases>,
}

type MirroredBases = HashMap<(String, Option<String>), std::result::Result<(), String>>;

impl RunContext<'_> {
    /// One of the `--jobs` build slots, held while an image builds and pushes.
    pub(super) async fn build_slot(&self) -> Result<tokio::sync::SemaphorePermit<'_>> {
        Ok(self
            .build_slots
            .acquire()
            .await
            .map_err(anyhow::Error::from)?)
    }

    /// `bases` from the run's mirror in the engine for `platform`: pulled once a run, by the first
    /// build that needs them, so a run that builds nothing pulls nothing.
    async fn mirror_bases(&self, bases: &[String], platform: Option<&str>) -> Result<()> {
        if self.base_image_mirror.is_none() {
            return Ok(());
        }
        let registries = bases::Registries {
            run_registry: self.registry,
            access: self.access.as_ref(),
            mirror: self.base_image_mirror,
        };
        let mut mirrored = self.mirrored.lock().await;
        for base in bases {
            let key = (base.clone(), platform.map(str::to_owned));
            if !mirrored.contains_key(&key) {
                let outcome = bases::mirror_into_engine(self.engine, &registries, base, platform);
                let outcome = outcome.await;
                mirrored.insert(key.clone(), outcome);
            }
            mirrored[&key].clone().map_err(anyhow::Error::msg)?;
        }
        Ok(())
    }

    /// The tags this run puts: none in a part of a fan-out.
    pub(super) fn put_tags(&self) -> &[String] {
        if self.partial { &[] } else { self.tags }
    }

    /// Where `image` is pushed.
    pub(super) fn repository_uri(&self, image: &PreparedImage) -> RepositoryUri {
        RepositoryUri::new(self.registry, &image.plan.repository)
    }

    /// `image`'s registry calls, retried within the run's budget.
    pub(super) fn repository<'a>(
        &self,
        access: &'a EcrRegistry,
        image: &'a PreparedImage,
    ) -> Repository<'a> {
        Repository {
            access,
            image: &image.plan.name,
            repository: &image.plan.repository,
            retry_budget: self.retry_budget,
        }
    }

    /// `repository`'s tag rules, as ECR gave them; mutable where it gave none.
    pub(super) fn rules_of(&self, repository: &str) -> TagRules {
        self.rules.get(repository).cloned().unwrap_or_default()
    }

    /// The commit images are labelled with, if the run has one.
    pub(super) fn revision(&self) -> Option<&str> {
        (self.labels.iter())
            .find(|(name, _)| name == REVISION_LABEL)
            .map(|(_, value)| value.as_str())
    }
}

/// The outcome of `image`, begun at `started`.
pub(super) fn outcome(
    run: &RunContext<'_>,
    image: &PreparedImage,
    started: Instant,
    (digest, result): (String, Outcome),
    inputs: InputsSource,
    note: String,
) -> ImageOutcome {
    ImageOutcome {
        name: image.plan.name.clone(),
        repository_uri: run.repository_uri(image),
        digest,
        result,
        in_registry: run.access.is_some(),
        seconds: started.elapsed().as_secs_f64(),
        inputs,
        note,
    }
}

/// The outcome of `image` built in a dry run (`image_id`: the last image built): nothing was
/// looked up, so where the inputs that decided came from is not yet known.
pub(super) fn dry_run_outcome(
    run: &RunContext<'_>,
    image: &PreparedImage,
    started: Instant,
    image_id: String,
) -> ImageOutcome {
    let result = Outcome::BuiltDryRun;
    let note = report::inputs_note(&image.inputs, result, None, &[]);
    let done = (image_id, result);
    outcome(run, image, started, done, InputsSource::NotYetKnown, note)
}

/// A recipe with its base images resolved: its key, and the bases' digests or why they did not
/// resolve (then the image is built, and never found by a context digest).
pub(super) struct RecipeBases {
    pub key: String,
    pub bases: std::result::Result<BTreeMap<String, String>, String>,
    /// The base images as the Dockerfile names them.
    pub named: Vec<String>,
}

impl RecipeBases {
    pub(super) fn of(run: &RunContext<'_>, recipe: &Recipe) -> RecipeBases {
        let bases = bases::bases_of(recipe, &run.bases);
        RecipeBases {
            key: decide::recipe_key(&recipe.settings, bases.as_ref().ok()),
            bases,
            named: recipe.bases.clone().unwrap_or_default(),
        }
    }
}

/// What is known before a build of the way to find an image built from the same recipe and
/// files: its context digest, and what BuildKit's record of the recipe said it reads.
pub(super) struct KnownDigest {
    pub digest: Option<String>,
    recorded: Option<Vec<SyncRequest>>,
    pub source: InputsSource,
}

/// The context digest an earlier build of the same recipe would have been marked with: BuildKit's
/// record of what it read, digested over today's files (one registry GET); the whole tar for the
/// legacy builder. Unknown without a record, with `--rebuild`, or where a base did not resolve.
pub(super) async fn known_digest(
    run: &RunContext<'_>,
    registry: &Repository<'_>,
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
pub(super) async fn mark_built(
    registry: &Repository<'_>,
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
pub(super) fn tag_conflict(
    repository_uri: &RepositoryUri,
    image: &PreparedImage,
    conflict: decide::Conflict,
) -> anyhow::Error {
    anyhow::anyhow!(
        "{}:{conflict} (image {}, recipe {})",
        repository_uri,
        image.plan.name,
        &image.digest[..20]
    )
}

/// What one build makes: an image for `platform` (or the engine's own), labelled with its recipe
/// and bases, tagged locally with `tags`.
pub(super) struct BuildSpec<'a> {
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

/// The cache the build of `image` (for `platform`) exports and imports: its registry cache where
/// the engine and the repository can keep one, and the images of its `cache_from`.
fn cache_spec(run: &RunContext<'_>, image: &PreparedImage, platform: Option<&str>) -> CacheSpec {
    let repository = image.plan.cache_repository();
    let tag = cache::cache_tag(platform, !image.variants.is_empty());
    let can_export =
        run.builder == Builder::Buildkit && run.engine.can_export_cache() && run.access.is_some();
    let immutable = (run.rules.get(repository)).is_some_and(|rules| rules.is_immutable(&tag));
    let choice = cache::choose(image.plan.cache_mode(run.cache), can_export, immutable);
    if choice.fallback == Some(cache::Fallback::ImmutableTag) {
        tracing::warn!(
            image = %image.plan.name,
            "repository {repository} does not let the tag {tag} move (its tags are immutable): \
             inline cache only; add the exclusion filter {}* to the repository's tag mutability \
             (IMMUTABLE_WITH_EXCLUSION) to keep a registry cache",
            cache::CACHE_TAG
        );
    }
    let reference = RepositoryUri::new(run.registry, repository).tagged(&tag);
    let mut imports: Vec<String> = choice
        .registry_mode
        .map(|_| reference.clone())
        .into_iter()
        .collect();
    imports.extend(
        (image.plan.cache_from.iter()).map(|from| reference::qualify_reference(run.registry, from)),
    );
    CacheSpec {
        export: choice
            .registry_mode
            .map(|mode| (reference, mode.to_owned())),
        inline: choice.inline && run.builder == Builder::Buildkit,
        imports,
    }
}

/// Builds the image and tags it locally with every tag of `spec`.
pub(super) async fn build_image(
    run: &RunContext<'_>,
    image: &PreparedImage,
    secrets: SecretValues,
    login: Option<&EcrLogin>,
    spec: BuildSpec<'_>,
) -> Result<BuiltImage> {
    let name = image.plan.name.as_str();
    run.mirror_bases(&spec.recipe.named, spec.platform).await?;
    let repository_uri = run.repository_uri(image);
    let primary = repository_uri.tagged(&spec.tags[0]);
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
    let cache = cache_spec(run, image, spec.platform);
    tracing::info!(
        image = name,
        "building {primary} ({} files, {} bytes of context)",
        image.files.len(),
        image.files.total_bytes()
    );
    let dockerfile = image.files.dockerfile_in_context().to_owned();
    let request = || BuildRequest {
        image: name,
        cache: &cache,
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
        secrets: secrets.clone(),
    };
    let built = run_build(run, image, request, spec.platform).await?;
    tracing::info!(image = name, "built {primary} ({})", built.id);
    for tag in &spec.tags[1..] {
        run.engine
            .tag(&built.id, repository_uri.as_str(), tag)
            .await?;
    }
    Ok(built)
}

/// How many times a build is run where the engine loses a snapshot ([`DockerError::is_lost_snapshot`]).
const BUILD_ATTEMPTS: u32 = 5;

/// Runs the build on the engine: again where BuildKit lost a snapshot while it unpacked the image
/// (every step is cached by then); a platform the engine cannot run is named with the fix.
async fn run_build<'a>(
    run: &RunContext<'_>,
    image: &PreparedImage,
    request: impl Fn() -> BuildRequest<'a>,
    platform: Option<&str>,
) -> Result<BuiltImage> {
    let name = image.plan.name.as_str();
    let mut attempt = 1;
    let built = loop {
        match (run.engine).build(request(), image.files.clone()).await {
            Err(err) if err.is_lost_snapshot() && attempt < BUILD_ATTEMPTS => {
                attempt += 1;
                tracing::warn!(
                    image = name,
                    "the engine lost a snapshot of the image's layers (BuildKit's snapshot race, \
                     moby/buildkit#6521): building it again from its cache, attempt {attempt} of \
                     {BUILD_ATTEMPTS}"
                );
            }
            built => break built,
        }
    };
    match (built, platform) {
        (Err(err), Some(platform)) if err.to_string().contains("exec format error") => {
            Err(anyhow::Error::new(err)
                .context(format!(
                    "the engine cannot run {platform} programs: register QEMU's binfmt handlers on the \
                     host (in privileged mode: docker run --privileged tonistiigi/binfmt --install all), \
                     or build {platform} on a host of its own (ecr-build build --platform {platform})"
                ))
                .into())
        }
        (built, _) => Ok(built?),
    }
}

/// Pushes `push` in order; every tag must be stored under the same digest, which is returned.
pub(super) async fn push_tags(
    run: &RunContext<'_>,
    access: &EcrRegistry,
    name: &str,
    repository_uri: &RepositoryUri,
    image_id: &str,
    push: &[String],
) -> Result<String> {
    let mut pushed: Option<String> = None;
    for tag in push {
        if !run.tags.contains(tag) {
            run.engine
                .tag(image_id, repository_uri.as_str(), tag)
                .await?;
        }
        // A long build can outlive the token it started with.
        let login = access.current().await?;
        let digest = retry::with_backoff(
            name,
            &format!("push of {}", repository_uri.tagged(tag)),
            run.retry_budget,
            DockerError::is_transient,
            || {
                run.engine.push(
                    name,
                    repository_uri.as_str(),
                    tag,
                    Some(login.docker_credentials(run.registry)),
                )
            },
        )
        .await?;
        tracing::info!(
            image = name,
            "pushed {} ({digest})",
            repository_uri.tagged(tag)
        );
        if let Some(first) = &pushed
            && first != &digest
        {
            return Err(anyhow::anyhow!(
                "{} was stored as {digest}, but {} as {first}",
                repository_uri.tagged(tag),
                push[0]
            )
            .into());
        }
        pushed = Some(digest);
    }
    Ok(pushed.expect("a plan has at least one tag"))
}
