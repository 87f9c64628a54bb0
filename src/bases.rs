//! The images an image builds on (`FROM`, `COPY --from`, `RUN --mount=…,from=`, a `# syntax=`
//! frontend), resolved to the digest a build would use before anything is decided: a digest
//! written in the reference costs nothing; else the engine's own image, as BuildKit prefers it
//! (the registry digest it was pulled by, or its ID); else the registry's, by a HEAD of the
//! manifest (ECR's token for the run's registry, an anonymous token elsewhere; Docker Hub does
//! not count a HEAD against its pull limit). A base that moved changes the recipe, so the image
//! is built again.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use futures_util::StreamExt;

use bollard::auth::DockerCredentials;

use crate::aws::ecr::EcrRegistry;
use crate::decide::Recipe;
use crate::docker::Engine;
use crate::reference::split_registry;
use crate::registry::Registry;

/// Base images resolved at once.
const RESOLVE_FAN_OUT: usize = 8;
/// Where Docker Hub's registry API answers.
const DOCKER_HUB_API: &str = "registry-1.docker.io";

/// A reference as BuildKit names it: `node:20` is `docker.io/library/node:20`, `bitnami/redis`
/// is `docker.io/bitnami/redis:latest`.
pub(crate) fn normalize(reference: &str) -> String {
    let (host, rest) = match split_registry(reference) {
        // Docker's legacy name for Docker Hub.
        (Some("index.docker.io"), rest) => ("docker.io".to_owned(), rest.to_owned()),
        (Some(host), rest) => (host.to_owned(), rest.to_owned()),
        (None, rest) if rest.contains('/') => ("docker.io".to_owned(), rest.to_owned()),
        (None, rest) => ("docker.io".to_owned(), format!("library/{rest}")),
    };
    let name = rest.split('@').next().unwrap_or_default();
    let tagged = name
        .rsplit_once(':')
        .is_some_and(|(_, tag)| !tag.contains('/'));
    let rest = match (tagged, rest.split_once('@')) {
        (true, _) => rest,
        (false, Some((name, digest))) => format!("{name}@{digest}"),
        (false, None) => format!("{rest}:latest"),
    };
    format!("{host}/{rest}")
}

/// A normalized reference as people write it: `docker.io/library/node:20` is `node:20`.
pub(crate) fn familiar(normalized: &str) -> &str {
    (normalized.strip_prefix("docker.io/library/"))
        .or_else(|| normalized.strip_prefix("docker.io/"))
        .unwrap_or(normalized)
}

/// Where a Docker Hub reference is read from through `mirror` (an ECR pull-through cache rule's
/// prefix, say): `node:20` → `PREFIX/library/node:20`; `None` for another registry's.
pub(crate) fn mirrored(reference: &str, mirror: &str) -> Option<String> {
    (normalize(reference).strip_prefix("docker.io/")).map(|rest| format!("{mirror}/{rest}"))
}

/// The digest a reference pins (`…@sha256:…`), if it pins one.
fn pinned(reference: &str) -> Option<&str> {
    let (_, digest) = reference.rsplit_once('@')?;
    crate::reference::is_digest(digest).then_some(digest)
}

/// Where the registry API serves a normalized reference: host, repository, tag or digest.
fn locate(normalized: &str) -> Option<(&str, &str, &str)> {
    let (host, rest) = normalized.split_once('/')?;
    let host = if host == "docker.io" {
        DOCKER_HUB_API
    } else {
        host
    };
    let (repository, reference) = match rest.split_once('@') {
        Some((name, digest)) => (name.rsplit_once(':').map_or(name, |(n, _)| n), digest),
        None => rest.rsplit_once(':')?,
    };
    Some((host, repository, reference))
}

/// The run's way to the registries: the run's own (with ECR's token), others anonymously; `None`
/// in a dry run, which asks no registry.
pub(crate) struct Registries<'a> {
    pub run_registry: &'a str,
    pub access: Option<&'a EcrRegistry>,
    /// `base_image_mirror`: where Docker Hub's images are read from instead.
    pub mirror: Option<&'a str>,
}

impl Registries<'_> {
    /// Where the build reads `reference` from: the mirror for a Docker Hub image, where the run
    /// has one; else the reference itself.
    pub(crate) fn source_of(&self, reference: &str) -> String {
        (self.mirror.and_then(|mirror| mirrored(reference, mirror)))
            .unwrap_or_else(|| reference.to_owned())
    }

    /// The run's ECR credentials where `host` is its registry; anonymous elsewhere.
    async fn credentials_for(&self, host: &str) -> Result<Option<DockerCredentials>, String> {
        match self.access {
            Some(access) if host == self.run_registry => {
                let login = access.current().await.map_err(|err| err.to_string())?;
                Ok(Some(login.docker_credentials(host)))
            }
            _ => Ok(None),
        }
    }
}

