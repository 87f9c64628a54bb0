//! One image for several platforms: each platform is built (BuildKit's `platform`, so TARGETARCH
//! and friends are set) or found unchanged under its own `ctx-` tag (the platform is part of its
//! context digest), then an image index that lists them, with each one's platform and the run's
//! commit, is put under the run's tags.

use anyhow::Context as _;

use crate::context::PreparedImage;
use crate::decide::{self, Action, context_tag};
use crate::error::Result;
use crate::image;
use crate::pipeline::{
    BuildSpec, RecipeBases, RunContext, build_image, known_digest, mark_built, push_tags,
    tag_conflict,
};
use crate::registry::Manifest;
use crate::report::InputsSource;
use crate::reuse::{ImageRegistry, ReuseTarget};
use crate::secrets::SecretValues;

/// Builds or finds every platform of `image`, then puts their index under the run's tags. Returns
/// the index's digest (in a dry run, the last image ID), what happened, and where the inputs that
/// decided came from (recorded only where every platform's were).
pub(crate) async fn build_platforms(
    run: &RunContext<'_>,
    image: &PreparedImage,
    secrets: &SecretValues,
) -> Result<(String, &'static str, InputsSource)> {
    let name = image.plan.name.as_str();
    let repository = image.plan.repository.as_str();
    let repository_uri = format!("{}/{repository}", run.registry);
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
            last = build_image(run, image, secrets.clone(), None, spec)
                .await?
                .id;
        }
        return Ok((
            last,
            "built (dry run, not pushed)",
            InputsSource::NotYetKnown,
        ));
    };
    let registry = run.image_registry(access, image);
    let mut children = Vec::with_capacity(image.variants.len());
    let mut built = false;
    let mut source = InputsSource::Recorded;
    for variant in &image.variants {
        let recipe = RecipeBases::of(run, &variant.recipe);
        let known = known_digest(run, &registry, image, &recipe).await?;
        if known.source != InputsSource::Recorded {
            source = known.source;
        }
        let found = match (&known.digest, run.rebuild) {
            (Some(digest), false) => {
                let ctx_tag = context_tag(digest);
                (registry.manifest(&ctx_tag).await?).map(|manifest| (ctx_tag, manifest))
            }
            _ => None,
        };
        let manifest = match found {
            Some((ctx_tag, manifest)) => {
                tracing::info!(
                    image = name,
                    "{}: unchanged, {repository_uri}:{ctx_tag} is {}",
                    variant.platform,
                    manifest.digest
                );
                manifest
            }
            None => {
                let _slot = run.build_slot().await?;
                let login = access.current().await?;
                let local = [platform_tag(run, &variant.platform)];
                let spec = BuildSpec {
                    platform: Some(&variant.platform),
                    recipe: &recipe,
                    tags: &local,
                };
                let image_built = build_image(run, image, secrets.clone(), Some(&login), spec)
                    .await
                    .with_context(|| format!("platform {}", variant.platform))?;
                // Unmarked, the platform's image still needs a tag for the index to name.
                let tag = (mark_built(&registry, image, &recipe, &known, &image_built).await?)
                    .unwrap_or_else(|| local[0].clone());
                let pushed = [tag];
                push_tags(run, access, name, &repository_uri, &image_built.id, &pushed).await?;
                built = true;
                (registry.manifest(&pushed[0]).await?).with_context(|| {
                    format!(
                        "{repository_uri}:{} was pushed, yet is not there",
                        pushed[0]
                    )
                })?
            }
        };
        children.push((variant.platform.clone(), manifest));
    }
    let index = image::index(&children, run.revision()).map_err(anyhow::Error::msg)?;
    let digest = index.digest.clone();
    if !run.partial {
        put_index(run, &registry, &repository_uri, index, image).await?;
    }
    Ok((digest, if built { "pushed" } else { "reused" }, source))
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
    registry: &ImageRegistry<'_>,
    repository_uri: &str,
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
            "tagged {repository_uri}:{tag} (index {digest})"
        );
    }
    Ok(())
}
