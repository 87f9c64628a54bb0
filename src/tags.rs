//! Tag templates and the commit SHA they are rendered from. Pure: the environment comes in as [`BuildEnv`].

use std::fmt;

use crate::reference::is_valid_tag;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(crate) enum TagError {
    #[error(
        "tag template `{template}`: unknown placeholder `{{{name}}}` (known: {{sha}}, {{short_sha}}, {{build_number}}, {{build_id}}, {{branch}})"
    )]
    UnknownPlaceholder { template: String, name: String },
    #[error("tag template `{template}`: unbalanced `{{` or `}}`")]
    Unbalanced { template: String },
    #[error("tag template `{template}` needs {{{placeholder}}}, but {source_hint} is not set")]
    MissingValue {
        template: String,
        placeholder: &'static str,
        source_hint: &'static str,
    },
    #[error(
        "tag template `{template}` renders to `{rendered}`, which is not a valid tag \
         (1 to 128 characters of A-Z a-z 0-9 _ . -, not starting with . or -)"
    )]
    InvalidRendered { template: String, rendered: String },
    #[error("--sha / ECR_BUILD_SHA `{0}` is not a 40-character hex commit SHA")]
    InvalidSha(String),
    #[error(
        "no commit SHA found: set --sha or ECR_BUILD_SHA, run in CodeBuild \
         (CODEBUILD_RESOLVED_SOURCE_VERSION), or run inside a git checkout{git_hint}"
    )]
    NoSha { git_hint: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placeholder {
    Sha,
    ShortSha,
    BuildNumber,
    BuildId,
    Branch,
}

impl Placeholder {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "sha" => Self::Sha,
            "short_sha" => Self::ShortSha,
            "build_number" => Self::BuildNumber,
            "build_id" => Self::BuildId,
            "branch" => Self::Branch,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            Self::Sha => "sha",
            Self::ShortSha => "short_sha",
            Self::BuildNumber => "build_number",
            Self::BuildId => "build_id",
            Self::Branch => "branch",
        }
    }

    fn source_hint(self) -> &'static str {
        match self {
            Self::Sha | Self::ShortSha => "the commit SHA",
            Self::BuildNumber => "CODEBUILD_BUILD_NUMBER",
            Self::BuildId => "CODEBUILD_BUILD_ID",
            Self::Branch => "the branch (CODEBUILD_WEBHOOK_TRIGGER branch/NAME or git)",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Value(Placeholder),
}

/// A parsed tag template such as `{short_sha}-{build_number}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TagTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl TagTemplate {
    pub(crate) fn parse(template: &str) -> Result<Self, TagError> {
        let unbalanced = || TagError::Unbalanced {
            template: template.to_owned(),
        };
        let mut segments = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            match rest.find(['{', '}']) {
                None => {
                    segments.push(Segment::Literal(rest.to_owned()));
                    break;
                }
                Some(at) if rest.as_bytes()[at] == b'}' => return Err(unbalanced()),
                Some(at) => {
                    if at > 0 {
                        segments.push(Segment::Literal(rest[..at].to_owned()));
                    }
                    let after = &rest[at + 1..];
                    let close = after.find('}').ok_or_else(unbalanced)?;
                    let name = &after[..close];
                    if name.contains('{') {
                        return Err(unbalanced());
                    }
                    let placeholder =
                        Placeholder::parse(name).ok_or_else(|| TagError::UnknownPlaceholder {
                            template: template.to_owned(),
                            name: name.to_owned(),
                        })?;
                    segments.push(Segment::Value(placeholder));
                    rest = &after[close + 1..];
                }
            }
        }
        Ok(Self {
            source: template.to_owned(),
            segments,
        })
    }

    pub(crate) fn uses_sha(&self) -> bool {
        self.segments
            .iter()
            .any(|s| matches!(s, Segment::Value(Placeholder::Sha | Placeholder::ShortSha)))
    }

    pub(crate) fn render(&self, vars: &TagVars) -> Result<String, TagError> {
        let mut rendered = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => rendered.push_str(text),
                Segment::Value(placeholder) => {
                    let value = vars.value(*placeholder).ok_or(TagError::MissingValue {
                        template: self.source.clone(),
                        placeholder: placeholder.name(),
                        source_hint: placeholder.source_hint(),
                    })?;
                    rendered.push_str(&value);
                }
            }
        }
        if !is_valid_tag(&rendered) {
            return Err(TagError::InvalidRendered {
                template: self.source.clone(),
                rendered,
            });
        }
        Ok(rendered)
    }
}