/// Every base of `recipes`, each resolved once: normalized reference → digest, or why not.
pub(crate) async fn resolve_all<'r>(
    engine: &Engine,
    registries: &Registries<'_>,
    recipes: impl IntoIterator<Item = &'r Recipe>,
) -> HashMap<String, Result<String, String>> {
    let references: BTreeSet<&str> = (recipes.into_iter())
        .filter_map(|recipe| recipe.bases.as_ref().ok())
        .flatten()
        .map(String::as_str)
        .collect();
    let clients: std::sync::Mutex<HashMap<String, Registry>> = Default::default();
    futures_util::stream::iter(references)
        .map(|reference| {
            let clients = &clients;
            async move {
                let resolved = resolve_one(engine, registries, clients, reference).await;
                (normalize(reference), resolved)
            }
        })
        .buffer_unordered(RESOLVE_FAN_OUT)
        .collect()
        .await
}

async fn resolve_one(
    engine: &Engine,
    registries: &Registries<'_>,
    clients: &std::sync::Mutex<HashMap<String, Registry>>,
    reference: &str,
) -> Result<String, String> {
    if let Some(digest) = pinned(reference) {
        return Ok(digest.to_owned());
    }
    let reference = &registries.source_of(reference);
    match engine.local_image(reference).await {
        Ok(Some(identity)) => return Ok(identity),
        Ok(None) => {}
        Err(err) => return Err(format!("the engine cannot say what it has: {err}")),
    }
    let Some(access) = registries.access else {
        return Err("the engine does not have it, and a dry run asks no registry".to_owned());
    };
    let normalized = normalize(reference);
    let (host, repository, tag) =
        locate(&normalized).ok_or_else(|| format!("{reference} is not a reference"))?;
    let client = match host == registries.run_registry {
        true => {
            access.current().await.map_err(|err| err.to_string())?;
            access.client.clone()
        }
        false => {
            let mut clients = clients.lock().unwrap_or_else(|e| e.into_inner());
            match clients.get(host) {
                Some(client) => client.clone(),
                None => {
                    let client = Registry::new(host).map_err(|err| err.to_string())?;
                    clients.insert(host.to_owned(), client.clone());
                    client
                }
            }
        }
    };
    match client.manifest_digest(repository, tag).await {
        Ok(Some(digest)) => Ok(digest),
        Ok(None) => Err(format!("{host} has no {repository}:{tag}")),
        Err(err) => Err(err.to_string()),
    }
}

/// Puts `reference`, where the run reads it from its mirror, under its Docker Hub name in the
/// engine, as the mirror holds it for `platform` (`None`: the engine's own), so that BuildKit,
/// which prefers the engine's image to a pull, reads the mirror's. Nothing for another registry's
/// image; a warning for one pinned by digest, which a tag cannot stand in for.
pub(crate) async fn mirror_into_engine(
    engine: &Engine,
    registries: &Registries<'_>,
    reference: &str,
    platform: Option<&str>,
) -> Result<(), String> {
    let source = registries.source_of(reference);
    if source == reference {
        return Ok(());
    }
    if pinned(reference).is_some() {
        tracing::warn!(
            "the base image {reference} is pinned by digest: BuildKit looks a digest up by its \
             own name, so it is read from Docker Hub, not from {source}"
        );
        return Ok(());
    }
    let failed = |err: String| {
        format!(
            "the base image {reference} from the mirror, {source}: {err}; check base_image_mirror \
             and the pull-through cache rule behind it"
        )
    };
    let host = split_registry(&source).0.unwrap_or_default();
    let normalized = normalize(reference);
    let (repository, tag) = (normalized.rsplit_once(':')).ok_or_else(|| failed("no tag".into()))?;
    let credentials = registries.credentials_for(host).await.map_err(failed)?;
    let pulled = engine.pull(&source, platform, credentials).await;
    pulled.map_err(|err| failed(err.to_string()))?;
    let id = (engine
        .image_id(&source)
        .await
        .map_err(|err| failed(err.to_string()))?)
    .ok_or_else(|| failed("the engine pulled it, yet does not have it".into()))?;
    (engine.tag(&id, repository, tag).await).map_err(|err| failed(err.to_string()))?;
    tracing::info!("base image {reference}: {source} ({id})");
    Ok(())
}

/// One recipe's bases, from [`resolve_all`]'s answers: `Err` names the first that did not
/// resolve, and why.
pub(crate) fn bases_of(
    recipe: &Recipe,
    resolved: &HashMap<String, Result<String, String>>,
) -> Result<BTreeMap<String, String>, String> {
    let references = recipe.bases.as_ref().map_err(Clone::clone)?;
    let mut bases = BTreeMap::new();
    for reference in references {
        let normalized = normalize(reference);
        match resolved.get(&normalized) {
            Some(Ok(digest)) => {
                bases.insert(normalized, digest.clone());
            }
            Some(Err(reason)) => return Err(format!("the base image {reference}: {reason}")),
            None => return Err(format!("the base image {reference} was not looked up")),
        }
    }
    Ok(bases)
}

