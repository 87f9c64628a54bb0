//! A Compose file with what it brings from elsewhere: `extends` (the same file, or another) and
//! top-level `include:` (another project, with its own folder and `.env`). Paths that come from
//! another folder are made absolute there.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use serde_norway::{Mapping, Value};

use super::ComposeError;
use super::interpolate::{self, Variables};
use super::model::{is_remote, merge, parse_file};

/// The environment, then the env files (each read as Compose reads `.env`; a missing one is no
/// error where `optional`).
pub(super) fn project_variables(
    env_files: &[PathBuf],
    environment: HashMap<String, String>,
    optional: bool,
) -> Result<Variables, ComposeError> {
    let mut dotenv = HashMap::new();
    for path in env_files {
        match std::fs::read_to_string(path) {
            Ok(text) => dotenv.extend(interpolate::parse_dotenv(&text, &environment).map_err(
                |message| ComposeError::Invalid {
                    origin: path.display().to_string(),
                    message,
                },
            )?),
            Err(err) if optional && err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(ComposeError::Read {
                    path: path.clone(),
                    source,
                });
            }
        }
    }
    Ok(Variables::new(environment, dotenv))
}

/// One file: parsed, its `<<` merge keys applied, interpolated, its short forms made long, its
/// `extends` and `include` resolved. Relative paths stay relative to `project_dir` (the first
/// file's folder), except in what `extends` or `include` brings from elsewhere, made absolute.
pub(super) fn read_file(
    file: &Path,
    project_dir: &Path,
    variables: &Variables,
) -> Result<Value, ComposeError> {
    let invalid = |message: String| ComposeError::Invalid {
        origin: file.display().to_string(),
        message,
    };
    let mut model = parse_file(file, variables)?;
    resolve_extends(&mut model, file, variables, 0).map_err(invalid)?;
    apply_includes(&mut model, file, project_dir, variables.environment())?;
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
) -> Result<(), ComposeError> {
    let Some(Value::Sequence(entries)) = model.get("include").cloned() else {
        return Ok(());
    };
    let invalid = |message: String| ComposeError::Invalid {
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