impl fmt::Display for TagTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

/// The values placeholders render from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TagVars {
    pub sha: Option<String>,
    pub build_number: Option<String>,
    pub build_id: Option<String>,
    pub branch: Option<String>,
}

impl TagVars {
    fn value(&self, placeholder: Placeholder) -> Option<String> {
        match placeholder {
            Placeholder::Sha => self.sha.clone(),
            Placeholder::ShortSha => self.sha.as_ref().map(|s| s[..7].to_owned()),
            Placeholder::BuildNumber => self.build_number.clone(),
            Placeholder::BuildId => self.build_id.clone(),
            Placeholder::Branch => self.branch.clone(),
        }
    }
}

/// The CodeBuild variables tags are made from, read once at the edge.
#[derive(Debug, Clone, Default)]
pub(crate) struct BuildEnv {
    pub resolved_source_version: Option<String>,
    pub source_version: Option<String>,
    pub build_number: Option<String>,
    pub build_id: Option<String>,
    pub webhook_trigger: Option<String>,
}

impl BuildEnv {
    /// From the variables `lookup` gives (the process environment, at the edge); empty is unset.
    pub(crate) fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        let var = |name: &str| lookup(name).filter(|v| !v.is_empty());
        Self {
            resolved_source_version: var("CODEBUILD_RESOLVED_SOURCE_VERSION"),
            source_version: var("CODEBUILD_SOURCE_VERSION"),
            build_number: var("CODEBUILD_BUILD_NUMBER"),
            build_id: var("CODEBUILD_BUILD_ID"),
            webhook_trigger: var("CODEBUILD_WEBHOOK_TRIGGER"),
        }
    }
}

/// Where the commit SHA came from; logged so nobody has to guess.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ShaSource {
    Flag,
    ResolvedSourceVersion,
    SourceVersion,
    Git,
}

impl fmt::Display for ShaSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "--sha / ECR_BUILD_SHA",
            Self::ResolvedSourceVersion => "CODEBUILD_RESOLVED_SOURCE_VERSION",
            Self::SourceVersion => "CODEBUILD_SOURCE_VERSION",
            Self::Git => "git rev-parse HEAD",
        })
    }
}

