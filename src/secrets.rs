//! Build secrets: every image's values, read before any build starts, from SSM (all names of all
//! images in batched GetParameters calls; each `ssm_path` once), the environment and files. Values
//! stay in memory, are registered with the log redactor the moment they are read, and are served
//! only on their image's build session.

use std::collections::HashMap;

use crate::aws::{Secret, ssm};
use crate::config::{ImagePlan, Plan, SecretSource};
use crate::error::{Error, Result};
use crate::output::redactor;

/// Secret values of one image, by id.
pub(crate) type SecretValues = HashMap<String, Vec<u8>>;

/// BuildKit refuses secrets over 500 KiB; say so before the build instead of in the middle of it.
const MAX_SECRET_BYTES: usize = 500 * 1024;

/// What SSM returned for the whole run.
#[derive(Default)]
struct SsmValues {
    by_name: HashMap<String, Vec<u8>>,
    /// Each `ssm_path`'s parameters under their secret ids.
    by_path: HashMap<String, Vec<(String, Vec<u8>)>>,
}

/// Every image's secrets, in plan order. `ssm` is `None` in a dry run, where `ssm:` sources must
/// have been replaced with `--secret` and `ssm_path` is not read.
pub(crate) async fn resolve(
    plan: &Plan,
    ssm: Option<(&aws_sdk_ssm::Client, &str)>,
) -> Result<Vec<SecretValues>> {
    let from_ssm = match ssm {
        None => {
            check_dry_run(plan)?;
            SsmValues::default()
        }
        Some((client, region)) => read_ssm(plan, client, region).await?,
    };
    plan.images
        .iter()
        .map(|image| image_values(image, &from_ssm))
        .collect()
}

async fn read_ssm(plan: &Plan, client: &aws_sdk_ssm::Client, region: &str) -> Result<SsmValues> {
    let mut values = SsmValues::default();
    let mut names: Vec<String> = Vec::new();
    for (_, source) in plan.images.iter().flat_map(|image| &image.secrets) {
        if let SecretSource::Ssm(name) = source
            && !names.contains(name)
        {
            names.push(name.clone());
        }
    }
    if !names.is_empty() {
        for (name, value) in ssm::get_parameters(client, region, &names).await? {
            values
                .by_name
                .insert(name, value.expose().as_bytes().to_vec());
        }
    }
    for path in plan.images.iter().filter_map(|i| i.ssm_path.as_ref()) {
        if !values.by_path.contains_key(path) {
            let ids = ids_under_path(
                path,
                ssm::get_parameters_by_path(client, region, path).await?,
            )?;
            values.by_path.insert(path.clone(), ids);
        }
    }
    Ok(values)
}

/// Each parameter under an `ssm_path` becomes the secret named by its last path segment; two
/// parameters for one id are an error naming both, never a silent choice.
fn ids_under_path(path: &str, parameters: Vec<(String, Secret)>) -> Result<Vec<(String, Vec<u8>)>> {
    let mut ids: Vec<(String, String, Vec<u8>)> = Vec::with_capacity(parameters.len());
    let mut clashes = Vec::new();
    for (name, value) in parameters {
        let id = name.rsplit('/').next().unwrap_or(&name).to_owned();
        match ids.iter().find(|(known, _, _)| *known == id) {
            Some((_, other, _)) => clashes.push(format!(
                "SSM parameters {other} and {name} both become secret id {id}"
            )),
            None => ids.push((id, name, value.expose().as_bytes().to_vec())),
        }
    }
    if !clashes.is_empty() {
        return Err(Error::usage(format!(
            "ssm_path {path}: {}; rename one, or give it an id of its own with secrets = {{ ID = \"ssm:NAME\" }}",
            clashes.join("; ")
        )));
    }
    Ok(ids.into_iter().map(|(id, _, value)| (id, value)).collect())
}

