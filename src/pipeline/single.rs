//! An image for one platform (or the engine's own): found unchanged by its context digest and
//! re-stamped for this commit, or built, marked and pushed under the run's tags.

use std::time::Instant;

use crate::bases;
use crate::decide::{self, Action};
use crate::error::Result;
use crate::prepare::PreparedImage;
use crate::report::{self, ImageOutcome, Outcome};
use crate::reuse::Repository;
use crate::secrets::SecretValues;

use super::steps::{
    BuildSpec, KnownDigest, RecipeBases, RunContext, build_image, dry_run_outcome, known_digest,
    mark_built, outcome, push_tags, tag_conflict,
};

/// The image, from its prepared context to its outcome.
pub(super) async fn build(
    run: &RunContext<'_>,
    image: PreparedImage,
    secrets: SecretValues,
) -> Result<ImageOutcome> {
    let started = Instant::now();
    let recipe = RecipeBases::of(run, &image.recipe);
    let plain_note = |result| report::inputs_note(&image.inputs, result, None, &[]);
    let Some(access) = &run.access else {
        let _slot = run.build_slot().await?;
        let built = build_image(run, &image, secrets, None, spec(run, &image, &recipe)).await?;
        return Ok(dry_run_outcome(run, &image, started, built.id));
    };
    let repository = image.plan.repository.as_str();
    let repository_uri = run.repository_uri(&image);
    let rules = run.rules_of(repository);
    let registry = run.repository(access, &image);
    let known = known_digest(run, &registry, &image, &recipe).await?;
    let put_tags = run.put_tags();
    let (state, target) = (registry.look_up(
        known.digest.as_deref(),
        put_tags,
        &rules,
        run.rebuild,
        run.revision(),
    ))
    .await?;
    let action = decide::decide(put_tags, &state, &rules, run.rebuild)
        .map_err(|conflict| tag_conflict(&repository_uri, &image, conflict))?;
    match action {
        Action::Reuse { digest, put } => {
            let target = target.expect("reuse is decided on an image that was found");
            let ctx_tag = decide::context_tag(known.digest.as_deref().expect("found by it"));
            registry
                .put_reused(&target, &put, &repository_uri, &ctx_tag)
                .await?;
            let (done, note) = ((digest, Outcome::Reused), plain_note(Outcome::Reused));
            Ok(outcome(run, &image, started, done, known.source, note))
        }
        Action::Build { push } => {
            let (digest, note) =
                build_and_push(run, &registry, &image, secrets, &recipe, &known, push).await?;
            let done = (digest, Outcome::Pushed);
            Ok(outcome(run, &image, started, done, known.source, note))
        }
    }
}

/// The build of the image: for its only platform, under the run's tags.
fn spec<'a>(
    run: &'a RunContext<'_>,
    image: &'a PreparedImage,
    recipe: &'a RecipeBases,
) -> BuildSpec<'a> {
    BuildSpec {
        platform: image.plan.platforms.first().map(String::as_str),
        recipe,
        tags: run.tags,
    }
}

/// Builds the image, marks it by what its build read, and pushes `push` and then its `ctx-` tag.
/// Returns the pushed digest and the summary's note: what changed since the image the run's
/// tags named.
async fn build_and_push(
    run: &RunContext<'_>,
    registry: &Repository<'_>,
    image: &PreparedImage,
    secrets: SecretValues,
    recipe: &RecipeBases,
    known: &KnownDigest,
    mut push: Vec<String>,
) -> Result<(String, String)> {
    let access = registry.access;
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
    let built = build_image(run, image, secrets, Some(&login), spec(run, image, recipe)).await?;
    if let Some(ctx_tag) = mark_built(registry, image, recipe, known, &built).await? {
        push.push(ctx_tag);
    }
    let (name, repository_uri) = (&image.plan.name, run.repository_uri(image));
    let digest = push_tags(run, access, name, &repository_uri, &built.id, &push).await?;
    let note = report::inputs_note(&image.inputs, Outcome::Pushed, changed.as_deref(), &moved);
    Ok((digest, note))
}
