//! What to do with one image, given what the registry holds and the repository's rules. Pure: the
//! executor (pipeline.rs) looks the registry up, asks here, and carries the answer out.

use std::collections::{BTreeMap, HashMap, HashSet};

use regex::Regex;
use sha2::{Digest, Sha256};

use crate::config::{Builder, CacheMode, ImagePlan};

/// Everything that decides an image besides its files; hashed into the context digest. JSON, so no two
/// different inputs can produce the same bytes.
/// `platform` is the one the image is built for, where the configuration names one.
pub(crate) fn digest_inputs(
    image: &ImagePlan,
    run: &RunInputs<'_>,
    dockerfile_in_context: &str,
    platform: Option<&str>,
) -> Vec<u8> {
    let builder = run.builder;
    let mut inputs = serde_json::json!({
        "builder": format!("{builder:?}"),
        "dockerfile": dockerfile_in_context,
        "target": image.target,
        "build_args": image.build_args,
        "secret_ids": image.secrets.iter().map(|(id, _)| id).collect::<Vec<_>>(),
        "ssm_path": image.ssm_path,
    });
    // BuildKit reads the context through the build session, which leaves out the build files
    // that .dockerignore excludes and gives files content-derived times: not what a tar gave.
    if builder == Builder::Buildkit {
        inputs["context_transfer"] = "filesync".into();
    }
    // Only where set, so that images which have neither keep the digests they had.
    if let Some(platform) = platform {
        inputs["platform"] = platform.into();
    }
    if !image.labels.is_empty() {
        inputs["labels"] = serde_json::json!(image.labels);
    }
    if let Some(mirror) = run.base_image_mirror {
        inputs["base_image_mirror"] = mirror.into();
    }
    // Every other mode keeps the inline cache's metadata in the image; `off` makes another image.
    if image.cache_mode(run.cache) == CacheMode::Off {
        inputs["cache"] = "off".into();
    }
    serde_json::to_vec(&inputs).expect("plain values serialize")
}

/// What the run's settings add to every image's inputs.
pub(crate) struct RunInputs<'a> {
    pub builder: Builder,
    /// Where Docker Hub bases are read from, where the run sets a mirror.
    pub base_image_mirror: Option<&'a str>,
    /// The run's cache mode, for images that set none.
    pub cache: CacheMode,
}

/// What decides an image for one platform besides the files its build reads: its settings and
/// the images it builds on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Recipe {
    /// [`recipe_settings`]'s JSON.
    pub settings: Vec<u8>,
    /// The base images as the Dockerfile names them (`dockerfile::base_images`); `Err(reason)`
    /// where they cannot be named before the build.
    pub bases: Result<Vec<String>, String>,
}

/// The recipe's settings: [`digest_inputs`], the Dockerfile's and the ignore file's content and
/// the network RUN steps get. JSON, so no two different settings give the same bytes.
pub(crate) fn recipe_settings(
    inputs: &[u8],
    dockerfile_text: &str,
    ignore_rules: &[u8],
    network: Option<&str>,
) -> Vec<u8> {
    let hex = |bytes: &[u8]| format!("{:x}", Sha256::digest(bytes));
    serde_json::to_vec(&serde_json::json!({
        "settings": String::from_utf8_lossy(inputs),
        "dockerfile_sha256": hex(dockerfile_text.as_bytes()),
        "ignore_sha256": hex(ignore_rules),
        "network": network,
    }))
    .expect("plain values serialize")
}

/// The key of a recipe whose bases resolved to `bases` (reference → digest). `None`: they could
/// not be resolved, and the key is one no resolved recipe has.
pub(crate) fn recipe_key(settings: &[u8], bases: Option<&BTreeMap<String, String>>) -> String {
    let mut hasher = Sha256::new();
    hasher.update(b"ecr-build recipe v1\n");
    hasher.update((settings.len() as u64).to_be_bytes());
    hasher.update(settings);
    match bases {
        Some(bases) => hasher.update(serde_json::to_vec(bases).expect("strings serialize")),
        None => hasher.update(b"bases not resolved"),
    }
    format!("{:x}", hasher.finalize())
}

