//! One image for several platforms: each platform is built (BuildKit's `platform`, so TARGETARCH
//! and friends are set) or found unchanged under its own `ctx-` tag (the platform is part of its
//! context digest), then an image index that lists them, with each one's platform and the run's
//! commit, is put under the run's tags.

use std::time::Instant;

use anyhow::Context as _;

use crate::decide::{self, Action, context_tag};
use crate::error::Result;
use crate::prepare::{PreparedImage, Variant};
use crate::reference::RepositoryUri;
use crate::registry::Manifest;
use crate::registry::manifest;
use crate::report::{self, ImageOutcome, InputsSource, Outcome};
use crate::reuse::{Repository, ReuseTarget};
use crate::secrets::SecretValues;

use super::steps::{
    BuildSpec, RecipeBases, RunContext, build_image, dry_run_outcome, known_digest, mark_built,
    outcome, push_tags, tag_conflict,
};

/// Builds or finds every platform of `image`, then puts their index under the run's tags. The
/// outcome names the index's digest (in a dry run, the last image ID) and says where the inputs
/// that decided came from (recorded only where every platform's were).
pub(super) async fn build(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
) -> Result<ImageOutcome> {
    let started = Instant::now();
    let note = |result| report::inputs_note(&image.inputs, result, None, &[]);
    let Some(access) = &run.access else {
        let mut last = String::new();
        for variant in &image.variants {
            let _slot = run.build_slot().await?;
            let recipe = RecipeBases::of(run, &variant.recipe);
            let tags = [platform_tag(run, &variant.platform)];
            let spec = BuildSpec {
                platform: Some(&variant.platform),
                recipe: &recipe,
                tags: &tags,
            };
            last = build_image(run, &image, secrets.clone(), None, spec)
                .await?
                .id;
        }
        return Ok(dry_run_outcome(run, &image, started, last));
    };
    let registry = run.repository(access, &image);
    let mut children = Vec::with_capacity(image.variants.len());
    let mut built = false;
    let mut source = InputsSource::Recorded;
    for variant in &image.variants {
        let (manifest, was_built, known) =
            platform_image(run, &registry, &image, variant, &secrets).await?;
        built |= was_built;
        if known != InputsSource::Recorded {
            source = known;
        }
        children.push((variant.platform.clone(), manifest));
    }
    let index = manifest::index(&children, run.revision()).map_err(anyhow::Error::msg)?;
    let digest = index.digest.clone();
    if !run.partial {
        let repository_uri = run.repository_uri(&image);
        put_index(run, &registry, &repository_uri, index, &image).await?;
    }
    let result = if built {
        Outcome::Pushed
    } else {
        Outcome::Reused
    };
    Ok(outcome(
        run,
        &image,
        started,
        (digest, result),
        source,
        note(result),
    ))
}

/// One platform's image: found under its `ctx-` tag, or built, marked and pushed. Returns its
/// manifest, whether it was built, and where the inputs that decided came from.
async fn platform_image(
    run: &RunContext<'_>,
    registry: &Repository<'_>,
    image: &PreparedImage,
    variant: &Variant,
    secrets: &SecretValues,
) -> Result<(Manifest, bool, InputsSource)> {
    let (name, platform) = (image.plan.name.as_str(), variant.platform.as_str());
    let repository_uri = run.repository_uri(image);
    let recipe = RecipeBases::of(run, &variant.recipe);
    let known = known_digest(run, registry, image, &recipe).await?;
    if let (Some(digest), false) = (&known.digest, run.rebuild) {
        let ctx_tag = context_tag(digest);
        if let Some(manifest) = registry.manifest(&ctx_tag).await? {
            tracing::info!(
                image = name,
                "{platform}: unchanged, {} is {}",
                repository_uri.tagged(&ctx_tag),
                manifest.digest
            );
            return Ok((manifest, false, known.source));
        }
    }
    let _slot = run.build_slot().await?;
    let access = registry.access;
    let login = access.current().await?;
    let local = [platform_tag(run, platform)];
    let spec = BuildSpec {
        platform: Some(platform),
        recipe: &recipe,
        tags: &local,
    };
    let built = build_image(run, image, secrets.clone(), Some(&login), spec)
        .await
        .with_context(|| format!("platform {platform}"))?;
    // Unmarked, the platform's image still needs a tag for the index to name.
    let tag = (mark_built(registry, image, &recipe, &known, &built).await?)
        .unwrap_or_else(|| local[0].clone());
    let pushed = [tag];
    push_tags(run, access, name, &repository_uri, &built.id, &pushed).await?;
    let manifest = (registry.manifest(&pushed[0]).await?)
        .with_context(|| format!("{} was pushed, yet is not there", pushed[0]))?;
    Ok((manifest, true, known.source))
}

/// The tag a platform's image has on the engine (and, where it cannot be marked for reuse, in
/// the registry, for the index to name): the run's first tag and the platform.
fn platform_tag(run: &RunContext<'_>, platform: &str) -> String {
    format!("{}-{}", run.tags[0], platform.replace('/', "-"))
}

/// The index under the run's tags, with the repository's rules: an immutable tag that names
/// another index is a conflict.
async fn put_index(
    run: &RunContext<'_>,
    registry: &Repository<'_>,
    repository_uri: &RepositoryUri,
    index: Manifest,
    image: &PreparedImage,
) -> Result<()> {
    let rules = run.rules_of(&image.plan.repository);
    let state = registry.tags_state(&index.digest, run.tags, &rules).await?;
    let action = decide::decide(run.tags, &state, &rules, false)
        .map_err(|conflict| tag_conflict(repository_uri, image, conflict))?;
    let Action::Reuse { digest, put } = action else {
        unreachable!("an index that is found is put, never built");
    };
    let target = ReuseTarget {
        manifest: index,
        new_config: None,
    };
    registry.put(&target, &put).await?;
    for tag in &put {
        tracing::info!(
            image = image.plan.name.as_str(),
            "tagged {} (index {digest})",
            repository_uri.tagged(tag)
        );
    }
    Ok(())
}
