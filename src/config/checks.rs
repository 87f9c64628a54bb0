//! The checks of a plan's parts that need nothing but the part.

use super::{ArtifactsPlan, ArtifactsSettings, Builder, CacheMode, FileSetting, ImagePlan};
use crate::reference::check_repository;
use crate::tags::TagTemplate;

/// The commit `--sha` names, in lower case: 40 hex digits or a usage error.
pub(super) fn check_commit(flag: Option<&str>) -> Result<Option<String>, String> {
    (flag.map(crate::tags::check_commit).transpose()).map_err(|err| err.to_string())
}

/// The tag templates, parsed: at least one, none twice.
pub(super) fn check_tags(tags: &[String]) -> Result<Vec<TagTemplate>, String> {
    if tags.is_empty() {
        return Err("tags is empty: give at least one tag template".into());
    }
    if let Some(duplicate) = first_duplicate(tags.iter()) {
        return Err(format!("tag template `{duplicate}` is listed twice"));
    }
    (tags.iter())
        .map(|t| TagTemplate::parse(t).map_err(|e| e.to_string()))
        .collect()
}

pub(super) fn check_network(network: Option<&str>) -> Result<(), String> {
    match network {
        Some(network) if network.is_empty() || network.contains(char::is_whitespace) => {
            Err(format!("network `{network}` is not a network mode"))
        }
        _ => Ok(()),
    }
}

/// Each image, and what images may not share: a repository, and a registry cache's repository.
pub(super) fn check_images(
    images: &[ImagePlan],
    builder: Builder,
    cache: CacheMode,
) -> Result<(), String> {
    for image in images {
        check_image(image, builder)?;
    }
    let registry_caches = (images.iter())
        .filter(|image| image.cache_mode(cache).wants_registry_cache())
        .map(|image| image.cache_repository());
    if let Some(duplicate) = first_duplicate(registry_caches) {
        return Err(format!(
            "two images keep their BuildKit cache in repository {duplicate} under the same tag; give each its own cache_repository"
        ));
    }
    if let Some(duplicate) = first_duplicate(images.iter().map(|i| &i.repository)) {
        return Err(format!(
            "two images push to repository {duplicate} with the same tags; give each image its own repository"
        ));
    }
    Ok(())
}

/// The checks of one image that need nothing else.
fn check_image(image: &ImagePlan, builder: Builder) -> Result<(), String> {
    if let Some(repository) = &image.cache_repository {
        check_repository(repository)
            .map_err(|m| format!("image {}: cache_repository: {m}", image.name))?;
    }
    for platform in &image.platforms {
        crate::reference::check_platform(platform)
            .map_err(|m| format!("image {}: {m}", image.name))?;
    }
    if let Some(twice) = first_duplicate(image.platforms.iter()) {
        return Err(format!(
            "image {}: platform {twice} is listed twice",
            image.name
        ));
    }
    check_container_name(&image.name)?;
    check_repository(&image.repository).map_err(|m| format!("image {}: {m}", image.name))?;
    if let Some(target) = &image.target
        && target.is_empty()
    {
        return Err(format!("image {}: target is empty", image.name));
    }
    for (id, _) in &image.secrets {
        check_secret_id(id).map_err(|m| format!("image {}: {m}", image.name))?;
    }
    if let Some(path) = &image.ssm_path
        && (!path.starts_with('/') || path.len() < 2)
    {
        return Err(format!(
            "image {}: ssm_path `{path}` must be an SSM path such as /app/prod/",
            image.name
        ));
    }
    if image.has_secrets() && builder == Builder::Legacy && !image.allow_secret_build_args {
        return Err(format!(
            "image {} has secrets, which only BuildKit can mount (builder = \"buildkit\"); the legacy \
             builder could only pass them as build args, readable by anyone who pulls the image \
             (allow that with allow_secret_build_args = true on the image)",
            image.name
        ));
    }
    if let Some((key, _)) = image.build_args.iter().find(|(k, _)| k.is_empty()) {
        return Err(format!(
            "image {}: build arg `{key}` has an empty name",
            image.name
        ));
    }
    Ok(())
}

/// Which artifacts a run writes, and where.
pub(super) fn artifacts_plan(
    settings: ArtifactsSettings,
    images: &[ImagePlan],
) -> Result<ArtifactsPlan, String> {
    let single_image = (images.len() == 1).then(|| images[0].name.clone());
    let image_detail = match settings.image_detail {
        None | Some(FileSetting::Enabled(true)) => single_image,
        Some(FileSetting::Enabled(false)) => None,
        Some(FileSetting::Value(name)) => {
            if !images.iter().any(|i| i.name == name) {
                return Err(format!(
                    "artifacts.image_detail names image `{name}`, which is not among the images ({})",
                    images
                        .iter()
                        .map(|i| i.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
            }
            Some(name)
        }
    };
    let file_name = |setting: Option<FileSetting>, default: &str, key: &str| match setting {
        None | Some(FileSetting::Enabled(true)) => Ok(Some(default.to_owned())),
        Some(FileSetting::Enabled(false)) => Ok(None),
        Some(FileSetting::Value(name)) => check_file_name(&name)
            .map(|()| Some(name.clone()))
            .map_err(|m| format!("artifacts.{key} `{name}`: {m}")),
    };
    Ok(ArtifactsPlan {
        dir: settings.dir,
        image_uri: settings.image_uri,
        imagedefinitions: file_name(
            settings.imagedefinitions,
            "imagedefinitions.json",
            "imagedefinitions",
        )?,
        image_detail,
        build_json: file_name(settings.build_json, "build.json", "build_json")?,
    })
}

/// ECS container names: up to 255 letters, digits, hyphens and underscores.
pub(super) fn check_container_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > 255
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "image name `{name}` is not a valid ECS container name (1-255 letters, digits, - and _)"
        ));
    }
    Ok(())
}

/// BuildKit secret ids as the Dockerfile names them in `--mount=type=secret,id=ID`.
pub(super) fn check_secret_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
    {
        return Err(format!("secret id `{id}` must be letters, digits, _ . -"));
    }
    Ok(())
}

pub(super) fn check_file_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err("must be a plain file name inside the artifacts directory".into());
    }
    Ok(())
}

/// The first item that comes twice.
fn first_duplicate<'a, T: AsRef<str> + ?Sized + 'a>(
    items: impl Iterator<Item = &'a T>,
) -> Option<&'a str> {
    let mut seen = std::collections::HashSet::new();
    items.map(AsRef::as_ref).find(|item| !seen.insert(*item))
}