/// The context digest by which an image is found again: its recipe's key and the digest of what
/// its build read (the file sync's offer for what BuildKit asked, or the whole tar).
pub(crate) fn context_digest(recipe_key: &str, read_digest: &str) -> String {
    format!(
        "{:x}",
        Sha256::digest(format!(
            "ecr-build context v2\n{recipe_key}\n{read_digest}\n"
        ))
    )
}

/// The tag of the record of what BuildKit read for a recipe.
pub(crate) fn record_tag(recipe_key: &str) -> String {
    format!("rcp-{}", &recipe_key[..20])
}

/// The base images whose digest differs from an earlier image's: what the summary says moved.
pub(crate) fn moved_bases(
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<String> {
    (current.iter())
        .filter(|(base, digest)| previous.get(*base).is_some_and(|was| was != *digest))
        .map(|(base, _)| base.clone())
        .collect()
}

/// The inputs whose digests differ from an earlier image's, or that it did not read: what the
/// summary says changed.
pub(crate) fn changed_inputs(
    previous: &BTreeMap<String, String>,
    current: &BTreeMap<String, String>,
) -> Vec<String> {
    (current.iter())
        .filter(|(input, digest)| previous.get(*input) != Some(*digest))
        .map(|(input, _)| input.clone())
        .collect()
}

/// The tag that marks an image by the digest of everything that decided it.
pub(crate) fn context_tag(context_digest: &str) -> String {
    format!("ctx-{}", &context_digest[..20])
}

/// Which tags of a repository cannot be moved once they exist: ECR's `imageTagMutability`, with
/// the exclusion filters of `IMMUTABLE_WITH_EXCLUSION` and `MUTABLE_WITH_EXCLUSION`.
#[derive(Debug, Clone, Default)]
pub(crate) struct TagRules {
    immutable_by_default: bool,
    /// Tags matching one of these have the other mutability.
    exclusions: Vec<Regex>,
}

impl TagRules {
    pub(crate) fn mutable() -> Self {
        Self::default()
    }

    pub(crate) fn immutable() -> Self {
        Self {
            immutable_by_default: true,
            exclusions: Vec::new(),
        }
    }

    /// `filters` are ECR's WILDCARD filters: `*` stands for any run of characters, everything else
    /// for itself, and a filter matches a whole tag.
    pub(crate) fn with_exclusions(immutable_by_default: bool, filters: &[&str]) -> Self {
        let exclusions = filters
            .iter()
            .map(|filter| {
                let pattern: Vec<String> = filter.split('*').map(regex::escape).collect();
                Regex::new(&format!("^{}$", pattern.join(".*")))
                    .expect("escaped text and .* compile")
            })
            .collect();
        Self {
            immutable_by_default,
            exclusions,
        }
    }

    pub(crate) fn is_immutable(&self, tag: &str) -> bool {
        self.immutable_by_default != self.exclusions.iter().any(|filter| filter.is_match(tag))
    }
}

/// What the registry holds for one image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct RepositoryState {
    /// The image to reuse when one was built from the same inputs: the one under the `ctx-` tag,
    /// re-stamped with this run's commit.
    pub unchanged: Option<String>,
    /// The digest each looked-up tag points at; a tag that is not there is absent.
    pub existing: HashMap<String, String>,
    /// Other digests of the same content: the image as built, and its re-stamps for other commits.
    pub same_content: HashSet<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Action {
    /// Put the unchanged image's manifest under `put`; the run's other tags already point at it.
    Reuse { digest: String, put: Vec<String> },
    /// Build, then push `push` in order: the run's tags. The `ctx-` tag, known once the build
    /// said what it read, goes last: it marks an image whose every tag is in place.
    Build { push: Vec<String> },
}

/// A tag that cannot be given to this image.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "{tag} already exists ({existing}) and the repository's tags are immutable; this run {wants}"
)]
pub(crate) struct Conflict {
    pub tag: String,
    pub existing: String,
    /// What the run would have put there, for the message.
    pub wants: String,
}

/// The tags whose current digest the decision needs: every run tag when the image may be reused
/// (a tag already in place needs no PUT), else only those that cannot move.
pub(crate) fn tags_to_look_up<'a>(
    tags: &'a [String],
    rules: &TagRules,
    may_reuse: bool,
) -> Vec<&'a str> {
    tags.iter()
        .map(String::as_str)
        .filter(|tag| may_reuse || rules.is_immutable(tag))
        .collect()
}

