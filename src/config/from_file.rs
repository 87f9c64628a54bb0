//! A plan from ecr-build.toml: its `[images.NAME]` tables are the images; settings come from the
//! flags, then the file.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;

use super::{
    ArtifactFlags, ArtifactsSection, Builder, CacheMode, ConfigError, ImagePlan, Plan, PlanParts,
    RunSettings, SecretSource, clean, finish, parse_secret_overrides,
};
use crate::cli::PlanArgs;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ConfigFile {
    /// Compose files that list the images, relative to this file.
    pub(super) compose: Option<Vec<PathBuf>>,
    /// Every image's platforms, unless the image names its own.
    pub(super) platforms: Option<Vec<String>>,
    pub(super) registry: Option<String>,
    pub(super) ssm_path: Option<String>,
    pub(super) tags: Option<Vec<String>>,
    pub(super) network: Option<String>,
    pub(super) builder: Option<Builder>,
    pub(super) base_image_mirror: Option<String>,
    pub(super) cache: Option<CacheMode>,
    #[serde(default)]
    pub(super) artifacts: ArtifactsSection,
    pub(super) images: Option<IndexMap<String, ImageSection>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ImageSection {
    repository: String,
    context: Option<PathBuf>,
    dockerfile: Option<PathBuf>,
    target: Option<String>,
    #[serde(default)]
    build_args: IndexMap<String, toml::Value>,
    #[serde(default)]
    secrets: IndexMap<String, String>,
    ssm_path: Option<String>,
    #[serde(default)]
    allow_secret_build_args: bool,
    #[serde(default)]
    cache_from: Vec<String>,
    platforms: Option<Vec<String>>,
    cache: Option<CacheMode>,
    cache_repository: Option<String>,
}

impl RunSettings {
    pub(super) fn from_file(file: &ConfigFile) -> Self {
        Self {
            registry: file.registry.clone(),
            tags: file.tags.clone(),
            network: file.network.clone(),
            builder: file.builder,
            base_image_mirror: file.base_image_mirror.clone(),
            cache: file.cache,
        }
    }
}

pub(super) fn parse_config_file(path: &Path, text: &str) -> Result<ConfigFile, ConfigError> {
    toml::from_str(text).map_err(|err| syntax_error(path, text, &err))
}

pub(super) fn plan_from_file(
    path: &Path,
    mut file: ConfigFile,
    args: &PlanArgs,
    flags: ArtifactFlags<'_>,
    cwd: &Path,
) -> Result<Plan, ConfigError> {
    let origin = path.display().to_string();
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    let base = path.parent().unwrap_or(cwd).to_path_buf();

    let sections = file.images.take().unwrap_or_default();
    if sections.is_empty() {
        return Err(invalid(
            "no images: add at least one [images.NAME] table with a repository".into(),
        ));
    }
    let images = sections
        .into_iter()
        .map(|(name, section)| image_from_section(name, section, &base, &file).map_err(&invalid))
        .collect::<Result<Vec<_>, _>>()?;

    let settings = RunSettings::from_flags(args).over(RunSettings::from_file(&file));
    let artifacts = file.artifacts.settings(flags, &base, cwd);
    finish(
        PlanParts {
            settings,
            secret_overrides: parse_secret_overrides(args, cwd)?,
            artifacts,
            images,
            source_dir: base,
        },
        &origin,
    )
}

/// One `[images.NAME]` table; relative paths start at `base`, the file's folder.
fn image_from_section(
    name: String,
    section: ImageSection,
    base: &Path,
    file: &ConfigFile,
) -> Result<ImagePlan, String> {
    let build_args = section
        .build_args
        .into_iter()
        .map(|(key, value)| {
            scalar_to_string(&value)
                .map(|v| (key.clone(), v))
                .ok_or_else(|| {
                    format!("images.{name}.build_args.{key}: must be a string, number or boolean")
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let context = clean(&base.join(section.context.unwrap_or_else(|| PathBuf::from("."))));
    let dockerfile = clean(
        &context.join(
            section
                .dockerfile
                .unwrap_or_else(|| PathBuf::from("Dockerfile")),
        ),
    );
    let secrets = section
        .secrets
        .into_iter()
        .map(|(id, source)| {
            SecretSource::parse(&source, base)
                .map(|source| (id.clone(), source))
                .map_err(|m| format!("images.{name}.secrets.{id}: {m}"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ImagePlan {
        target: section.target,
        build_args,
        secrets,
        ssm_path: section.ssm_path.or_else(|| file.ssm_path.clone()),
        allow_secret_build_args: section.allow_secret_build_args,
        cache_from: section.cache_from,
        cache: section.cache,
        cache_repository: section.cache_repository,
        platforms: (section.platforms)
            .or_else(|| file.platforms.clone())
            .unwrap_or_default(),
        ..ImagePlan::new(name, section.repository, context, dockerfile)
    })
}

fn syntax_error(path: &Path, text: &str, err: &toml::de::Error) -> ConfigError {
    let offset = err.span().map_or(0, |span| span.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    ConfigError::Syntax {
        path: path.to_path_buf(),
        line,
        column,
        message: err.message().trim().to_owned(),
    }
}

fn scalar_to_string(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Boolean(b) => Some(b.to_string()),
        _ => None,
    }
}
