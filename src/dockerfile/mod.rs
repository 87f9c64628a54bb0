//! What a Dockerfile can read from its build context, for the target stage and the stages it
//! depends on: BuildKit's Dockerfile syntax, read just far enough to name those paths (parser
//! directives, the escape character, line continuations, heredocs, JSON and shell forms, stages,
//! `COPY`/`ADD` and their flags, `RUN --mount`, ARG and ENV substitution). Pure: text in, paths out.
//!
//! Whatever cannot be proven narrow is the whole context, with the reason: a skip must never be
//! wrong, a rebuild may be needless.

mod check;
mod parse;

use std::collections::HashMap;

pub(crate) use check::{base_images, check};
use parse::{Instruction, parse, syntax_frontend};

/// What a build of one target can read from the context. In `plan` JSON: `{"paths": [...]}` or
/// `{"whole_context": "why"}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ContextInputs {
    /// Only these paths: Docker patterns relative to the context (`*`, `?`, `[...]` within one
    /// component; a directory stands for everything below it). Sorted, without duplicates.
    Paths(Vec<String>),
    /// The whole context, and why.
    WholeContext(String),
}

/// What the analysis knows beyond the text.
pub(crate) struct BuildFacts<'a> {
    /// The stage to build; `None`: the last.
    pub target: Option<&'a str>,
    pub build_args: &'a [(String, String)],
    /// `linux/arm64`; `None`: the engine's own, which the analysis does not know.
    pub platform: Option<&'a str>,
}

/// The context paths that can reach the image `facts` describes.
pub(crate) fn context_inputs(dockerfile: &str, facts: &BuildFacts<'_>) -> ContextInputs {
    match analyse(dockerfile, facts) {
        Ok(mut paths) => {
            paths.sort();
            paths.dedup();
            ContextInputs::Paths(paths)
        }
        Err(Whole(reason)) => ContextInputs::WholeContext(reason),
    }
}

/// The reason the whole context is an input.
struct Whole(String);

fn whole<T>(reason: impl Into<String>) -> Result<T, Whole> {
    Err(Whole(reason.into()))
}

/// One stage: its name, what it is built on, and its instructions.
struct Stage {
    name: Option<String>,
    base: Base,
    instructions: Vec<Instruction>,
}

enum Base {
    Scratch,
    Stage(usize),
    /// An image: its ENV is not known here.
    Image,
}

fn analyse(text: &str, facts: &BuildFacts<'_>) -> Result<Vec<String>, Whole> {
    if let Some(frontend) = syntax_frontend(text) {
        return whole(format!("`# syntax={frontend}` names a frontend of its own"));
    }
    let instructions = parse(text)?;
    let build_args: HashMap<&str, &str> = (facts.build_args.iter())
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    // Global ARGs (before the first FROM) and the automatic platform ones.
    let mut global: Vars = platform_args(facts.platform);
    let mut stages: Vec<Stage> = Vec::new();
    for instruction in instructions {
        if instruction.keyword == "FROM" {
            let words: Vec<&str> = instruction.args.split_whitespace().collect();
            let Some(image) = words.first() else {
                return whole("a FROM names no image");
            };
            let image = expand(image, &global, &Base::Scratch)?;
            let name = match words.as_slice() {
                [_, as_word, name] if as_word.eq_ignore_ascii_case("as") => {
                    Some(name.to_ascii_lowercase())
                }
                _ => None,
            };
            let base = if image.eq_ignore_ascii_case("scratch") {
                Base::Scratch
            } else if let Some(index) = stage_index(&stages, &image) {
                Base::Stage(index)
            } else {
                Base::Image
            };
            stages.push(Stage {
                name,
                base,
                instructions: Vec::new(),
            });
            continue;
        }
        match stages.last_mut() {
            Some(stage) => stage.instructions.push(instruction),
            None if instruction.keyword == "ARG" => {
                for (name, default) in arg_declarations(&instruction.args) {
                    let value = build_args.get(name.as_str()).map(|v| (*v).to_owned());
                    global.insert(
                        name,
                        value.or(default).map(Value::Known).unwrap_or(Value::Empty),
                    );
                }
            }
            None => return whole(format!("{} before the first FROM", instruction.keyword)),
        }
    }
    if stages.is_empty() {
        return whole("no FROM");
    }
    let target = match facts.target {
        Some(target) => stage_index(&stages, target)
            .ok_or_else(|| Whole(format!("no stage named `{target}`")))?,
        None => stages.len() - 1,
    };
    let mut paths = Vec::new();
    let mut done = vec![false; stages.len()];
    let mut pending = vec![target];
    while let Some(index) = pending.pop() {
        if std::mem::replace(&mut done[index], true) {
            continue;
        }
        let reads = stage_reads(&stages, index, &global, &build_args)?;
        paths.extend(reads.paths);
        pending.extend(reads.stages);
    }
    Ok(paths)
}

