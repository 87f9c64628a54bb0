//! Compose files as the list of images, as `docker compose -f A -f B` reads them: each file
//! interpolated (the environment, then the `.env` beside the first file), merged in order, and
//! every service that has `build:` turned into an image. A build key ecr-build cannot honour is an
//! error, so nothing silently differs from `docker compose build`; runtime keys are ignored.
//! ecr-build's own settings go in `x-ecr-build:`, at the top or in a service.

pub mod interpolate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_norway::{Mapping, Value};

use crate::config::{ArtifactsSection, Builder, ConfigError};
use interpolate::{InterpolationError, Variables};

/// The files `docker compose` reads when none is named, in the order it looks for them.
const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The first of Compose's default files in `dir`, and its override file if there is one.
pub fn default_files(dir: &Path) -> Option<Vec<PathBuf>> {
    let main = DEFAULT_FILES
        .iter()
        .map(|name| dir.join(name))
        .find(|path| path.is_file())?;
    let stem = main.file_stem()?.to_str()?.to_owned();
    let overrides = ["yaml", "yml"].map(|ext| dir.join(format!("{stem}.override.{ext}")));
    let mut files = vec![main];
    files.extend(overrides.into_iter().find(|path| path.is_file()));
    Some(files)
}

/// ecr-build's settings at the top of a Compose file (`x-ecr-build:`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProjectSettings {
    pub registry: Option<String>,
    pub tags: Option<Vec<String>>,
    pub network: Option<String>,
    pub builder: Option<Builder>,
    pub ssm_path: Option<String>,
    #[serde(default)]
    pub artifacts: ArtifactsSection,
}

/// ecr-build's settings of one service (`x-ecr-build:` in it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSettings {
    /// The ECS container name, where it differs from the service name.
    pub name: Option<String>,
    /// More secrets, e.g. `{ db_password = "ssm:/app/DB_PASSWORD" }`.
    #[serde(default)]
    pub secrets: IndexMap<String, String>,
    pub ssm_path: Option<String>,
    #[serde(default)]
    pub allow_secret_build_args: bool,
}

/// A service's `build:`, after the merge; any other key is an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct BuildSection {
    context: Option<String>,
    dockerfile: Option<String>,
    dockerfile_inline: Option<String>,
    #[serde(default)]
    args: IndexMap<String, Option<Scalar>>,
    target: Option<String>,
    #[serde(default)]
    cache_from: Vec<String>,
    #[serde(default)]
    labels: IndexMap<String, Scalar>,
    #[serde(default)]
    platforms: Vec<String>,
    network: Option<String>,
    #[serde(default)]
    secrets: Vec<SecretUse>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Scalar {
    Text(String),
    Number(serde_norway::Number),
    Bool(bool),
}

impl Scalar {
    fn text(&self) -> String {
        match self {
            Scalar::Text(text) => text.clone(),
            Scalar::Number(number) => number.to_string(),
            Scalar::Bool(value) => value.to_string(),
        }
    }
}

/// `- name`, or `- { source: name, target: id }`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum SecretUse {
    Name(String),
    Long {
        source: String,
        target: Option<String>,
    },
}

/// A top-level secret's source.
#[derive(Debug, Deserialize)]
struct SecretDefinition {
    file: Option<String>,
    environment: Option<String>,
}

/// A service that Compose builds, as ecr-build takes it.
#[derive(Debug)]
pub struct Service {
    /// The service's name in the Compose file.
    pub service: String,
    /// `image:` split: registry host (if it names one), repository, tag (if it names one).
    pub registry: Option<String>,
    pub repository: String,
    pub tag: Option<String>,
    pub context: PathBuf,
    /// Relative to the context, as Compose has it; ignored with `dockerfile_inline`.
    pub dockerfile: PathBuf,
    pub dockerfile_inline: Option<String>,
    pub target: Option<String>,
    pub args: Vec<(String, String)>,
    pub cache_from: Vec<String>,
    pub labels: Vec<(String, String)>,
    pub platforms: Vec<String>,
    pub network: Option<String>,
    /// Secret id and source: `file:PATH` (absolute) or `env:VAR`.
    pub secrets: Vec<(String, String)>,
    pub settings: ServiceSettings,
}

/// What ecr-build takes from a set of Compose files.
#[derive(Debug)]
pub struct Project {
    /// The first file, which errors name.
    pub origin: String,
    /// The folder of the first file: relative paths start there, as in Compose.
    pub dir: PathBuf,
    pub services: Vec<Service>,
    pub settings: ProjectSettings,
}

