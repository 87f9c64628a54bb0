//! Each image's preparation, before anything is decided: its context walked (once per shared
//! context) and hashed, its Dockerfile checked, its recipe for each platform, and the Dockerfile
//! analysis' first guess at what it reads (for `plan` and the summary).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use anyhow::Context as _;
use sha2::{Digest, Sha256};

use crate::config::{Builder, CacheMode, ConfigError, ImagePlan, Plan};
use crate::context::{
    ContextError, ContextFiles, DockerfileSource, SharedWalk, collect_with, own_output_files,
};
use crate::decide::{self, Recipe, RunInputs};
use crate::dockerfile::{self, BuildFacts, ContextInputs, context_inputs};

/// An image whose context has been read: the files to send, its recipe, and the Dockerfile
/// analysis' first guess at what it reads.
pub(crate) struct PreparedImage {
    pub plan: ImagePlan,
    pub files: ContextFiles,
    /// The first guess's digest (what the analysis says the Dockerfile reads, and the recipe's
    /// settings); for several platforms, a digest of theirs. `plan` shows it; skips are decided
    /// by what BuildKit recorded instead.
    pub digest: String,
    /// What of the context the Dockerfile reads, by the analysis (for several platforms, the
    /// first one's).
    pub inputs: ContextInputs,
    /// With narrow inputs: each input's short digest, which the built image carries as a label.
    pub input_digests: BTreeMap<String, String>,
    /// The recipe of the image (of its only platform).
    pub recipe: Recipe,
    /// With several platforms: each one's first-guess digest and recipe (the platform is in both).
    pub variants: Vec<Variant>,
}

/// One platform of an image built for several.
pub(crate) struct Variant {
    pub platform: String,
    pub digest: String,
    pub recipe: Recipe,
}

/// What every image of the run is built with, from the plan.
#[derive(Clone)]
struct RunWide {
    builder: Builder,
    network: Option<String>,
    base_image_mirror: Option<String>,
    cache: CacheMode,
}

/// Walks and hashes every image's context, in parallel, off the async threads. The run's own
/// artifacts (`withheld`) and output files are never sent.
pub(crate) async fn prepare(
    plan: &Plan,
    withheld: &[PathBuf],
) -> crate::error::Result<Vec<PreparedImage>> {
    let mut withheld = withheld.to_vec();
    withheld.extend(own_output_files());
    // Images that share a context (a monorepo's `context = "."`) share one walk and one hash per
    // file; contexts are walked in parallel, off the async threads.
    let mut groups: Vec<(PathBuf, Vec<(usize, ImagePlan)>)> = Vec::new();
    for (index, image) in plan.images.iter().cloned().enumerate() {
        let key = fs::canonicalize(&image.context).unwrap_or_else(|_| image.context.clone());
        match groups.iter_mut().find(|(known, _)| *known == key) {
            Some((_, images)) => images.push((index, image)),
            None => groups.push((key, vec![(index, image)])),
        }
    }
    let walks = groups.into_iter().map(|(context, images)| {
        let run = RunWide {
            builder: plan.builder,
            network: plan.network.clone(),
            base_image_mirror: plan.base_image_mirror.clone(),
            cache: plan.cache,
        };
        let withheld = withheld.clone();
        tokio::task::spawn_blocking(move || {
            let shared = (images.len() > 1)
                .then(|| SharedWalk::new(&context, &withheld).ok())
                .flatten();
            (images.into_iter())
                .map(|(index, image)| {
                    Ok((index, prepare_one(image, &run, &withheld, shared.as_ref())?))
                })
                .collect::<crate::error::Result<Vec<_>>>()
        })
    });
    let mut prepared = Vec::with_capacity(plan.images.len());
    for walk in futures_util::future::join_all(walks).await {
        prepared.extend(walk.context("context walk panicked")??);
    }
    prepared.sort_by_key(|(index, _)| *index);
    Ok(prepared.into_iter().map(|(_, image)| image).collect())
}

/// The image's context, with the files the run writes withheld (from the shared walk where
/// there is one), and its Dockerfile's text, checked.
fn read_context(
    image: &ImagePlan,
    withheld: &[PathBuf],
    shared: Option<&SharedWalk>,
) -> crate::error::Result<(ContextFiles, String)> {
    let name = image.name.as_str();
    let dockerfile = match &image.dockerfile_inline {
        Some(text) => DockerfileSource::Inline(text),
        None => DockerfileSource::Path(&image.dockerfile),
    };
    let from_shared = match shared {
        Some(shared) => shared.image_context(dockerfile).map_err(invalid(name))?,
        None => None,
    };
    let mut files = match from_shared {
        Some(files) => files,
        None => collect_with(&image.context, dockerfile).map_err(invalid(name))?,
    };
    for path in files.withhold(withheld) {
        tracing::debug!(image = name, "not sending {path}: ecr-build writes it");
    }
    let dockerfile_text = (files.dockerfile_text())
        .with_context(|| format!("image {name}: cannot read its Dockerfile"))?;
    dockerfile::check(&dockerfile_text, image.target.as_deref()).map_err(|err| {
        ConfigError::Invalid {
            origin: format!("image {name}"),
            message: format!("the Dockerfile {}: {err}", image.dockerfile.display()),
        }
    })?;
    Ok((files, dockerfile_text))
}

