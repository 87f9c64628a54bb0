//! Image manifests and configs, read and written as JSON: re-stamping an unchanged image for a new
//! commit. The layers stay the same blobs; only the config (its revision label) and the manifest
//! that names it are new. Pure: the registry calls are the pipeline's.

use bytes::Bytes;
use serde_json::Value;

use crate::registry::{DOCKER_MANIFEST_LIST, Manifest, OCI_INDEX, sha256_digest};

/// The OCI label (and, on an index, annotation) that names the commit an image was built from.
pub(crate) const REVISION_LABEL: &str = "org.opencontainers.image.revision";
/// The label that names an image's recipe: everything but its context files that decided it
/// (see `decide::recipe`).
pub(crate) const RECIPE_LABEL: &str = "dev.ecr-build.recipe";
/// The artifact type of a record: what BuildKit read from the context for one recipe.
pub(crate) const RECORD_ARTIFACT_TYPE: &str = "application/vnd.ecr-build.record.v1+json";
/// The annotation of a record's manifest that holds it, so that one GET reads it.
pub(crate) const RECORD_ANNOTATION: &str = "dev.ecr-build.record";
/// OCI's empty descriptor content (`{}`): a record's config and only layer.
pub(crate) const EMPTY_BLOB: &[u8] = b"{}";
const EMPTY_MEDIA_TYPE: &str = "application/vnd.oci.empty.v1+json";
/// The digests of the base images an image was built on (JSON), for a later build to say which
/// moved.
pub(crate) const BASES_LABEL: &str = "dev.ecr-build.bases";
/// What a built image read from its context: each input's short digest (JSON), for a later build
/// to say which input changed.
pub(crate) const INPUTS_LABEL: &str = "dev.ecr-build.inputs";

/// An image labelled for another commit: the config blob to push and the manifest to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Restamped {
    pub config: Bytes,
    pub manifest: Manifest,
}

/// The digest of an image manifest's config blob; `None` for an index, which has none.
pub(crate) fn config_digest(manifest: &Manifest) -> Result<Option<String>, String> {
    if is_index(manifest) {
        return Ok(None);
    }
    let value: Value = parse(&manifest.bytes, "manifest")?;
    (value.get("config"))
        .and_then(|config| config.get("digest"))
        .and_then(Value::as_str)
        .map(|digest| Some(digest.to_owned()))
        .ok_or_else(|| "the manifest names no config blob".to_owned())
}

/// The config media type of BuildKit's registry cache.
pub(crate) const BUILD_CACHE_CONFIG: &str = "application/vnd.buildkit.cacheconfig.v0";

/// Whether `manifest` is BuildKit's cache (its config is the cache's), not an image.
pub(crate) fn is_build_cache(manifest: &Manifest) -> bool {
    (parse(&manifest.bytes, "manifest").ok())
        .and_then(|value| value["config"]["mediaType"].as_str().map(str::to_owned))
        .is_some_and(|media_type| media_type == BUILD_CACHE_CONFIG)
}

/// `manifest`'s image with `label` set to `revision` in its config (`config` is that blob).
/// `None` when it already carries that revision, so that a re-run of a commit, or the commit the
/// image was built for, keeps its digest. Deterministic: the same inputs give the same bytes.
pub(crate) fn restamp(
    manifest: &Manifest,
    config: &[u8],
    label: &str,
    revision: &str,
) -> Result<Option<Restamped>, String> {
    let mut image: Value = parse(config, "image config")?;
    let labels = object_at(&mut image, &["config", "Labels"])
        .ok_or("the image config's config.Labels is not an object")?;
    if labels.get(label).and_then(Value::as_str) == Some(revision) {
        return Ok(None);
    }
    labels.insert(label.to_owned(), Value::String(revision.to_owned()));
    let config = Bytes::from(serde_json::to_vec(&image).map_err(|e| e.to_string())?);

    let mut value: Value = parse(&manifest.bytes, "manifest")?;
    let descriptor = (value.get_mut("config"))
        .and_then(Value::as_object_mut)
        .ok_or("the manifest names no config blob")?;
    descriptor.insert("digest".into(), Value::String(sha256_digest(&config)));
    descriptor.insert("size".into(), Value::from(config.len()));
    let bytes = Bytes::from(serde_json::to_vec(&value).map_err(|e| e.to_string())?);
    Ok(Some(Restamped {
        config,
        manifest: Manifest {
            digest: sha256_digest(&bytes),
            bytes,
            media_type: manifest.media_type.clone(),
        },
    }))
}

