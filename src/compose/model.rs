//! One Compose file as a model: parsed, its `<<` merge keys applied, interpolated (strictly where
//! a value reaches what ecr-build builds or pushes), its short forms made long; and models merged
//! as `docker compose -f A -f B` merges them.

use std::path::Path;

use serde_norway::{Mapping, Value};

use super::ComposeError;
use super::interpolate::{InterpolationError, Variables};

/// A file parsed, with merge keys, interpolation and long forms; nothing resolved yet.
pub(super) fn parse_file(file: &Path, variables: &Variables) -> Result<Value, ComposeError> {
    let text = std::fs::read_to_string(file).map_err(|source| ComposeError::Read {
        path: file.to_owned(),
        source,
    })?;
    let invalid = |message: String| ComposeError::Invalid {
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
pub(super) fn resolve_valueless_args(model: &mut Value, variables: &Variables) {
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
pub(super) fn merge(base: &mut Value, next: Value) {
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

/// A build context that Compose fetches rather than reads from disk.
pub(super) fn is_remote(context: &str) -> bool {
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
