//! The deploy stage's input files, in the formats AWS fixes, written all-or-nothing.

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use indexmap::IndexMap;
use serde::Serialize;

use crate::config::{ArtifactsPlan, IMAGE_DETAIL_FILE, ImageUriKind};
use crate::report::ImageOutcome;

/// CodePipeline rejects an imagedefinitions.json over 100 KB.
const IMAGE_DEFINITIONS_LIMIT: usize = 100 * 1024;

/// One pushed (or, in a dry run, would-be pushed) image: its container name, the URI the deploy
/// artifacts name (the primary tag's, or the digest's), and its digest (in a dry run, the local
/// image ID).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageUri {
    pub name: String,
    pub uri: String,
    pub digest: String,
}

#[derive(Serialize)]
struct ImageDefinition<'a> {
    name: &'a str,
    #[serde(rename = "imageUri")]
    image_uri: &'a str,
}

#[derive(Serialize)]
struct ImageDetail<'a> {
    #[serde(rename = "ImageURI")]
    image_uri: &'a str,
}

#[derive(Serialize)]
struct BuildJson<'a> {
    tag: &'a str,
    images: IndexMap<&'a str, &'a str>,
    digests: IndexMap<&'a str, &'a str>,
}

/// A file to write: its name inside the artifacts directory and its bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Artifact {
    pub file_name: String,
    pub contents: Vec<u8>,
}

/// The deploy stage's files, only after every image of the run is in place.
pub(crate) fn write_for(
    plan: &ArtifactsPlan,
    several_images: bool,
    primary_tag: &str,
    images: &[ImageOutcome],
) -> Result<()> {
    if plan.image_uri == ImageUriKind::Digest && images.iter().any(|o| !o.in_registry) {
        tracing::warn!(
            "dry run: no registry digest, so the artifacts name the primary tag (image_uri = \"digest\" needs a push)"
        );
    }
    let uris = image_uris(plan.image_uri, primary_tag, images);
    let rendered = render(plan, primary_tag, &uris)?;
    for path in write_all(&plan.dir, &rendered)? {
        tracing::info!("wrote {}", path.display());
    }
    if plan.image_detail.is_none() && several_images {
        tracing::info!(
            "imageDetail.json not written: set [artifacts] image_detail to the image CodeDeploy deploys"
        );
    }
    Ok(())
}

/// The URI each image is deployed by: its primary tag's, or with `digest` its registry digest's
/// (a dry run has none, and keeps the tag).
pub(crate) fn image_uris(
    kind: ImageUriKind,
    primary_tag: &str,
    images: &[ImageOutcome],
) -> Vec<ImageUri> {
    images
        .iter()
        .map(|o| ImageUri {
            name: o.name.clone(),
            uri: if kind == ImageUriKind::Digest && o.in_registry {
                o.repository_uri.at(&o.digest)
            } else {
                o.repository_uri.tagged(primary_tag)
            },
            digest: o.digest.clone(),
        })
        .collect()
}

/// Renders every enabled artifact. `images` are in config order.
pub(crate) fn render(
    plan: &ArtifactsPlan,
    primary_tag: &str,
    images: &[ImageUri],
) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    if let Some(file_name) = &plan.imagedefinitions {
        let definitions: Vec<_> = images
            .iter()
            .map(|i| ImageDefinition {
                name: &i.name,
                image_uri: &i.uri,
            })
            .collect();
        let contents = to_json_line(&definitions);
        anyhow::ensure!(
            contents.len() <= IMAGE_DEFINITIONS_LIMIT,
            "{file_name} would be {} bytes; CodePipeline accepts at most {IMAGE_DEFINITIONS_LIMIT}",
            contents.len()
        );
        artifacts.push(Artifact {
            file_name: file_name.clone(),
            contents,
        });
    }
    if let Some(name) = &plan.image_detail {
        let image = images.iter().find(|i| &i.name == name).with_context(|| {
            format!("{IMAGE_DETAIL_FILE}: image {name} was not built in this run")
        })?;
        artifacts.push(Artifact {
            file_name: IMAGE_DETAIL_FILE.into(),
            contents: to_json_line(&ImageDetail {
                image_uri: &image.uri,
            }),
        });
    }
    if let Some(file_name) = &plan.build_json {
        let build = BuildJson {
            tag: primary_tag,
            images: images
                .iter()
                .map(|i| (i.name.as_str(), i.uri.as_str()))
                .collect(),
            digests: images
                .iter()
                .map(|i| (i.name.as_str(), i.digest.as_str()))
                .collect(),
        };
        artifacts.push(Artifact {
            file_name: file_name.clone(),
            contents: to_json_line(&build),
        });
    }
    Ok(artifacts)
}

