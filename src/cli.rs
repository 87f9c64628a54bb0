//! The raw command line. Every flag has an `ECR_BUILD_*` twin; [`crate::config`] turns this into a plan.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(name = "ecr-build", version, about, propagate_version = true)]
pub struct Cli {
    /// More detail on stderr (-v: debug lines and AWS SDK info; -vv: trace)
    #[arg(short, long, global = true, action = ArgAction::Count, env = "ECR_BUILD_VERBOSE")]
    pub verbose: u8,

    /// Only warnings and errors on stderr
    #[arg(
        short,
        long,
        global = true,
        env = "ECR_BUILD_QUIET",
        conflicts_with = "verbose"
    )]
    pub quiet: bool,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Log in to ECR, build, tag and push every image, then write the deploy artifacts
    Build(BuildArgs),
    /// Print the resolved images, tags and URIs as JSON; builds nothing
    Plan(PlanArgs),
    /// Container entrypoint: export the SSM parameters under a prefix as environment variables, then
    /// become CMD (execvp, no shell)
    Exec(ExecArgs),
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub plan: PlanArgs,

    /// Build and tag locally; no AWS call, no push. Artifacts name the URIs that would be pushed
    #[arg(long, env = "ECR_BUILD_DRY_RUN")]
    pub dry_run: bool,

    /// Build every image, even one whose context digest tag (ctx-…) is already in the registry
    /// (a moving base tag such as node:20 is looked at again only when an image is built)
    #[arg(long, env = "ECR_BUILD_REBUILD")]
    pub rebuild: bool,

    /// Directory for imagedefinitions.json, imageDetail.json and build.json (overrides [artifacts] dir)
    #[arg(long, value_name = "DIR", env = "ECR_BUILD_OUTPUT_DIR")]
    pub output_dir: Option<PathBuf>,

    /// What imagedefinitions.json and imageDetail.json name: tag (REGISTRY/REPO:TAG) or digest
    /// (REGISTRY/REPO@sha256:…) [default: [artifacts] image_uri, else tag]
    #[arg(long, value_enum, env = "ECR_BUILD_IMAGE_URI")]
    pub image_uri: Option<ImageUriArg>,

    /// How many images build and push at once [default: number of CPUs, at least 4]
    #[arg(long, value_name = "N", env = "ECR_BUILD_JOBS")]
    pub jobs: Option<usize>,

    /// Seconds a push or registry call is retried while the registry is unreachable or failing (5xx)
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "ECR_BUILD_PUSH_RETRY_SECONDS"
    )]
    pub push_retry_seconds: u64,

    /// Seconds to wait for a Docker daemon that is still starting
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 30,
        env = "ECR_BUILD_DOCKER_TIMEOUT"
    )]
    pub docker_timeout: u64,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Configuration file [default: ./ecr-build.toml when no --repository is given]
    #[arg(long, short = 'c', value_name = "FILE", env = "ECR_BUILD_CONFIG")]
    pub config: Option<PathBuf>,

    /// Compose file whose services with `build:` are the images, repeatable, merged in order as
    /// `docker compose -f A -f B` merges them [default: the config's `compose`, else Compose's
    /// default files when there is no ecr-build.toml]
    #[arg(
        long,
        value_name = "FILE",
        env = "ECR_BUILD_COMPOSE",
        value_delimiter = ','
    )]
    pub compose: Vec<PathBuf>,

    /// Compose profile to enable, repeatable, as `docker compose --profile` (services with
    /// `profiles:` build only when one of theirs is enabled; `*` enables all)
    #[arg(
        long = "profile",
        value_name = "NAME",
        env = "COMPOSE_PROFILES",
        value_delimiter = ','
    )]
    pub profiles: Vec<String>,

    /// Registry host to push to, e.g. 123456789012.dkr.ecr.eu-west-1.amazonaws.com [default: the ECR login's endpoint]
    #[arg(long, value_name = "HOST", env = "ECR_BUILD_REGISTRY")]
    pub registry: Option<String>,

    /// Only these of the configured platforms (fan-out: one CodeBuild job per platform). A run
    /// restricted by --platform or --only pushes its part under its ctx- tags and writes no artifact
    #[arg(
        long = "platform",
        value_name = "PLATFORM",
        env = "ECR_BUILD_PLATFORM",
        value_delimiter = ','
    )]
    pub platforms: Vec<String>,

    /// Only these images (by name), as a partial run (see --platform)
    #[arg(
        long,
        value_name = "NAME",
        env = "ECR_BUILD_ONLY",
        value_delimiter = ','
    )]
    pub only: Vec<String>,

    /// Commit SHA (40 hex) [default: CODEBUILD_RESOLVED_SOURCE_VERSION, CODEBUILD_SOURCE_VERSION, git rev-parse HEAD]
    #[arg(long, value_name = "SHA", env = "ECR_BUILD_SHA")]
    pub sha: Option<String>,

    /// Tag template, repeatable; the first is the primary tag. Replaces the config's `tags`
    #[arg(
        long = "tag",
        value_name = "TEMPLATE",
        env = "ECR_BUILD_TAG",
        value_delimiter = ','
    )]
    pub tags: Vec<String>,

    /// Network mode for RUN steps (docker build --network), e.g. none or host
    #[arg(long, value_name = "MODE", env = "ECR_BUILD_NETWORK")]
    pub network: Option<String>,

    /// BuildKit's cache: max or min (a registry cache in ECR, `buildcache` tag; the default),
    /// inline (in the image only) or off
    #[arg(long, value_name = "MODE", env = "ECR_BUILD_CACHE")]
    pub cache: Option<CacheArg>,

    /// Read every Docker Hub base image from this mirror instead, e.g. an ECR pull-through cache
    /// rule's prefix ACCOUNT.dkr.ecr.REGION.amazonaws.com/docker-hub, or public.ecr.aws/docker
    #[arg(long, value_name = "PREFIX", env = "ECR_BUILD_BASE_IMAGE_MIRROR")]
    pub base_image_mirror: Option<String>,

    /// Build secret ID=SOURCE (ssm:NAME, env:VAR or file:PATH), repeatable: replaces the source of
    /// secret ID in every image, or adds it; in a dry run, stands in for ssm: sources
    #[arg(
        long = "secret",
        value_name = "ID=SOURCE",
        env = "ECR_BUILD_SECRET",
        value_delimiter = ','
    )]
    pub secrets: Vec<String>,

    /// Builder: buildkit (default) or legacy
    #[arg(long, value_enum, env = "ECR_BUILD_BUILDER")]
    pub builder: Option<BuilderArg>,

    #[command(flatten)]
    pub single: SingleImageArgs,
}