/// Whether two image configs describe the same image but for the commit they are stamped with:
/// what a re-stamp changes, and all it changes.
pub(crate) fn same_but_revision(config: &[u8], other: &[u8]) -> bool {
    let without_revision = |bytes: &[u8]| -> Option<Value> {
        let mut image: Value = serde_json::from_slice(bytes).ok()?;
        if let Some(labels) = object_at(&mut image, &["config", "Labels"]) {
            labels.remove(REVISION_LABEL);
        }
        Some(image)
    };
    match (without_revision(config), without_revision(other)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A record's manifest: an OCI artifact whose annotation holds `record` (JSON), with OCI's empty
/// blob as config and layer (push [`EMPTY_BLOB`] first). The same record gives the same bytes.
pub(crate) fn record_manifest(record: &str) -> Manifest {
    let empty = serde_json::json!({
        "mediaType": EMPTY_MEDIA_TYPE,
        "digest": sha256_digest(EMPTY_BLOB),
        "size": EMPTY_BLOB.len(),
    });
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": crate::registry::OCI_MANIFEST,
        "artifactType": RECORD_ARTIFACT_TYPE,
        "config": empty,
        "layers": [empty],
        "annotations": { RECORD_ANNOTATION: record },
    });
    let bytes = Bytes::from(serde_json::to_vec(&manifest).expect("JSON values serialize"));
    Manifest {
        digest: sha256_digest(&bytes),
        bytes,
        media_type: crate::registry::OCI_MANIFEST.to_owned(),
    }
}

/// The record a manifest holds; `None` where it is no record of ours.
pub(crate) fn record_in(manifest: &Manifest) -> Option<String> {
    let value: Value = serde_json::from_slice(&manifest.bytes).ok()?;
    if value.get("artifactType")?.as_str()? != RECORD_ARTIFACT_TYPE {
        return None;
    }
    Some(
        value
            .get("annotations")?
            .get(RECORD_ANNOTATION)?
            .as_str()?
            .to_owned(),
    )
}

/// A label of an image config, if it has it.
pub(crate) fn label(config: &[u8], name: &str) -> Option<String> {
    let image: Value = serde_json::from_slice(config).ok()?;
    image
        .get("config")?
        .get("Labels")?
        .get(name)?
        .as_str()
        .map(str::to_owned)
}

/// The object at `path`, made where it is missing or null; `None` where something else is in the way.
fn object_at<'a>(
    value: &'a mut Value,
    path: &[&str],
) -> Option<&'a mut serde_json::Map<String, Value>> {
    let mut here = value;
    for key in path {
        let object = here.as_object_mut()?;
        let next = object.entry(*key).or_insert(Value::Null);
        if next.is_null() {
            *next = Value::Object(serde_json::Map::new());
        }
        here = next;
    }
    here.as_object_mut()
}

/// An OCI image index of `children` (platform, manifest), with the run's commit as an annotation:
/// a new commit is a new index, even where no platform's image changed.
pub(crate) fn index(
    children: &[(String, Manifest)],
    revision: Option<&str>,
) -> Result<Manifest, String> {
    let manifests: Vec<Value> = (children.iter())
        .map(|(platform, manifest)| {
            let (os, architecture, variant) = crate::reference::platform_parts(platform);
            let mut platform = serde_json::json!({"architecture": architecture, "os": os});
            if let Some(variant) = variant {
                platform["variant"] = variant.into();
            }
            serde_json::json!({
                "mediaType": manifest.media_type,
                "digest": manifest.digest,
                "size": manifest.bytes.len(),
                "platform": platform,
            })
        })
        .collect();
    let mut index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
    });
    if let Some(revision) = revision {
        index["annotations"] = serde_json::json!({ REVISION_LABEL: revision });
    }
    let bytes = Bytes::from(serde_json::to_vec(&index).map_err(|e| e.to_string())?);
    Ok(Manifest {
        digest: sha256_digest(&bytes),
        bytes,
        media_type: OCI_INDEX.to_owned(),
    })
}

pub(crate) fn is_index(manifest: &Manifest) -> bool {
    let essence = manifest
        .media_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim();
    essence == OCI_INDEX || essence == DOCKER_MANIFEST_LIST
}