/// A variable's value in a stage.
#[derive(Debug, Clone)]
enum Value {
    Known(String),
    /// Declared without a value: expands to nothing.
    Empty,
    /// Depends on what the analysis does not know (the engine's platform).
    Unknown,
}

type Vars = HashMap<String, Value>;

const PLATFORM_ARGS: [&str; 8] = [
    "TARGETPLATFORM",
    "TARGETOS",
    "TARGETARCH",
    "TARGETVARIANT",
    "BUILDPLATFORM",
    "BUILDOS",
    "BUILDARCH",
    "BUILDVARIANT",
];

/// BuildKit's automatic platform ARGs: known for the target where a platform is given; the build
/// platform is the engine's, which the analysis does not know.
fn platform_args(platform: Option<&str>) -> Vars {
    let mut vars: Vars = PLATFORM_ARGS
        .iter()
        .map(|name| ((*name).to_owned(), Value::Unknown))
        .collect();
    if let Some(platform) = platform {
        let mut parts = platform.split('/');
        let os = parts.next().unwrap_or_default();
        let arch = parts.next().unwrap_or_default();
        let variant = parts.next().unwrap_or_default();
        for (name, value) in [
            ("TARGETPLATFORM", platform),
            ("TARGETOS", os),
            ("TARGETARCH", arch),
            ("TARGETVARIANT", variant),
        ] {
            vars.insert(name.to_owned(), Value::Known(value.to_owned()));
        }
    }
    vars
}

fn stage_index(stages: &[Stage], name: &str) -> Option<usize> {
    let name = name.to_ascii_lowercase();
    stages
        .iter()
        .position(|stage| stage.name.as_deref() == Some(name.as_str()))
        .or_else(|| name.parse::<usize>().ok().filter(|i| *i < stages.len()))
}

/// `ARG A=1 B` → `[("A", Some("1")), ("B", None)]`.
fn arg_declarations(args: &str) -> Vec<(String, Option<String>)> {
    args.split_whitespace()
        .map(|word| match word.split_once('=') {
            Some((name, value)) => (name.to_owned(), Some(unquote(value))),
            None => (word.to_owned(), None),
        })
        .collect()
}

fn unquote(value: &str) -> String {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner.to_owned();
        }
    }
    value.to_owned()
}

/// What one stage reads: context paths, and the stages it needs.
struct StageReads {
    paths: Vec<String>,
    stages: Vec<usize>,
}

fn stage_reads(
    stages: &[Stage],
    index: usize,
    global: &Vars,
    build_args: &HashMap<&str, &str>,
) -> Result<StageReads, Whole> {
    let mut reads = StageReads {
        paths: Vec::new(),
        stages: Vec::new(),
    };
    if let Base::Stage(base) = stages[index].base {
        reads.stages.push(base);
    }
    walk_stage(stages, index, global, build_args, Some(&mut reads))?;
    Ok(reads)
}

/// Walks the stage at `index`: what it reads, where `reads` is given; returns the ENV its image
/// carries to a stage built on it (its base's, then its own). An ARG only expands words in the
/// stage: it wins over an ENV of the same name there, as in BuildKit, and does not carry over.
fn walk_stage(
    stages: &[Stage],
    index: usize,
    global: &Vars,
    build_args: &HashMap<&str, &str>,
    mut reads: Option<&mut StageReads>,
) -> Result<Vars, Whole> {
    let stage = &stages[index];
    let mut env = match stage.base {
        Base::Stage(base) => walk_stage(stages, base, global, build_args, None)?,
        Base::Scratch | Base::Image => Vars::new(),
    };
    let mut vars = env.clone();
    let root = root_base(stages, &stage.base);
    for instruction in &stage.instructions {
        match (instruction.keyword.as_str(), reads.as_deref_mut()) {
            ("ARG", _) => declare_args(&mut vars, &instruction.args, global, build_args),
            ("ENV", _) => {
                for name in declare_env(&mut vars, &instruction.args, root)? {
                    env.insert(name.clone(), vars[&name].clone());
                }
            }
            ("ONBUILD", Some(_)) => {
                return whole("ONBUILD runs instructions in builds this analysis cannot see");
            }
            ("COPY" | "ADD", Some(reads)) => copy_reads(stages, instruction, &vars, root, reads)?,
            ("RUN", Some(reads)) => mount_reads(stages, instruction, &vars, root, reads)?,
            _ => {}
        }
    }
    Ok(env)
}