/// One image without a config file.
#[derive(Debug, Args, Default)]
pub struct SingleImageArgs {
    /// Container name of the image in the ECS task definition [default: last part of --repository]
    #[arg(
        long,
        value_name = "NAME",
        env = "ECR_BUILD_NAME",
        requires = "repository"
    )]
    pub name: Option<String>,

    /// ECR repository, e.g. myapp/web; builds one image without a config file
    #[arg(long, value_name = "REPOSITORY", env = "ECR_BUILD_REPOSITORY")]
    pub repository: Option<String>,

    /// Build context directory
    #[arg(
        long,
        value_name = "DIR",
        env = "ECR_BUILD_CONTEXT",
        requires = "repository"
    )]
    pub context: Option<PathBuf>,

    /// Dockerfile, relative to the context [default: Dockerfile]
    #[arg(
        long,
        value_name = "FILE",
        env = "ECR_BUILD_DOCKERFILE",
        requires = "repository"
    )]
    pub dockerfile: Option<PathBuf>,

    /// Build stage to stop at
    #[arg(
        long,
        value_name = "STAGE",
        env = "ECR_BUILD_TARGET",
        requires = "repository"
    )]
    pub target: Option<String>,

    /// Image to reuse the BuildKit cache of (REPO:TAG in the registry, or a full reference), repeatable
    #[arg(
        long = "cache-from",
        value_name = "IMAGE",
        env = "ECR_BUILD_CACHE_FROM",
        value_delimiter = ',',
        requires = "repository"
    )]
    pub cache_from: Vec<String>,

    /// Repository that holds the image's registry cache [default: the image's own]
    #[arg(
        long = "cache-repository",
        value_name = "REPOSITORY",
        env = "ECR_BUILD_CACHE_REPOSITORY",
        requires = "repository"
    )]
    pub cache_repository: Option<String>,

    /// Build argument KEY=VALUE, repeatable
    #[arg(
        long = "build-arg",
        value_name = "KEY=VALUE",
        env = "ECR_BUILD_BUILD_ARG",
        requires = "repository"
    )]
    pub build_args: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// SSM Parameter Store prefix to export: a path (/myapp/prod) or a dotted prefix (myapp.prod) [default: PARAMETER_STORE_PREFIX; none: no AWS call]
    #[arg(long, value_name = "PREFIX", env = "ECR_BUILD_SSM_PATH")]
    pub ssm_path: Option<String>,

    /// Let parameters replace variables that are already set in the environment
    #[arg(long = "override", env = "ECR_BUILD_OVERRIDE")]
    pub override_existing: bool,

    /// The command and its arguments
    #[arg(
        value_name = "CMD",
        required = true,
        trailing_var_arg = true,
        allow_hyphen_values = true
    )]
    pub command: Vec<OsString>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ImageUriArg {
    Tag,
    Digest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheArg {
    Max,
    Min,
    Inline,
    Off,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuilderArg {
    Buildkit,
    Legacy,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_env_twin() {
        fn check(command: &clap::Command, path: &str) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if matches!(id, "help" | "version") || arg.is_positional() {
                    continue;
                }
                let env = arg
                    .get_env()
                    .unwrap_or_else(|| panic!("{path} --{id} has no ECR_BUILD_* twin"));
                // Compose's own variable, as the docker CLI spells it, is --profile's twin.
                let compose_twin = id == "profiles" && env == "COMPOSE_PROFILES";
                assert!(
                    env.to_string_lossy().starts_with("ECR_BUILD_") || compose_twin,
                    "{path} --{id}"
                );
            }
            for sub in command.get_subcommands() {
                check(sub, &format!("{path} {}", sub.get_name()));
            }
        }
        check(&Cli::command(), "ecr-build");
    }
}
