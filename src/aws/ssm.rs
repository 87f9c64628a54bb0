//! AWS Systems Manager Parameter Store: named parameters (GetParameters), everything under a path
//! (GetParametersByPath) and names beginning with a dotted prefix (DescribeParameters). Always with
//! decryption, and every value is registered with the log redactor the moment it arrives.

use std::collections::{HashMap, HashSet};

use anyhow::Result;
use aws_sdk_ssm::Client;
use aws_sdk_ssm::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssm::types::ParameterStringFilter;
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use futures_util::{StreamExt as _, stream};

use super::Secret;
use crate::output::redactor;

/// GetParameters takes 1 to 10 names per call (the SDK does not check; an 11th is a ValidationException).
pub(crate) const MAX_NAMES_PER_CALL: usize = 10;

/// GetParameters calls in flight at once: well under SSM's default throughput quota.
const CONCURRENT_CALLS: usize = 4;

/// The failures a caller may want to tell apart; anything else is a plain `anyhow` error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SsmError {
    /// Every name that does not exist (or whose version or label does not), from all calls at once.
    #[error("SSM parameters not found in {region}: {}", names.join(", "))]
    Missing { region: String, names: Vec<String> },
    /// IAM said no.
    #[error("{action} on {target} was denied in {region}: {hint}")]
    Denied {
        action: &'static str,
        region: String,
        /// What was asked for: `parameters /a, /b`, `path /app/prod`, ...
        target: String,
        hint: String,
        source: super::SdkFailure,
    },
    /// Anything else the call returned.
    #[error("{action} on {target} failed in {region}")]
    Failed {
        action: &'static str,
        region: String,
        target: String,
        source: super::SdkFailure,
    },
}

const KMS_HINT: &str = "SecureString values also need kms:Decrypt on the KMS key that encrypts them \
                        (when that is a customer managed key)";

/// ssm:GetParameters with decryption: the values of `names`, keyed by the names as asked (`name`,
/// `name:version`, `name:label` or an ARN), in the order asked, each asked once. Unknown names fail the
/// call with one [`SsmError::Missing`] that lists every one of them.
pub(crate) async fn get_parameters(
    client: &Client,
    region: &str,
    names: &[String],
) -> Result<Vec<(String, Secret)>> {
    let calls = batches(names)
        .into_iter()
        .map(|batch| get_parameters_batch(client, region, batch));
    let answers: Vec<Result<BatchAnswer>> = stream::iter(calls)
        .buffered(CONCURRENT_CALLS)
        .collect()
        .await;
    let mut found = Vec::new();
    let mut missing = Vec::new();
    for answer in answers {
        let answer = answer?;
        found.extend(answer.found);
        missing.extend(answer.missing);
    }
    let order: HashMap<&str, usize> = names
        .iter()
        .enumerate()
        .rev()
        .map(|(index, name)| (name.as_str(), index))
        .collect();
    let position = |name: &str| order.get(name).copied().unwrap_or(usize::MAX);
    if !missing.is_empty() {
        missing.sort_by_key(|name| position(name));
        return Err(SsmError::Missing {
            region: region.to_owned(),
            names: missing,
        }
        .into());
    }
    found.sort_by_key(|(name, _)| position(name));
    Ok(found
        .into_iter()
        .map(|(name, value)| (name, Secret(value)))
        .collect())
}

struct BatchAnswer {
    found: Vec<(String, String)>,
    missing: Vec<String>,
}

async fn get_parameters_batch(
    client: &Client,
    region: &str,
    batch: Vec<String>,
) -> Result<BatchAnswer> {
    let output = client
        .get_parameters()
        .set_names(Some(batch.clone()))
        .with_decryption(true)
        .send()
        .await
        .map_err(|err| {
            call_error(
                err,
                "ssm:GetParameters",
                region,
                format!("parameters {}", batch.join(", ")),
                format!("the role needs ssm:GetParameters on these parameters, and {KMS_HINT}"),
            )
        })?;
    let returned = output
        .parameters()
        .iter()
        .filter_map(|parameter| {
            let value = parameter.value()?;
            redactor().add(value);
            Some((parameter.name()?.to_owned(), value.to_owned()))
        })
        .collect();
    let (found, missing) = match_answer(&batch, returned);
    Ok(BatchAnswer { found, missing })
}

