//! One image for several platforms: each platform is built (BuildKit's `platform`, so TARGETARCH
//! and friends are set) or found unchanged under its own `ctx-` tag (the platform is part of its
//! context digest), then an image index that lists them, with each one's platform and the run's
//! commit, is put under the run's tags.

use anyhow::Context as _;

use crate::context::PreparedImage;
use crate::decide::{self, Action, context_tag};
use crate::docker::BuiltImage;
use crate::dockerfile::ContextInputs;
use crate::error::Result;
use crate::image;
use crate::pipeline::{BuildSpec, RunContext, build_image, push_tags, tag_conflict};
use crate::registry::Manifest;
use crate::reuse::{ImageRegistry, ReuseTarget};
use crate::secrets::SecretValues;

/// Builds or finds every platform of `image`, then puts their index under the run's tags. Returns
/// the index's digest (in a dry run, the last image ID) and what happened.
pub(crate) async fn build_platforms(
    run: &RunContext<'_>,
    image: &PreparedImage,
    secrets: &SecretValues,
) -> Result<(String, &'static str)> {
    let name = image.plan.name.as_str();
    let repository = image.plan.repository.as_str();
    let repository_uri = format!("{}/{repository}", run.registry);
    let Some(access) = &run.access else {
        let mut last = String::new();
        for variant in &image.variants {
            let _slot = run.build_slot().await?;
            let tags = [context_tag(&variant.digest)];
            let spec = BuildSpec {
                platform: Some(&variant.platform),
                context_digest: &variant.digest,
                tags: &tags,
            };
            last = build_image(run, image, secrets.clone(), None, spec)
                .await?
                .id;
        }
        return Ok((last, "built (dry run, not pushed)"));
    };
    let registry = run.image_registry(access, image);
    let mut children = Vec::with_capacity(image.variants.len());
    let mut built = false;
    for variant in &image.variants {
        let ctx_tag = context_tag(&variant.digest);
        let found = match run.rebuild {
            true => None,
            false => registry.manifest(&ctx_tag).await?,
        };
        let manifest = match found {
            Some(manifest) => {
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
                let tags = [ctx_tag.clone()];
                let spec = BuildSpec {
                    platform: Some(&variant.platform),
                    context_digest: &variant.digest,
                    tags: &tags,
                };
                let image_built = build_image(run, image, secrets.clone(), Some(&login), spec)
                    .await
                    .with_context(|| format!("platform {}", variant.platform))?;
                warn_of_base_triggers(image, &image_built, &variant.platform);
                push_tags(run, access, name, &repository_uri, &image_built.id, &tags).await?;
                built = true;
                (registry.manifest(&ctx_tag).await?).with_context(|| {
                    format!("{repository_uri}:{ctx_tag} was pushed, yet is not there")
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
    Ok((digest, if built { "pushed" } else { "reused" }))
}

/// A platform's image is found by its ctx- tag, so a base image's ONBUILD triggers (which the
/// digest does not see) only warn here.
fn warn_of_base_triggers(image: &PreparedImage, built: &BuiltImage, platform: &str) {
    if built.ran_base_triggers && matches!(image.inputs, ContextInputs::Paths(_)) {
        tracing::warn!(
            image = image.plan.name.as_str(),
            "{platform}: its base image ran ONBUILD triggers, which may read any file of the \
             context: a later run may reuse this platform's image after such a file changed; \
             --rebuild builds anyway"
        );
    }
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
    let action = decide::decide(run.tags, "", &state, &rules, false)
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
