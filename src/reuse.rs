//! The registry's side of one image: what it holds, looked up before [`crate::decide`] is asked,
//! and the re-stamped image a reuse puts under the run's tags (one config blob and one manifest;
//! no layer moves).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use crate::aws::ecr::EcrRegistry;
use crate::context::SyncRequest;
use crate::decide::{self, RepositoryState, TagRules};
use crate::error::Result;
use crate::reference::RepositoryUri;
use crate::registry::manifest::{self, BASES_LABEL, INPUTS_LABEL, REVISION_LABEL};
use crate::registry::{Manifest, RegistryError};
use crate::retry;

/// One image's registry calls, each retried while its faults are transient.
pub(crate) struct Repository<'a> {
    pub access: &'a EcrRegistry,
    pub image: &'a str,
    pub repository: &'a str,
    pub retry_budget: Duration,
}

/// What an earlier image under one of the run's tags was built from.
pub(crate) struct Previous {
    /// Each input's short digest, by the analysis' paths.
    pub inputs: BTreeMap<String, String>,
    /// Each base image's digest.
    pub bases: BTreeMap<String, String>,
}

/// What BuildKit read of the context for one recipe: the manifest annotation of its record.
#[derive(serde::Serialize, serde::Deserialize)]
struct Record {
    recipe: String,
    requests: Vec<SyncRequest>,
}

/// The image a reuse puts under the run's tags, and the config blob it needs first, if new.
pub(crate) struct ReuseTarget {
    pub manifest: Manifest,
    pub new_config: Option<Bytes>,
}

