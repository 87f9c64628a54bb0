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

/// Reads, interpolates and merges `files` (in order) and takes every service with `build:` that
/// an active profile enables (`profiles`, else `COMPOSE_PROFILES` from the environment or `.env`).
pub fn load(
    files: &[PathBuf],
    environment: HashMap<String, String>,
    profiles: &[String],
) -> Result<Project, ConfigError> {
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
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.clone(),
        message,
    };
    let settings: ProjectSettings = match merged.get("x-ecr-build") {
        Some(value) => serde_norway::from_value(value.clone())
            .map_err(|err| invalid(format!("x-ecr-build: {err}")))?,
        None => ProjectSettings::default(),
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
        settings,
    })
}

/// The environment, then the env files (each read as Compose reads `.env`; a missing one is no
/// error where `optional`).
fn project_variables(
    env_files: &[PathBuf],
    environment: HashMap<String, String>,
    optional: bool,
) -> Result<Variables, ConfigError> {
    let mut dotenv = HashMap::new();
    for path in env_files {
        match std::fs::read_to_string(path) {
            Ok(text) => dotenv.extend(interpolate::parse_dotenv(&text, &environment).map_err(
                |message| ConfigError::Invalid {
                    origin: path.display().to_string(),
                    message,
                },
            )?),
            Err(err) if optional && err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(Variables::new(environment, dotenv))
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

/// One file: parsed, its `<<` merge keys applied, interpolated, its short forms made long, its
/// `extends` and `include` resolved. Relative paths stay relative to `project_dir` (the first
/// file's folder), except in what `extends` or `include` brings from elsewhere, made absolute.
fn read_file(file: &Path, project_dir: &Path, variables: &Variables) -> Result<Value, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: file.display().to_string(),
        message,
    };
    let mut model = parse_file(file, variables)?;
    resolve_extends(&mut model, file, variables, 0).map_err(invalid)?;
    apply_includes(&mut model, file, project_dir, variables.environment())?;
    Ok(model)
}

/// A file parsed, with merge keys, interpolation and long forms; nothing resolved yet.
fn parse_file(file: &Path, variables: &Variables) -> Result<Value, ConfigError> {
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
    let mut unset = Vec::new();
    let builders = builders(&model);
    interpolate_all(
        &mut model,
        variables,
        &builders,
        &mut Vec::new(),
        &mut unset,
    )
    .map_err(invalid)?;
    for (place, variable) in unset {
        tracing::warn!(
            "{}: {place}: variable {variable} is not set; Compose reads it as an empty string, and \
             so does ecr-build, which builds nothing from it",
            file.display()
        );
    }
    if let Some(Value::Mapping(services)) = model.get_mut("services") {
        for (_, service) in services.iter_mut() {
            normalize_build(service);
        }
    }
    Ok(model)
}

/// How deep `extends` may chain before it is taken for a loop.
const MAX_EXTENDS: usize = 16;

/// Every service's `extends` (`extends: base`, or `{service: base, file: other.yaml}`) resolved:
/// the base service, itself resolved, with this service merged over it, as override files merge.
/// What a service of another file brings has its build context made absolute against that file's
/// folder.
fn resolve_extends(
    model: &mut Value,
    file: &Path,
    variables: &Variables,
    depth: usize,
) -> Result<(), String> {
    let Some(Value::Mapping(services)) = model.get("services") else {
        return Ok(());
    };
    let names: Vec<String> = (services.iter())
        .filter(|(_, service)| service.get("extends").is_some())
        .filter_map(|(name, _)| name.as_str().map(str::to_owned))
        .collect();
    for name in names {
        let resolved = resolved_service(model, &name, file, variables, depth, &mut Vec::new())?;
        model["services"][name.as_str()] = resolved;
    }
    Ok(())
}

fn resolved_service(
    model: &Value,
    name: &str,
    file: &Path,
    variables: &Variables,
    depth: usize,
    chain: &mut Vec<String>,
) -> Result<Value, String> {
    let service = (model.get("services").and_then(|s| s.get(name))).ok_or_else(|| {
        format!(
            "extends names service {name}, which {} does not have",
            file.display()
        )
    })?;
    let Some(extends) = service.get("extends") else {
        return Ok(service.clone());
    };
    if chain.iter().any(|seen| seen == name) || depth + chain.len() > MAX_EXTENDS {
        return Err(format!(
            "services.{name}.extends: a loop ({})",
            chain.join(" → ")
        ));
    }
    chain.push(name.to_owned());
    let (base_name, other_file) = match extends {
        Value::String(base) => (base.clone(), None),
        Value::Mapping(_) => (
            (extends.get("service").and_then(Value::as_str))
                .ok_or_else(|| format!("services.{name}.extends needs `service:`"))?
                .to_owned(),
            extends
                .get("file")
                .and_then(Value::as_str)
                .map(str::to_owned),
        ),
        _ => {
            return Err(format!(
                "services.{name}.extends is neither a name nor a mapping"
            ));
        }
    };
    let mut base = match other_file {
        None => resolved_service(model, &base_name, file, variables, depth, chain)?,
        Some(other) => {
            let dir = file.parent().unwrap_or(Path::new("."));
            let other = dir.join(other);
            let mut other_model = parse_file(&other, variables).map_err(|err| err.to_string())?;
            resolve_extends(&mut other_model, &other, variables, depth + chain.len())?;
            let mut base = resolved_service(
                &other_model,
                &base_name,
                &other,
                variables,
                0,
                &mut Vec::new(),
            )?;
            absolute_context(&mut base, other.parent().unwrap_or(Path::new(".")));
            base
        }
    };
    chain.pop();
    let mut local = service.clone();
    if let Value::Mapping(map) = &mut local {
        map.remove("extends");
    }
    merge(&mut base, local);
    Ok(base)
}

/// A service's build context as an absolute path against `dir` (`.` where it names none).
fn absolute_context(service: &mut Value, dir: &Path) {
    let Some(Value::Mapping(build)) = service.get_mut("build") else {
        return;
    };
    let context = build
        .get("context")
        .and_then(Value::as_str)
        .unwrap_or(".")
        .to_owned();
    if is_remote(&context) {
        return;
    }
    let absolute = dir.join(&context).display().to_string();
    build.insert("context".into(), Value::String(absolute));
}

/// The top-level `include:` of a file: each entry's files read as a project of their own (their
/// own folder, `.env` or `env_file`, relative paths), their services and secrets added. A
/// service both sides define is an error, as in Compose.
fn apply_includes(
    model: &mut Value,
    file: &Path,
    project_dir: &Path,
    environment: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let Some(Value::Sequence(entries)) = model.get("include").cloned() else {
        return Ok(());
    };
    let invalid = |message: String| ConfigError::Invalid {
        origin: file.display().to_string(),
        message,
    };
    let here = file.parent().unwrap_or(project_dir);
    for entry in entries {
        let strings = |value: Option<&Value>| -> Vec<String> {
            match value {
                Some(Value::String(one)) => vec![one.clone()],
                Some(Value::Sequence(many)) => many
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_owned)
                    .collect(),
                _ => Vec::new(),
            }
        };
        let (paths, project_directory, env_files) = match &entry {
            Value::String(path) => (vec![path.clone()], None, Vec::new()),
            Value::Mapping(_) => (
                strings(entry.get("path")),
                entry
                    .get("project_directory")
                    .and_then(Value::as_str)
                    .map(str::to_owned),
                strings(entry.get("env_file")),
            ),
            _ => {
                return Err(invalid(
                    "include: an entry is neither a path nor a mapping".into(),
                ));
            }
        };
        let Some(first) = paths.first() else {
            return Err(invalid("include: an entry names no path".into()));
        };
        let files: Vec<PathBuf> = paths.iter().map(|p| here.join(p)).collect();
        let included_dir = match project_directory {
            Some(dir) => here.join(dir),
            None => here.join(first).parent().unwrap_or(here).to_path_buf(),
        };
        let (env_files, optional) = match env_files.is_empty() {
            true => (vec![included_dir.join(".env")], true),
            false => (env_files.iter().map(|f| here.join(f)).collect(), false),
        };
        let variables = project_variables(&env_files, environment.clone(), optional)?;
        let mut included = Value::Mapping(Mapping::new());
        for file in &files {
            merge(&mut included, read_file(file, &included_dir, &variables)?);
        }
        add_included(model, included, &included_dir).map_err(invalid)?;
    }
    if let Value::Mapping(map) = model {
        map.remove("include");
    }
    Ok(())
}