fn parse(bytes: &[u8], what: &str) -> Result<Value, String> {
    serde_json::from_slice(bytes).map_err(|err| format!("the {what} is not JSON: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::DOCKER_MANIFEST_V2;

    const LABEL: &str = "org.opencontainers.image.revision";

    fn config(revision: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "architecture": "amd64",
            "config": {"Labels": {LABEL: revision, "dev.ecr-build.context-digest": "abc"}, "Cmd": ["sh"]},
            "rootfs": {"type": "layers", "diff_ids": ["sha256:11"]},
            "moby.buildkit.cache.v0": "cache-metadata"
        }))
        .unwrap()
    }

    fn manifest(config: &[u8]) -> Manifest {
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": DOCKER_MANIFEST_V2,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "size": config.len(), "digest": sha256_digest(config)},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
                        "size": 10, "digest": format!("sha256:{}", "2".repeat(64))}]
        }))
        .unwrap();
        Manifest {
            digest: sha256_digest(&bytes),
            bytes: bytes.into(),
            media_type: DOCKER_MANIFEST_V2.into(),
        }
    }

    #[test]
    fn a_new_commit_gets_a_new_config_and_manifest_with_the_same_layers() {
        let old = config("aaaa");
        let built = manifest(&old);
        let new = restamp(&built, &old, LABEL, "bbbb").unwrap().unwrap();
        let image: Value = serde_json::from_slice(&new.config).unwrap();
        assert_eq!(image["config"]["Labels"][LABEL], "bbbb");
        assert_eq!(
            image["config"]["Labels"]["dev.ecr-build.context-digest"],
            "abc"
        );
        assert_eq!(image["moby.buildkit.cache.v0"], "cache-metadata");
        let before: Value = serde_json::from_slice(&built.bytes).unwrap();
        let after: Value = serde_json::from_slice(&new.manifest.bytes).unwrap();
        assert_eq!(after["layers"], before["layers"]);
        assert_eq!(after["config"]["digest"], sha256_digest(&new.config));
        assert_eq!(after["config"]["size"], new.config.len());
        assert_eq!(new.manifest.digest, sha256_digest(&new.manifest.bytes));
        assert_eq!(
            config_digest(&new.manifest).unwrap(),
            Some(sha256_digest(&new.config))
        );
        // The same commit again gives the same bytes, so the same digest.
        assert_eq!(restamp(&built, &old, LABEL, "bbbb").unwrap().unwrap(), new);
    }

    #[test]
    fn buildkit_s_cache_is_told_from_an_image_by_its_config() {
        let image = manifest(&config("aaaa"));
        assert!(!is_build_cache(&image));
        let bytes = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": crate::registry::OCI_MANIFEST,
            "config": {"mediaType": BUILD_CACHE_CONFIG, "digest": "sha256:aa", "size": 1},
            "layers": [],
        }))
        .unwrap();
        let cache = Manifest {
            digest: sha256_digest(&bytes),
            bytes: bytes.into(),
            media_type: crate::registry::OCI_MANIFEST.into(),
        };
        assert!(is_build_cache(&cache));
        assert!(!is_build_cache(&record_manifest("{}")));
    }

    #[test]
    fn the_image_s_own_commit_keeps_the_image_as_it_is() {
        let old = config("aaaa");
        assert_eq!(restamp(&manifest(&old), &old, LABEL, "aaaa").unwrap(), None);
    }

    #[test]
    fn a_config_without_labels_gets_one_and_indexes_have_no_config() {
        let bare = serde_json::to_vec(&serde_json::json!({"config": {}})).unwrap();
        let new = restamp(&manifest(&bare), &bare, LABEL, "cccc")
            .unwrap()
            .unwrap();
        let image: Value = serde_json::from_slice(&new.config).unwrap();
        assert_eq!(image["config"]["Labels"][LABEL], "cccc");
        let index = Manifest {
            bytes: Bytes::from_static(b"{\"manifests\":[]}"),
            media_type: OCI_INDEX.into(),
            digest: String::new(),
        };
        assert_eq!(config_digest(&index).unwrap(), None);
        assert!(restamp(&manifest(b"[]"), b"[]", LABEL, "x").is_err());
    }

    #[test]
    fn an_index_lists_each_platform_and_names_the_commit() {
        let amd64 = manifest(&config("aaaa"));
        let arm64 = manifest(&config("bbbb"));
        let children = [
            ("linux/amd64".to_owned(), amd64.clone()),
            ("linux/arm/v7".to_owned(), arm64.clone()),
        ];
        let index = index(&children, Some("cccc")).unwrap();
        assert_eq!(index.media_type, OCI_INDEX);
        assert!(is_index(&index));
        let value: Value = serde_json::from_slice(&index.bytes).unwrap();
        assert_eq!(value["manifests"][0]["digest"], amd64.digest.as_str());
        assert_eq!(value["manifests"][0]["size"], amd64.bytes.len());
        assert_eq!(
            value["manifests"][0]["platform"],
            serde_json::json!({"architecture": "amd64", "os": "linux"})
        );
        assert_eq!(
            value["manifests"][1]["platform"],
            serde_json::json!({"architecture": "arm", "os": "linux", "variant": "v7"})
        );
        assert_eq!(value["annotations"][LABEL], "cccc");
        // Another commit, another index; the same commit, the same one.
        assert_ne!(
            super::index(&children, Some("dddd")).unwrap().digest,
            index.digest
        );
        assert_eq!(super::index(&children, Some("cccc")).unwrap(), index);
    }

    #[test]
    fn same_content_is_the_same_config_but_for_the_revision() {
        assert!(same_but_revision(&config("a"), &config("b")));
        let mut other: serde_json::Value = serde_json::from_slice(&config("a")).unwrap();
        other["config"]["Cmd"] = serde_json::json!(["true"]);
        assert!(!same_but_revision(
            &config("a"),
            &serde_json::to_vec(&other).unwrap()
        ));
        assert!(!same_but_revision(&config("a"), b"not json"));
    }

    #[test]
    fn a_record_is_one_manifest_that_holds_it() {
        let manifest = record_manifest(r#"{"requests":[]}"#);
        assert_eq!(manifest, record_manifest(r#"{"requests":[]}"#));
        assert_eq!(record_in(&manifest).as_deref(), Some(r#"{"requests":[]}"#));
        assert_eq!(record_in(&self::manifest(&config("a"))), None);
        let value: serde_json::Value = serde_json::from_slice(&manifest.bytes).unwrap();
        assert_eq!(value["config"]["digest"], sha256_digest(EMPTY_BLOB));
        assert_eq!(value["layers"][0]["size"], 2);
    }
}