impl Repository<'_> {
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let (image, budget) = (self.image, self.retry_budget);
        retry::with_backoff(image, what, budget, RegistryError::is_transient, call).await
    }

    /// What the decision needs: the image built from the same inputs (its context digest, where
    /// that is known before the build) re-stamped for `revision`, unless `rebuild`; the tags' digests; and which of those hold the same content.
    pub(crate) async fn look_up(
        &self,
        context_digest: Option<&str>,
        tags: &[String],
        rules: &TagRules,
        rebuild: bool,
        revision: Option<&str>,
    ) -> Result<(RepositoryState, Option<ReuseTarget>)> {
        let mut state = RepositoryState::default();
        let mut target = None;
        let mut built_config = None;
        let ctx_tag = context_digest.map(decide::context_tag);
        if !rebuild
            && let Some(ctx_tag) = ctx_tag
            && let Some(built) = self.manifest(&ctx_tag).await?
        {
            state.same_content.insert(built.digest.clone());
            built_config = self.config_of(&built).await?;
            let reuse = self.restamped(built, built_config.as_deref(), revision)?;
            state.unchanged = Some(reuse.manifest.digest.clone());
            target = Some(reuse);
        }
        self.look_up_tags(&mut state, tags, rules).await?;
        if let Some(config) = built_config {
            self.find_same_content(&mut state, &config, rules).await?;
        }
        Ok((state, target))
    }

    /// What the image the first of `tags` that exists names was built from: what the image
    /// this run replaces read, and its bases. `None` where there is none, or it cannot be read
    /// (the build goes on).
    pub(crate) async fn previous(&self, tags: &[String]) -> Option<Previous> {
        for tag in tags {
            let Ok(Some(manifest)) = self.manifest(tag).await else {
                continue;
            };
            let config = self.config_of(&manifest).await.ok()??;
            let read = |label| -> BTreeMap<String, String> {
                (manifest::label(&config, label))
                    .and_then(|json| serde_json::from_str(&json).ok())
                    .unwrap_or_default()
            };
            return Some(Previous {
                inputs: read(INPUTS_LABEL),
                bases: read(BASES_LABEL),
            });
        }
        None
    }

    /// What BuildKit read of the context for the recipe `recipe_key`, as recorded by the build
    /// that first met it: one manifest GET. `None` where nothing is recorded.
    pub(crate) async fn record(&self, recipe_key: &str) -> Result<Option<Vec<SyncRequest>>> {
        let Some(manifest) = self.manifest(&decide::record_tag(recipe_key)).await? else {
            return Ok(None);
        };
        let record = (manifest::record_in(&manifest))
            .and_then(|json| serde_json::from_str::<Record>(&json).ok())
            .filter(|record| record.recipe == recipe_key);
        if record.is_none() {
            tracing::warn!(
                image = self.image,
                "{}:{} is not a record of ecr-build's; building",
                self.repository,
                decide::record_tag(recipe_key)
            );
        }
        Ok(record.map(|record| record.requests))
    }

    /// Records what BuildKit read for `recipe_key`. A repository that refuses the tag (an
    /// immutable one that holds another record) costs a rebuild next time, not this run.
    pub(crate) async fn put_record(
        &self,
        recipe_key: &str,
        requests: &[SyncRequest],
    ) -> Result<()> {
        let mut requests = requests.to_vec();
        requests.sort();
        requests.dedup();
        let record = Record {
            recipe: recipe_key.to_owned(),
            requests,
        };
        let manifest =
            manifest::record_manifest(&serde_json::to_string(&record).expect("strings serialize"));
        let (client, repository) = (&self.access.client, self.repository);
        let tag = decide::record_tag(recipe_key);
        self.access.current().await?;
        let empty = crate::registry::sha256_digest(manifest::EMPTY_BLOB);
        let present = (self.call(&format!("checking {repository}@{empty}"), || {
            client.has_blob(repository, &empty)
        }))
        .await?;
        if !present {
            (self.call(&format!("pushing {empty} to {repository}"), || {
                client.push_blob(repository, bytes::Bytes::from_static(manifest::EMPTY_BLOB))
            }))
            .await?;
        }
        let put = (self.call(&format!("recording {repository}:{tag}"), || {
            client.put_manifest(repository, &tag, &manifest)
        }))
        .await;
        match put {
            Ok(_) => tracing::debug!(
                image = self.image,
                "recorded what the build read as {repository}:{tag}"
            ),
            Err(err) => tracing::warn!(
                image = self.image,
                "cannot record what the build read as {repository}:{tag} ({err}); the next run \
                 builds it again. On an immutable repository, add the exclusion filter rcp-*"
            ),
        }
        Ok(())
    }

    /// The config blob of an image manifest; `None` for an index.
    async fn config_of(&self, manifest: &Manifest) -> Result<Option<Bytes>> {
        let Some(config_digest) = manifest::config_digest(manifest).map_err(anyhow::Error::msg)?
        else {
            return Ok(None);
        };
        let repository = self.repository;
        Ok(Some(
            (self.call(&format!("fetching {repository}@{config_digest}"), || {
                self.access.client.get_blob(repository, &config_digest)
            }))
            .await?,
        ))
    }

    /// The manifest under `tag`, if there is one.
    /// The image under `tag`; BuildKit's cache is never taken for one.
    pub(crate) async fn manifest(&self, tag: &str) -> Result<Option<Manifest>> {
        let (client, repository) = (&self.access.client, self.repository);
        self.access.current().await?;
        let found = (self.call(&format!("looking up {repository}:{tag}"), || {
            client.get_manifest(repository, tag)
        }))
        .await?;
        Ok(found.filter(|manifest| {
            let cache = manifest::is_build_cache(manifest);
            if cache {
                tracing::warn!(
                    image = self.image,
                    "{repository}:{tag} holds BuildKit's cache, not an image"
                );
            }
            !cache
        }))
    }

    /// What the run's tags hold, for putting `target` (an index) under them.
    pub(crate) async fn tags_state(
        &self,
        target: &str,
        tags: &[String],
        rules: &TagRules,
    ) -> Result<RepositoryState> {
        let mut state = RepositoryState {
            unchanged: Some(target.to_owned()),
            ..RepositoryState::default()
        };
        self.look_up_tags(&mut state, tags, rules).await?;
        Ok(state)
    }

    /// The digests of the tags the decision needs (every tag when `state` has an image to reuse,
    /// else the immutable ones), into `state.existing`.
    async fn look_up_tags(
        &self,
        state: &mut RepositoryState,
        tags: &[String],
        rules: &TagRules,
    ) -> Result<()> {
        let (client, repository) = (&self.access.client, self.repository);
        self.access.current().await?;
        for tag in decide::tags_to_look_up(tags, rules, state.unchanged.is_some()) {
            let digest = (self.call(&format!("looking up {repository}:{tag}"), || {
                client.manifest_digest(repository, tag)
            }))
            .await?;
            if let Some(digest) = digest {
                state.existing.insert(tag.to_owned(), digest);
            }
        }
        Ok(())
    }

    /// `built` labelled for `revision`: a new config and manifest, or `built` itself when it already
    /// carries that revision (or is an index, or there is no commit).
    fn restamped(
        &self,
        built: Manifest,
        config: Option<&[u8]>,
        revision: Option<&str>,
    ) -> Result<ReuseTarget> {
        let unchanged = |manifest| ReuseTarget {
            manifest,
            new_config: None,
        };
        let (Some(revision), Some(config)) = (revision, config) else {
            return Ok(unchanged(built));
        };
        let repository = self.repository;
        let restamped = manifest::restamp(&built, config, REVISION_LABEL, revision)
            .map_err(|err| anyhow::anyhow!("{repository}@{}: {err}", built.digest))?;
        Ok(match restamped {
            Some(new) => ReuseTarget {
                manifest: new.manifest,
                new_config: Some(new.config),
            },
            None => unchanged(built),
        })
    }

    /// An immutable tag on another digest may still name this content, re-stamped for an earlier
    /// commit: its config is `built_config` but for the revision label. Only such tags are read.
    async fn find_same_content(
        &self,
        state: &mut RepositoryState,
        built_config: &[u8],
        rules: &TagRules,
    ) -> Result<()> {
        let others: Vec<(String, String)> = (state.existing.iter())
            .filter(|(tag, digest)| {
                rules.is_immutable(tag) && !state.same_content.contains(*digest)
            })
            .filter(|(_, digest)| state.unchanged.as_ref() != Some(*digest))
            .map(|(tag, digest)| (tag.clone(), digest.clone()))
            .collect();
        let (client, repository) = (&self.access.client, self.repository);
        for (tag, digest) in others {
            let manifest = (self.call(&format!("fetching {repository}@{digest}"), || {
                client.get_manifest(repository, &digest)
            }))
            .await?;
            let Some(manifest) = manifest else {
                continue;
            };
            let same = (self.config_of(&manifest).await?)
                .is_some_and(|config| manifest::same_but_revision(&config, built_config));
            if same {
                tracing::debug!(
                    image = self.image,
                    "{repository}:{tag} ({digest}) holds the same content"
                );
                state.same_content.insert(digest);
            }
        }
        Ok(())
    }

    /// An unchanged image (re-stamped for this commit if it named another) under `tags`, logged.
    pub(crate) async fn put_reused(
        &self,
        target: &ReuseTarget,
        tags: &[String],
        repository_uri: &RepositoryUri,
        ctx_tag: &str,
    ) -> Result<()> {
        let (name, digest) = (self.image, &target.manifest.digest);
        let stamp = match target.new_config {
            Some(_) => "re-stamped for this commit as",
            None => "",
        };
        tracing::info!(
            image = name,
            "unchanged: {} {stamp} {digest}; tagging it instead of building",
            repository_uri.tagged(ctx_tag)
        );
        self.put(target, tags).await?;
        for tag in tags {
            tracing::info!(
                image = name,
                "tagged {} ({digest})",
                repository_uri.tagged(tag)
            );
        }
        Ok(())
    }

    /// Puts the reused image under `tags`: its new config blob first (unless the repository has
    /// it), then the manifest.
    pub(crate) async fn put(&self, target: &ReuseTarget, tags: &[String]) -> Result<()> {
        let (client, repository) = (&self.access.client, self.repository);
        if tags.is_empty() {
            return Ok(());
        }
        self.access.current().await?;
        if let Some(config) = &target.new_config {
            let digest = crate::registry::sha256_digest(config);
            let present = (self.call(&format!("checking {repository}@{digest}"), || {
                client.has_blob(repository, &digest)
            }))
            .await?;
            if !present {
                (self.call(
                    &format!("pushing the config {digest} to {repository}"),
                    || client.push_blob(repository, config.clone()),
                ))
                .await
                .context("re-stamping the unchanged image")?;
            }
        }
        for tag in tags {
            (self.call(&format!("tagging {repository}:{tag}"), || {
                client.put_manifest(repository, tag, &target.manifest)
            }))
            .await?;
        }
        Ok(())
    }
}