/// A dry run makes no AWS call: every `ssm:` source must have been replaced with `--secret`.
fn check_dry_run(plan: &Plan) -> Result<()> {
    let needs_ssm: Vec<String> = plan
        .images
        .iter()
        .flat_map(|image| {
            image
                .secrets
                .iter()
                .filter(|(_, source)| matches!(source, SecretSource::Ssm(_)))
                .map(move |(id, source)| format!("{}: {id} = {source}", image.name))
        })
        .collect();
    if !needs_ssm.is_empty() {
        return Err(Error::usage(format!(
            "a dry run makes no AWS call, so these secrets have no value: {}; give each with \
             --secret ID=env:VAR or --secret ID=file:PATH",
            needs_ssm.join("; ")
        )));
    }
    for image in plan.images.iter().filter(|i| i.ssm_path.is_some()) {
        tracing::warn!(
            image = image.name.as_str(),
            "dry run: ssm_path {} is not read (no AWS call); its secrets are left out unless given with --secret",
            image.ssm_path.as_deref().unwrap_or_default()
        );
    }
    Ok(())
}

/// One image's values: its `ssm_path` first, then its own `secrets`, which win on the same id.
fn image_values(image: &ImagePlan, from_ssm: &SsmValues) -> Result<SecretValues> {
    let mut values = SecretValues::new();
    if let Some(path) = &image.ssm_path {
        for (id, value) in from_ssm.by_path.get(path).into_iter().flatten() {
            values.insert(id.clone(), value.clone());
        }
    }
    for (id, source) in &image.secrets {
        let value = read_source(image, id, source, from_ssm)?;
        if let Ok(text) = std::str::from_utf8(&value) {
            redactor().add(text);
        }
        values.insert(id.clone(), value);
    }
    if let Some((id, value)) = values.iter().find(|(_, v)| v.len() > MAX_SECRET_BYTES) {
        return Err(anyhow::anyhow!(
            "image {}: secret {id} is {} bytes; BuildKit accepts at most {MAX_SECRET_BYTES}",
            image.name,
            value.len()
        )
        .into());
    }
    Ok(values)
}

fn read_source(
    image: &ImagePlan,
    id: &str,
    source: &SecretSource,
    from_ssm: &SsmValues,
) -> Result<Vec<u8>> {
    match source {
        SecretSource::Ssm(name) => from_ssm.by_name.get(name).cloned().ok_or_else(|| {
            anyhow::anyhow!(
                "image {}: SSM parameter {name} for secret {id} was not returned",
                image.name
            )
            .into()
        }),
        SecretSource::Env(var) => std::env::var_os(var)
            .map(std::os::unix::ffi::OsStringExt::into_vec)
            .ok_or_else(|| {
                Error::usage(format!(
                    "image {}: secret {id} comes from environment variable {var}, which is not set",
                    image.name
                ))
            }),
        SecretSource::File(path) => std::fs::read(path).map_err(|err| {
            Error::usage(format!(
                "image {}: secret {id} comes from {}: {err}",
                image.name,
                path.display()
            ))
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parameter(name: &str, value: &str) -> (String, Secret) {
        (name.to_owned(), Secret::new(value))
    }

    #[test]
    fn ids_are_the_last_path_segment() {
        let ids = ids_under_path(
            "/app/prod/",
            vec![
                parameter("/app/prod/DB_PASSWORD", "a"),
                parameter("/app/prod/api/TOKEN", "b"),
            ],
        )
        .unwrap();
        assert_eq!(
            ids,
            vec![
                ("DB_PASSWORD".to_owned(), b"a".to_vec()),
                ("TOKEN".to_owned(), b"b".to_vec())
            ]
        );
    }

    #[test]
    fn two_parameters_for_one_id_are_an_error_naming_both() {
        let err = ids_under_path(
            "/app/prod/",
            vec![
                parameter("/app/prod/db/PASSWORD", "a"),
                parameter("/app/prod/cache/PASSWORD", "b"),
            ],
        )
        .unwrap_err();
        assert_eq!(err.code(), 2);
        let message = err.to_string();
        assert!(
            message.contains("/app/prod/db/PASSWORD")
                && message.contains("/app/prod/cache/PASSWORD")
                && message.contains("secret id PASSWORD"),
            "{message}"
        );
    }
}
