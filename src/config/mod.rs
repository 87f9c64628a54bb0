//! ecr-build.toml and the command line, merged into a validated [`Plan`]. Only reading the config file
//! touches the outside world; everything after that is pure.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use std::fmt;

use serde::Deserialize;

use crate::cli::{BuilderArg, CacheArg, ImageUriArg, PlanArgs};
use crate::reference::normalize_registry;
use crate::tags::TagTemplate;

mod checks;
mod from_compose;
mod from_file;
mod from_flags;

use checks::{artifacts_plan, check_commit, check_images, check_network, check_tags};

use from_compose::plan_from_compose;
use from_file::{ConfigFile, parse_config_file, plan_from_file};
use from_flags::plan_from_flags;

pub(crate) const DEFAULT_CONFIG_FILE: &str = "ecr-build.toml";
const DEFAULT_TAG: &str = "{sha}";

/// Bad usage or bad configuration: the run stops before any build, with exit status 2.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}:{column}: {}", path.display(), escape_controls(message))]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{}: {}", escape_controls(origin), escape_controls(message))]
    Invalid { origin: String, message: String },
    #[error("{}", escape_controls(.0))]
    Usage(String),
}

impl From<crate::compose::ComposeError> for ConfigError {
    fn from(err: crate::compose::ComposeError) -> Self {
        match err {
            crate::compose::ComposeError::Read { path, source } => {
                ConfigError::Read { path, source }
            }
            crate::compose::ComposeError::Invalid { origin, message } => {
                ConfigError::Invalid { origin, message }
            }
        }
    }
}

/// Errors are one line: control characters that came from the file or the flags are shown escaped.
fn escape_controls(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_debug().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Builder {
    Buildkit,
    Legacy,
}

/// BuildKit's cache for an image: a registry cache beside it (`max`: every stage's layers; `min`:
/// the final image's), the image's own metadata (`inline`), or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum CacheMode {
    #[default]
    Max,
    Min,
    Inline,
    Off,
}

impl CacheMode {
    /// Whether the image keeps a cache in the registry, beside it.
    pub(crate) fn wants_registry_cache(self) -> bool {
        matches!(self, Self::Max | Self::Min)
    }
}

impl From<CacheArg> for CacheMode {
    fn from(arg: CacheArg) -> Self {
        match arg {
            CacheArg::Max => Self::Max,
            CacheArg::Min => Self::Min,
            CacheArg::Inline => Self::Inline,
            CacheArg::Off => Self::Off,
        }
    }
}

/// How the deploy artifacts name an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum ImageUriKind {
    /// `REGISTRY/REPO:TAG`, the primary tag.
    #[default]
    Tag,
    /// `REGISTRY/REPO@sha256:…`: the deploy runs exactly the image this run pushed.
    Digest,
}

impl From<ImageUriArg> for ImageUriKind {
    fn from(arg: ImageUriArg) -> Self {
        match arg {
            ImageUriArg::Tag => Self::Tag,
            ImageUriArg::Digest => Self::Digest,
        }
    }
}

/// What `build` alone says about the artifacts.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ArtifactFlags<'a> {
    pub output_dir: Option<&'a Path>,
    pub image_uri: Option<ImageUriKind>,
}

impl From<BuilderArg> for Builder {
    fn from(arg: BuilderArg) -> Self {
        match arg {
            BuilderArg::Buildkit => Self::Buildkit,
            BuilderArg::Legacy => Self::Legacy,
        }
    }
}

/// `[artifacts]`, or `artifacts:` in a Compose file's `x-ecr-build:`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ArtifactsSection {
    dir: Option<PathBuf>,
    image_uri: Option<ImageUriKind>,
    imagedefinitions: Option<FileSetting>,
    image_detail: Option<FileSetting>,
    build_json: Option<FileSetting>,
}

impl ArtifactsSection {
    /// Takes from `other` what this one leaves unset.
    fn fill_from(&mut self, other: &ArtifactsSection) {
        self.dir = self.dir.take().or_else(|| other.dir.clone());
        self.image_uri = self.image_uri.or(other.image_uri);
        self.imagedefinitions =
            (self.imagedefinitions.take()).or_else(|| other.imagedefinitions.clone());
        self.image_detail = self
            .image_detail
            .take()
            .or_else(|| other.image_detail.clone());
        self.build_json = self.build_json.take().or_else(|| other.build_json.clone());
    }

    /// The settings, the flags first: `--output-dir` is relative to `cwd`, the section's `dir` to
    /// `base` (its file's folder); neither: `cwd`.
    fn settings(self, flags: ArtifactFlags<'_>, base: &Path, cwd: &Path) -> ArtifactsSettings {
        ArtifactsSettings {
            image_uri: (flags.image_uri).or(self.image_uri).unwrap_or_default(),
            dir: (flags.output_dir)
                .map(|d| clean(&cwd.join(d)))
                .or_else(|| self.dir.map(|d| clean(&base.join(d))))
                .unwrap_or_else(|| cwd.to_path_buf()),
            imagedefinitions: self.imagedefinitions,
            image_detail: self.image_detail,
            build_json: self.build_json,
        }
    }
}

/// `"name"` or `false` (don't write) or `true` (the default).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum FileSetting {
    Enabled(bool),
    Value(String),
}

/// Where a build secret's value comes from: `ssm:NAME`, `env:VAR` or `file:PATH`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum SecretSource {
    /// An SSM parameter (SecureString decrypted); `name:version` and `name:label` work too.
    Ssm(String),
    Env(String),
    File(PathBuf),
}