/// Reads, interpolates and merges `files` (in order) and takes every service with `build:`.
pub fn load(
    files: &[PathBuf],
    environment: HashMap<String, String>,
) -> Result<Project, ConfigError> {
    let first = files.first().expect("at least one Compose file");
    let dir = first.parent().unwrap_or(Path::new(".")).to_path_buf();
    let origin = first.display().to_string();
    let dotenv_path = dir.join(".env");
    let dotenv = match std::fs::read_to_string(&dotenv_path) {
        Ok(text) => interpolate::parse_dotenv(&text).map_err(|message| ConfigError::Invalid {
            origin: dotenv_path.display().to_string(),
            message,
        })?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => HashMap::new(),
        Err(source) => {
            return Err(ConfigError::Read {
                path: dotenv_path,
                source,
            });
        }
    };
    let variables = Variables::new(environment, dotenv);
    let mut merged = Value::Mapping(Mapping::new());
    for file in files {
        let model = read_file(file, &variables)?;
        merge(&mut merged, model);
    }
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    let settings: ProjectSettings = match merged.get("x-ecr-build") {
        Some(value) => serde_norway::from_value(value.clone())
            .map_err(|err| invalid(format!("x-ecr-build: {err}")))?,
        None => ProjectSettings::default(),
    };
    let secrets = secret_definitions(&merged, &dir).map_err(invalid)?;
    let mut services = Vec::new();
    if let Some(Value::Mapping(all)) = merged.get("services") {
        for (name, service) in all {
            let name = name.as_str().unwrap_or_default().to_owned();
            if service.get("build").is_none() {
                continue;
            }
            let service = take_service(&name, service, &dir, &secrets)
                .map_err(|message| invalid(format!("service {name}: {message}")))?;
            services.push(service);
        }
    }
    if services.is_empty() {
        return Err(invalid(
            "no service has a build section: nothing to build".to_owned(),
        ));
    }
    Ok(Project {
        origin,
        dir,
        services,
        settings,
    })
}

/// One file: parsed, its `<<` merge keys applied, interpolated, and its short forms made long.
fn read_file(file: &Path, variables: &Variables) -> Result<Value, ConfigError> {
    let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
        path: file.to_owned(),
        source,
    })?;
    let invalid = |message: String| ConfigError::Invalid {
        origin: file.display().to_string(),
        message,
    };
    let mut model: Value = serde_norway::from_str(&text).map_err(|err| invalid(err.to_string()))?;
    model
        .apply_merge()
        .map_err(|err| invalid(err.to_string()))?;
    interpolate_all(&mut model, variables, &mut Vec::new()).map_err(invalid)?;
    if let Some(Value::Mapping(services)) = model.get_mut("services") {
        for (_, service) in services.iter_mut() {
            normalize_build(service);
        }
    }
    Ok(model)
}

/// Every string of the model, interpolated; an error names the variable and where it was used.
fn interpolate_all(
    value: &mut Value,
    variables: &Variables,
    path: &mut Vec<String>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            *text = variables.interpolate(text).map_err(|err| {
                let place = path.join(".");
                let service = match path.as_slice() {
                    [services, name, ..] if services == "services" => format!(" of service {name}"),
                    _ => String::new(),
                };
                match err {
                    InterpolationError::Missing { variable, message } => format!(
                        "{place}{service}: variable {variable} is not set and has no default{} \
                         (set it, or write ${{{variable}:-default}})",
                        message.map(|m| format!(": {m}")).unwrap_or_default()
                    ),
                    InterpolationError::Syntax(what) => format!("{place}{service}: {what}"),
                }
            })?;
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(index.to_string());
                interpolate_all(item, variables, path)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_owned());
                interpolate_all(item, variables, path)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => interpolate_all(&mut tagged.value, variables, path)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// `build: DIR` → `{context: DIR}`; `args` and `labels` as lists of `K=V` → mappings.
fn normalize_build(service: &mut Value) {
    let Some(build) = service.get_mut("build") else {
        return;
    };
    if let Value::String(context) = build {
        let mut long = Mapping::new();
        long.insert("context".into(), Value::String(context.clone()));
        *build = Value::Mapping(long);
    }
    for key in ["args", "labels"] {
        if let Some(Value::Sequence(items)) = build.get(key) {
            let mut map = Mapping::new();
            for item in items.iter().filter_map(Value::as_str) {
                match item.split_once('=') {
                    Some((k, v)) => map.insert(k.into(), Value::String(v.into())),
                    // `- NAME` takes its value from the environment, as Compose does.
                    None => map.insert(
                        item.into(),
                        std::env::var(item).map_or(Value::Null, Value::String),
                    ),
                };
            }
            build[key] = Value::Mapping(map);
        }
    }
}