/// An included project's services (contexts made absolute) and secrets (files made absolute),
/// into `model`.
fn add_included(model: &mut Value, mut included: Value, dir: &Path) -> Result<(), String> {
    if let Some(Value::Mapping(services)) = included.get_mut("services") {
        for (name, service) in services.iter_mut() {
            let name = name.as_str().unwrap_or_default();
            if model.get("services").and_then(|s| s.get(name)).is_some() {
                return Err(format!(
                    "services.{name} is defined here and in an included file; Compose refuses that too"
                ));
            }
            if service.get("build").is_some() {
                absolute_context(service, dir);
            }
        }
    }
    if let Some(Value::Mapping(secrets)) = included.get_mut("secrets") {
        for (_, secret) in secrets.iter_mut() {
            if let Some(Value::String(path)) = secret.get_mut("file") {
                *path = dir.join(&*path).display().to_string();
            }
        }
    }
    let Value::Mapping(model_map) = model else {
        return Ok(());
    };
    for key in ["services", "secrets"] {
        let Some(Value::Mapping(part)) = included.get(key).cloned() else {
            continue;
        };
        let target = model_map
            .entry(key.into())
            .or_insert_with(|| Value::Mapping(Mapping::new()));
        merge(target, Value::Mapping(part));
    }
    Ok(())
}