/// ssm:GetParametersByPath, recursive, with decryption, every page: `(name, value)` of each parameter
/// below `path` (which must start with `/`; dotted names have no path: see [`names_beginning_with`]).
pub(crate) async fn get_parameters_by_path(
    client: &Client,
    region: &str,
    path: &str,
) -> Result<Vec<(String, Secret)>> {
    anyhow::ensure!(
        path.starts_with('/'),
        "SSM path {path:?} does not start with /: GetParametersByPath finds hierarchical names only"
    );
    let mut pages = client
        .get_parameters_by_path()
        .path(path)
        .recursive(true)
        .with_decryption(true)
        .max_results(10)
        .into_paginator()
        .send();
    let mut found = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| {
            call_error(
                err,
                "ssm:GetParametersByPath",
                region,
                format!("path {path}"),
                format!(
                    "the role needs ssm:GetParametersByPath on the path \
                     (arn:aws:ssm:{region}:ACCOUNT:parameter{path}), and {KMS_HINT}"
                ),
            )
        })?;
        for parameter in page.parameters() {
            if let (Some(name), Some(value)) = (parameter.name(), parameter.value()) {
                redactor().add(value);
                found.push((name.to_owned(), Secret(value.to_owned())));
            }
        }
    }
    Ok(found)
}

/// ssm:DescribeParameters with the filter `Name BeginsWith prefix`, every page: the names only (no
/// values). This is how single-level dotted names (`app.prod.db.password`) are found.
pub(crate) async fn names_beginning_with(
    client: &Client,
    region: &str,
    prefix: &str,
) -> Result<Vec<String>> {
    let filter = ParameterStringFilter::builder()
        .key("Name")
        .option("BeginsWith")
        .values(prefix)
        .build()?;
    let mut pages = client
        .describe_parameters()
        .parameter_filters(filter)
        .max_results(50)
        .into_paginator()
        .send();
    let mut names = Vec::new();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|err| {
            call_error(
                err,
                "ssm:DescribeParameters",
                region,
                format!("names beginning with {prefix}"),
                "the role needs ssm:DescribeParameters with \"Resource\": \"*\" (it cannot be scoped \
                 to parameters)"
                    .to_owned(),
            )
        })?;
        names.extend(
            page.parameters()
                .iter()
                .filter_map(|parameter| parameter.name().map(str::to_owned)),
        );
    }
    Ok(names)
}

fn call_error<E>(
    err: SdkError<E, HttpResponse>,
    action: &'static str,
    region: &str,
    target: String,
    hint: String,
) -> anyhow::Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let region = region.to_owned();
    let denied = super::is_access_denied(&err);
    let source: super::SdkFailure = Box::new(err);
    if denied {
        SsmError::Denied {
            action,
            region,
            target,
            hint,
            source,
        }
        .into()
    } else {
        SsmError::Failed {
            action,
            region,
            target,
            source,
        }
        .into()
    }
}

/// The parameter a name stands for, as SSM names it in answers: without `:version` or `:label`, the
/// name inside an ARN, and without the optional `/` of a single-level name (`/a` and `a` are the same
/// parameter).
fn parameter_of(name: &str) -> &str {
    let plain = match name.strip_prefix("arn:") {
        // arn:PARTITION:ssm:REGION:ACCOUNT:parameter/NAME[:SELECTOR]
        Some(rest) => match rest.split(':').nth(4) {
            Some(resource) => resource.strip_prefix("parameter").unwrap_or(resource),
            None => name,
        },
        None => name.split(':').next().unwrap_or(name),
    };
    match plain.strip_prefix('/') {
        Some(single) if !single.contains('/') => single,
        _ => plain,
    }
}

/// Each distinct name once, at most [`MAX_NAMES_PER_CALL`] per call, and never two names for the same
/// parameter in one call (`/a:1` and `/a:2`), so that every answer maps back to the name asked.
fn batches(names: &[String]) -> Vec<Vec<String>> {
    let mut seen = HashSet::new();
    let mut batches: Vec<Vec<String>> = Vec::new();
    for name in names {
        if !seen.insert(name.as_str()) {
            continue;
        }
        let parameter = parameter_of(name);
        let fits = |batch: &Vec<String>| {
            batch.len() < MAX_NAMES_PER_CALL && batch.iter().all(|n| parameter_of(n) != parameter)
        };
        match batches.iter_mut().find(|batch| fits(batch)) {
            Some(batch) => batch.push(name.clone()),
            None => batches.push(vec![name.clone()]),
        }
    }
    batches
}