/// Where a chain of stages starts: scratch, or an image whose ENV is not known here.
fn root_base<'a>(stages: &'a [Stage], base: &'a Base) -> &'a Base {
    match base {
        Base::Stage(index) => root_base(stages, &stages[*index].base),
        other => other,
    }
}

fn declare_args(vars: &mut Vars, args: &str, global: &Vars, build_args: &HashMap<&str, &str>) {
    for (name, default) in arg_declarations(args) {
        let value = match build_args.get(name.as_str()) {
            Some(given) => Value::Known((*given).to_owned()),
            None => match (default, global.get(&name)) {
                (Some(default), _) => Value::Known(default),
                (None, Some(value)) => value.clone(),
                (None, None) => Value::Empty,
            },
        };
        vars.insert(name, value);
    }
}

/// `ENV A=1 B="two words"` or `ENV A 1`; returns the names set.
fn declare_env(vars: &mut Vars, args: &str, base: &Base) -> Result<Vec<String>, Whole> {
    let pairs: Vec<(String, String)> = match args.split_once(char::is_whitespace) {
        Some((name, value)) if !name.contains('=') => {
            vec![(name.to_owned(), value.trim().to_owned())]
        }
        _ => {
            if args.contains(['"', '\'']) && args.split_whitespace().any(|w| !w.contains('=')) {
                return whole("an ENV with quoted spaces");
            }
            args.split_whitespace()
                .filter_map(|word| word.split_once('='))
                .map(|(name, value)| (name.to_owned(), unquote(value)))
                .collect()
        }
    };
    let mut names = Vec::new();
    for (name, value) in pairs {
        // `ENV PATH=$PATH:/x` on an image: unknown, which matters only if a path uses it.
        let value = expand(&value, vars, base).map_or(Value::Unknown, Value::Known);
        vars.insert(name.clone(), value);
        names.push(name);
    }
    Ok(names)
}