/// The images BuildKit loaded that `bases` does not name: where the Dockerfile analysis missed
/// a base, the recipe does not cover it, and the image must not be found by it.
pub(crate) fn unnamed_loaded<'a>(
    loaded: &'a [String],
    bases: &BTreeMap<String, String>,
) -> Vec<&'a str> {
    (loaded.iter())
        .filter(|image| !bases.contains_key(&normalize(image)))
        .map(String::as_str)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_hub_images_are_read_from_the_mirror_and_others_from_their_registry() {
        let mirror = "1.dkr.ecr.eu-west-1.amazonaws.com/docker-hub";
        let cases = [
            ("node:20", Some("library/node:20")),
            ("node", Some("library/node:latest")),
            ("bitnami/redis:7", Some("bitnami/redis:7")),
            ("docker.io/library/node:20", Some("library/node:20")),
            ("index.docker.io/library/node:20", Some("library/node:20")),
            ("node@sha256:ab", Some("library/node@sha256:ab")),
            ("public.ecr.aws/docker/library/node:20", None),
            ("127.0.0.1:5000/base:1", None),
            ("localhost/base", None),
        ];
        for (reference, expected) in cases {
            let expected = expected.map(|rest| format!("{mirror}/{rest}"));
            assert_eq!(mirrored(reference, mirror), expected, "{reference}");
            let registries = Registries {
                run_registry: "1.dkr.ecr.eu-west-1.amazonaws.com",
                access: None,
                mirror: Some(mirror),
            };
            let source = registries.source_of(reference);
            assert_eq!(source, expected.unwrap_or_else(|| reference.to_owned()));
            let unmirrored = Registries {
                mirror: None,
                ..registries
            };
            assert_eq!(unmirrored.source_of(reference), reference);
        }
    }

    #[test]
    fn references_are_named_as_buildkit_names_them() {
        let cases = [
            ("node:20", "docker.io/library/node:20"),
            ("node", "docker.io/library/node:latest"),
            ("bitnami/redis:7", "docker.io/bitnami/redis:7"),
            ("docker.io/library/node:20", "docker.io/library/node:20"),
            ("127.0.0.1:5000/base", "127.0.0.1:5000/base:latest"),
            ("localhost/base:1", "localhost/base:1"),
            (
                "public.ecr.aws/docker/library/node:20",
                "public.ecr.aws/docker/library/node:20",
            ),
            ("node@sha256:ab", "docker.io/library/node@sha256:ab"),
            ("node:20@sha256:ab", "docker.io/library/node:20@sha256:ab"),
        ];
        for (written, named) in cases {
            assert_eq!(normalize(written), named, "{written}");
            assert_eq!(normalize(named), named, "{named} is stable");
            assert_eq!(normalize(familiar(named)), named, "{named} reads back");
        }
    }

    #[test]
    fn the_registry_api_is_asked_where_the_reference_lives() {
        assert_eq!(
            locate("docker.io/library/node:20"),
            Some(("registry-1.docker.io", "library/node", "20"))
        );
        assert_eq!(
            locate("127.0.0.1:5000/app/base:1"),
            Some(("127.0.0.1:5000", "app/base", "1"))
        );
        let digest = format!("sha256:{}", "a".repeat(64));
        let pinned_reference = format!("node:20@{digest}");
        assert_eq!(pinned(&pinned_reference), Some(digest.as_str()));
        assert_eq!(pinned("node:20"), None);
    }

    #[test]
    fn a_recipe_resolves_only_where_every_base_did() {
        let recipe = |bases: &[&str]| Recipe {
            settings: Vec::new(),
            bases: Ok(bases.iter().map(|b| (*b).to_owned()).collect()),
        };
        let resolved = HashMap::from([
            (
                "docker.io/library/node:20".to_owned(),
                Ok("sha256:n".to_owned()),
            ),
            (
                "docker.io/library/gone:1".to_owned(),
                Err("not found".to_owned()),
            ),
        ]);
        let bases = bases_of(&recipe(&["node:20"]), &resolved).unwrap();
        assert_eq!(bases["docker.io/library/node:20"], "sha256:n");
        let err = bases_of(&recipe(&["node:20", "gone:1"]), &resolved).unwrap_err();
        assert_eq!(err, "the base image gone:1: not found");
        let unknown = Recipe {
            settings: Vec::new(),
            bases: Err("a FROM uses $BUILDPLATFORM".to_owned()),
        };
        assert!(bases_of(&unknown, &resolved).is_err());
        let loaded = vec![
            "docker.io/library/node:20".to_owned(),
            "docker.io/library/other:1".to_owned(),
        ];
        assert_eq!(
            unnamed_loaded(&loaded, &bases),
            ["docker.io/library/other:1"]
        );
    }
}
