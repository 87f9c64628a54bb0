//! Results on stdout: the plan's JSON and the summary of a build, one line per image. Logs go to
//! stderr through `tracing`; nothing else writes to stdout.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::dockerfile::ContextInputs;
use crate::error::Result;
use crate::output;
use crate::prepare::PreparedImage;
use crate::reference::RepositoryUri;

/// How one image's run ended.
pub(crate) struct ImageOutcome {
    pub name: String,
    pub repository_uri: RepositoryUri,
    /// Registry manifest digest; in a dry run, the local image ID.
    pub digest: String,
    pub result: Outcome,
    /// Whether `digest` is the registry's (not a dry run's local image ID).
    pub in_registry: bool,
    pub seconds: f64,
    /// Where the inputs that decided it came from.
    pub inputs: InputsSource,
    /// Why, in a few words: what of the context the image reads.
    pub note: String,
}

/// What a run did with an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Built and pushed.
    Pushed,
    /// Found unchanged, re-stamped for this commit and put under the run's tags.
    Reused,
    /// Built in a dry run, pushed nowhere.
    BuiltDryRun,
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Outcome::Pushed => "pushed",
            Outcome::Reused => "reused",
            Outcome::BuiltDryRun => "built (dry run, not pushed)",
        })
    }
}

/// Where the inputs that decided an image came from: the summary's `inputs=` field, and
/// `inputs_source` in the plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub(crate) enum InputsSource {
    /// What BuildKit read for the same recipe, as an earlier build recorded it.
    Recorded,
    /// Nothing recorded for this recipe yet (or `--rebuild`): built, and recorded now.
    NotYetKnown,
    /// The legacy builder reads the whole context.
    WholeContext,
}

impl std::fmt::Display for InputsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            InputsSource::Recorded => "recorded",
            InputsSource::NotYetKnown => "not-yet-known",
            InputsSource::WholeContext => "whole-context",
        })
    }
}

/// The summary's note on an image: a reused one's inputs did not change; a built one names the
/// inputs that `changed` since the image the run's tags named (where that is known), else what of
/// the context it reads.
pub(crate) fn inputs_note(
    inputs: &ContextInputs,
    result: Outcome,
    changed: Option<&[String]>,
    moved_bases: &[String],
) -> String {
    if result != Outcome::Reused && !moved_bases.is_empty() {
        let moved = moved_bases.iter().map(|base| format!("base {base} moved"));
        let changed = changed
            .unwrap_or_default()
            .iter()
            .map(|input| format!("{input} changed"));
        return moved.chain(changed).collect::<Vec<_>>().join(", ");
    }
    match (inputs, changed) {
        _ if result == Outcome::Reused => "its inputs did not change".to_owned(),
        (_, Some([])) => "its Dockerfile or build settings changed".to_owned(),
        (_, Some(changed)) => format!("{} changed", changed.join(", ")),
        (ContextInputs::Paths(paths), None) => format!("it reads {}", paths.join(", ")),
        (ContextInputs::WholeContext(_), None) => "it reads the whole context".to_owned(),
    }
}