impl SecretSource {
    /// `base` is the folder relative `file:` paths start from.
    pub(crate) fn parse(text: &str, base: &Path) -> Result<Self, String> {
        let (kind, value) = text
            .split_once(':')
            .filter(|(_, value)| !value.is_empty())
            .ok_or_else(|| {
                format!("secret source `{text}` is not ssm:NAME, env:VAR or file:PATH")
            })?;
        match kind {
            "ssm" => Ok(Self::Ssm(value.to_owned())),
            "env" => Ok(Self::Env(value.to_owned())),
            "file" => Ok(Self::File(clean(&base.join(value)))),
            _ => Err(format!(
                "secret source `{text}`: `{kind}:` is not one of ssm:, env:, file:"
            )),
        }
    }
}

impl fmt::Display for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ssm(name) => write!(f, "ssm:{name}"),
            Self::Env(var) => write!(f, "env:{var}"),
            Self::File(path) => write!(f, "file:{}", path.display()),
        }
    }
}

/// Everything a run needs to know, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Set by --registry or the config; `None` means "the ECR login's endpoint".
    pub registry: Option<String>,
    pub tags: Vec<TagTemplate>,
    pub network: Option<String>,
    pub builder: Builder,
    /// Where Docker Hub's base images are read from instead: `host[/path]`, no trailing slash.
    pub base_image_mirror: Option<String>,
    /// Every image's cache, unless the image sets its own.
    pub cache: CacheMode,
    pub artifacts: ArtifactsPlan,
    pub images: Vec<ImagePlan>,
    /// The commit `--sha` (`ECR_BUILD_SHA`) names, checked; `None`: the run asks CodeBuild's
    /// variables, then git.
    pub commit: Option<String>,
    /// Where `git rev-parse HEAD` is asked for the commit.
    pub source_dir: PathBuf,
    /// Restricted by --only or --platform: push the part under its ctx- tags, no run tags, no index,
    /// no artifact; a full run afterwards finds every part and assembles the rest.
    pub partial: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImagePlan {
    /// The container name in the ECS task definition.
    pub name: String,
    pub repository: String,
    pub context: PathBuf,
    pub dockerfile: PathBuf,
    pub target: Option<String>,
    pub build_args: Vec<(String, String)>,
    /// BuildKit secrets by id.
    pub secrets: Vec<(String, SecretSource)>,
    /// Every parameter under this SSM path is a secret named by its last path segment.
    pub ssm_path: Option<String>,
    /// Also pass secrets as build args (readable in the image's history): an explicit opt-in.
    pub allow_secret_build_args: bool,
    /// Images whose inline BuildKit cache a build may reuse: `REPO:TAG` in the run's registry, or a
    /// full reference with its own registry host.
    pub cache_from: Vec<String>,
    /// The Dockerfile's text, when a Compose file gives it inline (`dockerfile` is then nominal).
    pub dockerfile_inline: Option<String>,
    /// The network mode of this image's RUN steps, where it differs from the run's.
    pub network: Option<String>,
    /// The platforms to build for (`linux/arm64`); none: the engine's own. Several make an image
    /// index of one image each.
    pub platforms: Vec<String>,
    /// Labels the image gets besides ecr-build's own.
    pub labels: Vec<(String, String)>,
    /// The image's own `cache`, over the run's.
    pub cache: Option<CacheMode>,
    /// Where its registry cache goes; `None`: its own repository.
    pub cache_repository: Option<String>,
}

impl ImagePlan {
    /// An image with nothing but its name, repository and build files: each source of a plan sets
    /// what it gives over this.
    pub(crate) fn new(
        name: String,
        repository: String,
        context: PathBuf,
        dockerfile: PathBuf,
    ) -> Self {
        Self {
            name,
            repository,
            context,
            dockerfile,
            target: None,
            build_args: Vec::new(),
            secrets: Vec::new(),
            ssm_path: None,
            allow_secret_build_args: false,
            cache_from: Vec::new(),
            dockerfile_inline: None,
            network: None,
            platforms: Vec::new(),
            labels: Vec::new(),
            cache: None,
            cache_repository: None,
        }
    }

    /// Its cache mode: its own, else the run's.
    pub(crate) fn cache_mode(&self, run: CacheMode) -> CacheMode {
        self.cache.unwrap_or(run)
    }

    /// The repository its registry cache goes to.
    pub(crate) fn cache_repository(&self) -> &str {
        self.cache_repository.as_deref().unwrap_or(&self.repository)
    }

