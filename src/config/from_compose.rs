//! A plan from Compose files: the services with `build:` are the images. Settings come from the
//! flags, then the ecr-build.toml that names the files (if any), then the files' `x-ecr-build:`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use super::{
    ArtifactFlags, ArtifactsSection, ArtifactsSettings, Builder, CacheMode, ConfigError,
    ConfigFile, DEFAULT_TAG, ImagePlan, Plan, PlanParts, RunSettings, SecretSource, finish,
    parse_secret_overrides,
};
use crate::cli::PlanArgs;
use crate::compose::{self, Project, Service};

pub(super) fn plan_from_compose(
    files: Vec<PathBuf>,
    toml: Option<(PathBuf, ConfigFile)>,
    args: &PlanArgs,
    flags: ArtifactFlags<'_>,
    (cwd, environment): (&Path, &HashMap<String, String>),
) -> Result<Plan, ConfigError> {
    if let Some((path, file)) = &toml
        && file
            .images
            .as_ref()
            .is_some_and(|images| !images.is_empty())
    {
        return Err(ConfigError::Invalid {
            origin: path.display().to_string(),
            message: "the images come from Compose files: remove the [images] tables, or `compose`"
                .into(),
        });
    }
    let project = compose::load(&files, environment.clone(), &args.profiles)?;
    let invalid = |message: String| ConfigError::Invalid {
        origin: project.origin.clone(),
        message,
    };
    let settings: ProjectSettings =
        ecr_build_settings(project.ecr_build.as_ref()).map_err(&invalid)?;
    let (toml_path, file) = match toml {
        Some((path, file)) => (Some(path), Some(file)),
        None => (None, None),
    };
    // What ecr-build.toml says for every image comes before the Compose files' x-ecr-build.
    let defaults = ImageDefaults {
        ssm_path: (file.as_ref().and_then(|f| f.ssm_path.clone()))
            .or_else(|| settings.ssm_path.clone()),
        platforms: file.as_ref().and_then(|f| f.platforms.clone()),
    };
    let images = (project.services.iter())
        .map(|service| image_plan(service, &project, &defaults).map_err(&invalid))
        .collect::<Result<Vec<_>, _>>()?;
    // The flags, then ecr-build.toml, then x-ecr-build, then what the services' image: names.
    let mut merged = (RunSettings::from_flags(args))
        .over(
            file.as_ref()
                .map(RunSettings::from_file)
                .unwrap_or_default(),
        )
        .over(RunSettings::from_compose(&settings))
        .over(RunSettings {
            registry: one_registry(&project).map_err(&invalid)?,
            ..RunSettings::default()
        });
    merged.tags = Some(with_image_tag(merged.tags.take(), &project).map_err(&invalid)?);
    let artifacts = artifacts_settings(
        flags,
        file.as_ref(),
        toml_path.as_deref(),
        (&project, &settings),
        cwd,
    );
    finish(
        PlanParts {
            settings: merged,
            secret_overrides: parse_secret_overrides(args, cwd)?,
            artifacts,
            images,
            source_dir: project.dir.clone(),
        },
        &project.origin,
    )
}

/// ecr-build's settings at the top of a Compose file (`x-ecr-build:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProjectSettings {
    registry: Option<String>,
    tags: Option<Vec<String>>,
    network: Option<String>,
    builder: Option<Builder>,
    base_image_mirror: Option<String>,
    cache: Option<CacheMode>,
    ssm_path: Option<String>,
    #[serde(default)]
    artifacts: ArtifactsSection,
}

/// ecr-build's settings of one service (`x-ecr-build:` in it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceSettings {
    /// The ECS container name, where it differs from the service name.
    name: Option<String>,
    /// More secrets, e.g. `{ db_password = "ssm:/app/DB_PASSWORD" }`.
    #[serde(default)]
    secrets: IndexMap<String, String>,
    ssm_path: Option<String>,
    #[serde(default)]
    allow_secret_build_args: bool,
    cache: Option<CacheMode>,
    cache_repository: Option<String>,
}

impl RunSettings {
    /// What a Compose project's `x-ecr-build:` says of the run.
    fn from_compose(settings: &ProjectSettings) -> Self {
        Self {
            registry: settings.registry.clone(),
            tags: settings.tags.clone(),
            network: settings.network.clone(),
            builder: settings.builder,
            base_image_mirror: settings.base_image_mirror.clone(),
            cache: settings.cache,
        }
    }
}

/// `x-ecr-build:` (at the top or in a service) read as `T`; none is `T`'s default.
fn ecr_build_settings<T: serde::de::DeserializeOwned + Default>(
    value: Option<&serde_norway::Value>,
) -> Result<T, String> {
    match value {
        Some(value) => {
            serde_norway::from_value(value.clone()).map_err(|err| format!("x-ecr-build: {err}"))
        }
        None => Ok(T::default()),
    }
}

