//! The registry's side of one image: what it holds, looked up before [`crate::decide`] is asked,
//! and the re-stamped image a reuse puts under the run's tags (one config blob and one manifest;
//! no layer moves).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;

use crate::aws::ecr::RegistryAccess;
use crate::decide::{self, RegistryState, TagRules};
use crate::error::Result;
use crate::image::{self, CONTEXT_DIGEST_LABEL, INPUTS_LABEL, REVISION_LABEL};
use crate::registry::{Manifest, RegistryError};
use crate::retry;

/// One image's registry calls, each retried while its faults are transient.
pub struct ImageRegistry<'a> {
    pub access: &'a RegistryAccess,
    pub image: &'a str,
    pub repository: &'a str,
    pub retry_budget: Duration,
}

/// The image a reuse puts under the run's tags, and the config blob it needs first, if new.
pub struct ReuseTarget {
    pub manifest: Manifest,
    pub new_config: Option<Bytes>,
}

impl ImageRegistry<'_> {
    async fn call<T, F, Fut>(&self, what: &str, call: F) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, RegistryError>>,
    {
        let (image, budget) = (self.image, self.retry_budget);
        retry::with_backoff(image, what, budget, RegistryError::is_transient, call).await
    }

    /// What the decision needs: the image built from the same inputs (`ctx_tag`) re-stamped for
    /// `revision`, unless `rebuild`; the tags' digests; and which of those hold the same content.
    pub async fn look_up(
        &self,
        context_digest: &str,
        tags: &[String],
        rules: &TagRules,
        rebuild: bool,
        revision: Option<&str>,
    ) -> Result<(RegistryState, Option<ReuseTarget>)> {
        let mut state = RegistryState::default();
        let mut target = None;
        let ctx_tag = decide::context_tag(context_digest);
        if !rebuild && let Some(built) = self.manifest(&ctx_tag).await? {
            state.same_content.insert(built.digest.clone());
            let reuse = self.restamped(built, revision).await?;
            state.unchanged = Some(reuse.manifest.digest.clone());
            target = Some(reuse);
        }
        self.look_up_tags(&mut state, tags, rules).await?;
        if state.unchanged.is_some() {
            self.find_same_content(&mut state, context_digest, rules)
                .await?;
        }
        Ok((state, target))
    }

    /// The inputs label of the image the first of `tags` that exists names: what the image this
    /// run replaces read. `None` where there is none, or it cannot be read (the build goes on).
    pub async fn previous_inputs(&self, tags: &[String]) -> Option<BTreeMap<String, String>> {
        for tag in tags {
            let Ok(Some(manifest)) = self.manifest(tag).await else {
                continue;
            };
            let config_digest = image::config_digest(&manifest).ok()??;
            let repository = self.repository;
            let config = (self.call(&format!("fetching {repository}@{config_digest}"), || {
                self.access.client.get_blob(repository, &config_digest)
            }))
            .await
            .ok()?;
            let label = image::label(&config, INPUTS_LABEL)?;
            return serde_json::from_str(&label).ok();
        }
        None
    }

    /// The manifest under `tag`, if there is one.
    pub async fn manifest(&self, tag: &str) -> Result<Option<Manifest>> {
        let (client, repository) = (&self.access.client, self.repository);
        self.access.current().await?;
        Ok((self.call(&format!("looking up {repository}:{tag}"), || {
            client.get_manifest(repository, tag)
        }))
        .await?)
    }

    /// What the run's tags hold, for putting `target` (an index) under them.
    pub async fn tags_state(
        &self,
        target: &str,
        tags: &[String],
        rules: &TagRules,
    ) -> Result<RegistryState> {
        let mut state = RegistryState {
            unchanged: Some(target.to_owned()),
            ..RegistryState::default()
        };
        self.look_up_tags(&mut state, tags, rules).await?;
        Ok(state)
    }

    /// The digests of the tags the decision needs (every tag when `state` has an image to reuse,
    /// else the immutable ones), into `state.existing`.
    async fn look_up_tags(
        &self,
        state: &mut RegistryState,
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
    async fn restamped(&self, built: Manifest, revision: Option<&str>) -> Result<ReuseTarget> {
        let unchanged = |manifest| ReuseTarget {
            manifest,
            new_config: None,
        };
        let Some(revision) = revision else {
            return Ok(unchanged(built));
        };
        let repository = self.repository;
        let Some(config_digest) = image::config_digest(&built).map_err(anyhow::Error::msg)? else {
            return Ok(unchanged(built));
        };
        let config = (self.call(&format!("fetching {repository}@{config_digest}"), || {
            self.access.client.get_blob(repository, &config_digest)
        }))
        .await?;
        let restamped = image::restamp(&built, &config, REVISION_LABEL, revision)
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
    /// commit: its config carries the same context digest label. Only such tags are read.
    async fn find_same_content(
        &self,
        state: &mut RegistryState,
        context_digest: &str,
        rules: &TagRules,
    ) -> Result<()> {
        let others: Vec<(String, String)> = (state.existing.iter())
            .filter(|(tag, digest)| {
                rules.is_immutable(tag) && !state.same_content.contains(*digest)
            })
            .filter(|(_, digest)| state.unchanged.as_ref() != Some(*digest))
            .map(|(tag, digest)| (tag.clone(), digest.clone()))
            .collect();
        for (tag, digest) in others {
            if self.context_digest_of(&digest).await?.as_deref() == Some(context_digest) {
                let repository = self.repository;
                tracing::debug!(
                    image = self.image,
                    "{repository}:{tag} ({digest}) holds the same content"
                );
                state.same_content.insert(digest);
            }
        }
        Ok(())
    }

    /// The context digest label of the image `digest` names, if it has one.
    async fn context_digest_of(&self, digest: &str) -> Result<Option<String>> {
        let (client, repository) = (&self.access.client, self.repository);
        let manifest = (self.call(&format!("fetching {repository}@{digest}"), || {
            client.get_manifest(repository, digest)
        }))
        .await?;
        let config_digest = (manifest.as_ref().map(image::config_digest))
            .transpose()
            .map_err(anyhow::Error::msg)?
            .flatten();
        let Some(config_digest) = config_digest else {
            return Ok(None);
        };
        let config = (self.call(&format!("fetching {repository}@{config_digest}"), || {
            client.get_blob(repository, &config_digest)
        }))
        .await?;
        Ok(image::label(&config, CONTEXT_DIGEST_LABEL))
    }

    /// An unchanged image (re-stamped for this commit if it named another) under `tags`, logged.
    pub async fn put_reused(
        &self,
        target: &ReuseTarget,
        tags: &[String],
        repository_uri: &str,
        ctx_tag: &str,
    ) -> Result<()> {
        let (name, digest) = (self.image, &target.manifest.digest);
        let stamp = match target.new_config {
            Some(_) => "re-stamped for this commit as",
            None => "",
        };
        tracing::info!(
            image = name,
            "unchanged: {repository_uri}:{ctx_tag} {stamp} {digest}; tagging it instead of building"
        );
        self.put(target, tags).await?;
        for tag in tags {
            tracing::info!(image = name, "tagged {repository_uri}:{tag} ({digest})");
        }
        Ok(())
    }

    /// Puts the reused image under `tags`: its new config blob first (unless the repository has
    /// it), then the manifest.
    pub async fn put(&self, target: &ReuseTarget, tags: &[String]) -> Result<()> {
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