/// Expands `$NAME`, `${NAME}`, `${NAME:-word}`, `${NAME-word}`, `${NAME:+word}`, `${NAME+word}`.
/// A name the stage does not declare comes from the base image's ENV where there is one: unknown.
fn expand(word: &str, vars: &Vars, base: &Base) -> Result<String, Whole> {
    let mut out = String::new();
    let mut chars = word.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.extend(chars.next()),
            '$' => {
                let (name, modifier) = reference(&mut chars);
                if name.is_empty() {
                    out.push('$');
                    continue;
                }
                let value = value_of(&name, vars, base)?;
                out.push_str(&apply(&name, modifier.as_deref(), value, vars, base)?);
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

/// After a `$`: the name, and for `${…}` what follows the name inside the braces.
fn reference(chars: &mut std::iter::Peekable<std::str::Chars<'_>>) -> (String, Option<String>) {
    let is_name = |c: &char| c.is_ascii_alphanumeric() || *c == '_';
    if chars.next_if_eq(&'{').is_none() {
        let mut name = String::new();
        while let Some(c) = chars.next_if(is_name) {
            name.push(c);
        }
        return (name, None);
    }
    let inside: String = chars.by_ref().take_while(|c| *c != '}').collect();
    let split = inside.find(|c| !is_name(&c)).unwrap_or(inside.len());
    let (name, modifier) = inside.split_at(split);
    (name.to_owned(), Some(modifier.to_owned()))
}

/// A variable's value: `None` where it expands to nothing.
fn value_of(name: &str, vars: &Vars, base: &Base) -> Result<Option<String>, Whole> {
    match vars.get(name) {
        Some(Value::Known(value)) => Ok(Some(value.clone())),
        Some(Value::Empty) => Ok(None),
        Some(Value::Unknown) => whole(format!(
            "a path uses ${name}, which is not known before the build"
        )),
        None => match base {
            Base::Image => whole(format!(
                "a path uses ${name}, which the base image's ENV may set"
            )),
            Base::Scratch | Base::Stage(_) => Ok(None),
        },
    }
}

/// `${NAME:-word}` and friends; anything else (`%`, `#`, `/`) is not resolved here.
fn apply(
    name: &str,
    modifier: Option<&str>,
    value: Option<String>,
    vars: &Vars,
    base: &Base,
) -> Result<String, Whole> {
    let Some(modifier) = modifier.filter(|m| !m.is_empty()) else {
        return Ok(value.unwrap_or_default());
    };
    let colon = modifier.starts_with(':');
    let (op, word) = modifier.split_at(modifier.len().min(if colon { 2 } else { 1 }));
    // With `:`, an empty value counts as unset.
    let set = value.as_deref().is_some_and(|v| !colon || !v.is_empty());
    match (op.trim_start_matches(':'), set) {
        ("-", true) => Ok(value.unwrap_or_default()),
        ("-", false) | ("+", true) => expand(word, vars, base),
        ("+", false) => Ok(String::new()),
        _ => whole(format!("a path uses `${{{name}{modifier}}}`")),
    }
}

/// The sources of a COPY or ADD: from a stage (a dependency), from an image (nothing of the
/// context), or the context.
fn copy_reads(
    stages: &[Stage],
    instruction: &Instruction,
    vars: &Vars,
    base: &Base,
    reads: &mut StageReads,
) -> Result<(), Whole> {
    if let Some((_, from)) = instruction.flags.iter().find(|(name, _)| name == "from") {
        let from = expand(from, vars, base)?;
        if let Some(index) = stage_index(stages, &from) {
            reads.stages.push(index);
        }
        return Ok(());
    }
    let words = match serde_json::from_str::<Vec<String>>(&instruction.args) {
        Ok(words) if instruction.args.trim_start().starts_with('[') => words,
        _ => {
            if instruction.args.contains(['"', '\'', '\\']) && !instruction.heredoc {
                return whole(format!(
                    "{} with quoted or escaped paths",
                    instruction.keyword
                ));
            }
            instruction
                .args
                .split_whitespace()
                .map(str::to_owned)
                .collect()
        }
    };
    let Some((_, sources)) = words.split_last() else {
        return whole(format!("{} names no source", instruction.keyword));
    };
    for source in sources {
        // A heredoc is inline content; a URL is fetched, not read from the context.
        if source.starts_with("<<") || instruction.keyword == "ADD" && is_remote(source) {
            continue;
        }
        let path = expand(source, vars, base)?;
        reads.paths.push(context_path(&path, &instruction.keyword)?);
    }
    Ok(())
}

fn is_remote(source: &str) -> bool {
    ["http://", "https://", "git://", "git@", "ssh://"]
        .iter()
        .any(|scheme| source.starts_with(scheme))
}

/// A source as a pattern relative to the context root; the root itself is the whole context.
fn context_path(path: &str, what: &str) -> Result<String, Whole> {
    let relative = crate::gopath::within_context(path);
    if relative.is_empty() || relative == "*" || relative.contains("**") {
        return whole(format!("`{what} {path}` copies the whole context"));
    }
    Ok(relative)
}

/// `RUN --mount=…`: a bind mount of the context reads its source; one from a stage needs it.
fn mount_reads(
    stages: &[Stage],
    instruction: &Instruction,
    vars: &Vars,
    base: &Base,
    reads: &mut StageReads,
) -> Result<(), Whole> {
    for (_, mount) in instruction.flags.iter().filter(|(name, _)| name == "mount") {
        let fields: HashMap<String, String> = mount
            .split(',')
            .map(|field| match field.split_once('=') {
                Some((key, value)) => (key.to_ascii_lowercase(), value.to_owned()),
                None => (field.to_ascii_lowercase(), String::new()),
            })
            .collect();
        let kind = fields.get("type").map_or("bind", String::as_str);
        if !matches!(kind, "bind" | "cache") {
            continue;
        }
        if let Some(from) = fields.get("from") {
            let from = expand(from, vars, base)?;
            if let Some(index) = stage_index(stages, &from) {
                reads.stages.push(index);
            }
            continue;
        }
        if kind == "cache" {
            continue;
        }
        let source = fields
            .get("source")
            .or_else(|| fields.get("src"))
            .map_or(".", String::as_str);
        let source = expand(source, vars, base)?;
        reads
            .paths
            .push(context_path(&source, "RUN --mount=type=bind,source=")?);
    }
    Ok(())
}

#[cfg(test)]
mod tests;