    pub(crate) fn has_secrets(&self) -> bool {
        !self.secrets.is_empty() || self.ssm_path.is_some()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ArtifactsPlan {
    pub dir: PathBuf,
    pub image_uri: ImageUriKind,
    pub imagedefinitions: Option<String>,
    /// The image whose URI goes into imageDetail.json.
    pub image_detail: Option<String>,
    pub build_json: Option<String>,
}

pub(crate) const IMAGE_DETAIL_FILE: &str = "imageDetail.json";

impl ArtifactsPlan {
    /// Every file a successful run writes.
    pub(crate) fn paths(&self) -> Vec<PathBuf> {
        let image_detail = self.image_detail.as_ref().map(|_| IMAGE_DETAIL_FILE);
        [
            self.imagedefinitions.as_deref(),
            image_detail,
            self.build_json.as_deref(),
        ]
        .into_iter()
        .flatten()
        .map(|name| self.dir.join(name))
        .collect()
    }
}

/// Reads the config file (if any) and merges it with the command line.
/// `environment` is the process's, read once at the edge: what Compose files interpolate.
pub(crate) fn load(
    args: &PlanArgs,
    flags: ArtifactFlags<'_>,
    cwd: &Path,
    environment: &HashMap<String, String>,
) -> Result<Plan, ConfigError> {
    let mut plan = load_all(args, flags, cwd, environment)?;
    plan.commit = check_commit(args.sha.as_deref()).map_err(ConfigError::Usage)?;
    restrict(plan, &args.only, &args.platforms).map_err(ConfigError::Usage)
}

/// A fan-out job's part of the plan: `only` these images, `platforms` of theirs. Images with no
/// configured platform are no part of a platform's job.
fn restrict(mut plan: Plan, only: &[String], platforms: &[String]) -> Result<Plan, String> {
    if only.is_empty() && platforms.is_empty() {
        return Ok(plan);
    }
    if let Some(unknown) = only
        .iter()
        .find(|name| !plan.images.iter().any(|i| &i.name == *name))
    {
        return Err(format!("--only {unknown}: no image of that name"));
    }
    for platform in platforms {
        crate::reference::check_platform(platform).map_err(|m| format!("--platform: {m}"))?;
        if !plan.images.iter().any(|i| i.platforms.contains(platform)) {
            return Err(format!(
                "--platform {platform}: no image is configured for it"
            ));
        }
    }
    plan.images
        .retain(|image| only.is_empty() || only.contains(&image.name));
    if !platforms.is_empty() {
        plan.images
            .retain(|image| image.platforms.iter().any(|p| platforms.contains(p)));
        for image in &mut plan.images {
            image.platforms.retain(|p| platforms.contains(p));
        }
    }
    plan.partial = true;
    Ok(plan)
}

fn load_all(
    args: &PlanArgs,
    flags: ArtifactFlags<'_>,
    cwd: &Path,
    environment: &HashMap<String, String>,
) -> Result<Plan, ConfigError> {
    let compose: Vec<PathBuf> = args
        .compose
        .iter()
        .map(|file| clean(&cwd.join(file)))
        .collect();
    if args.single.repository.is_some() && (args.config.is_some() || !compose.is_empty()) {
        return Err(ConfigError::Usage(
            "--repository excludes --config and --compose: describe the images in the file, or drop \
             it to build one image from flags"
                .into(),
        ));
    }
    let config_path = match (&args.config, &args.single.repository) {
        (Some(path), _) => Some(cwd.join(path)),
        (None, Some(_)) => return plan_from_flags(args, flags, cwd),
        (None, None) => Some(cwd.join(DEFAULT_CONFIG_FILE)).filter(|path| path.is_file()),
    };
    let Some(path) = config_path else {
        return match (compose.is_empty(), crate::compose::default_files(cwd)) {
            (false, _) => plan_from_compose(compose, None, args, flags, (cwd, environment)),
            (true, Some(files)) => {
                tracing::info!(
                    "no {DEFAULT_CONFIG_FILE}: the images are the services of {}",
                    files
                        .iter()
                        .map(|f| f.display().to_string())
                        .collect::<Vec<_>>()
                        .join(" and ")
                );
                plan_from_compose(files, None, args, flags, (cwd, environment))
            }
            (true, None) => Err(ConfigError::Usage(format!(
                "no {DEFAULT_CONFIG_FILE} or Compose file in {} and no --repository: give --config FILE, \
                 --compose FILE, or --repository REPO [--context DIR] for a single image",
                cwd.display()
            ))),
        };
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read {
        path: path.clone(),
        source,
    })?;
    let file = parse_config_file(&path, &text)?;
    let base = path.parent().unwrap_or(cwd);
    let named: Vec<PathBuf> = (file.compose.iter().flatten())
        .map(|f| clean(&base.join(f)))
        .collect();
    match (compose.is_empty(), named.is_empty()) {
        (true, true) => plan_from_file(&path, file, args, flags, cwd),
        (false, _) => {
            plan_from_compose(compose, Some((path, file)), args, flags, (cwd, environment))
        }
        (true, false) => {
            plan_from_compose(named, Some((path, file)), args, flags, (cwd, environment))
        }
    }
}

/// The run's settings as one source gives them; `None` where it says nothing. Every source has a
/// reader (`from_flags`, `from_file`, and `from_compose` in from_compose.rs), and [`Self::over`]
/// merges them in the documented order, the flags first, then ecr-build.toml, then Compose's
/// `x-ecr-build:`; [`finish`] applies the defaults once.
#[derive(Debug, Clone, Default)]
struct RunSettings {
    registry: Option<String>,
    tags: Option<Vec<String>>,
    network: Option<String>,
    builder: Option<Builder>,
    base_image_mirror: Option<String>,
    cache: Option<CacheMode>,
}

impl RunSettings {
    fn from_flags(args: &PlanArgs) -> Self {
        Self {
            registry: args.registry.clone(),
            tags: (!args.tags.is_empty()).then(|| args.tags.clone()),
            network: args.network.clone(),
            builder: args.builder.map(Builder::from),
            base_image_mirror: args.base_image_mirror.clone(),
            cache: args.cache.map(CacheMode::from),
        }
    }

    /// These settings, with what they leave unset taken from `lower`.
    fn over(self, lower: RunSettings) -> Self {
        Self {
            registry: self.registry.or(lower.registry),
            tags: self.tags.or(lower.tags),
            network: self.network.or(lower.network),
            builder: self.builder.or(lower.builder),
            base_image_mirror: self.base_image_mirror.or(lower.base_image_mirror),
            cache: self.cache.or(lower.cache),
        }
    }
}

struct ArtifactsSettings {
    dir: PathBuf,
    image_uri: ImageUriKind,
    imagedefinitions: Option<FileSetting>,
    image_detail: Option<FileSetting>,
    build_json: Option<FileSetting>,
}

struct PlanParts {
    /// Merged from every source, defaults not yet applied.
    settings: RunSettings,
    secret_overrides: Vec<(String, SecretSource)>,
    artifacts: ArtifactsSettings,
    images: Vec<ImagePlan>,
    source_dir: PathBuf,
}

/// The checks both sources of a plan share.
fn finish(mut parts: PlanParts, origin: &str) -> Result<Plan, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        origin: origin.to_owned(),
        message,
    };
    let RunSettings {
        registry,
        tags,
        network,
        builder,
        base_image_mirror,
        cache,
    } = parts.settings;
    let (tags, builder) = (
        tags.unwrap_or_else(|| vec![DEFAULT_TAG.into()]),
        builder.unwrap_or(Builder::Buildkit),
    );
    for (id, source) in &parts.secret_overrides {
        for image in &mut parts.images {
            match image.secrets.iter_mut().find(|(known, _)| known == id) {
                Some((_, declared)) => *declared = source.clone(),
                None => image.secrets.push((id.clone(), source.clone())),
            }
        }
    }
    let registry = registry
        .map(|r| normalize_registry(&r).map_err(invalid))
        .transpose()?;
    let templates = check_tags(&tags).map_err(invalid)?;
    check_network(network.as_deref()).map_err(invalid)?;
    let base_image_mirror = base_image_mirror
        .map(|prefix| crate::reference::check_mirror(&prefix).map_err(invalid))
        .transpose()?;
    let cache = cache.unwrap_or_default();
    check_images(&parts.images, builder, cache).map_err(invalid)?;