pub(crate) fn is_full_sha(value: &str) -> bool {
    value.len() == 40 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit `--sha` (or `ECR_BUILD_SHA`) names, in lower case; anything but 40 hex digits is an
/// error, never replaced by another source.
pub(crate) fn check_commit(flag: &str) -> Result<String, TagError> {
    match is_full_sha(flag) {
        true => Ok(flag.to_ascii_lowercase()),
        false => Err(TagError::InvalidSha(flag.to_owned())),
    }
}

/// The commit SHA in the order design.md fixes: `commit` (the flag's, checked by
/// [`check_commit`]), CodeBuild's variables, git. `git_head` is only asked when nothing else gives
/// one; `Err(reason)` from it is carried into the error so a missing git checkout is explained.
pub(crate) fn resolve_sha(
    commit: Option<&str>,
    env: &BuildEnv,
    git_head: impl FnOnce() -> Result<String, String>,
) -> Result<(String, ShaSource), TagError> {
    if let Some(commit) = commit {
        return Ok((commit.to_owned(), ShaSource::Flag));
    }
    let candidates = [
        (
            &env.resolved_source_version,
            ShaSource::ResolvedSourceVersion,
        ),
        (&env.source_version, ShaSource::SourceVersion),
    ];
    for (value, source) in candidates {
        if let Some(value) = value.as_deref().filter(|v| is_full_sha(v)) {
            return Ok((value.to_ascii_lowercase(), source));
        }
    }
    match git_head() {
        Ok(head) if is_full_sha(head.trim()) => {
            Ok((head.trim().to_ascii_lowercase(), ShaSource::Git))
        }
        Ok(other) => Err(TagError::NoSha {
            git_hint: format!(" (git printed `{}`)", other.trim()),
        }),
        Err(reason) => Err(TagError::NoSha {
            git_hint: format!(" ({reason})"),
        }),
    }
}

/// The branch for `{branch}`: from a webhook trigger `branch/NAME`, else from a non-SHA
/// CODEBUILD_SOURCE_VERSION such as `refs/heads/main`, else from git.
pub(crate) fn resolve_branch(
    env: &BuildEnv,
    git_branch: impl FnOnce() -> Option<String>,
) -> Option<String> {
    let from_trigger = env
        .webhook_trigger
        .as_deref()
        .and_then(|t| t.strip_prefix("branch/"))
        .map(str::to_owned);
    let from_source_version = || {
        env.source_version
            .as_deref()
            .filter(|v| !is_full_sha(v) && !v.starts_with("pr/"))
            .map(|v| v.strip_prefix("refs/heads/").unwrap_or(v).to_owned())
    };
    from_trigger
        .or_else(from_source_version)
        .or_else(git_branch)
        .map(|b| sanitize_branch(&b))
        .filter(|b| !b.is_empty())
}

/// Maps a branch name onto Docker's tag alphabet: `feature/Login#2` → `feature-Login-2`.
pub(crate) fn sanitize_branch(branch: &str) -> String {
    let mapped: String = branch
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect();
    let trimmed = mapped.trim_start_matches(['.', '-']);
    trimmed.chars().take(128).collect()
}

/// `{build_id}` is the part of CODEBUILD_BUILD_ID after `project:`.
pub(crate) fn build_id_suffix(build_id: &str) -> String {
    build_id
        .split_once(':')
        .map_or(build_id, |(_, id)| id)
        .to_owned()
}

/// The tags of a run and the commit they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RunTags {
    /// `None` only when no template needs a commit and none was found.
    pub sha: Option<String>,
    /// Rendered; the first is the primary tag.
    pub tags: Vec<String>,
}