/// Reuse an image built from the same inputs (unless `rebuild`), or build; an immutable tag that
/// already names other content is a conflict either way, found before any work is done. When
/// reusing, a mutable tag moves to the re-stamped image; an immutable one that names the same
/// content for an earlier commit stays where it is.
pub(crate) fn decide(
    tags: &[String],
    state: &RepositoryState,
    rules: &TagRules,
    rebuild: bool,
) -> Result<Action, Conflict> {
    let conflict = |tag: &str, wants: String| {
        let existing = state.existing.get(tag)?;
        rules.is_immutable(tag).then(|| Conflict {
            tag: tag.to_owned(),
            existing: existing.clone(),
            wants,
        })
    };
    match state.unchanged.as_ref().filter(|_| !rebuild) {
        Some(digest) => {
            let mut put = Vec::new();
            for tag in tags {
                match state.existing.get(tag) {
                    Some(existing) if existing == digest => {}
                    Some(existing)
                        if rules.is_immutable(tag) && state.same_content.contains(existing) => {}
                    Some(_) => {
                        if let Some(found) = conflict(tag, format!("would move it to {digest}")) {
                            return Err(found);
                        }
                        put.push(tag.clone());
                    }
                    None => put.push(tag.clone()),
                }
            }
            Ok(Action::Reuse {
                digest: digest.clone(),
                put,
            })
        }
        None => {
            for tag in tags {
                if let Some(found) = conflict(tag, "built different content".to_owned()) {
                    return Err(found);
                }
            }
            Ok(Action::Build {
                push: tags.to_vec(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretSource;
    use std::path::PathBuf;

    fn tags() -> Vec<String> {
        vec!["abc1234".to_owned(), "latest".to_owned()]
    }

    fn state(unchanged: Option<&str>, existing: &[(&str, &str)]) -> RepositoryState {
        RepositoryState {
            unchanged: unchanged.map(str::to_owned),
            existing: existing
                .iter()
                .map(|(t, d)| ((*t).to_owned(), (*d).to_owned()))
                .collect(),
            same_content: HashSet::new(),
        }
    }

    #[test]
    fn on_reuse_mutable_tags_move_to_the_new_commit_and_immutable_ones_keep_the_same_content() {
        let mut held = state(
            Some("sha256:new"),
            &[("abc1234", "sha256:old"), ("latest", "sha256:old")],
        );
        held.same_content.insert("sha256:old".into());
        let latest_excluded = TagRules::with_exclusions(true, &["latest"]);
        let action = decide(&tags(), &held, &latest_excluded, false).unwrap();
        assert_eq!(
            action,
            Action::Reuse {
                digest: "sha256:new".into(),
                put: vec!["latest".into()]
            },
            "latest moves; abc1234 is immutable and already names this content"
        );
        held.same_content.clear();
        let err = decide(&tags(), &held, &latest_excluded, false).unwrap_err();
        assert_eq!(err.tag, "abc1234");
    }

    #[test]
    fn exclusion_filters_decide_per_tag() {
        let release = vec!["release-7".to_owned(), "latest".to_owned()];
        let held = state(None, &[("release-7", "sha256:b"), ("latest", "sha256:b")]);
        let release_immutable = TagRules::with_exclusions(false, &["release-*"]);
        let err = decide(&release, &held, &release_immutable, false).unwrap_err();
        assert_eq!(err.tag, "release-7");
        let latest_mutable = TagRules::with_exclusions(true, &["latest"]);
        let held = state(None, &[("latest", "sha256:b")]);
        assert!(matches!(
            decide(&release, &held, &latest_mutable, false),
            Ok(Action::Build { .. })
        ));
        assert_eq!(
            tags_to_look_up(&release, &latest_mutable, false),
            ["release-7"],
            "only immutable tags are looked up before a build"
        );
    }

    #[test]
    fn new_content_is_built_and_pushed_under_the_run_s_tags() {
        let action = decide(&tags(), &state(None, &[]), &TagRules::mutable(), false).unwrap();
        assert_eq!(
            action,
            Action::Build {
                push: vec!["abc1234".into(), "latest".into()]
            }
        );
    }

    #[test]
    fn unchanged_content_is_reused_and_only_missing_or_moved_tags_are_put() {
        let held = state(
            Some("sha256:a"),
            &[("abc1234", "sha256:a"), ("latest", "sha256:b")],
        );
        let action = decide(&tags(), &held, &TagRules::mutable(), false).unwrap();
        assert_eq!(
            action,
            Action::Reuse {
                digest: "sha256:a".into(),
                put: vec!["latest".into()]
            }
        );
        let nothing_there = state(Some("sha256:a"), &[]);
        let Action::Reuse { put, .. } =
            decide(&tags(), &nothing_there, &TagRules::immutable(), false).unwrap()
        else {
            panic!("not reused")
        };
        assert_eq!(put, tags());
    }

    #[test]
    fn rebuild_builds_even_unchanged_content() {
        let held = state(Some("sha256:a"), &[]);
        let action = decide(&tags(), &held, &TagRules::mutable(), true).unwrap();
        assert!(matches!(action, Action::Build { .. }));
    }

    #[test]
    fn immutable_tags_already_in_place_are_success() {
        let held = state(
            Some("sha256:a"),
            &[("abc1234", "sha256:a"), ("latest", "sha256:a")],
        );
        let action = decide(&tags(), &held, &TagRules::immutable(), false).unwrap();
        assert_eq!(
            action,
            Action::Reuse {
                digest: "sha256:a".into(),
                put: vec![]
            }
        );
    }

    #[test]
    fn an_immutable_tag_on_other_content_is_a_conflict_when_reusing() {
        let held = state(Some("sha256:a"), &[("latest", "sha256:b")]);
        let err = decide(&tags(), &held, &TagRules::immutable(), false).unwrap_err();
        assert_eq!(err.tag, "latest");
        assert_eq!(err.existing, "sha256:b");
        assert!(
            err.to_string().contains("would move it to sha256:a"),
            "{err}"
        );
    }

    #[test]
    fn an_existing_immutable_tag_is_a_conflict_when_building() {
        let held = state(None, &[("abc1234", "sha256:b")]);
        let err = decide(&tags(), &held, &TagRules::immutable(), false).unwrap_err();
        assert_eq!(err.tag, "abc1234");
        assert!(err.to_string().contains("built different content"), "{err}");
        // The same tags on a mutable repository simply move.
        assert!(decide(&tags(), &held, &TagRules::mutable(), false).is_ok());
    }

    #[test]
    fn lookups_cover_every_tag_only_when_the_image_may_be_reused() {
        let all = tags();
        assert_eq!(
            tags_to_look_up(&all, &TagRules::mutable(), true),
            ["abc1234", "latest"]
        );
        assert!(tags_to_look_up(&all, &TagRules::mutable(), false).is_empty());
        assert_eq!(
            tags_to_look_up(&all, &TagRules::immutable(), false),
            ["abc1234", "latest"]
        );
    }

    fn image(args: &[(&str, &str)], target: Option<&str>) -> ImagePlan {
        let (context, dockerfile) = (PathBuf::from("/c"), PathBuf::from("/c/Dockerfile"));
        ImagePlan {
            target: target.map(str::to_owned),
            build_args: args
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            ..ImagePlan::new("web".into(), "app/web".into(), context, dockerfile)
        }
    }

    #[test]
    fn digest_inputs_separate_everything_that_decides_the_image() {
        let run = |builder| RunInputs {
            builder,
            base_image_mirror: None,
            cache: CacheMode::Max,
        };
        let inputs = |image: &ImagePlan, builder, dockerfile| {
            digest_inputs(image, &run(builder), dockerfile, None)
        };
        let base = inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile");
        let mut with_secret = image(&[("A", "1")], None);
        with_secret
            .secrets
            .push(("token".into(), SecretSource::Env("TOKEN".into())));
        let variants = [
            inputs(&image(&[("A", "2")], None), Builder::Buildkit, "Dockerfile"),
            inputs(
                &image(&[("A", "1")], Some("prod")),
                Builder::Buildkit,
                "Dockerfile",
            ),
            inputs(&image(&[("A", "1")], None), Builder::Legacy, "Dockerfile"),
            inputs(
                &image(&[("A", "1")], None),
                Builder::Buildkit,
                "other/Dockerfile",
            ),
            inputs(
                &image(&[("A", "1\nbuild-arg=B=2")], None),
                Builder::Buildkit,
                "Dockerfile",
            ),
            inputs(&with_secret, Builder::Buildkit, "Dockerfile"),
        ];
        for variant in &variants {
            assert_ne!(&base, variant);
        }
        // The source of a secret (and so its value) is not an input: only its id is.
        let mut other_source = image(&[("A", "1")], None);
        other_source
            .secrets
            .push(("token".into(), SecretSource::Ssm("/app/token".into())));
        assert_eq!(
            variants[5],
            inputs(&other_source, Builder::Buildkit, "Dockerfile")
        );
        assert_eq!(
            base,
            inputs(&image(&[("A", "1")], None), Builder::Buildkit, "Dockerfile")
        );
        // Where the bases come from, and an image without the inline cache's metadata, are inputs;
        // the other cache modes all make the same image.
        let mirrored = RunInputs {
            base_image_mirror: Some("mirror.example/docker-hub"),
            ..run(Builder::Buildkit)
        };
        let plain = image(&[("A", "1")], None);
        assert_ne!(base, digest_inputs(&plain, &mirrored, "Dockerfile", None));
        for (mode, same) in [
            (CacheMode::Min, true),
            (CacheMode::Inline, true),
            (CacheMode::Off, false),
        ] {
            let own = ImagePlan {
                cache: Some(mode),
                ..plain.clone()
            };
            assert_eq!(same, base == inputs(&own, Builder::Buildkit, "Dockerfile"));
            let run_wide = RunInputs {
                cache: mode,
                ..run(Builder::Buildkit)
            };
            assert_eq!(
                same,
                base == digest_inputs(&plain, &run_wide, "Dockerfile", None)
            );
        }
    }

    #[test]
    fn changed_inputs_are_those_whose_digest_differs_or_that_are_new() {
        let map = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        let previous = map(&[("app", "1"), ("composer.json", "2"), ("old", "3")]);
        let current = map(&[("app", "9"), ("composer.json", "2"), ("public", "4")]);
        assert_eq!(changed_inputs(&previous, &current), ["app", "public"]);
        assert!(changed_inputs(&current, &current).is_empty());
    }

    #[test]
    fn a_recipe_key_changes_with_every_setting_and_base() {
        let settings = recipe_settings(b"{}", "FROM node:20\n", b"*.log\n", Some("none"));
        let bases = BTreeMap::from([(
            "docker.io/library/node:20".to_owned(),
            "sha256:a".to_owned(),
        )]);
        let key = recipe_key(&settings, Some(&bases));
        assert_eq!(key, recipe_key(&settings, Some(&bases)));
        let moved = BTreeMap::from([(
            "docker.io/library/node:20".to_owned(),
            "sha256:b".to_owned(),
        )]);
        let others = [
            recipe_key(&settings, Some(&moved)),
            recipe_key(&settings, None),
            recipe_key(
                &recipe_settings(b"{}", "FROM node:22\n", b"*.log\n", Some("none")),
                Some(&bases),
            ),
            recipe_key(
                &recipe_settings(b"{}", "FROM node:20\n", b"", Some("none")),
                Some(&bases),
            ),
            recipe_key(
                &recipe_settings(b"{}", "FROM node:20\n", b"*.log\n", None),
                Some(&bases),
            ),
            recipe_key(
                &recipe_settings(b"{\"a\":1}", "FROM node:20\n", b"*.log\n", Some("none")),
                Some(&bases),
            ),
        ];
        for other in &others {
            assert_ne!(&key, other);
        }
        assert_eq!(moved_bases(&bases, &moved), ["docker.io/library/node:20"]);
        assert!(moved_bases(&bases, &bases).is_empty());
        assert_ne!(context_digest(&key, "a"), context_digest(&key, "b"));
        assert_eq!(record_tag(&key).len(), 24);
    }
}