/// `docker compose -f A -f B`: mappings merge key by key, a later scalar wins, sequences keep
/// what they had and add what is new.
fn merge(base: &mut Value, next: Value) {
    match (base, next) {
        (Value::Mapping(base), Value::Mapping(next)) => {
            for (key, value) in next {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (Value::Sequence(base), Value::Sequence(next)) => {
            for item in next {
                if !base.contains(&item) {
                    base.push(item);
                }
            }
        }
        (base, next) => *base = next,
    }
}

/// Top-level `secrets:` → `file:ABSOLUTE_PATH` or `env:VAR`, by name.
fn secret_definitions(model: &Value, dir: &Path) -> Result<HashMap<String, String>, String> {
    let mut sources = HashMap::new();
    let Some(Value::Mapping(secrets)) = model.get("secrets") else {
        return Ok(sources);
    };
    for (name, definition) in secrets {
        let name = name.as_str().unwrap_or_default().to_owned();
        let definition: SecretDefinition = serde_norway::from_value(definition.clone())
            .map_err(|err| format!("secrets.{name}: {err}"))?;
        let source = match (definition.file, definition.environment) {
            (Some(file), None) => format!("file:{}", dir.join(file).display()),
            (None, Some(variable)) => format!("env:{variable}"),
            _ => {
                return Err(format!(
                    "secrets.{name}: give it `file:` or `environment:` (ecr-build reads nothing else)"
                ));
            }
        };
        sources.insert(name, source);
    }
    Ok(sources)
}

/// One service with `build:`.
fn take_service(
    name: &str,
    service: &Value,
    dir: &Path,
    secrets: &HashMap<String, String>,
) -> Result<Service, String> {
    let build: BuildSection = serde_norway::from_value(service["build"].clone()).map_err(|err| {
        format!(
            "build: {err}; ecr-build cannot honour that key, and would build something else than \
             docker compose build"
        )
    })?;
    let image = service
        .get("image")
        .and_then(Value::as_str)
        .ok_or("no image: add `image: REGISTRY/REPOSITORY[:TAG]`, where ecr-build pushes it")?;
    let (registry, repository, tag) = split_image(image)?;
    let settings: ServiceSettings = match service.get("x-ecr-build") {
        Some(value) => {
            serde_norway::from_value(value.clone()).map_err(|err| format!("x-ecr-build: {err}"))?
        }
        None => ServiceSettings::default(),
    };
    if build.dockerfile.is_some() && build.dockerfile_inline.is_some() {
        return Err("build has both dockerfile and dockerfile_inline".to_owned());
    }
    let context = dir.join(build.context.as_deref().unwrap_or("."));
    let service_secrets = (build.secrets.iter())
        .map(|used| {
            let (source, target) = match used {
                SecretUse::Name(source) => (source, None),
                SecretUse::Long { source, target } => (source, target.as_ref()),
            };
            let definition = secrets.get(source).ok_or_else(|| {
                format!("build uses secret {source}, which the top-level secrets do not define")
            })?;
            Ok((target.unwrap_or(source).clone(), definition.clone()))
        })
        .collect::<Result<Vec<_>, String>>()?;
    Ok(Service {
        service: name.to_owned(),
        registry,
        repository,
        tag,
        dockerfile: PathBuf::from(build.dockerfile.as_deref().unwrap_or("Dockerfile")),
        dockerfile_inline: build.dockerfile_inline,
        context,
        target: build.target,
        args: (build.args.iter())
            .filter_map(|(k, v)| v.as_ref().map(|v| (k.clone(), v.text())))
            .collect(),
        cache_from: build.cache_from,
        labels: (build.labels.iter())
            .map(|(k, v)| (k.clone(), v.text()))
            .collect(),
        platforms: build.platforms,
        network: build.network,
        secrets: service_secrets,
        settings,
    })
}

/// `REGISTRY/REPOSITORY[:TAG]` → its parts, the registry as [`crate::reference::split_registry`]
/// finds it.
pub fn split_image(image: &str) -> Result<(Option<String>, String, Option<String>), String> {
    if image.contains('@') {
        return Err(format!(
            "image {image} names a digest: give a tag (or none); ecr-build pushes what it builds"
        ));
    }
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, Some(tag.to_owned())),
        _ => (image, None),
    };
    let (registry, repository) = crate::reference::split_registry(name);
    if repository.is_empty() || tag.as_deref() == Some("") {
        return Err(format!("image `{image}` has an empty repository or tag"));
    }
    Ok((registry.map(str::to_owned), repository.to_owned(), tag))
}

#[cfg(test)]
mod tests;