/// Resolves the commit and renders every template. `git` answers `git ARGS...` in the source
/// folder; `stand_in` (a dry run's hash of the contexts) replaces a commit that cannot be found.
pub(crate) fn resolve_run_tags(
    templates: &[TagTemplate],
    commit: Option<&str>,
    env: &BuildEnv,
    git: impl Fn(&[&str]) -> Result<String, String>,
    stand_in: Option<String>,
) -> Result<RunTags, TagError> {
    let sha = match resolve_sha(commit, env, || git(&["rev-parse", "HEAD"])) {
        Ok((sha, source)) => {
            tracing::info!("commit {sha} (from {source})");
            Some(sha)
        }
        Err(err) => match stand_in {
            Some(stand_in) => {
                tracing::warn!(
                    "dry run: {err}; tagging with {} derived from the context digest instead",
                    &stand_in[..7.min(stand_in.len())]
                );
                Some(stand_in)
            }
            None if templates.iter().any(TagTemplate::uses_sha) => return Err(err),
            None => None,
        },
    };
    let vars = TagVars {
        sha: sha.clone(),
        build_number: env.build_number.clone(),
        build_id: env.build_id.as_deref().map(build_id_suffix),
        branch: resolve_branch(env, || {
            git(&["rev-parse", "--abbrev-ref", "HEAD"])
                .ok()
                .filter(|b| b != "HEAD")
        }),
    };
    let tags = templates
        .iter()
        .map(|t| t.render(&vars))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunTags { sha, tags })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn vars() -> TagVars {
        TagVars {
            sha: Some(SHA.into()),
            build_number: Some("42".into()),
            build_id: Some("3f2c-11".into()),
            branch: Some("main".into()),
        }
    }

    #[test]
    fn renders_every_placeholder() {
        let cases = [
            ("{sha}", SHA),
            ("{short_sha}", "0123456"),
            ("v{build_number}", "v42"),
            ("{build_id}", "3f2c-11"),
            ("{branch}-{short_sha}", "main-0123456"),
            ("latest", "latest"),
        ];
        for (template, expected) in cases {
            let rendered = TagTemplate::parse(template)
                .unwrap()
                .render(&vars())
                .unwrap();
            assert_eq!(rendered, expected, "template {template}");
        }
    }

    #[test]
    fn rejects_unknown_and_unbalanced_placeholders() {
        assert_eq!(
            TagTemplate::parse("{commit}").unwrap_err(),
            TagError::UnknownPlaceholder {
                template: "{commit}".into(),
                name: "commit".into()
            }
        );
        for bad in ["{sha", "sha}", "{{sha}}", "a{}b}"] {
            assert!(
                matches!(
                    TagTemplate::parse(bad),
                    Err(TagError::Unbalanced { .. }) | Err(TagError::UnknownPlaceholder { .. })
                ),
                "{bad} parsed"
            );
        }
        assert!(matches!(
            TagTemplate::parse("{sha"),
            Err(TagError::Unbalanced { .. })
        ));
    }

    #[test]
    fn missing_value_names_its_source() {
        let err = TagTemplate::parse("{build_number}")
            .unwrap()
            .render(&TagVars::default())
            .unwrap_err();
        assert!(err.to_string().contains("CODEBUILD_BUILD_NUMBER"), "{err}");
    }

    #[test]
    fn rendered_tag_is_checked() {
        let mut v = vars();
        v.branch = Some(String::new());
        for (template, vars) in [
            ("{branch}", &v),
            (".x", &vars()),
            ("-x", &vars()),
            ("a:b", &vars()),
        ] {
            let err = TagTemplate::parse(template)
                .unwrap()
                .render(vars)
                .unwrap_err();
            assert!(
                matches!(err, TagError::InvalidRendered { .. }),
                "{template}: {err}"
            );
        }
        let long = "a".repeat(129);
        assert!(TagTemplate::parse(&long).unwrap().render(&vars()).is_err());
        assert!(
            TagTemplate::parse(&long[..128])
                .unwrap()
                .render(&vars())
                .is_ok()
        );
    }

    #[test]
    fn sha_order_follows_design() {
        let env = BuildEnv {
            resolved_source_version: Some("A".repeat(40)),
            source_version: Some("b".repeat(40)),
            ..BuildEnv::default()
        };
        let no_git = || -> Result<String, String> { panic!("git must not be asked") };
        assert_eq!(
            resolve_sha(Some(SHA), &env, no_git).unwrap(),
            (SHA.into(), ShaSource::Flag)
        );
        assert_eq!(
            resolve_sha(None, &env, no_git).unwrap(),
            ("a".repeat(40), ShaSource::ResolvedSourceVersion)
        );
        let env = BuildEnv {
            resolved_source_version: Some("arn:aws:s3:::bucket/key".into()),
            source_version: Some("b".repeat(40)),
            ..BuildEnv::default()
        };
        assert_eq!(
            resolve_sha(None, &env, no_git).unwrap().1,
            ShaSource::SourceVersion
        );
        let env = BuildEnv {
            source_version: Some("refs/heads/main".into()),
            ..BuildEnv::default()
        };
        assert_eq!(
            resolve_sha(None, &env, || Ok(format!("{SHA}\n"))).unwrap(),
            (SHA.into(), ShaSource::Git)
        );
    }

    #[test]
    fn bad_flag_and_no_sha_are_errors() {
        let env = BuildEnv::default();
        assert_eq!(
            check_commit("abc1234").unwrap_err(),
            TagError::InvalidSha("abc1234".into())
        );
        assert_eq!(check_commit(&SHA.to_ascii_uppercase()).unwrap(), SHA);
        let err = resolve_sha(None, &env, || Err("not a git repository: /src".into())).unwrap_err();
        assert!(
            err.to_string().contains("not a git repository: /src"),
            "{err}"
        );
        assert!(matches!(
            resolve_sha(None, &env, || Ok(String::new())),
            Err(TagError::NoSha { .. })
        ));
    }

    #[test]
    fn branch_sources_and_sanitising() {
        let env = BuildEnv {
            webhook_trigger: Some("branch/feature/Login#2".into()),
            source_version: Some("refs/heads/other".into()),
            ..BuildEnv::default()
        };
        assert_eq!(
            resolve_branch(&env, || None).as_deref(),
            Some("feature-Login-2")
        );
        let env = BuildEnv {
            source_version: Some("refs/heads/release/1.2".into()),
            ..BuildEnv::default()
        };
        assert_eq!(
            resolve_branch(&env, || None).as_deref(),
            Some("release-1.2")
        );
        let env = BuildEnv {
            source_version: Some("pr/7".into()),
            ..BuildEnv::default()
        };
        assert_eq!(
            resolve_branch(&env, || Some(".hidden".into())).as_deref(),
            Some("hidden")
        );
        assert_eq!(resolve_branch(&BuildEnv::default(), || None), None);
        assert_eq!(sanitize_branch(&"b".repeat(300)).len(), 128);
    }

    #[test]
    fn build_id_drops_the_project() {
        assert_eq!(build_id_suffix("web-build:0a1b-2c"), "0a1b-2c");
        assert_eq!(build_id_suffix("plain"), "plain");
    }

    fn templates(list: &[&str]) -> Vec<TagTemplate> {
        list.iter()
            .map(|t| TagTemplate::parse(t).unwrap())
            .collect()
    }

    fn no_git(_: &[&str]) -> Result<String, String> {
        Err("not a git repository".into())
    }

    #[test]
    fn run_tags_come_from_the_commit_and_the_environment() {
        let env = BuildEnv {
            build_number: Some("7".into()),
            ..BuildEnv::default()
        };
        let git = |args: &[&str]| match args {
            ["rev-parse", "HEAD"] => Ok(SHA.to_owned()),
            _ => Ok("main".to_owned()),
        };
        let run = resolve_run_tags(
            &templates(&["{short_sha}", "b{build_number}", "{branch}"]),
            None,
            &env,
            git,
            None,
        )
        .unwrap();
        assert_eq!(run.sha.as_deref(), Some(SHA));
        assert_eq!(run.tags, ["0123456", "b7", "main"]);
    }

    #[test]
    fn a_missing_commit_is_an_error_unless_a_stand_in_is_given_or_none_is_needed() {
        let env = BuildEnv::default();
        let needs_sha = templates(&["{sha}"]);
        assert!(matches!(
            resolve_run_tags(&needs_sha, None, &env, no_git, None),
            Err(TagError::NoSha { .. })
        ));
        let stand_in = "f".repeat(40);
        let run = resolve_run_tags(&needs_sha, None, &env, no_git, Some(stand_in.clone())).unwrap();
        assert_eq!(run.tags, [stand_in]);
        let fixed = resolve_run_tags(&templates(&["stable"]), None, &env, no_git, None).unwrap();
        assert_eq!((fixed.sha, fixed.tags), (None, vec!["stable".to_owned()]));
    }
}