/// Whether an unset variable at `path` reaches what ecr-build builds or pushes: a service's image,
/// build, extends and x-ecr-build, the top-level x-ecr-build and include. There it is an error;
/// elsewhere (runtime keys), Compose's empty string, with a warning.
/// `builders` are the services that build (or may inherit a build through `extends`): another
/// service's image is no concern of ecr-build's.
fn is_strict(path: &[String], builders: &[String]) -> bool {
    match path {
        [top, ..] if top == "x-ecr-build" || top == "include" => true,
        [services, name, key, ..] if services == "services" => match key.as_str() {
            "build" | "extends" | "x-ecr-build" => true,
            "image" => builders.contains(name),
            _ => false,
        },
        _ => false,
    }
}

/// The services of a model that build, or may inherit a build through `extends`.
fn builders(model: &Value) -> Vec<String> {
    let Some(Value::Mapping(services)) = model.get("services") else {
        return Vec::new();
    };
    (services.iter())
        .filter(|(_, service)| service.get("build").is_some() || service.get("extends").is_some())
        .filter_map(|(name, _)| name.as_str().map(str::to_owned))
        .collect()
}

/// Every string of the model, interpolated; an error names the variable and where it was used.
/// Unset variables where they are no error go into `unset` with their place.
fn interpolate_all(
    value: &mut Value,
    variables: &Variables,
    builders: &[String],
    path: &mut Vec<String>,
    unset: &mut Vec<(String, String)>,
) -> Result<(), String> {
    match value {
        Value::String(text) => {
            let place = path.join(".");
            let result = match is_strict(path, builders) {
                true => variables.interpolate(text).map(|text| (text, Vec::new())),
                false => variables.interpolate_leniently(text),
            };
            let (interpolated, missing) = result.map_err(|err| {
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
            unset.extend(
                missing
                    .into_iter()
                    .map(|variable| (place.clone(), variable)),
            );
            *text = interpolated;
        }
        Value::Sequence(items) => {
            for (index, item) in items.iter_mut().enumerate() {
                path.push(index.to_string());
                interpolate_all(item, variables, builders, path, unset)?;
                path.pop();
            }
        }
        Value::Mapping(map) => {
            for (key, item) in map.iter_mut() {
                path.push(key.as_str().unwrap_or("?").to_owned());
                interpolate_all(item, variables, builders, path, unset)?;
                path.pop();
            }
        }
        Value::Tagged(tagged) => {
            interpolate_all(&mut tagged.value, variables, builders, path, unset)?
        }
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

/// `build: DIR` → `{context: DIR}`; `args` and `labels` as lists of `K=V` → mappings (`- NAME`
/// without a value is an arg without one).
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
                    None => map.insert(item.into(), Value::Null),
                };
            }
            build[key] = Value::Mapping(map);
        }
    }
}

/// An arg without a value (`- TOKEN`, `TOKEN:`) takes it from the environment or the project's
/// `.env` (an included project's own `.env` too is no source), as Compose does, and stays unset
/// where neither has it.
fn resolve_valueless_args(model: &mut Value, variables: &Variables) {
    let Some(Value::Mapping(services)) = model.get_mut("services") else {
        return;
    };
    for (_, service) in services.iter_mut() {
        let Some(Value::Mapping(args)) = service.get_mut("build").and_then(|b| b.get_mut("args"))
        else {
            continue;
        };
        for (name, value) in args.iter_mut() {
            if value.is_null()
                && let Some(found) = name.as_str().and_then(|name| variables.lookup(name))
            {
                *value = Value::String(found.to_owned());
            }
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
    let settings: ServiceSettings = match service.get("x-ecr-build") {
        Some(value) => {
            serde_norway::from_value(value.clone()).map_err(|err| format!("x-ecr-build: {err}"))?
        }
        None => ServiceSettings::default(),
    };
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
        settings,
    })
}

/// A build context that Compose fetches rather than reads from disk.
fn is_remote(context: &str) -> bool {
    [
        "http://",
        "https://",
        "git://",
        "git@",
        "ssh://",
        "github.com/",
    ]
    .iter()
    .any(|prefix| context.starts_with(prefix))
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