fn to_json_line(value: &impl Serialize) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(value).expect("artifact types serialize");
    bytes.push(b'\n');
    bytes
}

/// Writes every artifact to a temporary file beside its target, syncs them, and only then renames them
/// into place, so a failure before the renames leaves the previous run's files as they were and a
/// crash leaves each file either old and whole or new and whole.
pub(crate) fn write_all(dir: &Path, artifacts: &[Artifact]) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create artifacts directory {}", dir.display()))?;
    let mut staged = Vec::with_capacity(artifacts.len());
    for artifact in artifacts {
        let target = dir.join(&artifact.file_name);
        let mut temp = tempfile::Builder::new()
            .prefix(&format!(".{}.", artifact.file_name))
            .suffix(".tmp")
            .tempfile_in(dir)
            .with_context(|| format!("cannot create a temporary file in {}", dir.display()))?;
        temp.write_all(&artifact.contents)
            .and_then(|()| temp.as_file().sync_all())
            .with_context(|| format!("cannot write {}", temp.path().display()))?;
        set_readable(temp.as_file())
            .with_context(|| format!("cannot set permissions on {}", temp.path().display()))?;
        staged.push((temp, target));
    }
    let mut written = Vec::with_capacity(staged.len());
    for (temp, target) in staged {
        temp.persist(&target)
            .with_context(|| format!("cannot move the new {} into place", target.display()))?;
        written.push(target);
    }
    sync_dir(dir).with_context(|| format!("cannot sync {}", dir.display()))?;
    Ok(written)
}

/// Temporary files are created 0600; an artifact is an ordinary 0644 file.
fn set_readable(file: &std::fs::File) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(0o644))
}

