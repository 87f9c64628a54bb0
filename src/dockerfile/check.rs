//! What BuildKit's Dockerfile frontend would refuse before it builds (exit 2, naming the line),
//! and the base images a build reads besides its context.

use std::collections::HashMap;

use super::parse::{parse, syntax_frontend};
use super::{Base, BuildFacts, Vars, Whole, declare_args, expand, platform_args};

/// A Dockerfile BuildKit would refuse before it builds anything, or a target it does not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DockerfileError {
    #[error("{0}")]
    Parse(String),
    #[error("there is no stage named `{target}`; its stages are: {stages}")]
    UnknownTarget { target: String, stages: String },
}

/// The instructions BuildKit's Dockerfile frontend knows.
const INSTRUCTIONS: [&str; 18] = [
    "ADD",
    "ARG",
    "CMD",
    "COPY",
    "ENTRYPOINT",
    "ENV",
    "EXPOSE",
    "FROM",
    "HEALTHCHECK",
    "LABEL",
    "MAINTAINER",
    "ONBUILD",
    "RUN",
    "SHELL",
    "STOPSIGNAL",
    "USER",
    "VOLUME",
    "WORKDIR",
];

/// What the built-in frontend refuses before a build: an unknown instruction, one before the
/// first FROM (but ARG), a FROM without an image, no FROM at all, a heredoc without its end; and
/// a `target` no stage is named. A `# syntax=` frontend has rules of its own: not checked here.
pub(crate) fn check(dockerfile: &str, target: Option<&str>) -> Result<(), DockerfileError> {
    let parse_error = |line: usize, message: String| {
        Err(DockerfileError::Parse(format!("line {line}: {message}")))
    };
    if syntax_frontend(dockerfile).is_some() {
        return Ok(());
    }
    let instructions = match parse(dockerfile) {
        Ok(instructions) => instructions,
        Err(Whole(reason)) if reason.contains("has no end") => {
            return Err(DockerfileError::Parse(reason));
        }
        Err(_) => return Ok(()),
    };
    let mut stages: Vec<String> = Vec::new();
    for instruction in &instructions {
        let keyword = instruction.keyword.as_str();
        if !INSTRUCTIONS.contains(&keyword) {
            return parse_error(instruction.line, format!("unknown instruction `{keyword}`"));
        }
        if keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            match words.as_slice() {
                [] => return parse_error(instruction.line, "FROM names no image".to_owned()),
                [_] => stages.push(String::new()),
                [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
                    stages.push(name.to_ascii_lowercase());
                }
                _ => {
                    return parse_error(
                        instruction.line,
                        format!(
                            "FROM takes an image and `AS name`, not `{}`",
                            instruction.args
                        ),
                    );
                }
            }
        } else if stages.is_empty() && keyword != "ARG" {
            return parse_error(
                instruction.line,
                format!("{keyword} comes before the first FROM"),
            );
        }
    }
    if stages.is_empty() {
        return Err(DockerfileError::Parse("it has no FROM".to_owned()));
    }
    let Some(target) = target else {
        return Ok(());
    };
    let lower = target.to_ascii_lowercase();
    if stages.contains(&lower) {
        return Ok(());
    }
    let named: Vec<&str> = (stages.iter().filter(|name| !name.is_empty()))
        .map(String::as_str)
        .collect();
    Err(DockerfileError::UnknownTarget {
        target: target.to_owned(),
        stages: match named.is_empty() {
            true => "none is named".to_owned(),
            false => named.join(", "),
        },
    })
}

/// The images a build of this Dockerfile reads besides its context: each FROM that is neither
/// `scratch` nor a stage, each `COPY --from` and `RUN --mount=…,from=` that names no stage, and a
/// `# syntax=` frontend; as written, with ARGs expanded. `Err(reason)` where one cannot be named
/// before the build.
pub(crate) fn base_images(dockerfile: &str, facts: &BuildFacts<'_>) -> Result<Vec<String>, String> {
    let mut images: Vec<String> = syntax_frontend(dockerfile).into_iter().collect();
    let instructions = parse(dockerfile).map_err(|Whole(reason)| reason)?;
    let build_args: HashMap<&str, &str> = (facts.build_args.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut global: Vars = platform_args(facts.platform);
    let mut stage_names: Vec<String> = Vec::new();
    let mut vars = Vars::new();
    let mut add = |image: &str, vars: &Vars, stage_names: &[String]| -> Result<(), String> {
        let image = expand(image, vars, &Base::Scratch).map_err(|Whole(reason)| reason)?;
        let is_stage = stage_names.contains(&image.to_ascii_lowercase())
            || image.parse::<usize>().is_ok_and(|i| i < stage_names.len());
        if !is_stage && !image.eq_ignore_ascii_case("scratch") {
            images.push(image);
        }
        Ok(())
    };
    for instruction in &instructions {
        match instruction.keyword.as_str() {
            "FROM" => {
                let words: Vec<&str> = instruction.args.split_whitespace().collect();
                add(
                    words.first().copied().unwrap_or_default(),
                    &global,
                    &stage_names,
                )?;
                stage_names.push(match words.as_slice() {
                    [_, _, name] => name.to_ascii_lowercase(),
                    _ => String::new(),
                });
                vars = Vars::new();
            }
            "ARG" if stage_names.is_empty() => {
                declare_args(&mut global, &instruction.args, &Vars::new(), &build_args)
            }
            "ARG" => declare_args(&mut vars, &instruction.args, &global, &build_args),
            "COPY" | "ADD" => {
                for (_, from) in instruction.flags.iter().filter(|(name, _)| name == "from") {
                    add(from, &vars, &stage_names)?;
                }
            }
            "RUN" => {
                for (_, mount) in instruction.flags.iter().filter(|(name, _)| name == "mount") {
                    let from = mount
                        .split(',')
                        .find_map(|field| field.strip_prefix("from="));
                    if let Some(from) = from {
                        add(from, &vars, &stage_names)?;
                    }
                }
            }
            _ => {}
        }
    }
    images.sort();
    images.dedup();
    Ok(images)
}
