//! A plan from the flags alone: one image, `--repository` and its neighbours.

use std::path::{Path, PathBuf};

use super::{
    ArtifactFlags, ArtifactsSection, ConfigError, ImagePlan, Plan, PlanParts, RunSettings, clean,
    finish, parse_secret_overrides,
};
use crate::cli::{PlanArgs, SingleImageArgs};

pub(super) fn plan_from_flags(
    args: &PlanArgs,
    flags: ArtifactFlags<'_>,
    cwd: &Path,
) -> Result<Plan, ConfigError> {
    let SingleImageArgs {
        name,
        repository,
        context,
        dockerfile,
        target,
        build_args,
        cache_from,
        cache_repository,
    } = &args.single;
    let repository = repository.clone().unwrap_or_default();
    let name = name.clone().unwrap_or_else(|| {
        repository
            .rsplit('/')
            .next()
            .unwrap_or(&repository)
            .to_owned()
    });
    let context = clean(&cwd.join(context.clone().unwrap_or_else(|| PathBuf::from("."))));
    let dockerfile = clean(
        &context.join(
            dockerfile
                .clone()
                .unwrap_or_else(|| PathBuf::from("Dockerfile")),
        ),
    );
    let build_args = build_args
        .iter()
        .map(|pair| {
            pair.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| ConfigError::Usage(format!("--build-arg `{pair}` is not KEY=VALUE")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    finish(
        PlanParts {
            settings: RunSettings::from_flags(args),
            secret_overrides: parse_secret_overrides(args, cwd)?,
            artifacts: ArtifactsSection::default().settings(flags, cwd, cwd),
            images: vec![ImagePlan {
                target: target.clone(),
                build_args,
                cache_from: cache_from.clone(),
                cache_repository: cache_repository.clone(),
                ..ImagePlan::new(name, repository, context.clone(), dockerfile)
            }],
            source_dir: context,
        },
        "command line",
    )
}