/// Prints one line per image, failed or not, in plan order; the outcomes when every image
/// succeeded, else the run's verdict: "N of M images failed".
pub(crate) fn summarize(
    outcomes: Vec<(String, Result<ImageOutcome>)>,
    tags: &[String],
) -> Result<Vec<ImageOutcome>> {
    let total = outcomes.len();
    let mut succeeded = Vec::with_capacity(total);
    let mut failed = Vec::new();
    for (name, outcome) in outcomes {
        match outcome {
            Ok(outcome) => {
                print_summary_line(&name, Some(&outcome), tags);
                succeeded.push(outcome);
            }
            Err(err) => {
                tracing::error!(image = name.as_str(), "{}", output::describe_error(&err));
                print_summary_line(&name, None, tags);
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
    Ok(succeeded)
}

/// `web pushed REGISTRY/REPO tags=a,b digest=sha256:… seconds=1.2 (it reads app)`, or `web failed`.
fn print_summary_line(name: &str, outcome: Option<&ImageOutcome>, tags: &[String]) {
    match outcome {
        Some(outcome) => println!(
            "{} {} {} tags={} digest={} seconds={:.1} inputs={} ({})",
            outcome.name,
            outcome.result,
            outcome.repository_uri,
            tags.join(","),
            outcome.digest,
            outcome.seconds,
            outcome.inputs,
            outcome.note
        ),
        None => println!("{name} failed"),
    }
}

#[derive(Serialize)]
pub(crate) struct PlanOutput<'a> {
    pub registry: &'a str,
    pub sha: Option<&'a str>,
    pub tags: &'a [String],
    pub images: Vec<PlannedImage<'a>>,
}

#[derive(Serialize)]
pub(crate) struct PlannedImage<'a> {
    pub name: &'a str,
    pub repository: &'a str,
    pub context: &'a Path,
    pub dockerfile: &'a Path,
    /// The Dockerfile's text where a Compose file gives it inline.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dockerfile_inline: Option<&'a str>,
    pub target: Option<&'a str>,
    pub build_args: BTreeMap<&'a str, &'a str>,
    pub labels: BTreeMap<&'a str, &'a str>,
    pub cache_from: &'a [String],
    /// Secret ids and where their values come from (`ssm:NAME`, `env:VAR`, `file:PATH`).
    pub secrets: BTreeMap<&'a str, String>,
    pub platforms: &'a [String],
    pub network: Option<&'a str>,
    /// What of the context the Dockerfile reads, by ecr-build's analysis: a first guess, which
    /// `context_digest` covers. A build decides by what BuildKit recorded instead.
    pub inputs: &'a ContextInputs,
    /// `plan` asks no registry, so what BuildKit recorded is not yet known here.
    pub inputs_source: InputsSource,
    pub context_digest: &'a str,
    /// With several platforms: each one's context digest, under which its image is found.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub platform_digests: BTreeMap<&'a str, &'a str>,
    pub uris: Vec<String>,
    /// Each base image as the Dockerfile names it, and where the build reads it from (its
    /// `base_image_mirror`, or itself).
    pub base_images: BTreeMap<&'a str, String>,
}

impl<'a> PlannedImage<'a> {
    pub(crate) fn new(
        prepared: &'a PreparedImage,
        uris: Vec<String>,
        source_of: impl Fn(&str) -> String,
    ) -> Self {
        let image = &prepared.plan;
        let pairs = |pairs: &'a [(String, String)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect()
        };
        Self {
            name: &image.name,
            repository: &image.repository,
            context: &image.context,
            dockerfile: &image.dockerfile,
            dockerfile_inline: image.dockerfile_inline.as_deref(),
            target: image.target.as_deref(),
            build_args: pairs(&image.build_args),
            labels: pairs(&image.labels),
            cache_from: &image.cache_from,
            secrets: (image.secrets.iter())
                .map(|(id, source)| (id.as_str(), source.to_string()))
                .collect(),
            platforms: &image.platforms,
            network: image.network.as_deref(),
            inputs: &prepared.inputs,
            inputs_source: InputsSource::NotYetKnown,
            context_digest: &prepared.digest,
            platform_digests: (prepared.variants.iter())
                .map(|v| (v.platform.as_str(), v.digest.as_str()))
                .collect(),
            uris,
            base_images: (std::iter::once(&prepared.recipe))
                .chain(prepared.variants.iter().map(|v| &v.recipe))
                .flat_map(|recipe| recipe.bases.iter().flatten())
                .map(|base| (base.as_str(), source_of(base)))
                .collect(),
        }
    }
}

pub(crate) fn print_plan(plan: &PlanOutput<'_>) -> serde_json::Result<()> {
    println!("{}", serde_json::to_string_pretty(plan)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_note_says_what_an_image_reads_or_that_it_did_not_change() {
        let narrow = ContextInputs::Paths(vec!["app".into(), "composer.json".into()]);
        let whole = ContextInputs::WholeContext("`COPY . /x` copies the whole context".into());
        assert_eq!(
            inputs_note(&narrow, Outcome::Reused, None, &[]),
            "its inputs did not change"
        );
        assert_eq!(
            inputs_note(&narrow, Outcome::Pushed, None, &[]),
            "it reads app, composer.json"
        );
        assert_eq!(
            inputs_note(&whole, Outcome::Pushed, None, &[]),
            "it reads the whole context"
        );
        assert_eq!(
            inputs_note(&whole, Outcome::Reused, None, &[]),
            "its inputs did not change"
        );
        let app = ["app".to_owned()];
        assert_eq!(
            inputs_note(&narrow, Outcome::Pushed, Some(&app), &[]),
            "app changed"
        );
        assert_eq!(
            inputs_note(&narrow, Outcome::Pushed, Some(&[]), &[]),
            "its Dockerfile or build settings changed"
        );
        let node = ["node:20".to_owned()];
        assert_eq!(
            inputs_note(&narrow, Outcome::Pushed, Some(&[]), &node),
            "base node:20 moved"
        );
        assert_eq!(
            inputs_note(&narrow, Outcome::Pushed, Some(&app), &node),
            "base node:20 moved, app changed"
        );
        assert_eq!(
            inputs_note(&narrow, Outcome::Reused, None, &node),
            "its inputs did not change"
        );
    }
}