/// A context error as the image's invalid input (exit 2).
fn invalid(image: &str) -> impl Fn(ContextError) -> ConfigError + '_ {
    move |err| ConfigError::Invalid {
        origin: format!("image {image}"),
        message: err.to_string(),
    }
}

fn prepare_one(
    image: ImagePlan,
    run: &RunWide,
    withheld: &[PathBuf],
    shared: Option<&SharedWalk>,
) -> crate::error::Result<PreparedImage> {
    let (mut files, dockerfile_text) = read_context(&image, withheld, shared)?;
    let name = image.name.as_str();
    let platforms: Vec<Option<&str>> = match image.platforms.as_slice() {
        [] => vec![None],
        platforms => platforms.iter().map(|p| Some(p.as_str())).collect(),
    };
    let mut guesses = Vec::with_capacity(platforms.len());
    for platform in platforms {
        guesses.push(guess_for(
            &image,
            run,
            &mut files,
            &dockerfile_text,
            platform,
        )?);
    }
    let PlatformGuess {
        recipe,
        inputs,
        input_digests,
        ..
    } = guesses[0].clone();
    let (digest, variants) = match guesses.len() {
        1 => (guesses[0].digest.clone(), Vec::new()),
        _ => {
            let all: Vec<&str> = guesses.iter().map(|g| g.digest.as_str()).collect();
            let digest = format!("{:x}", Sha256::digest(all.join("\n")));
            let variants = (image.platforms.iter().zip(guesses))
                .map(|(platform, guess)| Variant {
                    platform: platform.clone(),
                    digest: guess.digest,
                    recipe: guess.recipe,
                })
                .collect();
            (digest, variants)
        }
    };
    match &inputs {
        ContextInputs::Paths(paths) => {
            tracing::debug!(
                image = name,
                "inputs from the context: {}",
                paths.join(", ")
            )
        }
        ContextInputs::WholeContext(reason) => {
            tracing::debug!(image = name, "the whole context is an input: {reason}")
        }
    }
    tracing::debug!(
        image = name,
        "context {}: {} files, {} bytes, digest {digest}",
        image.context.display(),
        files.len(),
        files.total_bytes()
    );
    Ok(PreparedImage {
        plan: image,
        files,
        digest,
        inputs,
        input_digests,
        recipe,
        variants,
    })
}

/// One platform's recipe, and the first guess: its digest, and what the analysis says the
/// Dockerfile reads.
#[derive(Clone)]
struct PlatformGuess {
    recipe: Recipe,
    digest: String,
    inputs: ContextInputs,
    /// With narrow inputs: each input's short digest.
    input_digests: BTreeMap<String, String>,
}

/// The image's recipe for `platform` (or none): its settings and its base images as named; and
/// the first guess's digest, which covers what the Dockerfile reads where the analysis proves it
/// narrow, else all the context sends.
fn guess_for(
    image: &ImagePlan,
    run: &RunWide,
    files: &mut ContextFiles,
    dockerfile_text: &str,
    platform: Option<&str>,
) -> crate::error::Result<PlatformGuess> {
    let run_inputs = RunInputs {
        builder: run.builder,
        base_image_mirror: run.base_image_mirror.as_deref(),
        cache: run.cache,
    };
    let dockerfile = files.dockerfile_in_context().to_owned();
    let settings = decide::digest_inputs(image, &run_inputs, &dockerfile, platform);
    let network = image.network.as_deref().or(run.network.as_deref());
    let recipe_settings =
        decide::recipe_settings(&settings, dockerfile_text, files.ignore_rules(), network);
    let facts = BuildFacts {
        target: image.target.as_deref(),
        build_args: &image.build_args,
        platform,
    };
    let bases = dockerfile::base_images(dockerfile_text, &facts);
    let cannot_hash = || {
        format!(
            "image {}: cannot hash the context {}",
            image.name,
            image.context.display()
        )
    };
    let narrow = match context_inputs(dockerfile_text, &facts) {
        ContextInputs::Paths(patterns) => {
            match (files.inputs_digest(&settings, &patterns)).with_context(cannot_hash)? {
                Ok(digest) => Ok((digest, patterns)),
                Err(reason) => Err(ContextInputs::WholeContext(reason)),
            }
        }
        whole => Err(whole),
    };
    let (digest, inputs, input_digests) = match narrow {
        Ok((digest, patterns)) => {
            // Patterns the digest just above has compiled: this fails only where that would.
            let input_digests = (files.input_digests(&patterns)).with_context(cannot_hash)?;
            (digest, ContextInputs::Paths(patterns), input_digests)
        }
        Err(whole) => {
            let digest = files.digest(&settings).with_context(cannot_hash)?;
            (digest, whole, BTreeMap::new())
        }
    };
    let recipe = Recipe {
        settings: recipe_settings,
        bases,
    };
    Ok(PlatformGuess {
        recipe,
        digest,
        inputs,
        input_digests,
    })
}
