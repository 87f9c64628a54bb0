//! Compose files as the list of images, as `docker compose -f A -f B` reads them: each file
//! interpolated (the environment, then the `.env` beside the first file), merged in order, and
//! every service that has `build:` turned into an image. A build key ecr-build cannot honour is an
//! error, so nothing silently differs from `docker compose build`; runtime keys are ignored.
//! ecr-build's own settings go in `x-ecr-build:`, at the top or in a service.

pub(crate) mod interpolate;
mod model;
mod resolve;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use serde::Deserialize;
use serde_norway::{Mapping, Value};

use interpolate::Variables;
use model::{is_remote, merge, resolve_valueless_args};
use resolve::{project_variables, read_file};

/// A Compose project that cannot be read: a file, or what is wrong in it and where.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// `origin` is the file; `message` says what is wrong, where in it.
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// The files `docker compose` reads when none is named, in the order it looks for them.
const DEFAULT_FILES: [&str; 4] = [
    "compose.yaml",
    "compose.yml",
    "docker-compose.yaml",
    "docker-compose.yml",
];

/// The first of Compose's default files in `dir`, and its override file if there is one.
pub(crate) fn default_files(dir: &Path) -> Option<Vec<PathBuf>> {
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
pub(crate) struct Service {
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
    /// The service's `x-ecr-build:`, for ecr-build's settings to read.
    pub ecr_build: Option<Value>,
}

/// What ecr-build takes from a set of Compose files.
#[derive(Debug)]
pub(crate) struct Project {
    /// The first file, which errors name.
    pub origin: String,
    /// The folder of the first file: relative paths start there, as in Compose.
    pub dir: PathBuf,
    pub services: Vec<Service>,
    /// The top-level `x-ecr-build:`, for ecr-build's settings to read.
    pub ecr_build: Option<Value>,
}

/// Reads, interpolates and merges `files` (in order) and takes every service with `build:` that
/// an active profile enables (`profiles`, else `COMPOSE_PROFILES` from the environment or `.env`).
pub(crate) fn load(
    files: &[PathBuf],
    environment: HashMap<String, String>,
    profiles: &[String],
) -> Result<Project, ComposeError> {
    let first = files.first().expect("at least one Compose file");
    let dir = first.parent().unwrap_or(Path::new(".")).to_path_buf();
    let origin = first.display().to_string();
    let variables = project_variables(&[dir.join(".env")], environment, true)?;
    let mut merged = Value::Mapping(Mapping::new());
    for file in files {
        let model = read_file(file, &dir, &variables)?;
        merge(&mut merged, model);
    }
    resolve_valueless_args(&mut merged, &variables);
    let invalid = |message: String| ComposeError::Invalid {
        origin: origin.clone(),
        message,
    };
    let active = active_profiles(profiles, &variables);
    let secrets = secret_definitions(&merged, &dir).map_err(invalid)?;
    let mut services = Vec::new();
    if let Some(Value::Mapping(all)) = merged.get("services") {
        for (name, service) in all {
            let name = name.as_str().unwrap_or_default().to_owned();
            if service.get("build").is_none() || !enabled(service, &active) {
                continue;
            }
            let service = take_service(&name, service, &dir, &secrets)
                .map_err(|message| invalid(format!("service {name}: {message}")))?;
            services.push(service);
        }
    }
    if services.is_empty() {
        return Err(invalid(
            "no service (of the active profiles) has a build section: nothing to build".to_owned(),
        ));
    }
    Ok(Project {
        origin,
        dir,
        services,
        ecr_build: merged.get("x-ecr-build").cloned(),
    })
}

/// The profiles given, else `COMPOSE_PROFILES` (comma-separated) as the variables have it.
fn active_profiles(given: &[String], variables: &Variables) -> Vec<String> {
    let from_variables = || {
        (variables
            .lookup("COMPOSE_PROFILES")
            .unwrap_or_default()
            .split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
    };
    match given.is_empty() {
        true => from_variables(),
        false => given.to_vec(),
    }
}

/// Compose's rule: a service without `profiles` is always on; one with them, when one of them is
/// active (`*` activates every one).
fn enabled(service: &Value, active: &[String]) -> bool {
    let Some(Value::Sequence(profiles)) = service.get("profiles") else {
        return true;
    };
    active.iter().any(|a| a == "*")
        || (profiles.iter().filter_map(Value::as_str)).any(|p| active.iter().any(|a| a == p))
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
    let mut build = service["build"].clone();
    // Extension keys are Compose's to ignore, in build as anywhere.
    if let Value::Mapping(map) = &mut build {
        map.retain(|key, _| !key.as_str().is_some_and(|key| key.starts_with("x-")));
    }
    let build: BuildSection = serde_norway::from_value(build).map_err(|err| {
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
    if build.dockerfile.is_some() && build.dockerfile_inline.is_some() {
        return Err("build has both dockerfile and dockerfile_inline".to_owned());
    }
    let context = build.context.as_deref().unwrap_or(".");
    if is_remote(context) {
        return Err(format!(
            "build context {context} is a remote context (a git or HTTP URL), which ecr-build \
             does not support: check it out in an earlier step and name the folder"
        ));
    }
    let context = dir.join(context);
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
        ecr_build: service.get("x-ecr-build").cloned(),
    })
}

/// `REGISTRY/REPOSITORY[:TAG]` → its parts, the registry as [`crate::reference::split_registry`]
/// finds it.
pub(crate) fn split_image(image: &str) -> Result<(Option<String>, String, Option<String>), String> {
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