/// Pairs one call's answer with the names asked: `(found as (asked name, value), missing asked names)`.
/// A name counts as missing unless a parameter came back for it, whether or not SSM listed it in
/// InvalidParameters.
fn match_answer(
    asked: &[String],
    returned: Vec<(String, String)>,
) -> (Vec<(String, String)>, Vec<String>) {
    let mut by_parameter: HashMap<&str, &String> = asked
        .iter()
        .map(|name| (parameter_of(name), name))
        .collect();
    let mut found = Vec::new();
    for (name, value) in returned {
        match by_parameter.remove(parameter_of(&name)) {
            Some(asked_name) => found.push((asked_name.clone(), value)),
            None => tracing::debug!("SSM returned parameter {name}, which was not asked for"),
        }
    }
    let missing = asked
        .iter()
        .filter(|name| by_parameter.contains_key(parameter_of(name)))
        .cloned()
        .collect();
    (found, missing)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn selectors_and_arns_name_their_parameter() {
        assert_eq!(parameter_of("/app/prod/DB"), "/app/prod/DB");
        assert_eq!(parameter_of("/app/prod/DB:3"), "/app/prod/DB");
        assert_eq!(parameter_of("/app/prod/DB:live"), "/app/prod/DB");
        assert_eq!(parameter_of("rds_pass"), "rds_pass");
        assert_eq!(parameter_of("/rds_pass"), "rds_pass");
        assert_eq!(parameter_of("/rds_pass:2"), "rds_pass");
        assert_eq!(
            parameter_of("kptboard.prod.secret.key.base"),
            "kptboard.prod.secret.key.base"
        );
        assert_eq!(
            parameter_of("arn:aws:ssm:eu-west-1:123456789012:parameter/app/prod/DB"),
            "/app/prod/DB"
        );
        assert_eq!(
            parameter_of("arn:aws:ssm:eu-west-1:123456789012:parameter/app/prod/DB:7"),
            "/app/prod/DB"
        );
        assert_eq!(
            parameter_of("arn:aws:ssm:eu-west-1:123456789012:parameter/rds_pass"),
            "rds_pass"
        );
    }

    #[test]
    fn at_most_ten_names_per_call_each_asked_once() {
        let many: Vec<String> = (0..25).map(|i| format!("/app/P{i}")).collect();
        let mut asked = many.clone();
        asked.extend(many.iter().take(5).cloned());
        let batches = batches(&asked);
        assert_eq!(
            batches.iter().map(Vec::len).collect::<Vec<_>>(),
            [10, 10, 5]
        );
        assert_eq!(batches.concat(), many);
        assert!(super::batches(&[]).is_empty());
    }

    #[test]
    fn two_names_for_one_parameter_go_to_different_calls() {
        let asked = names(&["/a:1", "/b", "/a:2", "/a", "a", "/a:2"]);
        let batches = batches(&asked);
        assert_eq!(
            batches,
            [
                names(&["/a:1", "/b"]),
                names(&["/a:2"]),
                names(&["/a"]),
                names(&["a"])
            ]
        );
    }

    #[test]
    fn answers_map_back_to_the_names_asked() {
        let asked = names(&["/app/DB:2", "/rds_pass", "/app/GONE", "x.y:live"]);
        // SSM answers with plain names; single-level names without their `/`.
        let returned = vec![
            ("rds_pass".to_owned(), "v2".to_owned()),
            ("/app/DB".to_owned(), "v1".to_owned()),
            ("x.y".to_owned(), "v3".to_owned()),
            ("/unasked".to_owned(), "v4".to_owned()),
        ];
        let (found, missing) = match_answer(&asked, returned);
        assert_eq!(
            found,
            [
                ("/rds_pass".to_owned(), "v2".to_owned()),
                ("/app/DB:2".to_owned(), "v1".to_owned()),
                ("x.y:live".to_owned(), "v3".to_owned()),
            ]
        );
        assert_eq!(missing, names(&["/app/GONE"]));
    }

    #[test]
    fn missing_names_are_listed_in_one_error() {
        let err = SsmError::Missing {
            region: "eu-west-1".into(),
            names: names(&["/a", "/b"]),
        };
        assert_eq!(
            err.to_string(),
            "SSM parameters not found in eu-west-1: /a, /b"
        );
    }
}