/// The renames are durable only once the directory itself is synced.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::RepositoryUri;

    fn plan(dir: &Path) -> ArtifactsPlan {
        ArtifactsPlan {
            dir: dir.to_path_buf(),
            image_uri: ImageUriKind::Tag,
            imagedefinitions: Some("imagedefinitions.json".into()),
            image_detail: Some("web".into()),
            build_json: Some("build.json".into()),
        }
    }

    fn images() -> Vec<ImageUri> {
        vec![
            ImageUri {
                name: "web".into(),
                uri: "1.dkr.ecr.eu-west-1.amazonaws.com/app/web:abc1234".into(),
                digest: "sha256:aa".into(),
            },
            ImageUri {
                name: "worker".into(),
                uri: "1.dkr.ecr.eu-west-1.amazonaws.com/app/worker:abc1234".into(),
                digest: "sha256:bb".into(),
            },
        ]
    }

    fn contents(artifacts: &[Artifact], name: &str) -> String {
        let artifact = artifacts.iter().find(|a| a.file_name == name).unwrap();
        String::from_utf8(artifact.contents.clone()).unwrap()
    }

    #[test]
    fn formats_are_exactly_what_aws_reads() {
        let artifacts = render(&plan(Path::new("/x")), "abc1234", &images()).unwrap();
        assert_eq!(
            contents(&artifacts, "imagedefinitions.json"),
            "[{\"name\":\"web\",\"imageUri\":\"1.dkr.ecr.eu-west-1.amazonaws.com/app/web:abc1234\"},\
             {\"name\":\"worker\",\"imageUri\":\"1.dkr.ecr.eu-west-1.amazonaws.com/app/worker:abc1234\"}]\n"
        );
        assert_eq!(
            contents(&artifacts, "imageDetail.json"),
            "{\"ImageURI\":\"1.dkr.ecr.eu-west-1.amazonaws.com/app/web:abc1234\"}\n"
        );
        assert_eq!(
            contents(&artifacts, "build.json"),
            "{\"tag\":\"abc1234\",\"images\":{\"web\":\"1.dkr.ecr.eu-west-1.amazonaws.com/app/web:abc1234\",\
             \"worker\":\"1.dkr.ecr.eu-west-1.amazonaws.com/app/worker:abc1234\"},\
             \"digests\":{\"web\":\"sha256:aa\",\"worker\":\"sha256:bb\"}}\n"
        );
    }

    #[test]
    fn digest_uris_name_the_pushed_digest_and_a_dry_run_keeps_the_tag() {
        let outcome = |name: &str, in_registry| ImageOutcome {
            name: name.into(),
            repository_uri: RepositoryUri::new(
                "1.dkr.ecr.eu-west-1.amazonaws.com",
                &format!("app/{name}"),
            ),
            digest: format!("sha256:{}", "c".repeat(64)),
            result: crate::report::Outcome::Pushed,
            in_registry,
            seconds: 1.0,
            inputs: crate::report::InputsSource::Recorded,
            note: String::new(),
        };
        let outcomes = [outcome("web", true), outcome("local", false)];
        let uris = image_uris(ImageUriKind::Digest, "abc1234", &outcomes);
        assert_eq!(
            uris[0].uri,
            format!(
                "1.dkr.ecr.eu-west-1.amazonaws.com/app/web@sha256:{}",
                "c".repeat(64)
            )
        );
        assert_eq!(
            uris[1].uri,
            "1.dkr.ecr.eu-west-1.amazonaws.com/app/local:abc1234"
        );
        let tagged = image_uris(ImageUriKind::Tag, "abc1234", &outcomes);
        assert_eq!(
            tagged[0].uri,
            "1.dkr.ecr.eu-west-1.amazonaws.com/app/web:abc1234"
        );
        assert_eq!(tagged[0].digest, outcomes[0].digest);
    }

    #[test]
    fn disabled_files_are_not_rendered() {
        let mut p = plan(Path::new("/x"));
        p.image_detail = None;
        p.build_json = None;
        let artifacts = render(&p, "t", &images()).unwrap();
        assert_eq!(artifacts.len(), 1);
        assert_eq!(artifacts[0].file_name, "imagedefinitions.json");
    }

    #[test]
    fn oversized_imagedefinitions_is_refused() {
        let many: Vec<_> = (0..2000)
            .map(|n| ImageUri {
                name: format!("container-{n}"),
                uri: format!("1.dkr.ecr.eu-west-1.amazonaws.com/app/service-{n}:abc1234"),
                digest: String::new(),
            })
            .collect();
        let err = render(&plan(Path::new("/x")), "t", &many)
            .unwrap_err()
            .to_string();
        assert!(err.contains("imagedefinitions.json would be"), "{err}");
    }

    #[test]
    fn write_replaces_files_and_leaves_no_temporaries() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("build.json"), "old").unwrap();
        let artifacts = render(&plan(dir.path()), "abc1234", &images()).unwrap();
        let written = write_all(dir.path(), &artifacts).unwrap();
        assert_eq!(written.len(), 3);
        for artifact in &artifacts {
            let path = dir.path().join(&artifact.file_name);
            assert_eq!(std::fs::read(&path).unwrap(), artifact.contents);
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o644
            );
        }
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }
}