/// Where the artifacts go and which: the flags, then ecr-build.toml's `[artifacts]` (relative to
/// its folder), then `x-ecr-build: artifacts:` (relative to the Compose project's).
fn artifacts_settings(
    flags: ArtifactFlags<'_>,
    file: Option<&ConfigFile>,
    toml_path: Option<&Path>,
    (project, settings): (&Project, &ProjectSettings),
    cwd: &Path,
) -> ArtifactsSettings {
    let mut section = file.map(|f| f.artifacts.clone()).unwrap_or_default();
    // The toml's dir is made whole against its own folder before the Compose files' fills a gap.
    if let (Some(dir), Some(toml_dir)) = (&mut section.dir, toml_path.and_then(Path::parent)) {
        *dir = toml_dir.join(&*dir);
    }
    section.fill_from(&settings.artifacts);
    section.settings(flags, &project.dir, cwd)
}

/// An image's settings where neither its service nor its x-ecr-build gives them.
struct ImageDefaults {
    ssm_path: Option<String>,
    platforms: Option<Vec<String>>,
}

/// A path with `.` and `..` resolved by its text, as Compose resolves the paths of its files
/// (an included project's `../shared/lib` is `shared/lib` beside it).
fn resolve_dots(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut resolved = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => match resolved.components().next_back() {
                Some(Component::Normal(_)) => {
                    resolved.pop();
                }
                Some(Component::RootDir) => {}
                _ => resolved.push(".."),
            },
            other => resolved.push(other),
        }
    }
    resolved
}

/// One service as an image.
fn image_plan(
    service: &Service,
    project: &Project,
    defaults: &ImageDefaults,
) -> Result<ImagePlan, String> {
    let prefix = |message: String| format!("service {}: {message}", service.service);
    let settings: ServiceSettings =
        ecr_build_settings(service.ecr_build.as_ref()).map_err(&prefix)?;
    let name = (settings.name.clone()).unwrap_or_else(|| service.service.clone());
    let mut secrets = Vec::new();
    let pairs = (service.secrets.iter()).map(|(id, source)| (id, source));
    for (id, source) in pairs.chain(&settings.secrets) {
        let source = SecretSource::parse(source, &project.dir)
            .map_err(|m| prefix(format!("secret {id}: {m}")))?;
        secrets.retain(|(known, _): &(String, SecretSource)| known != id);
        secrets.push((id.clone(), source));
    }
    let (context, dockerfile) = (
        resolve_dots(&service.context),
        resolve_dots(&service.context.join(&service.dockerfile)),
    );
    Ok(ImagePlan {
        target: service.target.clone(),
        build_args: service.args.clone(),
        secrets,
        ssm_path: (settings.ssm_path.clone()).or_else(|| defaults.ssm_path.clone()),
        allow_secret_build_args: settings.allow_secret_build_args,
        cache_from: service.cache_from.clone(),
        dockerfile_inline: service.dockerfile_inline.clone(),
        network: service.network.clone(),
        platforms: match (&service.platforms[..], &defaults.platforms) {
            ([], Some(platforms)) => platforms.clone(),
            _ => service.platforms.clone(),
        },
        labels: service.labels.clone(),
        cache: settings.cache,
        cache_repository: settings.cache_repository.clone(),
        ..ImagePlan::new(name, service.repository.clone(), context, dockerfile)
    })
}

/// The configured tag templates, after the tag the services' `image:` names (their primary tag).
fn with_image_tag(tags: Option<Vec<String>>, project: &Project) -> Result<Vec<String>, String> {
    let mut tags = tags.unwrap_or_else(|| vec![DEFAULT_TAG.into()]);
    let mut named = project.services.iter().filter(|s| s.tag.is_some());
    if let Some(first) = named.next() {
        let tag = first.tag.clone().expect("filtered");
        if let Some(other) = named.find(|s| s.tag != first.tag) {
            return Err(format!(
                "services {} and {} name different tags in image: ({tag} and {}); a run pushes one set \
                 of tags",
                first.service,
                other.service,
                other.tag.as_deref().unwrap_or_default()
            ));
        }
        tags.retain(|t| *t != tag);
        tags.insert(0, tag);
    }
    Ok(tags)
}

/// The registry the services' `image:` names, if they name one; they must agree.
fn one_registry(project: &Project) -> Result<Option<String>, String> {
    let mut named = project.services.iter().filter(|s| s.registry.is_some());
    let Some(first) = named.next() else {
        return Ok(None);
    };
    if let Some(other) = named.find(|s| s.registry != first.registry) {
        return Err(format!(
            "services {} and {} push to different registries ({} and {}); a run pushes to one",
            first.service,
            other.service,
            first.registry.as_deref().unwrap_or_default(),
            other.registry.as_deref().unwrap_or_default()
        ));
    }
    Ok(first.registry.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dots_resolve_by_the_text_as_compose_resolves_them() {
        for (given, resolved) in [
            ("/p/./api/../shared/./lib", "/p/shared/lib"),
            ("/../x", "/x"),
            ("rel/../../up", "../up"),
            ("/p/web/.", "/p/web"),
        ] {
            assert_eq!(
                resolve_dots(Path::new(given)),
                PathBuf::from(resolved),
                "{given}"
            );
        }
    }
}