    let artifacts = artifacts_plan(parts.artifacts, &parts.images).map_err(invalid)?;

    Ok(Plan {
        registry,
        tags: templates,
        network,
        builder,
        base_image_mirror,
        cache,
        artifacts,
        images: parts.images,
        source_dir: parts.source_dir,
        commit: None,
        partial: false,
    })
}

/// `/src/app/./docker/Dockerfile` → `/src/app/docker/Dockerfile`, so messages name paths as people write them.
fn clean(path: &Path) -> PathBuf {
    path.components().collect()
}

/// `--secret ID=SOURCE`
fn parse_secret_overrides(
    args: &PlanArgs,
    cwd: &Path,
) -> Result<Vec<(String, SecretSource)>, ConfigError> {
    args.secrets
        .iter()
        .map(|pair| {
            let (id, source) = pair
                .split_once('=')
                .ok_or_else(|| ConfigError::Usage(format!("--secret `{pair}` is not ID=SOURCE")))?;
            let source = SecretSource::parse(source, cwd)
                .map_err(|m| ConfigError::Usage(format!("--secret {id}: {m}")))?;
            Ok((id.to_owned(), source))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    pub(super) fn args(extra: &[&str]) -> PlanArgs {
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            plan: PlanArgs,
        }
        let argv = std::iter::once("test").chain(extra.iter().copied());
        Wrapper::try_parse_from(argv).unwrap().plan
    }

    fn parse(text: &str) -> Result<Plan, ConfigError> {
        parse_with(text, &[])
    }

    fn parse_with(text: &str, flags: &[&str]) -> Result<Plan, ConfigError> {
        let path = Path::new("/src/app/ecr-build.toml");
        plan_from_file(
            path,
            parse_config_file(path, text)?,
            &args(flags),
            ArtifactFlags::default(),
            Path::new("/work"),
        )
    }

    const TWO_IMAGES: &str = r#"
registry = "https://123456789012.dkr.ecr.eu-west-1.amazonaws.com/"
tags = ["{short_sha}", "latest"]
network = "none"

[artifacts]
dir = "out"
image_detail = "web"
build_json = false
image_uri = "digest"

[images.worker]
repository = "myapp/worker"
context = "worker"

[images.web]
repository = "myapp/web"
dockerfile = "docker/web/Dockerfile"
target = "release"
build_args = { PHP_HOST = "127.0.0.1", PORT = 8080, DEBUG = false }
"#;

    #[test]
    fn full_config_becomes_a_plan() {
        let plan = parse(TWO_IMAGES).unwrap();
        assert_eq!(
            plan.registry.as_deref(),
            Some("123456789012.dkr.ecr.eu-west-1.amazonaws.com")
        );
        assert_eq!(
            plan.tags
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>(),
            ["{short_sha}", "latest"]
        );
        assert_eq!(plan.network.as_deref(), Some("none"));
        assert_eq!(plan.builder, Builder::Buildkit);
        // Config order, not alphabetical: imagedefinitions.json lists containers as written.
        let names: Vec<_> = plan.images.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["worker", "web"]);
        let worker = &plan.images[0];
        assert_eq!(worker.context, Path::new("/src/app/worker"));
        assert_eq!(worker.dockerfile, Path::new("/src/app/worker/Dockerfile"));
        let web = &plan.images[1];
        assert_eq!(web.context, Path::new("/src/app/."));
        assert_eq!(
            web.dockerfile,
            Path::new("/src/app/./docker/web/Dockerfile")
        );
        assert_eq!(web.target.as_deref(), Some("release"));
        assert_eq!(
            web.build_args,
            [
                ("PHP_HOST".into(), "127.0.0.1".into()),
                ("PORT".into(), "8080".into()),
                ("DEBUG".into(), "false".into())
            ]
        );
        assert_eq!(
            plan.artifacts,
            ArtifactsPlan {
                dir: "/src/app/out".into(),
                image_uri: ImageUriKind::Digest,
                imagedefinitions: Some("imagedefinitions.json".into()),
                image_detail: Some("web".into()),
                build_json: None,
            }
        );
        assert_eq!(plan.source_dir, Path::new("/src/app"));
    }

    #[test]
    fn defaults() {
        let plan = parse("[images.web]\nrepository = \"web\"\n").unwrap();
        assert_eq!(plan.registry, None);
        assert_eq!(plan.tags.len(), 1);
        assert_eq!(plan.tags[0].to_string(), "{sha}");
        assert_eq!(plan.artifacts.dir, Path::new("/work"));
        assert_eq!(plan.artifacts.image_detail.as_deref(), Some("web"));
        assert_eq!(plan.artifacts.build_json.as_deref(), Some("build.json"));
        assert_eq!(plan.artifacts.image_uri, ImageUriKind::Tag);
    }

    #[test]
    fn the_base_image_mirror_comes_from_the_flag_before_the_file() {
        let file = format!("base_image_mirror = \"https://public.ecr.aws/docker/\"\n{TWO_IMAGES}");
        let plan = parse(&file).unwrap();
        assert_eq!(
            plan.base_image_mirror.as_deref(),
            Some("public.ecr.aws/docker")
        );
        let mirror = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/docker-hub";
        let plan = parse_with(&file, &["--base-image-mirror", mirror]).unwrap();
        assert_eq!(plan.base_image_mirror.as_deref(), Some(mirror));
        assert_eq!(parse(TWO_IMAGES).unwrap().base_image_mirror, None);
        let err = parse_with(TWO_IMAGES, &["--base-image-mirror", "docker-hub"]).unwrap_err();
        assert!(
            err.to_string().contains("base_image_mirror `docker-hub`"),
            "{err}"
        );
    }

    #[test]
    fn flags_override_the_file() {
        let plan = parse_with(
            TWO_IMAGES,
            &[
                "--registry",
                "127.0.0.1:5000",
                "--tag",
                "x-{build_number}",
                "--builder",
                "legacy",
                "--network",
                "host",
            ],
        )
        .unwrap();
        assert_eq!(plan.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(plan.tags[0].to_string(), "x-{build_number}");
        assert_eq!(plan.builder, Builder::Legacy);
        assert_eq!(plan.network.as_deref(), Some("host"));
        let flags = ArtifactFlags {
            output_dir: Some(Path::new("elsewhere")),
            image_uri: Some(ImageUriKind::Tag),
        };
        let path = Path::new("/src/app/ecr-build.toml");
        let plan = plan_from_file(
            path,
            parse_config_file(path, TWO_IMAGES).unwrap(),
            &args(&[]),
            flags,
            Path::new("/work"),
        )
        .unwrap();
        assert_eq!(plan.artifacts.image_uri, ImageUriKind::Tag);
        assert_eq!(plan.artifacts.dir, Path::new("/work/elsewhere"));
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let text = "tags = [\"{sha}\"]\n\n[images.web]\nrepository = \"web\"\ncontxt = \".\"\n";
        let err = parse(text).unwrap_err().to_string();
        assert!(
            err.starts_with("/src/app/ecr-build.toml:5:1: unknown field `contxt`"),
            "{err}"
        );
        let err = parse("colour = 1\n[images.web]\nrepository = \"w1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/src/app/ecr-build.toml:1:1: unknown field `colour`"),
            "{err}"
        );
    }

    #[test]
    fn not_toml_names_line_and_column() {
        let err = parse("[images.web]\nrepository = = \"web\"\n").unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Syntax {
                    line: 2,
                    column: 14,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_are_named() {
        let cases = [
            ("[images]\n", "no images"),
            (
                "tags = []\n[images.web]\nrepository = \"web\"\n",
                "tags is empty",
            ),
            (
                "tags = [\"{commit}\"]\n[images.web]\nrepository = \"web\"\n",
                "unknown placeholder `{commit}`",
            ),
            (
                "tags = [\"a\", \"a\"]\n[images.web]\nrepository = \"web\"\n",
                "`a` is listed twice",
            ),
            (
                "[images.web]\nrepository = \"My/Web\"\n",
                "repository `My/Web`",
            ),
            ("[images.web]\nrepository = \"a//b\"\n", "repository `a//b`"),
            (
                "[images.\"we b\"]\nrepository = \"web\"\n",
                "image name `we b`",
            ),
            (
                "[images.a]\nrepository = \"same\"\n[images.b]\nrepository = \"same\"\n",
                "repository same",
            ),
            (
                "[artifacts]\nimage_detail = \"api\"\n[images.web]\nrepository = \"web\"\n",
                "image `api`",
            ),
            (
                "[artifacts]\nimagedefinitions = \"../x.json\"\n[images.web]\nrepository = \"web\"\n",
                "artifacts.imagedefinitions",
            ),
            (
                "registry = \"a b\"\n[images.web]\nrepository = \"web\"\n",
                "registry `a b`",
            ),
            (
                "builder = \"kaniko\"\n[images.web]\nrepository = \"web\"\n",
                "unknown variant `kaniko`",
            ),
            (
                "[images.web]\nrepository = \"web\"\nbuild_args = { A = [1] }\n",
                "images.web.build_args.A",
            ),
        ];
        for (text, expected) in cases {
            let err = parse(text).unwrap_err().to_string();
            assert!(err.contains(expected), "{text:?}: {err}");
        }
    }

    #[test]
    fn image_detail_needs_a_choice_with_several_images() {
        let text = "[images.a]\nrepository = \"a1\"\n[images.b]\nrepository = \"b1\"\n";
        assert_eq!(parse(text).unwrap().artifacts.image_detail, None);
    }

    #[test]
    fn single_image_from_flags() {
        let a = args(&[
            "--repository",
            "myapp/web",
            "--context",
            "app",
            "--dockerfile",
            "docker/Dockerfile",
            "--target",
            "prod",
            "--build-arg",
            "A=1=2",
            "--tag",
            "{short_sha},latest",
        ]);
        let plan = plan_from_flags(
            &a,
            ArtifactFlags {
                output_dir: Some(Path::new("out")),
                image_uri: None,
            },
            Path::new("/w"),
        )
        .unwrap();
        let image = &plan.images[0];
        assert_eq!(image.name, "web");
        assert_eq!(image.context, Path::new("/w/app"));
        assert_eq!(image.dockerfile, Path::new("/w/app/docker/Dockerfile"));
        assert_eq!(image.build_args, [("A".into(), "1=2".into())]);
        assert_eq!(plan.tags.len(), 2);
        assert_eq!(plan.artifacts.dir, Path::new("/w/out"));
        assert_eq!(plan.artifacts.image_detail.as_deref(), Some("web"));

        let bad = args(&["--repository", "web", "--build-arg", "NOVALUE"]);
        let err = plan_from_flags(&bad, ArtifactFlags::default(), Path::new("/w"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--build-arg `NOVALUE`"), "{err}");
    }

    /// ecr-build.toml's settings for every image reach the images of the Compose files it names,
    /// under what a service or its `x-ecr-build` says itself.
    #[test]
    fn a_toml_that_names_compose_files_gives_their_images_its_ssm_path_and_platforms() {
        let dir = tempfile::tempdir().unwrap();
        let toml = "compose = [\"compose.yaml\"]\nssm_path = \"/team\"\n\
                    platforms = [\"linux/amd64\", \"linux/arm64\"]\n";
        let compose = "services:\n  web:\n    image: r.example/web\n    build: .\n  \
                       worker:\n    image: r.example/worker\n    build:\n      context: .\n      \
                       platforms: [linux/arm64]\n    x-ecr-build:\n      ssm_path: /worker\n\
                       x-ecr-build:\n  ssm_path: /compose\n";
        std::fs::write(dir.path().join("ecr-build.toml"), toml).unwrap();
        std::fs::write(dir.path().join("compose.yaml"), compose).unwrap();
        let plan = load(
            &args(&[]),
            ArtifactFlags::default(),
            dir.path(),
            &HashMap::new(),
        )
        .unwrap();
        let [web, worker] = &plan.images[..] else {
            panic!("two images: {:?}", plan.images)
        };
        assert_eq!(web.ssm_path.as_deref(), Some("/team"));
        assert_eq!(web.platforms, ["linux/amd64", "linux/arm64"]);
        assert_eq!(worker.ssm_path.as_deref(), Some("/worker"));
        assert_eq!(worker.platforms, ["linux/arm64"]);
    }

    /// Each file's `artifacts.dir` is relative to that file's folder, as the README says.
    #[test]
    fn an_artifacts_dir_in_x_ecr_build_is_relative_to_the_compose_file_under_a_toml() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir(root.join("deploy")).unwrap();
        std::fs::write(
            root.join("ecr-build.toml"),
            "compose = [\"deploy/compose.yaml\"]\n",
        )
        .unwrap();
        let compose = "services:\n  web:\n    image: r.example/web\n    build: .\n\
                       x-ecr-build:\n  artifacts:\n    dir: out\n";
        std::fs::write(root.join("deploy/compose.yaml"), compose).unwrap();
        let plan = load(&args(&[]), ArtifactFlags::default(), &root, &HashMap::new()).unwrap();
        assert_eq!(plan.artifacts.dir, root.join("deploy/out"));
        let toml = "compose = [\"deploy/compose.yaml\"]\n[artifacts]\ndir = \"mine\"\n";
        std::fs::write(root.join("ecr-build.toml"), toml).unwrap();
        let plan = load(&args(&[]), ArtifactFlags::default(), &root, &HashMap::new()).unwrap();
        assert_eq!(
            plan.artifacts.dir,
            root.join("mine"),
            "the toml's own, beside it"
        );
    }

    /// `--sha` is part of the plan: checked before anything runs, never replaced by another source.
    #[test]
    fn the_commit_flag_is_checked_into_the_plan() {
        let dir = tempfile::tempdir().unwrap();
        let load_with = |sha: &str| {
            let flags = ["--repository", "web", "--sha", sha];
            load(
                &args(&flags),
                ArtifactFlags::default(),
                dir.path(),
                &HashMap::new(),
            )
        };
        let upper = "0123456789ABCDEF0123456789ABCDEF01234567";
        let plan = load_with(upper).unwrap();
        assert_eq!(
            plan.commit.as_deref(),
            Some(upper.to_ascii_lowercase().as_str())
        );
        let err = load_with("abc1234").unwrap_err();
        assert!(matches!(err, ConfigError::Usage(_)), "{err}");
        assert!(
            err.to_string()
                .contains("`abc1234` is not a 40-character hex commit SHA")
        );
        let plan = load(
            &args(&["--repository", "web"]),
            ArtifactFlags::default(),
            dir.path(),
            &HashMap::new(),
        );
        assert_eq!(plan.unwrap().commit, None);
    }

    #[test]
    fn a_fan_out_job_takes_its_images_and_platforms_and_is_a_part() {
        let text = "platforms = [\"linux/amd64\", \"linux/arm64\"]\n[images.web]\nrepository = \"web\"\n\
                    [images.worker]\nrepository = \"worker\"\nplatforms = [\"linux/amd64\"]\n";
        let plan = parse(text).unwrap();
        assert!(!plan.partial);
        let arm = restrict(plan.clone(), &[], &["linux/arm64".into()]).unwrap();
        assert!(arm.partial);
        assert_eq!(arm.images.len(), 1, "worker has no arm64");
        assert_eq!(arm.images[0].platforms, ["linux/arm64"]);
        let worker = restrict(plan.clone(), &["worker".into()], &[]).unwrap();
        assert_eq!(worker.images[0].name, "worker");
        assert!(
            restrict(plan.clone(), &["nope".into()], &[])
                .unwrap_err()
                .contains("nope")
        );
        assert!(
            restrict(plan.clone(), &[], &["linux/s390x".into()])
                .unwrap_err()
                .contains("linux/s390x")
        );
        assert!(
            restrict(plan, &[], &["linux/arm65".into()])
                .unwrap_err()
                .contains("linux/arm65")
        );
        let unknown = "platforms = [\"linux/arm65\"]\n[images.web]\nrepository = \"web\"\n";
        assert!(
            parse(unknown)
                .unwrap_err()
                .to_string()
                .contains("linux/arm65")
        );
    }

    #[test]
    fn config_and_repository_exclude_each_other() {
        let a = args(&["--config", "x.toml", "--repository", "web"]);
        assert!(matches!(
            load(
                &a,
                ArtifactFlags::default(),
                Path::new("/nonexistent"),
                &HashMap::new()
            ),
            Err(ConfigError::Usage(_))
        ));
        let none = args(&[]);
        let err = load(
            &none,
            ArtifactFlags::default(),
            Path::new("/nonexistent"),
            &HashMap::new(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("no ecr-build.toml or Compose file in /nonexistent"),
            "{err}"
        );
        let both = args(&["--compose", "compose.yaml", "--repository", "web"]);
        assert!(matches!(
            load(
                &both,
                ArtifactFlags::default(),
                Path::new("/nonexistent"),
                &HashMap::new()
            ),
            Err(ConfigError::Usage(_))
        ));
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the config file parser: whatever the text, no panic, and every error is
    //! one line; a syntax error names the file and a line and column inside the text.

    use super::tests::args;
    use super::*;
    use proptest::prelude::*;
    use proptest::sample::select;

    const CONFIG_PATH: &str = "/src/app/ecr-build.toml";

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            // A failure prints its minimal input; nothing is written next to the sources.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    fn parse(text: &str) -> Result<Plan, ConfigError> {
        plan_from_file(
            Path::new(CONFIG_PATH),
            parse_config_file(Path::new(CONFIG_PATH), text)?,
            &args(&[]),
            ArtifactFlags::default(),
            Path::new("/work"),
        )
    }

    /// The properties every outcome of parsing `text` has.
    fn check(text: &str, result: &Result<Plan, ConfigError>) -> Result<(), TestCaseError> {
        let err = match result {
            Ok(plan) => {
                prop_assert!(!plan.images.is_empty() && !plan.tags.is_empty());
                return Ok(());
            }
            Err(err) => err,
        };
        let message = err.to_string();
        prop_assert!(
            !message.contains(['\n', '\r']),
            "the error is not one line: {:?}\nfrom {:?}",
            message,
            text
        );
        if let ConfigError::Syntax {
            path,
            line,
            column,
            message: detail,
        } = err
        {
            prop_assert_eq!(path, Path::new(CONFIG_PATH));
            prop_assert!(
                message.starts_with(&format!("{CONFIG_PATH}:{line}:{column}: ")),
                "{:?}",
                message
            );
            prop_assert!(!detail.trim().is_empty(), "{:?} from {:?}", message, text);
            let lines: Vec<&str> = text.split('\n').collect();
            prop_assert!(
                (1..=lines.len()).contains(line),
                "line {} of a text of {} lines: {:?}",
                line,
                lines.len(),
                text
            );
            let width = lines[line - 1].chars().count();
            prop_assert!(
                (1..=width + 1).contains(column),
                "column {} of a line of {} characters: {:?}",
                column,
                width,
                text
            );
        }
        Ok(())
    }

    /// A TOML basic string holding exactly `text`.
    fn basic_string(text: &str) -> String {
        let mut quoted = String::from("\"");
        for ch in text.chars() {
            match ch {
                '"' => quoted.push_str("\\\""),
                '\\' => quoted.push_str("\\\\"),
                '\n' => quoted.push_str("\\n"),
                '\t' => quoted.push_str("\\t"),
                _ if ch.is_control() => quoted.push_str(&format!("\\u{:04X}", u32::from(ch))),
                _ => quoted.push(ch),
            }
        }
        quoted.push('"');
        quoted
    }

    const KNOWN_KEYS: &[&str] = &[
        "registry",
        "ssm_path",
        "tags",
        "network",
        "builder",
        "base_image_mirror",
        "cache",
        "cache_repository",
        "artifacts",
        "images",
        "dir",
        "imagedefinitions",
        "image_detail",
        "build_json",
        "repository",
        "context",
        "dockerfile",
        "target",
        "build_args",
        "secrets",
        "allow_secret_build_args",
        "cache_from",
        "web",
    ];

    /// Strings the config's fields accept, and some they refuse.
    const STRINGS: &[&str] = &[
        "web",
        "myapp/web",
        "{sha}",
        "{short_sha}",
        "x-{build_number}",
        "none",
        "buildkit",
        "legacy",
        ".",
        "Dockerfile",
        "ssm:/app/key",
        "env:X",
        "file:secret.txt",
        "/app/prod/",
        "127.0.0.1:5000",
        "",
        "a\nb",
        "we b",
        "{commit}",
        "a//b",
        "My/Web",
        "../x.json",
        "ünï",
        "\r",
    ];

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => select(KNOWN_KEYS).prop_map(str::to_owned),
            1 => "[A-Za-z0-9_\\-]{1,8}",
            1 => any::<String>().prop_map(|key| basic_string(&key)),
            1 => select(STRINGS).prop_map(basic_string),
            1 => select(vec!["images.web.repository", "artifacts.dir", "a.b.c.d", "images.\"we b\".target"])
                .prop_map(str::to_owned),
        ]
    }

    fn leaf_value() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => select(STRINGS).prop_map(basic_string),
            2 => any::<String>().prop_map(|text| basic_string(&text)),
            1 => "'[^'\n]{0,8}'",
            1 => "\"\"\"[a-z\n\\\\]{0,8}\"\"\"",
            1 => any::<i64>().prop_map(|n| n.to_string()),
            1 => any::<f64>().prop_map(|x| x.to_string()),
            1 => any::<bool>().prop_map(|b| b.to_string()),
            1 => select(vec!["1979-05-27T07:32:00Z", "07:32:00", "inf", "nan", "0x1F", "1_000"])
                .prop_map(str::to_owned),
            // Not a value at all.
            1 => "[=\\[\\]{},\"'.#\\\\]{1,3}",
        ]
    }

    fn value() -> impl Strategy<Value = String> {
        leaf_value().prop_recursive(4, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4)
                    .prop_map(|items| format!("[{}]", items.join(", "))),
                prop::collection::vec((key(), inner), 0..4).prop_map(|pairs| {
                    let pairs: Vec<String> =
                        pairs.iter().map(|(k, v)| format!("{k} = {v}")).collect();
                    format!("{{ {} }}", pairs.join(", "))
                }),
            ]
        })
    }

    fn table_header() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => select(vec![
                "[images]",
                "[images.web]",
                "[images.worker]",
                "[artifacts]",
                "[images.web.build_args]",
                "[images.web.secrets]",
                "[[images]]",
                "[[images.web]]",
                "[images.\"we b\"]",
                "[images.\"a\\nb\"]",
                "[images.\"ünï\"]",
                "[a.b.c.d.e.f.g]",
                "[images.web.build_args.X]",
            ])
            .prop_map(str::to_owned),
            1 => prop::collection::vec(key(), 1..6)
                .prop_map(|keys| format!("[{}]", keys.join("."))),
        ]
    }

    fn line() -> impl Strategy<Value = String> {
        prop_oneof![
            6 => (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
            2 => table_header(),
            1 => "#[^\n]{0,10}",
            1 => "[ \t]{0,2}",
            // Whatever else a line may hold.
            1 => any::<String>().prop_map(|text| text.replace('\n', "")),
        ]
    }

    /// TOML-ish documents: random lines, often around a valid single-image core.
    fn document() -> impl Strategy<Value = String> {
        let lines = |max| prop::collection::vec(line(), 0..max);
        (
            prop_oneof![
                lines(12).prop_map(|lines| lines.join("\n")),
                (lines(4), lines(6)).prop_map(|(before, after)| format!(
                    "{}\n[images.web]\nrepository = \"web\"\n{}",
                    before.join("\n"),
                    after.join("\n")
                )),
            ],
            any::<bool>(),
        )
            .prop_map(|(text, crlf)| {
                if crlf {
                    text.replace('\n', "\r\n")
                } else {
                    text
                }
            })
    }

    /// A value nested `depth` levels deep, as arrays or inline tables.
    fn nested(depth: usize, tables: bool) -> String {
        if tables {
            format!("{}1{}", "{ a = ".repeat(depth), " }".repeat(depth))
        } else {
            format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
        }
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_text_is_a_plan_or_a_one_line_error(text in any::<String>()) {
            check(&text, &parse(&text))?;
        }

        #[test]
        fn toml_like_text_is_a_plan_or_a_one_line_error(text in document()) {
            check(&text, &parse(&text))?;
        }
    }

    proptest! {
        #![proptest_config(config(64))]

        /// The toml crate stops at a recursion limit (about 80 levels) instead of overflowing the
        /// stack; deeper still is checked by hand up to 100,000 levels.
        #[test]
        fn deep_nesting_is_a_plan_or_a_one_line_error(
            depth in 1usize..200,
            tables in any::<bool>(),
            place in 0usize..5,
        ) {
            let value = nested(depth, tables);
            let text = match place {
                0 => format!("registry = {value}\n[images.web]\nrepository = \"web\"\n"),
                1 => format!("[images.web]\nrepository = \"web\"\nbuild_args = {{ A = {value} }}\n"),
                2 => format!("unknown = {value}\n"),
                3 => format!("{}a = 1\n", "a.".repeat(depth)),
                _ => format!("[images.{}web]\nrepository = \"web\"\n", "a.".repeat(depth)),
            };
            check(&text, &parse(&text))?;
        }
    }

    proptest! {
        #![proptest_config(config(24))]

        #[test]
        fn any_file_content_is_a_plan_or_a_one_line_error(
            bytes in prop_oneof![
                any::<Vec<u8>>(),
                document().prop_map(String::into_bytes),
            ],
        ) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("ecr-build.toml");
            std::fs::write(&path, &bytes).unwrap();
            let result = load(&args(&["--config", path.to_str().unwrap()]), ArtifactFlags::default(), dir.path(), &HashMap::new());
            if let Err(err) = &result {
                let message = err.to_string();
                prop_assert!(
                    !message.contains(['\n', '\r']),
                    "{:?}",
                    message
                );
                if matches!(err, ConfigError::Syntax { .. } | ConfigError::Read { .. }) {
                    prop_assert!(message.starts_with(path.to_str().unwrap())
                        || message.contains(path.to_str().unwrap()), "{:?}", message);
                }
            }
        }
    }

    /// Strings from the file must not break an error over lines (ecr-build's own messages, and
    /// serde's `unknown field` and `unknown variant`). Found by
    /// `toml_like_text_is_a_plan_or_a_one_line_error`; its minimal input was `"\u000D" = "web"`.
    #[test]
    fn quotes_control_characters_from_the_file() {
        let web = "[images.web]\nrepository = \"web\"\n";
        let cases = [
            format!("\"\\u000D\" = \"web\"\n{web}"),
            format!("\"a\\nb\" = 1\n{web}"),
            format!("builder = \"a\\nb\"\n{web}"),
            format!("registry = \"a\\nb\"\n{web}"),
            format!("network = \"a\\nb\"\n{web}"),
            format!("tags = [\"{{a\\nb}}\"]\n{web}"),
            format!("[artifacts]\nimage_detail = \"a\\nb\"\n{web}"),
            format!("[artifacts]\nimagedefinitions = \"a/\\nb\"\n{web}"),
            "[images.web]\nrepository = \"a\\nb\"\n".to_owned(),
            "[images.\"a\\nb\"]\nrepository = \"web\"\n".to_owned(),
            format!("{web}build_args = {{ \"a\\nb\" = [1] }}\n"),
            format!("{web}secrets = {{ \"a\\nb\" = \"env:X\" }}\n"),
            format!("{web}secrets = {{ A = \"x\\ny\" }}\n"),
            format!("{web}ssm_path = \"a\\nb\"\n"),
        ];
        let multi_line: Vec<String> = cases
            .iter()
            .filter_map(|text| {
                let message = parse(text).err()?.to_string();
                message
                    .contains(['\n', '\r'])
                    .then(|| format!("{text:?} -> {message:?}"))
            })
            .collect();
        assert!(multi_line.is_empty(), "{}", multi_line.join("\n"));
    }
}
