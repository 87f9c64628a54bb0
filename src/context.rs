//! The build context `docker build` sends: `.dockerignore` with Docker's exact semantics, the walk
//! that picks the entries, a content digest, and the tar stream for the Engine API.
//!
//! Sources followed: moby/patternmatcher (`patternmatcher.go`, `ignorefile/ignorefile.go`),
//! docker/cli (`cli/command/image/build.go`, `build/context.go`, `build/dockerignore.go`) and
//! moby/go-archive (`TarWithOptions`). Patterns are compiled the way patternmatcher compiles them:
//! plain strings, `prefix**` and `**suffix` are string comparisons, anything else becomes a Go
//! regular expression, which this module builds character for character (quirks included) and
//! runs on a small Pike VM implementing the part of Go's regexp syntax such expressions can use.
//!
//! Known differences from docker CLI: Unicode classes (`\p{L}`) are refused; a pattern Go's
//! regexp rejects fails at parse time rather than when Docker first evaluates it; FIFOs, devices
//! and sockets are skipped; hard links are sent as separate files; file names must be UTF-8;
//! headers carry mtime 0 and no `security.capability` xattr; a Dockerfile from outside the
//! context gets a content-derived name instead of a random one; and the Dockerfile and
//! .dockerignore are sent even where docker CLI's exception check misses them (Docker then fails).

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Files are hashed and streamed in pieces of this size, so memory stays bounded whatever the context holds.
const CHUNK_SIZE: usize = 64 * 1024;
/// Tar chunks buffered between the producing thread and the request body.
const CHUNKS_IN_FLIGHT: usize = 8;
const DOCKERIGNORE: &str = ".dockerignore";
/// The mode docker CLI gives files it adds to the context itself.
const ADDED_FILE_MODE: u32 = 0o600;
/// Names the digest's input encoding; change it whenever the encoding changes.
const DIGEST_DOMAIN: &[u8] = b"ecr-build build-context digest v1\n";

#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error("cannot open the build context {path}: {cause}")]
    ContextDir { path: PathBuf, cause: io::Error },
    #[error("the build context {path} is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("cannot read the Dockerfile {path}: {cause}")]
    Dockerfile { path: PathBuf, cause: io::Error },
    #[error("the Dockerfile {path} is not a regular file")]
    DockerfileNotAFile { path: PathBuf },
    #[error("invalid .dockerignore pattern {pattern:?}: {reason}")]
    InvalidPattern { pattern: String, reason: String },
    #[error("cannot read {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("{path}: the name is not valid UTF-8")]
    NonUtf8Path { path: PathBuf },
}

fn read_error(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |cause| ContextError::Read {
        path: path.to_owned(),
        cause,
    }
}

/// Parsed .dockerignore with Docker's semantics.
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
}

impl DockerIgnore {
    /// Reads the file the way ignorefile.ReadAll does: a UTF-8 BOM dropped, lines starting with `#`
    /// skipped, whitespace trimmed, each pattern cleaned and stripped of a leading `/`.
    pub fn parse(text: &str) -> Result<DockerIgnore, ContextError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut patterns = Vec::new();
        for line in text.lines() {
            // Docker tests for `#` before trimming: " # x" is a pattern.
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let pattern = Pattern::new(&normalize_line(line)).map_err(|reason| {
                ContextError::InvalidPattern {
                    pattern: line.to_owned(),
                    reason,
                }
            })?;
            patterns.push(pattern);
        }
        Ok(DockerIgnore { patterns })
    }

    /// Whether a build leaves `rel_path` out of the context. This is Docker's tar walk applied to
    /// the path's ancestors first: an excluded directory hides everything below it unless an
    /// exception pattern names the directory or something in it literally (`!docs/keep.md`
    /// re-includes `docs/keep.md` after `docs`; `!**/keep.md` does not).
    pub fn is_excluded(&self, rel_path: &str) -> bool {
        let path = clean(rel_path);
        if path == "." {
            return false;
        }
        let mut parent_matches = Vec::new();
        for (slash, _) in path.match_indices('/') {
            let ancestor = &path[..slash];
            let (excluded, matches) = self.evaluate(ancestor, &parent_matches);
            if excluded && !self.walks_excluded_dir(ancestor) {
                return true;
            }
            parent_matches = matches;
        }
        self.evaluate(&path, &parent_matches).0
    }

    /// patternmatcher's MatchesUsingParentResults, which Docker's tar walk uses: a pattern that
    /// matched the parent directory counts as matching here. Returns whether `path` is excluded
    /// and the per-pattern matches its children inherit (`parent_matches` is empty at the top).
    fn evaluate(&self, path: &str, parent_matches: &[bool]) -> (bool, Vec<bool>) {
        let mut excluded = false;
        let mut matches = vec![false; self.patterns.len()];
        for (index, pattern) in self.patterns.iter().enumerate() {
            let mut matched = parent_matches.get(index).copied().unwrap_or(false);
            if !matched {
                // Docker skips patterns that cannot change the outcome so far; the children
                // then inherit "unmatched" for them.
                if pattern.exclusion != excluded {
                    continue;
                }
                matched = pattern.matches(path);
            }
            matches[index] = matched;
            if matched {
                excluded = !pattern.exclusion;
            }
        }
        (excluded, matches)
    }

    /// Docker still walks an excluded directory when an exception pattern, compared as plain text,
    /// is the directory or lies under it; the directory entry itself is not sent.
    fn walks_excluded_dir(&self, dir: &str) -> bool {
        self.patterns.iter().any(|pattern| {
            pattern.exclusion
                && pattern
                    .text
                    .strip_prefix(dir)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
    }

    /// patternmatcher.Matches, which docker CLI uses to decide whether the Dockerfile and
    /// .dockerignore need an exception: it checks the path, then only the one ancestor that has
    /// as many components as the pattern.
    fn cli_excludes(&self, path: &str) -> bool {
        let parent = path.rfind('/').map_or("", |slash| &path[..slash]);
        let parent_dirs: Vec<&str> = parent.split('/').collect();
        let mut excluded = false;
        for pattern in &self.patterns {
            if pattern.exclusion != excluded {
                continue;
            }
            let mut matched = pattern.matches(path);
            if !matched && !parent.is_empty() {
                let depth = pattern.text.split('/').count();
                if depth <= parent_dirs.len() {
                    matched = pattern.matches(&parent_dirs[..depth].join("/"));
                }
            }
            if matched {
                excluded = !pattern.exclusion;
            }
        }
        excluded
    }

    fn add_exception(&mut self, path: &str) -> Result<(), ContextError> {
        let pattern = format!("!{path}");
        let exception = Pattern::new(&pattern)
            .map_err(|reason| ContextError::InvalidPattern { pattern, reason })?;
        self.patterns.push(exception);
        Ok(())
    }
}

/// ignorefile.ReadAll's normalization of one trimmed, non-empty line.
fn normalize_line(line: &str) -> String {
    let (exception, rest) = match line.strip_prefix('!') {
        Some(rest) => (true, rest.trim()),
        None => (false, line),
    };
    let mut pattern = if rest.is_empty() {
        String::new()
    } else {
        clean(rest)
    };
    if pattern.len() > 1 && pattern.starts_with('/') {
        pattern.remove(0);
    }
    if exception {
        format!("!{pattern}")
    } else {
        pattern
    }
}

/// Go's `filepath.Clean` on Unix: the shortest equivalent path, "." for nothing.
fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                // ".." at the root stays at the root; a relative path keeps its leading "..".
                _ if rooted => {}
                _ => parts.push(".."),
            },
            _ => parts.push(part),
        }
    }
    let joined = parts.join("/");
    if rooted {
        format!("/{joined}")
    } else if joined.is_empty() {
        ".".to_owned()
    } else {
        joined
    }
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern without its `!`: what Docker compares in its directory-walk check.
    text: String,
    exclusion: bool,
    kind: MatchKind,
}

/// patternmatcher's match types.
#[derive(Debug, Clone)]
enum MatchKind {
    /// No special characters: the path must equal the pattern.
    Exact,
    /// `dir/**`: the path starts with this (everything before the trailing `**`).
    Prefix(String),
    /// `**/name` or `**name`: the path ends with this (everything after the leading `**`).
    Suffix(String),
    Regex(Program),
}

impl Pattern {
    /// patternmatcher.New for one pattern; the error is the reason it is invalid.
    fn new(raw: &str) -> Result<Pattern, String> {
        let cleaned = clean(raw.trim());
        let (exclusion, text) = match cleaned.strip_prefix('!') {
            Some("") => return Err("an exception needs a pattern after '!'".to_owned()),
            Some(rest) => (true, rest.to_owned()),
            None => (false, cleaned),
        };
        check_glob_syntax(&text)?;
        let kind = compile(&text)?;
        Ok(Pattern {
            text,
            exclusion,
            kind,
        })
    }

    fn matches(&self, path: &str) -> bool {
        match &self.kind {
            MatchKind::Exact => path == self.text,
            MatchKind::Prefix(prefix) => path.starts_with(prefix.as_str()),
            MatchKind::Suffix(suffix) => {
                // Docker lets `**/foo` match a top-level "foo" too.
                path.ends_with(suffix.as_str())
                    || suffix.strip_prefix('/').is_some_and(|bare| path == bare)
            }
            MatchKind::Regex(program) => program.is_match(path),
        }
    }
}

/// Docker validates every pattern with Go's `filepath.Match(pattern, ".")`, whose only syntax
/// errors are a trailing `\` and a character class that is unterminated, empty or has a bad range.
fn check_glob_syntax(pattern: &str) -> Result<(), String> {
    let mut rest = pattern;
    while !rest.is_empty() {
        let (chunk, after) = glob_chunk(rest.trim_start_matches('*'));
        check_glob_chunk(chunk)?;
        rest = after;
    }
    Ok(())
}

/// Go's scanChunk after the leading stars: the text up to the next `*` outside a class.
fn glob_chunk(pattern: &str) -> (&str, &str) {
    let bytes = pattern.as_bytes();
    let mut in_class = false;
    let mut index = 0;
    while index < bytes.len() {
        match bytes[index] {
            b'\\' if index + 1 < bytes.len() => index += 1,
            b'[' => in_class = true,
            b']' => in_class = false,
            b'*' if !in_class => break,
            _ => {}
        }
        index += 1;
    }
    pattern.split_at(index)
}

/// The syntax checks of Go's matchChunk.
fn check_glob_chunk(mut chunk: &str) -> Result<(), String> {
    while let Some(ch) = chunk.chars().next() {
        chunk = &chunk[ch.len_utf8()..];
        match ch {
            '[' => {
                chunk = chunk.strip_prefix('^').unwrap_or(chunk);
                let mut ranges = 0;
                loop {
                    match chunk.strip_prefix(']') {
                        Some(after) if ranges > 0 => {
                            chunk = after;
                            break;
                        }
                        _ => {}
                    }
                    chunk = glob_class_char(chunk)?;
                    if let Some(after) = chunk.strip_prefix('-') {
                        chunk = glob_class_char(after)?;
                    }
                    ranges += 1;
                }
            }
            '\\' => {
                let escaped = chunk.chars().next().ok_or("trailing backslash")?;
                chunk = &chunk[escaped.len_utf8()..];
            }
            _ => {}
        }
    }
    Ok(())
}

/// Go's getEsc: one class character, possibly escaped, which must be followed by more pattern.
fn glob_class_char(chunk: &str) -> Result<&str, String> {
    let malformed = || "malformed character class".to_owned();
    let mut chars = chunk.chars();
    match chars.next() {
        None | Some('-') | Some(']') => return Err(malformed()),
        Some('\\') => {
            chars.next().ok_or_else(malformed)?;
        }
        Some(_) => {}
    }
    let rest = chars.as_str();
    if rest.is_empty() {
        Err(malformed())
    } else {
        Ok(rest)
    }
}

/// patternmatcher's Pattern.compile. The regular expression is built exactly as Docker builds it
/// and then parsed, so quirks such as `*` inside `[...]`, or a final `\Q` quoting the closing `$`,
/// behave as in Docker.
fn compile(text: &str) -> Result<MatchKind, String> {
    enum Detected {
        Exact,
        Prefix { end: usize },
        Suffix,
        Regex,
    }
    let mut detected = Detected::Exact;
    let mut regex = String::from("^");
    let mut chars = text.char_indices().peekable();
    let mut first = true;
    while let Some((at, ch)) = chars.next() {
        match ch {
            '*' if chars.next_if(|&(_, next)| next == '*').is_some() => {
                // `**/` is `**`.
                chars.next_if(|&(_, next)| next == '/');
                if chars.peek().is_none() {
                    detected = match detected {
                        Detected::Exact => Detected::Prefix { end: at },
                        _ => {
                            regex.push_str(".*");
                            Detected::Regex
                        }
                    };
                } else {
                    regex.push_str("(.*/)?");
                    detected = Detected::Regex;
                }
                if first {
                    detected = Detected::Suffix;
                }
            }
            '*' => {
                regex.push_str("[^/]*");
                detected = Detected::Regex;
            }
            '?' => {
                regex.push_str("[^/]");
                detected = Detected::Regex;
            }
            // patternmatcher means to escape `{`, `|` and `}` too, but its bitmap cannot hold
            // them, so they reach the regular expression as alternation and repeat syntax.
            '.' | '+' | '(' | ')' | '$' => {
                regex.push('\\');
                regex.push(ch);
            }
            '\\' => match chars.next() {
                Some((_, escaped)) => {
                    regex.push('\\');
                    regex.push(escaped);
                    detected = Detected::Regex;
                }
                None => regex.push('\\'),
            },
            '[' | ']' => {
                regex.push(ch);
                detected = Detected::Regex;
            }
            _ => regex.push(ch),
        }
        first = false;
    }
    Ok(match detected {
        Detected::Exact => MatchKind::Exact,
        Detected::Prefix { end } => MatchKind::Prefix(text[..end].to_owned()),
        // Suffix is only detected when the text starts with "**".
        Detected::Suffix => MatchKind::Suffix(text[2..].to_owned()),
        Detected::Regex => {
            regex.push('$');
            MatchKind::Regex(parse_regex(&regex)?)
        }
    })
}

/// A compiled regular expression: instructions for a Pike VM, which runs in time linear in the
/// text whatever the expression.
#[derive(Debug, Clone)]
struct Program {
    code: Vec<Inst>,
    /// Every alternative starts with `^`, so matches can only start at the beginning.
    anchored: bool,
}

#[derive(Debug, Clone)]
enum Inst {
    Char(CharSet),
    Assert(Assertion),
    /// Continue at both targets.
    Split(usize, usize),
    Jump(usize),
    Match,
}

/// A parsed element of a regular expression.
#[derive(Debug)]
enum Node {
    Char(CharSet),
    Assert(Assertion),
    /// `(.*/)`, the group `**/` becomes.
    Group(Vec<Node>),
    Repeat {
        node: Box<Node>,
        min: u32,
        max: Option<u32>,
    },
}

/// A zero-width test: Docker's `^`...`$` and a `^` it leaves unescaped, or `\A`, `\z`, `\b`, `\B`.
#[derive(Debug, Clone, Copy)]
enum Assertion {
    TextStart,
    TextEnd,
    WordBoundary,
    NotWordBoundary,
}

/// Where the machine stands: the characters on either side.
#[derive(Clone, Copy)]
struct Position {
    before: Option<char>,
    after: Option<char>,
}

impl Assertion {
    fn holds(self, at: Position) -> bool {
        // Go's \b uses ASCII word characters.
        let is_word =
            |ch: Option<char>| ch.is_some_and(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        match self {
            Assertion::TextStart => at.before.is_none(),
            Assertion::TextEnd => at.after.is_none(),
            Assertion::WordBoundary => is_word(at.before) != is_word(at.after),
            Assertion::NotWordBoundary => is_word(at.before) == is_word(at.after),
        }
    }
}

/// Inclusive code point ranges (escapes such as `\x{d800}` can name non-characters).
#[derive(Debug, Clone)]
struct CharSet(Vec<(u32, u32)>);

impl CharSet {
    fn single(code: u32) -> CharSet {
        CharSet(vec![(code, code)])
    }

    fn from_table(table: &[(char, char)]) -> CharSet {
        CharSet(
            table
                .iter()
                .map(|&(lo, hi)| (lo.into(), hi.into()))
                .collect(),
        )
    }

    fn contains(&self, ch: char) -> bool {
        let code = u32::from(ch);
        self.0.iter().any(|&(lo, hi)| lo <= code && code <= hi)
    }

    fn complement(mut self) -> CharSet {
        self.0.sort_unstable();
        let mut gaps = Vec::new();
        let mut next = 0;
        for &(lo, hi) in &self.0 {
            if lo > next {
                gaps.push((next, lo - 1));
            }
            next = next.max(hi.saturating_add(1));
        }
        if next <= u32::from(char::MAX) {
            gaps.push((next, u32::from(char::MAX)));
        }
        CharSet(gaps)
    }
}

const DIGITS: &[(char, char)] = &[('0', '9')];
const WORD_CHARS: &[(char, char)] = &[('0', '9'), ('A', 'Z'), ('_', '_'), ('a', 'z')];

/// Go's Perl classes `\d`, `\s`, `\w` and their negations.
fn perl_class(letter: char) -> Option<CharSet> {
    let table: &[(char, char)] = match letter.to_ascii_lowercase() {
        'd' => DIGITS,
        's' => &[('\t', '\n'), ('\x0c', '\r'), (' ', ' ')],
        'w' => WORD_CHARS,
        _ => return None,
    };
    let set = CharSet::from_table(table);
    Some(if letter.is_ascii_uppercase() {
        set.complement()
    } else {
        set
    })
}

/// Go's POSIX classes, `[:alpha:]` or negated `[:^alpha:]`, all ASCII.
fn posix_class(name: &str) -> Option<CharSet> {
    let (negated, name) = match name.strip_prefix('^') {
        Some(name) => (true, name),
        None => (false, name),
    };
    let table: &[(char, char)] = match name {
        "alnum" => &[('0', '9'), ('A', 'Z'), ('a', 'z')],
        "alpha" => &[('A', 'Z'), ('a', 'z')],
        "ascii" => &[('\0', '\x7f')],
        "blank" => &[('\t', '\t'), (' ', ' ')],
        "cntrl" => &[('\0', '\x1f'), ('\x7f', '\x7f')],
        "digit" => DIGITS,
        "graph" => &[('!', '~')],
        "lower" => &[('a', 'z')],
        "print" => &[(' ', '~')],
        "punct" => &[('!', '/'), (':', '@'), ('[', '`'), ('{', '~')],
        "space" => &[('\t', '\r'), (' ', ' ')],
        "upper" => &[('A', 'Z')],
        "word" => WORD_CHARS,
        "xdigit" => &[('0', '9'), ('A', 'F'), ('a', 'f')],
        _ => return None,
    };
    let set = CharSet::from_table(table);
    Some(if negated { set.complement() } else { set })
}

/// Parses the regular expressions `compile` produces, following Go's regexp/syntax with its
/// Perl flags (`.` does not match a newline, a negated class does). Unicode classes (`\p{..}`)
/// are refused.
fn parse_regex(regex: &str) -> Result<Program, String> {
    let mut alternatives: Vec<Vec<Node>> = vec![Vec::new()];
    let mut after_repeat = false;
    let mut rest = regex;
    while let Some(ch) = rest.chars().next() {
        rest = &rest[ch.len_utf8()..];
        if ch == '|' {
            alternatives.push(Vec::new());
            after_repeat = false;
            continue;
        }
        let nodes = alternatives
            .last_mut()
            .expect("there is always an alternative");
        let mut repeat: Option<RepeatBounds> = None;
        match ch {
            '*' => repeat = Some((0, None)),
            '+' => repeat = Some((1, None)),
            '?' => repeat = Some((0, Some(1))),
            // `{` is a literal unless a repeat count follows.
            '{' => match repeat_bounds(rest) {
                Some((bounds, after)) => {
                    repeat = Some(bounds?);
                    rest = after;
                }
                None => nodes.push(Node::Char(CharSet::single(ch.into()))),
            },
            '^' => nodes.push(Node::Assert(Assertion::TextStart)),
            '$' => nodes.push(Node::Assert(Assertion::TextEnd)),
            '.' => nodes.push(Node::Char(CharSet::single('\n'.into()).complement())),
            '[' => {
                let (set, after) = parse_class(rest)?;
                nodes.push(Node::Char(set));
                rest = after;
            }
            // compile() escapes a `(` or `)` from the pattern, so only its own group occurs.
            '(' => {
                rest = rest.strip_prefix(".*/)").ok_or_else(unsupported_regex)?;
                let any = CharSet::single('\n'.into()).complement();
                nodes.push(Node::Group(vec![
                    Node::Repeat {
                        node: Box::new(Node::Char(any)),
                        min: 0,
                        max: None,
                    },
                    Node::Char(CharSet::single('/'.into())),
                ]));
            }
            ')' => return Err(unsupported_regex()),
            '\\' => rest = parse_escape(rest, nodes)?,
            _ => nodes.push(Node::Char(CharSet::single(ch.into()))),
        }
        if let Some((min, max)) = repeat {
            if after_repeat {
                return Err("invalid nested repetition operator".to_owned());
            }
            let node = nodes
                .pop()
                .ok_or("missing argument to repetition operator")?;
            nodes.push(Node::Repeat {
                node: Box::new(node),
                min,
                max,
            });
        }
        after_repeat = repeat.is_some();
    }
    Ok(Program::compile(&alternatives))
}

fn unsupported_regex() -> String {
    "Docker turns this pattern into a regular expression this tool does not support".to_owned()
}

/// A repeat's minimum and maximum count (None: unbounded).
type RepeatBounds = (u32, Option<u32>);

/// Go's parseRepeat on the text after `{`: `n}`, `n,}` or `n,m}` with no leading zeros. None when
/// it is not a repeat (the `{` is then a literal); an error when the counts are out of range.
fn repeat_bounds(text: &str) -> Option<(Result<RepeatBounds, String>, &str)> {
    let count = |text: &str| -> Option<(u32, usize)> {
        let digits = text.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || (digits > 1 && text.starts_with('0')) {
            return None;
        }
        // Anything past 1000 is refused, so saturating keeps the comparison right.
        let value = text[..digits].bytes().fold(0u32, |value, digit| {
            value
                .saturating_mul(10)
                .saturating_add(u32::from(digit - b'0'))
        });
        Some((value, digits))
    };
    let (min, digits) = count(text)?;
    let rest = &text[digits..];
    let (max, rest) = match rest.strip_prefix(',') {
        None => (Some(min), rest),
        Some(after) if after.starts_with('}') => (None, after),
        Some(after) => {
            let (max, digits) = count(after)?;
            (Some(max), &after[digits..])
        }
    };
    let rest = rest.strip_prefix('}')?;
    let valid = min <= 1000 && max.is_none_or(|max| max <= 1000 && min <= max);
    let bounds = if valid {
        Ok((min, max))
    } else {
        Err("invalid repeat count".to_owned())
    };
    Some((bounds, rest))
}

/// A `\` sequence outside a class; `text` follows the backslash. Docker copies `\` and the next
/// character into its regular expression, so Go may read further (`\x41`, `\Q...\E`).
fn parse_escape<'a>(text: &'a str, nodes: &mut Vec<Node>) -> Result<&'a str, String> {
    let mut chars = text.chars();
    let assertion = match chars.next() {
        Some('A') => Assertion::TextStart,
        Some('z') => Assertion::TextEnd,
        Some('b') => Assertion::WordBoundary,
        Some('B') => Assertion::NotWordBoundary,
        Some('Q') => {
            let quoted = chars.as_str();
            let (literal, after) = quoted.split_once("\\E").unwrap_or((quoted, ""));
            nodes.extend(
                literal
                    .chars()
                    .map(|ch| Node::Char(CharSet::single(ch.into()))),
            );
            return Ok(after);
        }
        _ => {
            let (set, after) = class_escape(text)?;
            nodes.push(Node::Char(set));
            return Ok(after);
        }
    };
    nodes.push(Node::Assert(assertion));
    Ok(chars.as_str())
}

/// A `\` sequence that stands for characters: a Perl class or a single character.
fn class_escape(text: &str) -> Result<(CharSet, &str), String> {
    let mut chars = text.chars();
    match chars.next() {
        Some('p' | 'P') => Err("Unicode classes such as \\p{L} are not supported".to_owned()),
        Some(letter) => match perl_class(letter) {
            Some(set) => Ok((set, chars.as_str())),
            None => escaped_char(text).map(|(code, after)| (CharSet::single(code), after)),
        },
        None => Err("trailing backslash".to_owned()),
    }
}

/// Go's parseEscape: octal, hex and C escapes, or escaped punctuation.
fn escaped_char(text: &str) -> Result<(u32, &str), String> {
    let mut chars = text.chars();
    let ch = chars.next().ok_or("trailing backslash")?;
    let rest = chars.as_str();
    let octal_digit = |text: &str| {
        text.bytes()
            .next()
            .filter(|byte| (b'0'..=b'7').contains(byte))
            .map(|byte| u32::from(byte - b'0'))
    };
    let escape = match ch {
        // `\1`..`\7` alone would be a backreference, which Go refuses.
        '0'..='7' if ch == '0' || octal_digit(rest).is_some() => {
            let mut code = u32::from(ch) - u32::from('0');
            let mut rest = rest;
            for _ in 0..2 {
                let Some(digit) = octal_digit(rest) else {
                    break;
                };
                code = code * 8 + digit;
                rest = &rest[1..];
            }
            Some((code, rest))
        }
        'x' => hex_escape(rest),
        'a' => Some((0x07, rest)),
        'f' => Some((0x0c, rest)),
        'n' => Some((0x0a, rest)),
        'r' => Some((0x0d, rest)),
        't' => Some((0x09, rest)),
        'v' => Some((0x0b, rest)),
        _ if ch.is_ascii() && !ch.is_ascii_alphanumeric() => Some((ch.into(), rest)),
        _ => None,
    };
    escape.ok_or_else(|| format!("invalid escape sequence \\{ch}"))
}

/// The text after `\x`: two hex digits, or one or more in braces.
fn hex_escape(text: &str) -> Option<(u32, &str)> {
    if let Some(braced) = text.strip_prefix('{') {
        let (digits, after) = braced.split_once('}')?;
        if digits.is_empty() || !digits.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return None;
        }
        let code = u32::from_str_radix(digits, 16).ok()?;
        return (code <= u32::from(char::MAX)).then_some((code, after));
    }
    let digits = text.get(..2)?;
    if !digits.chars().all(|ch| ch.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(digits, 16).ok()?, &text[2..]))
}

/// Go's parseClass for the text after `[`.
fn parse_class(text: &str) -> Result<(CharSet, &str), String> {
    let (negated, mut rest) = match text.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut members = CharSet(Vec::new());
    let mut first = true;
    loop {
        match rest.strip_prefix(']') {
            // A `]` right after `[` is a member, not the end.
            Some(after) if !first => {
                let set = if negated {
                    members.complement()
                } else {
                    members
                };
                return Ok((set, after));
            }
            _ => {}
        }
        first = false;
        // Go reads `[:name:]` as a POSIX class whenever a `:]` follows anywhere.
        if let Some((name, after)) = rest
            .strip_prefix("[:")
            .and_then(|named| named.split_once(":]"))
        {
            let set = posix_class(name)
                .ok_or_else(|| format!("invalid character class range [:{name}:]"))?;
            members.0.extend(set.0);
            rest = after;
            continue;
        }
        if let Some(escape) = rest.strip_prefix('\\') {
            let letter = escape.chars().next();
            if letter
                .is_some_and(|letter| matches!(letter, 'p' | 'P') || perl_class(letter).is_some())
            {
                let (set, after) = class_escape(escape)?;
                members.0.extend(set.0);
                rest = after;
                continue;
            }
        }
        let (lo, after) = class_char(rest)?;
        rest = after;
        let mut hi = lo;
        if let Some(after_dash) = rest.strip_prefix('-') {
            // `[a-]` is `a` and `-`.
            if !after_dash.is_empty() && !after_dash.starts_with(']') {
                let (end, after) = class_char(after_dash)?;
                if end < lo {
                    return Err("invalid character class range".to_owned());
                }
                hi = end;
                rest = after;
            }
        }
        members.0.push((lo, hi));
    }
}

fn class_char(text: &str) -> Result<(u32, &str), String> {
    let mut chars = text.chars();
    match chars.next() {
        None => Err("unterminated character class".to_owned()),
        Some('\\') => escaped_char(chars.as_str()),
        Some(ch) => Ok((ch.into(), chars.as_str())),
    }
}

impl Program {
    fn compile(alternatives: &[Vec<Node>]) -> Program {
        let mut code = Vec::new();
        let mut exits = Vec::new();
        for (index, alternative) in alternatives.iter().enumerate() {
            let is_last = index + 1 == alternatives.len();
            let split = code.len();
            if !is_last {
                code.push(Inst::Jump(0));
            }
            for node in alternative {
                emit(node, &mut code);
            }
            if !is_last {
                exits.push(code.len());
                code.push(Inst::Jump(0));
                code[split] = Inst::Split(split + 1, code.len());
            }
        }
        let end = code.len();
        for exit in exits {
            code[exit] = Inst::Jump(end);
        }
        code.push(Inst::Match);
        let anchored = alternatives.iter().all(|alternative| {
            matches!(
                alternative.first(),
                Some(Node::Assert(Assertion::TextStart))
            )
        });
        Program { code, anchored }
    }

    /// Go's MatchString: whether the expression matches anywhere in `text` (the anchors Docker
    /// adds normally pin it to the whole text).
    fn is_match(&self, text: &str) -> bool {
        let mut current = Threads::new(self.code.len());
        let mut next = Threads::new(self.code.len());
        let mut pending = Vec::new();
        let mut chars = text.chars().peekable();
        let mut before = None;
        loop {
            // A match may start anywhere, though an anchored one only at the start.
            if before.is_none() || !self.anchored {
                let at = Position {
                    before,
                    after: chars.peek().copied(),
                };
                if self.add(&mut current, &mut pending, 0, at) {
                    return true;
                }
            }
            let Some(ch) = chars.next() else {
                return false;
            };
            let at = Position {
                before: Some(ch),
                after: chars.peek().copied(),
            };
            next.clear();
            for &pc in &current.waiting {
                if let Inst::Char(set) = &self.code[pc] {
                    if set.contains(ch) && self.add(&mut next, &mut pending, pc + 1, at) {
                        return true;
                    }
                }
            }
            std::mem::swap(&mut current, &mut next);
            if self.anchored && current.waiting.is_empty() {
                return false;
            }
            before = Some(ch);
        }
    }

    /// Adds the thread at `pc` to `threads`, following every instruction that consumes nothing;
    /// true when that reaches a match. `pending` holds the second targets of splits: a stack
    /// rather than recursion, as a long pattern can chain thousands of splits.
    fn add(
        &self,
        threads: &mut Threads,
        pending: &mut Vec<usize>,
        pc: usize,
        at: Position,
    ) -> bool {
        pending.push(pc);
        while let Some(mut pc) = pending.pop() {
            while threads.visit(pc) {
                match &self.code[pc] {
                    Inst::Split(first, second) => {
                        pending.push(*second);
                        pc = *first;
                    }
                    Inst::Jump(target) => pc = *target,
                    Inst::Assert(assertion) if assertion.holds(at) => pc += 1,
                    Inst::Assert(_) => break,
                    Inst::Char(_) => {
                        threads.waiting.push(pc);
                        break;
                    }
                    Inst::Match => {
                        pending.clear();
                        return true;
                    }
                }
            }
        }
        false
    }
}

fn emit(node: &Node, code: &mut Vec<Inst>) {
    match node {
        Node::Char(set) => code.push(Inst::Char(set.clone())),
        Node::Assert(assertion) => code.push(Inst::Assert(*assertion)),
        Node::Group(nodes) => nodes.iter().for_each(|node| emit(node, code)),
        Node::Repeat { node, min, max } => {
            for _ in 0..*min {
                emit(node, code);
            }
            match max {
                None => {
                    let split = code.len();
                    code.push(Inst::Jump(0));
                    emit(node, code);
                    code.push(Inst::Jump(split));
                    code[split] = Inst::Split(split + 1, code.len());
                }
                Some(max) => {
                    for _ in *min..*max {
                        let split = code.len();
                        code.push(Inst::Jump(0));
                        emit(node, code);
                        code[split] = Inst::Split(split + 1, code.len());
                    }
                }
            }
        }
    }
}

/// The Pike VM's threads at one position.
struct Threads {
    /// The generation in which each instruction was last visited, so each runs once per position.
    visited: Vec<usize>,
    generation: usize,
    /// The visited instructions that wait for a character.
    waiting: Vec<usize>,
}

impl Threads {
    fn new(len: usize) -> Threads {
        Threads {
            visited: vec![0; len],
            generation: 1,
            waiting: Vec::new(),
        }
    }

    /// Marks `pc` visited; false if it already was.
    fn visit(&mut self, pc: usize) -> bool {
        std::mem::replace(&mut self.visited[pc], self.generation) != self.generation
    }

    fn clear(&mut self) {
        self.generation += 1;
        self.waiting.clear();
    }
}

/// One entry the build sends.
#[derive(Debug)]
struct Entry {
    /// Relative to the context, '/'-separated, no trailing slash.
    path: String,
    /// Permission bits, with setuid/setgid/sticky as Docker keeps them.
    mode: u32,
    kind: EntryKind,
}

#[derive(Debug)]
enum EntryKind {
    Dir,
    Symlink(PathBuf),
    /// A regular file read from the context at digest and tar time; `size` is what collect saw.
    DiskFile {
        size: u64,
    },
    /// A regular file whose bytes collect produced: a Dockerfile from outside the context, or
    /// the .dockerignore amended to name it.
    MemoryFile(Vec<u8>),
}

impl Entry {
    fn content_len(&self) -> u64 {
        match &self.kind {
            EntryKind::DiskFile { size } => *size,
            EntryKind::MemoryFile(bytes) => bytes.len() as u64,
            EntryKind::Dir | EntryKind::Symlink(_) => 0,
        }
    }
}

/// The entries a build sends (directories, regular files, symlinks), after .dockerignore,
/// sorted by path (byte order), walked once.
#[derive(Debug)]
pub struct ContextFiles {
    root: PathBuf,
    dockerfile: String,
    entries: Vec<Entry>,
}

/// Walks `context_dir` as `docker build` does. A relative `dockerfile` is relative to the context
/// dir; a Dockerfile outside the context is added under a generated name, as docker CLI does.
pub fn collect(context_dir: &Path, dockerfile: &Path) -> Result<ContextFiles, ContextError> {
    // Docker resolves symlinks in both paths before relating them.
    let root = fs::canonicalize(context_dir).map_err(|cause| ContextError::ContextDir {
        path: context_dir.to_owned(),
        cause,
    })?;
    if !root.is_dir() {
        return Err(ContextError::NotADirectory {
            path: context_dir.to_owned(),
        });
    }
    let given_dockerfile = root.join(dockerfile);
    let dockerfile_path =
        fs::canonicalize(&given_dockerfile).map_err(|cause| ContextError::Dockerfile {
            path: given_dockerfile.clone(),
            cause,
        })?;
    if !dockerfile_path.is_file() {
        return Err(ContextError::DockerfileNotAFile {
            path: given_dockerfile,
        });
    }
    let dockerfile_rel = match dockerfile_path.strip_prefix(&root) {
        Ok(rel) => Some(
            rel.to_str()
                .ok_or_else(|| ContextError::NonUtf8Path {
                    path: dockerfile_path.clone(),
                })?
                .to_owned(),
        ),
        Err(_) => None,
    };

    let ignore_path = root.join(DOCKERIGNORE);
    let ignore_bytes = match fs::read(&ignore_path) {
        Ok(bytes) => Some(bytes),
        Err(err) if err.kind() == io::ErrorKind::NotFound => None,
        Err(cause) => return Err(read_error(&ignore_path)(cause)),
    };
    // Non-UTF-8 patterns could only match non-UTF-8 names, which collect refuses anyway.
    let mut ignore = DockerIgnore::parse(&String::from_utf8_lossy(
        ignore_bytes.as_deref().unwrap_or(&[]),
    ))?;
    // docker CLI's TrimBuildFilesFromExcludes: the daemon needs both files (and drops them itself).
    if ignore.cli_excludes(DOCKERIGNORE) {
        ignore.add_exception(DOCKERIGNORE)?;
    }
    if let Some(rel) = &dockerfile_rel {
        if ignore.cli_excludes(rel) {
            ignore.add_exception(rel)?;
        }
    }
    let build_files: Vec<&str> = [Some(DOCKERIGNORE), dockerfile_rel.as_deref()]
        .into_iter()
        .flatten()
        .collect();
    let mut entries = walk(&root, &ignore, &build_files)?;
    let dockerfile = match dockerfile_rel {
        Some(rel) => rel,
        None => add_outside_dockerfile(&mut entries, &dockerfile_path, ignore_bytes)?,
    };
    entries.sort_unstable_by(|a, b| a.path.cmp(&b.path));
    Ok(ContextFiles {
        root,
        dockerfile,
        entries,
    })
}

/// Docker's TarWithOptions walk. `build_files` are sent even where the patterns would still
/// exclude them (docker CLI's exceptions miss e.g. `**/dir` excluding `a/b/dir/Dockerfile`).
fn walk(
    root: &Path,
    ignore: &DockerIgnore,
    build_files: &[&str],
) -> Result<Vec<Entry>, ContextError> {
    let mut entries = Vec::new();
    // Directories still to list: the path relative to the root ("" for the root itself) and
    // the pattern matches its children inherit.
    let mut pending = vec![(String::new(), Vec::new())];
    while let Some((dir, parent_matches)) = pending.pop() {
        let dir_path = if dir.is_empty() {
            root.to_owned()
        } else {
            root.join(&dir)
        };
        for item in fs::read_dir(&dir_path).map_err(read_error(&dir_path))? {
            let item = item.map_err(read_error(&dir_path))?;
            let path = item.path();
            let name = item.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| ContextError::NonUtf8Path { path: path.clone() })?;
            let rel = if dir.is_empty() {
                name.to_owned()
            } else {
                format!("{dir}/{name}")
            };
            // DirEntry::metadata does not follow symlinks.
            let metadata = item.metadata().map_err(read_error(&path))?;
            let mode = metadata.permissions().mode() & 0o7777;
            let file_type = metadata.file_type();
            let (excluded, matches) = ignore.evaluate(&rel, &parent_matches);
            if file_type.is_dir() {
                if !excluded {
                    entries.push(Entry {
                        path: rel.clone(),
                        mode,
                        kind: EntryKind::Dir,
                    });
                }
                let holds_build_file = build_files.iter().any(|file| {
                    file.strip_prefix(rel.as_str())
                        .is_some_and(|rest| rest.starts_with('/'))
                });
                if !excluded || ignore.walks_excluded_dir(&rel) || holds_build_file {
                    pending.push((rel, matches));
                }
                continue;
            }
            if excluded && !build_files.contains(&rel.as_str()) {
                continue;
            }
            let kind = if file_type.is_file() {
                // Fail now, naming the file, rather than halfway through the upload.
                File::open(&path).map_err(read_error(&path))?;
                EntryKind::DiskFile {
                    size: metadata.len(),
                }
            } else if file_type.is_symlink() {
                EntryKind::Symlink(fs::read_link(&path).map_err(read_error(&path))?)
            } else {
                // Sockets, FIFOs and devices have no place in an image build.
                continue;
            };
            entries.push(Entry {
                path: rel,
                mode,
                kind,
            });
        }
    }
    Ok(entries)
}

/// docker CLI's AddDockerfileToBuildContext: the Dockerfile travels under a generated name that
/// is appended to .dockerignore (created if missing), so the daemon keeps it out of `COPY . .`.
/// The name comes from the content rather than randomness, keeping the context reproducible.
fn add_outside_dockerfile(
    entries: &mut Vec<Entry>,
    dockerfile: &Path,
    ignore_bytes: Option<Vec<u8>>,
) -> Result<String, ContextError> {
    let content = fs::read(dockerfile).map_err(|cause| ContextError::Dockerfile {
        path: dockerfile.to_owned(),
        cause,
    })?;
    let name = format!(
        ".dockerfile.{}",
        &format!("{:x}", Sha256::digest(&content))[..20]
    );
    let mut ignore_content = ignore_bytes.unwrap_or_else(|| DOCKERIGNORE.as_bytes().to_vec());
    ignore_content.extend_from_slice(format!("\n{name}\n").as_bytes());
    let ignore_mode = entries
        .iter()
        .find(|entry| {
            entry.path == DOCKERIGNORE && matches!(entry.kind, EntryKind::DiskFile { .. })
        })
        .map_or(ADDED_FILE_MODE, |entry| entry.mode);
    entries.retain(|entry| entry.path != DOCKERIGNORE && entry.path != name);
    entries.push(Entry {
        path: DOCKERIGNORE.to_owned(),
        mode: ignore_mode,
        kind: EntryKind::MemoryFile(ignore_content),
    });
    entries.push(Entry {
        path: name.clone(),
        mode: ADDED_FILE_MODE,
        kind: EntryKind::MemoryFile(content),
    });
    Ok(name)
}

impl ContextFiles {
    /// What to pass as the engine's `dockerfile` build option.
    pub fn dockerfile_in_context(&self) -> &str {
        &self.dockerfile
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The bytes of file content sent.
    pub fn total_bytes(&self) -> u64 {
        self.entries.iter().map(Entry::content_len).sum()
    }

    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|entry| entry.path.as_str())
    }

    /// Stops sending `files` (absolute paths) where they lie inside the context: ecr-build's own
    /// artifacts, so that a re-run in the same folder does not bake the last run's output into the
    /// image. Returns the context paths withheld.
    pub fn withhold(&mut self, files: &[PathBuf]) -> Vec<String> {
        let inside: Vec<String> = files
            .iter()
            .filter_map(|file| {
                let parent = fs::canonicalize(file.parent()?).ok()?;
                let relative = parent
                    .strip_prefix(&self.root)
                    .ok()?
                    .join(file.file_name()?);
                relative.to_str().map(str::to_owned)
            })
            .filter(|path| *path != self.dockerfile && path != DOCKERIGNORE)
            .collect();
        let mut withheld = Vec::new();
        self.entries.retain(|entry| {
            let keep = !inside.contains(&entry.path);
            if !keep {
                withheld.push(entry.path.clone());
            }
            keep
        });
        withheld
    }

    /// sha256 (lowercase hex, 64 chars) over every sent entry: path, type, mode (permission bits),
    /// symlink target, and file content; plus the Dockerfile's name in the context and `extra`
    /// (caller-supplied bytes, e.g. build args) framed so no two inputs collide.
    /// Independent of mtimes, uid/gid, the order the filesystem lists entries, and the absolute
    /// path of context_dir. Reads each file once, on up to 2 threads, in 64 KiB chunks. Blocking.
    pub fn digest(&self, extra: &[u8]) -> Result<String, ContextError> {
        let mut content_hashes = self.hash_disk_files()?.into_iter();
        let mut hasher = Sha256::new();
        hasher.update(DIGEST_DOMAIN);
        put_framed(&mut hasher, self.dockerfile.as_bytes());
        hasher.update((self.entries.len() as u64).to_be_bytes());
        for entry in &self.entries {
            put_framed(&mut hasher, entry.path.as_bytes());
            hasher.update(entry.mode.to_be_bytes());
            match &entry.kind {
                EntryKind::Dir => hasher.update(b"d"),
                EntryKind::Symlink(target) => {
                    hasher.update(b"l");
                    put_framed(&mut hasher, target.as_os_str().as_bytes());
                }
                EntryKind::DiskFile { size } => {
                    hasher.update(b"f");
                    hasher.update(size.to_be_bytes());
                    let content_hash = content_hashes
                        .next()
                        .expect("hash_disk_files yields one hash per DiskFile, in entry order");
                    hasher.update(content_hash);
                }
                EntryKind::MemoryFile(bytes) => {
                    hasher.update(b"f");
                    hasher.update((bytes.len() as u64).to_be_bytes());
                    hasher.update(Sha256::digest(bytes));
                }
            }
        }
        put_framed(&mut hasher, extra);
        Ok(format!("{:x}", hasher.finalize()))
    }

    /// The sha256 of every DiskFile's content, in entry order, computed by two threads that take
    /// files in turn.
    fn hash_disk_files(&self) -> Result<Vec<[u8; 32]>, ContextError> {
        let jobs: Vec<(PathBuf, u64)> = self
            .entries
            .iter()
            .filter_map(|entry| match entry.kind {
                EntryKind::DiskFile { size } => Some((self.root.join(&entry.path), size)),
                _ => None,
            })
            .collect();
        let next_job = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let work = || -> Result<Vec<(usize, [u8; 32])>, ContextError> {
            let mut buffer = vec![0; CHUNK_SIZE];
            let mut done = Vec::new();
            while !failed.load(Ordering::Relaxed) {
                let index = next_job.fetch_add(1, Ordering::Relaxed);
                let Some((path, size)) = jobs.get(index) else {
                    break;
                };
                match hash_file(path, *size, &mut buffer) {
                    Ok(hash) => done.push((index, hash)),
                    Err(err) => {
                        failed.store(true, Ordering::Relaxed);
                        return Err(err);
                    }
                }
            }
            Ok(done)
        };
        let (mine, helpers) = thread::scope(|scope| {
            // If the helper cannot start, this thread simply does all the files.
            let helper = if jobs.len() > 1 {
                thread::Builder::new()
                    .name("context-digest".to_owned())
                    .spawn_scoped(scope, work)
                    .ok()
            } else {
                None
            };
            let mine = work();
            let helpers = helper.map(|handle| {
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            });
            (mine, helpers)
        });
        let mut hashes = vec![[0; 32]; jobs.len()];
        let helpers = helpers.transpose()?.unwrap_or_default();
        for (index, hash) in mine?.into_iter().chain(helpers) {
            hashes[index] = hash;
        }
        Ok(hashes)
    }

    /// The context as a tar byte stream, produced on a blocking thread into a bounded channel
    /// (never the whole tar in memory). Suitable for `bollard::body_try_stream`. Headers are
    /// normalized: uid/gid 0, no user/group names, mtime 0, mode = permission bits; entries in
    /// path order, so the same tree always gives the same bytes. A read failure ends the stream
    /// with an error naming the file.
    pub fn into_tar_stream(
        self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, io::Error>> + Send + 'static {
        let (sender, receiver) = mpsc::channel(CHUNKS_IN_FLIGHT);
        let spawn_failure = sender.clone();
        let producer = thread::Builder::new()
            .name("context-tar".to_owned())
            .spawn(move || {
                let mut sink = ChunkSender {
                    sender,
                    buffer: Vec::with_capacity(CHUNK_SIZE),
                };
                if let Err(err) = self.write_tar(&mut sink) {
                    // Nobody is listening if the receiver is gone.
                    let _ = sink.sender.blocking_send(Err(err));
                }
            });
        if let Err(err) = producer {
            // The channel is empty, so this cannot be full.
            let _ = spawn_failure.try_send(Err(err));
        }
        ReceiverStream::new(receiver)
    }

    fn write_tar(&self, sink: &mut ChunkSender) -> io::Result<()> {
        let mut builder = tar::Builder::new(&mut *sink);
        for entry in &self.entries {
            self.append_entry(&mut builder, entry)?;
        }
        builder.into_inner()?;
        sink.flush()
    }

    fn append_entry<W: Write>(
        &self,
        builder: &mut tar::Builder<W>,
        entry: &Entry,
    ) -> io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_mode(entry.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_size(entry.content_len());
        match &entry.kind {
            EntryKind::Dir => {
                header.set_entry_type(tar::EntryType::Directory);
                // Docker names directories with a trailing slash.
                builder.append_data(&mut header, format!("{}/", entry.path), io::empty())
            }
            EntryKind::Symlink(target) => {
                header.set_entry_type(tar::EntryType::Symlink);
                builder.append_link(&mut header, &entry.path, target)
            }
            EntryKind::DiskFile { size } => {
                header.set_entry_type(tar::EntryType::Regular);
                let path = self.root.join(&entry.path);
                let with_path = |err: io::Error| io::Error::new(err.kind(), read_error(&path)(err));
                let file = File::open(&path).map_err(with_path)?;
                builder
                    .append_data(&mut header, &entry.path, ExactSize::new(file, *size))
                    .map_err(with_path)
            }
            EntryKind::MemoryFile(bytes) => {
                header.set_entry_type(tar::EntryType::Regular);
                builder.append_data(&mut header, &entry.path, bytes.as_slice())
            }
        }
    }
}

fn hash_file(path: &Path, size: u64, buffer: &mut [u8]) -> Result<[u8; 32], ContextError> {
    let file = File::open(path).map_err(read_error(path))?;
    let mut reader = ExactSize::new(file, size);
    let mut hasher = Sha256::new();
    loop {
        let read = reader.read(buffer).map_err(read_error(path))?;
        if read == 0 {
            return Ok(hasher.finalize().into());
        }
        hasher.update(&buffer[..read]);
    }
}

fn put_framed(hasher: &mut Sha256, bytes: &[u8]) {
    hasher.update((bytes.len() as u64).to_be_bytes());
    hasher.update(bytes);
}

/// Reads exactly the size collect saw and fails if the file is now shorter or longer: a tar
/// header's size must match the bytes after it, and the digest must describe what is sent.
struct ExactSize<R> {
    inner: R,
    remaining: u64,
}

impl<R: Read> ExactSize<R> {
    fn new(inner: R, size: u64) -> Self {
        ExactSize {
            inner,
            remaining: size,
        }
    }
}

impl<R: Read> Read for ExactSize<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let changed = || io::Error::other("the file changed size while the build context was read");
        if buf.is_empty() {
            return Ok(0);
        }
        if self.remaining == 0 {
            let mut probe = [0; 1];
            return match self.inner.read(&mut probe)? {
                0 => Ok(0),
                _ => Err(changed()),
            };
        }
        let limit = usize::try_from(self.remaining).map_or(buf.len(), |left| left.min(buf.len()));
        let read = self.inner.read(&mut buf[..limit])?;
        if read == 0 {
            return Err(changed());
        }
        self.remaining -= read as u64;
        Ok(read)
    }
}

/// Collects tar output into chunks of about CHUNK_SIZE and hands them to the stream's channel,
/// waiting while the channel is full.
struct ChunkSender {
    sender: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl ChunkSender {
    fn send_buffered(&mut self) -> io::Result<()> {
        let chunk = std::mem::replace(&mut self.buffer, Vec::with_capacity(CHUNK_SIZE));
        self.sender
            .blocking_send(Ok(Bytes::from(chunk)))
            .map_err(|_| {
                io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "the build context stream was dropped",
                )
            })
    }
}

impl Write for ChunkSender {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK_SIZE {
            self.send_buffered()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            Ok(())
        } else {
            self.send_buffered()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::TryStreamExt;
    use std::os::unix::fs::symlink;
    use std::time::{Duration, SystemTime};

    /// A directory under the system temp dir, removed when dropped.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new() -> TempDir {
            static NEXT: AtomicUsize = AtomicUsize::new(0);
            let path = std::env::temp_dir().join(format!(
                "ecr-build-context-test-{}-{}",
                std::process::id(),
                NEXT.fetch_add(1, Ordering::Relaxed)
            ));
            let _ = fs::remove_dir_all(&path);
            fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }

        fn path(&self) -> &Path {
            &self.0
        }

        fn write(&self, rel: &str, content: &str) -> PathBuf {
            let path = self.0.join(rel);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, content).unwrap();
            path
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
    }

    fn paths(files: &ContextFiles) -> Vec<&str> {
        files.paths().collect()
    }

    fn set_mode(path: &Path, mode: u32) {
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    async fn tar_bytes(files: ContextFiles) -> Vec<u8> {
        let chunks: Vec<Bytes> = files.into_tar_stream().try_collect().await.unwrap();
        chunks.concat()
    }

    #[test]
    fn comments_and_blank_lines_are_not_patterns() {
        let rules = ignore("# a comment\n\n   \n\t\n*.log\n #not-a-comment\n");
        assert_eq!(rules.patterns.len(), 2);
        assert!(rules.is_excluded("app.log"));
        assert!(!rules.is_excluded("# a comment"));
        // Docker only treats '#' at the very start of a line as a comment.
        assert!(rules.is_excluded("#not-a-comment"));
    }

    #[test]
    fn bom_and_crlf_are_ignored() {
        let rules = ignore("\u{feff}secret\r\n*.tmp\r\n");
        assert!(rules.is_excluded("secret"));
        assert!(rules.is_excluded("a.tmp"));
    }

    #[test]
    fn star_stays_within_one_directory() {
        let rules = ignore("*.log");
        assert!(rules.is_excluded("app.log"));
        assert!(rules.is_excluded(".log"));
        assert!(!rules.is_excluded("logs/app.log"));
        assert!(!rules.is_excluded("app.log.txt"));
    }

    #[test]
    fn double_star_spans_directories() {
        let rules = ignore("**/*.tmp");
        assert!(rules.is_excluded("a.tmp"));
        assert!(rules.is_excluded("x/a.tmp"));
        assert!(rules.is_excluded("x/y/z/a.tmp"));
        assert!(!rules.is_excluded("a.tmpx"));
        assert!(!rules.is_excluded("x/a.tmp.keep"));
    }

    #[test]
    fn directory_pattern_excludes_everything_below() {
        for text in ["build", "build/", "/build", "./build"] {
            let rules = ignore(text);
            assert!(rules.is_excluded("build"), "{text}");
            assert!(rules.is_excluded("build/out.o"), "{text}");
            assert!(rules.is_excluded("build/deep/er/out.o"), "{text}");
            assert!(!rules.is_excluded("builder"), "{text}");
            assert!(!rules.is_excluded("src/build"), "{text}");
        }
    }

    #[test]
    fn exception_reincludes_a_file_in_an_excluded_directory() {
        let rules = ignore("docs\n!docs/keep.md");
        assert!(rules.is_excluded("docs"));
        assert!(rules.is_excluded("docs/other.md"));
        assert!(!rules.is_excluded("docs/keep.md"));
        let rules = ignore("docs/*\n!docs/keep.md");
        assert!(!rules.is_excluded("docs/keep.md"));
        assert!(rules.is_excluded("docs/other.md"));
    }

    #[test]
    fn exception_must_name_the_excluded_directory_literally() {
        // Docker does not descend into `docs` for `!**/keep.md`, so the file stays out.
        let rules = ignore("docs\n!**/keep.md");
        assert!(rules.is_excluded("docs/keep.md"));
        assert!(!rules.is_excluded("src/keep.md"));
    }

    #[test]
    fn last_matching_pattern_wins() {
        let rules = ignore("*.md\n!README.md");
        assert!(!rules.is_excluded("README.md"));
        assert!(rules.is_excluded("CHANGES.md"));
        let rules = ignore("!README.md\n*.md");
        assert!(rules.is_excluded("README.md"));
        let rules = ignore("*\n!src\nsrc/gen");
        assert!(!rules.is_excluded("src/main.rs"));
        assert!(rules.is_excluded("src/gen/x.rs"));
        assert!(rules.is_excluded("target"));
    }

    #[test]
    fn patterns_are_cleaned() {
        let rules = ignore("/secret\n./tmp\na/../b\nc//d/./e\n../outside\n! /kept");
        assert!(rules.is_excluded("secret"));
        assert!(rules.is_excluded("tmp"));
        assert!(rules.is_excluded("b"));
        assert!(!rules.is_excluded("a"));
        assert!(rules.is_excluded("c/d/e"));
        assert!(!rules.is_excluded("outside"));
        assert_eq!(rules.patterns[5].text, "kept");
        assert!(rules.patterns[5].exclusion);
    }

    #[test]
    fn question_mark_and_classes() {
        let rules = ignore("file?.txt\n[a-c].bin\n[^x-z].dat\n[!].md");
        assert!(rules.is_excluded("file1.txt"));
        assert!(!rules.is_excluded("file10.txt"));
        assert!(!rules.is_excluded("file.txt"));
        assert!(!rules.is_excluded("file/.txt"));
        assert!(rules.is_excluded("b.bin"));
        assert!(!rules.is_excluded("d.bin"));
        assert!(rules.is_excluded("a.dat"));
        assert!(!rules.is_excluded("y.dat"));
        // Go has no `!` negation in classes.
        assert!(rules.is_excluded("!.md"));
        assert!(!rules.is_excluded("a.md"));
    }

    #[test]
    fn escaped_characters_are_literal() {
        let rules = ignore(
            r"\*.txt
\[x\]
a\?b
[\]]z",
        );
        assert!(rules.is_excluded("*.txt"));
        assert!(!rules.is_excluded("a.txt"));
        assert!(rules.is_excluded("[x]"));
        assert!(!rules.is_excluded("x"));
        assert!(rules.is_excluded("a?b"));
        assert!(!rules.is_excluded("acb"));
        assert!(rules.is_excluded("]z"));
    }

    #[test]
    fn invalid_patterns_are_errors_naming_them() {
        for bad in [
            "[",
            "a[",
            "[^",
            "[]a]",
            "[-x]",
            "[x-]",
            "[a-b-c]",
            "x\\",
            "!",
            // Valid for filepath.Match, refused by Go's regexp when Docker first uses the pattern.
            "[z-a]",
            "[Local-Only]/",
            r"a\1",
            "[[:nope:]]",
            "*{2}",
            "*a{1001}",
            // Valid in Docker, but needs Unicode tables this module does not carry.
            r"*\p{L}",
        ] {
            let text = format!("ok\n{bad}\n");
            let err = DockerIgnore::parse(&text).expect_err(bad).to_string();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
    }

    /// moby/patternmatcher's TestMatches and TestMatch tables (Unix rows).
    #[test]
    fn agrees_with_patternmatcher_tables() {
        let single = [
            ("**", "file", true),
            ("**", "file/", true),
            ("**/", "file", true),
            ("**/", "file/", true),
            ("**", "/", true),
            ("**/", "/", true),
            ("**", "dir/file", true),
            ("**/", "dir/file", true),
            ("**", "dir/file/", true),
            ("**/", "dir/file/", true),
            ("**/**", "dir/file", true),
            ("**/**", "dir/file/", true),
            ("dir/**", "dir/file", true),
            ("dir/**", "dir/file/", true),
            ("dir/**", "dir/dir2/file", true),
            ("dir/**", "dir/dir2/file/", true),
            ("**/dir", "dir", true),
            ("**/dir", "dir/file", true),
            ("**/dir2/*", "dir/dir2/file", true),
            ("**/dir2/*", "dir/dir2/file/", true),
            ("**/dir2/**", "dir/dir2/dir3/file", true),
            ("**/dir2/**", "dir/dir2/dir3/file/", true),
            ("**file", "file", true),
            ("**file", "dir/file", true),
            ("**/file", "dir/file", true),
            ("**file", "dir/dir/file", true),
            ("**/file", "dir/dir/file", true),
            ("**/file*", "dir/dir/file", true),
            ("**/file*", "dir/dir/file.txt", true),
            ("**/file*txt", "dir/dir/file.txt", true),
            ("**/file*.txt", "dir/dir/file.txt", true),
            ("**/file*.txt*", "dir/dir/file.txt", true),
            ("**/**/*.txt", "dir/dir/file.txt", true),
            ("**/**/*.txt2", "dir/dir/file.txt", false),
            ("**/*.txt", "file.txt", true),
            ("**/**/*.txt", "file.txt", true),
            ("a**/*.txt", "a/file.txt", true),
            ("a**/*.txt", "a/dir/file.txt", true),
            ("a**/*.txt", "a/dir/dir/file.txt", true),
            ("a/*.txt", "a/dir/file.txt", false),
            ("a/*.txt", "a/file.txt", true),
            ("a/*.txt**", "a/file.txt", true),
            ("a[b-d]e", "ae", false),
            ("a[b-d]e", "ace", true),
            ("a[b-d]e", "aae", false),
            ("a[^b-d]e", "aze", true),
            (".*", ".foo", true),
            (".*", "foo", false),
            ("abc.def", "abcdef", false),
            ("abc.def", "abc.def", true),
            ("abc.def", "abcZdef", false),
            ("abc?def", "abcZdef", true),
            ("abc?def", "abcdef", false),
            ("a\\\\", "a\\", true),
            ("**/foo/bar", "foo/bar", true),
            ("**/foo/bar", "dir/foo/bar", true),
            ("**/foo/bar", "dir/dir2/foo/bar", true),
            ("abc/**", "abc", false),
            ("abc/**", "abc/def", true),
            ("abc/**", "abc/def/ghi", true),
            ("**/.foo", ".foo", true),
            ("**/.foo", "bar.foo", false),
            ("a(b)c/def", "a(b)c/def", true),
            ("a(b)c/def", "a(b)c/xyz", false),
            ("a.|)$(}+{bc", "a.|)$(}+{bc", true),
            (
                "dist/*.whl",
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                true,
            ),
            ("a\\*b", "a*b", true),
            // TestMatch, from Go's filepath tests.
            ("abc", "abc", true),
            ("*", "abc", true),
            ("*c", "abc", true),
            ("a*", "a", true),
            ("a*", "abc", true),
            ("a*", "ab/c", true),
            ("a*/b", "abc/b", true),
            ("a*/b", "a/c/b", false),
            ("a*b*c*d*e*/f", "axbxcxdxe/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/f", true),
            ("a*b*c*d*e*/f", "axbxcxdxe/xxx/f", false),
            ("a*b*c*d*e*/f", "axbxcxdxexxx/fff", false),
            ("a*b?c*x", "abxbbxdbxebxczzx", true),
            ("a*b?c*x", "abxbbxdbxebxczzy", false),
            ("ab[c]", "abc", true),
            ("ab[b-d]", "abc", true),
            ("ab[e-g]", "abc", false),
            ("ab[^c]", "abc", false),
            ("ab[^b-d]", "abc", false),
            ("ab[^e-g]", "abc", true),
            ("a\\*b", "ab", false),
            ("a?b", "a☺b", true),
            ("a[^a]b", "a☺b", true),
            ("a???b", "a☺b", false),
            ("a[^a][^a][^a]b", "a☺b", false),
            ("[a-ζ]*", "α", true),
            ("*[a-ζ]", "A", false),
            ("a?b", "a/b", false),
            ("a*b", "a/b", false),
            ("[\\]a]", "]", true),
            ("[\\-]", "-", true),
            ("[x\\-]", "x", true),
            ("[x\\-]", "-", true),
            ("[x\\-]", "z", false),
            ("[\\-x]", "x", true),
            ("[\\-x]", "-", true),
            ("[\\-x]", "a", false),
            ("*x", "xxx", true),
        ];
        for (pattern, path, excluded) in single {
            let rules = DockerIgnore::parse(pattern).unwrap_or_else(|err| panic!("{err}"));
            assert_eq!(
                rules.is_excluded(path),
                excluded,
                "pattern {pattern:?}, path {path:?}"
            );
        }
        let multi: [(&[&str], &str, bool); 4] = [
            (&["**", "!util/docker/web"], "util/docker/web/foo", false),
            (
                &["**", "!util/docker/web", "util/docker/web/foo"],
                "util/docker/web/foo",
                true,
            ),
            (
                &[
                    "**",
                    "!dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                ],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
            (
                &["**", "!dist/*.whl"],
                "dist/proxy.py-2.4.0rc3.dev36+g08acad9-py3-none-any.whl",
                false,
            ),
        ];
        for (patterns, path, excluded) in multi {
            let rules = ignore(&patterns.join("\n"));
            assert_eq!(
                rules.is_excluded(path),
                excluded,
                "patterns {patterns:?}, path {path:?}"
            );
        }
    }

    #[test]
    fn reproduces_docker_quirks() {
        // `prefix**` and `**suffix` are plain string comparisons in Docker.
        assert!(ignore("foo**").is_excluded("foobar"));
        assert!(ignore("**foo").is_excluded("barfoo"));
        // An unescaped `^` is a regexp anchor once the pattern is a regexp...
        assert!(ignore("^foo*").is_excluded("foobar"));
        assert!(!ignore("^foo*").is_excluded("^foobar"));
        // ...and a plain character otherwise.
        assert!(ignore("^foo").is_excluded("^foo"));
        // `*` inside a class splices `[^/]*` into it: `[*]` is `[[^/]*]`.
        assert!(ignore("[*]").is_excluded("^/]"));
        assert!(!ignore("[*]").is_excluded("*"));
        // The tar walk inherits per-pattern parent matches, so a later re-exclusion of the
        // directory does not reach a file an exception re-included.
        assert!(!ignore("a\n!a/b\na").is_excluded("a/b"));
        assert!(ignore("a\n!a/b\na").cli_excludes("a/b"));
    }

    #[test]
    fn regexp_syntax_reaches_go_as_in_docker() {
        // Docker copies `\` and the next character into a Go regexp.
        assert!(ignore(r"*\d").is_excluded("v1"));
        assert!(!ignore(r"*\d").is_excluded("vd"));
        assert!(ignore(r"bin\Debug*").is_excluded("binxebug"));
        assert!(!ignore(r"bin\Debug*").is_excluded("bin/Debug"));
        assert!(ignore(r"*\x41").is_excluded("A"));
        assert!(ignore("*[[:digit:]]").is_excluded("v1"));
        assert!(ignore(r"*\bx").is_excluded("a-x"));
        assert!(!ignore(r"*\bx").is_excluded("ax"));
        // `{`, `|` and `}` slip past Docker's escaping: repeats and alternation.
        assert!(ignore("*a{2}").is_excluded("baa"));
        assert!(!ignore("*a{2}").is_excluded("ba"));
        assert!(
            ignore("a{2}").is_excluded("a{2}"),
            "no regexp characters: a plain string"
        );
        // `^x|[^/]*\.md$`: the first alternative is a prefix test, the second lost its `^`.
        let alternation = ignore("x|*.md");
        assert!(alternation.is_excluded("xylophone"));
        assert!(alternation.is_excluded("docs/a.md"));
        assert!(!alternation.is_excluded("b.txt"));
        assert!(ignore("*.{js,ts}").is_excluded("a.{js,ts}"));
        // A final `\Q` quotes Docker's closing `$`, leaving the match unanchored at the end.
        assert!(ignore(r"a*\Q").is_excluded("ab$c"));
        assert!(!ignore(r"a*\Q").is_excluded("abc"));
    }

    #[test]
    fn matcher_never_panics_on_arbitrary_input() {
        const PATTERN_CHARS: &[char] = &[
            '*', '?', '[', ']', '\\', '!', '/', '.', 'a', 'b', '-', '^', '$', '(', ')', '{', '}',
            '+', '|', ':', ' ', '\n', 'é', '#', '1', '2', ',', 'x', 'd', 'Q', 'E', 'p',
        ];
        const PATH_CHARS: &[char] = &['a', 'b', '/', '.', '*', '[', ']', '-', '^', 'é', '\n', ':'];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |bound: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % bound as u64) as usize
        };
        let text = |alphabet: &[char], next: &mut dyn FnMut(usize) -> usize| -> String {
            let len = next(12);
            (0..len).map(|_| alphabet[next(alphabet.len())]).collect()
        };
        for _ in 0..20_000 {
            let patterns = text(PATTERN_CHARS, &mut next);
            if let Ok(rules) = DockerIgnore::parse(&patterns) {
                for _ in 0..4 {
                    let path = text(PATH_CHARS, &mut next);
                    rules.is_excluded(&path);
                    rules.cli_excludes(&path);
                }
            }
        }
    }

    #[test]
    fn collect_always_sends_dockerfile_and_dockerignore() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "*\nDockerfile\n.dockerignore\n");
        dir.write("app.txt", "x");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(paths(&files), [".dockerignore", "Dockerfile"]);
        assert_eq!(files.dockerfile_in_context(), "Dockerfile");
    }

    #[test]
    fn collect_sends_a_dockerfile_inside_an_excluded_directory() {
        let dir = TempDir::new();
        dir.write("docker/Dockerfile.prod", "FROM scratch\n");
        dir.write("docker/notes.txt", "x");
        dir.write("a/b/build/Dockerfile", "FROM scratch\n");
        // `**/build` is missed by docker CLI's exception check; it is sent anyway.
        dir.write(".dockerignore", "docker\n**/build\n");
        let files = collect(dir.path(), Path::new("docker/Dockerfile.prod")).unwrap();
        assert_eq!(files.dockerfile_in_context(), "docker/Dockerfile.prod");
        assert_eq!(
            paths(&files),
            [".dockerignore", "a", "a/b", "docker/Dockerfile.prod"]
        );
        let files = collect(dir.path(), Path::new("a/b/build/Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "a", "a/b", "a/b/build/Dockerfile"]
        );
    }

    #[test]
    fn collect_walks_into_a_directory_as_docker_does_for_the_dockerfile_exception() {
        let dir = TempDir::new();
        dir.write("docs/Dockerfile", "FROM scratch\n");
        dir.write("docs/keep.md", "keep");
        dir.write("docs/other.md", "drop");
        dir.write(".dockerignore", "docs\n!**/keep.md\n");
        // docker CLI appends `!docs/Dockerfile`, which makes the walk enter `docs`, where
        // `!**/keep.md` then re-includes keep.md; without it `docs` would be skipped whole.
        let files = collect(dir.path(), Path::new("docs/Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "docs/Dockerfile", "docs/keep.md"]
        );
    }

    #[test]
    fn collect_skips_excluded_directories_and_keeps_empty_ones() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "node_modules\n**/*.log\n");
        dir.write("node_modules/pkg/index.js", "x");
        dir.write("src/main.rs", "fn main() {}");
        dir.write("src/debug.log", "x");
        fs::create_dir_all(dir.path().join("empty")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            [".dockerignore", "Dockerfile", "empty", "src", "src/main.rs"]
        );
        assert_eq!(files.len(), 5);
        assert!(!files.is_empty());
        // .dockerignore, Dockerfile and src/main.rs.
        assert_eq!(files.total_bytes(), 22 + 13 + 12);
    }

    #[test]
    fn collect_finds_an_exception_inside_an_excluded_directory() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write(".dockerignore", "docs\n!docs/keep.md\n");
        dir.write("docs/keep.md", "keep");
        dir.write("docs/other.md", "drop");
        dir.write("docs/sub/deep.md", "drop");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        // Like Docker, the excluded directory's own entry is not sent.
        assert_eq!(
            paths(&files),
            [".dockerignore", "Dockerfile", "docs/keep.md"]
        );
    }

    #[test]
    fn collect_keeps_symlinks_as_symlinks() {
        let dir = TempDir::new();
        let outside = TempDir::new();
        outside.write("secret/file", "outside");
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("target.txt", "t");
        symlink("target.txt", dir.path().join("link")).unwrap();
        symlink(outside.path().join("secret"), dir.path().join("outside")).unwrap();
        symlink("missing", dir.path().join("dangling")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(
            paths(&files),
            ["Dockerfile", "dangling", "link", "outside", "target.txt"]
        );
        let link = files
            .entries
            .iter()
            .find(|entry| entry.path == "link")
            .unwrap();
        assert!(
            matches!(&link.kind, EntryKind::Symlink(target) if target == Path::new("target.txt"))
        );
        let outside_link = files
            .entries
            .iter()
            .find(|entry| entry.path == "outside")
            .unwrap();
        assert!(matches!(outside_link.kind, EntryKind::Symlink(_)));
    }

    #[test]
    fn collect_resolves_the_dockerfile_path() {
        let dir = TempDir::new();
        dir.write("build/Dockerfile", "FROM scratch\n");
        symlink("build/Dockerfile", dir.path().join("Dockerfile")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(files.dockerfile_in_context(), "build/Dockerfile");
        let absolute = dir.path().join("build/Dockerfile");
        let files = collect(dir.path(), &absolute).unwrap();
        assert_eq!(files.dockerfile_in_context(), "build/Dockerfile");
    }

    #[tokio::test]
    async fn collect_adds_a_dockerfile_from_outside_the_context() {
        let dir = TempDir::new();
        let elsewhere = TempDir::new();
        let dockerfile = elsewhere.write("Dockerfile", "FROM scratch\nCOPY . /\n");
        dir.write("app.txt", "app");
        let files = collect(dir.path(), &dockerfile).unwrap();
        let expected_name = format!(
            ".dockerfile.{}",
            &format!("{:x}", Sha256::digest(b"FROM scratch\nCOPY . /\n"))[..20]
        );
        assert_eq!(files.dockerfile_in_context(), expected_name);
        assert_eq!(
            paths(&files),
            [expected_name.as_str(), ".dockerignore", "app.txt"]
        );

        let tar = tar_bytes(files).await;
        let mut archive = tar::Archive::new(tar.as_slice());
        let mut contents = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            contents.push((
                entry.path().unwrap().to_str().unwrap().to_owned(),
                entry.header().mode().unwrap(),
                content,
            ));
        }
        assert_eq!(
            contents[0],
            (
                expected_name.clone(),
                0o600,
                "FROM scratch\nCOPY . /\n".to_owned()
            )
        );
        // As docker CLI does, .dockerignore names the added file so the daemon drops it after reading.
        assert_eq!(
            contents[1],
            (
                ".dockerignore".to_owned(),
                0o600,
                format!(".dockerignore\n{expected_name}\n")
            )
        );

        dir.write(".dockerignore", "*.tmp");
        set_mode(&dir.path().join(".dockerignore"), 0o640);
        let files = collect(dir.path(), &dockerfile).unwrap();
        let ignore_entry = files
            .entries
            .iter()
            .find(|entry| entry.path == DOCKERIGNORE)
            .unwrap();
        assert_eq!(ignore_entry.mode, 0o640);
        assert!(
            matches!(&ignore_entry.kind, EntryKind::MemoryFile(bytes) if *bytes == format!("*.tmp\n{expected_name}\n").into_bytes())
        );
    }

    #[test]
    fn collect_errors_name_the_path() {
        let dir = TempDir::new();
        let missing_context = dir.path().join("nope");
        let err = collect(&missing_context, Path::new("Dockerfile")).unwrap_err();
        assert!(
            matches!(&err, ContextError::ContextDir { path, .. } if *path == missing_context),
            "{err}"
        );
        assert!(
            err.to_string().contains(missing_context.to_str().unwrap()),
            "{err}"
        );

        let err = collect(dir.path(), Path::new("Dockerfile.missing")).unwrap_err();
        assert!(matches!(err, ContextError::Dockerfile { .. }), "{err}");
        assert!(err.to_string().contains("Dockerfile.missing"), "{err}");

        fs::create_dir(dir.path().join("Dockerfile")).unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(
            matches!(err, ContextError::DockerfileNotAFile { .. }),
            "{err}"
        );

        let file_context = dir.write("plain", "x");
        let err = collect(&file_context, Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::NotADirectory { .. }), "{err}");

        let bad = TempDir::new();
        bad.write("Dockerfile", "FROM scratch\n");
        bad.write(".dockerignore", "ok\n[broken\n");
        let err = collect(bad.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(err.to_string().contains("\"[broken\""), "{err}");
    }

    #[test]
    fn withheld_files_are_neither_sent_nor_hashed() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("app.txt", "app");
        let mut clean = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let clean_digest = clean.digest(b"").unwrap();
        assert!(
            clean
                .withhold(&[dir.path().join("imagedefinitions.json")])
                .is_empty()
        );

        dir.write("imagedefinitions.json", "[]");
        dir.write("out/build.json", "{}");
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let withheld = files.withhold(&[
            dir.path().join("imagedefinitions.json"),
            dir.path().join("out/build.json"),
            dir.path().join("Dockerfile"),
            PathBuf::from("/elsewhere/build.json"),
        ]);
        assert_eq!(withheld, ["imagedefinitions.json", "out/build.json"]);
        assert_eq!(paths(&files), ["Dockerfile", "app.txt", "out"]);
        assert_ne!(
            files.digest(b"").unwrap(),
            clean_digest,
            "the empty out/ directory is still sent"
        );
        fs::remove_dir_all(dir.path().join("out")).unwrap();
        let mut files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        files.withhold(&[dir.path().join("imagedefinitions.json")]);
        assert_eq!(files.digest(b"").unwrap(), clean_digest);
    }

    #[test]
    fn collect_reports_an_unreadable_dockerignore() {
        // A directory where .dockerignore should be: unreadable even for root, unlike mode 000.
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        fs::create_dir(dir.path().join(DOCKERIGNORE)).unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::Read { .. }), "{err}");
        assert!(err.to_string().contains(DOCKERIGNORE), "{err}");
    }

    #[test]
    fn collect_skips_sockets_and_refuses_non_utf8_names() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("app.sock")).unwrap();
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        assert_eq!(paths(&files), ["Dockerfile"]);

        let odd_name = std::ffi::OsStr::from_bytes(b"bad-\xff");
        fs::write(dir.path().join(odd_name), "x").unwrap();
        let err = collect(dir.path(), Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::NonUtf8Path { .. }), "{err}");
        assert!(err.to_string().contains("bad-"), "{err}");
    }

    /// Builds the same tree in a fresh directory, creating files in the given order.
    fn sample_tree(reverse: bool, mtime: SystemTime) -> TempDir {
        let dir = TempDir::new();
        let mut files = vec![
            ("Dockerfile", "FROM scratch\n"),
            (".dockerignore", "*.log\n"),
            ("src/a.rs", "a"),
            ("src/b.rs", "b"),
            ("src/nested/c.rs", "c"),
            ("run.sh", "#!/bin/sh\n"),
            ("debug.log", "noise"),
        ];
        if reverse {
            files.reverse();
        }
        for (rel, content) in files {
            let path = dir.write(rel, content);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(mtime)
                .unwrap();
        }
        set_mode(&dir.path().join("run.sh"), 0o755);
        symlink("src/a.rs", dir.path().join("link")).unwrap();
        dir
    }

    fn digest_of(dir: &TempDir, extra: &[u8]) -> String {
        collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .digest(extra)
            .unwrap()
    }

    #[test]
    fn digest_ignores_mtimes_creation_order_and_location() {
        let first = sample_tree(
            false,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000),
        );
        let second = sample_tree(true, SystemTime::now());
        let digest = digest_of(&first, b"args");
        assert_eq!(digest.len(), 64);
        assert!(
            digest
                .bytes()
                .all(|byte| byte.is_ascii_digit() || (b'a'..=b'f').contains(&byte))
        );
        assert_eq!(digest, digest_of(&second, b"args"));
    }

    #[test]
    fn digest_follows_what_is_sent() {
        let dir = sample_tree(false, SystemTime::now());
        let original = digest_of(&dir, b"");

        dir.write("debug.log", "different noise");
        assert_eq!(digest_of(&dir, b""), original, "an ignored file changed");

        dir.write("src/b.rs", "c");
        let edited = digest_of(&dir, b"");
        assert_ne!(edited, original, "one byte changed");
        dir.write("src/b.rs", "b");
        assert_eq!(digest_of(&dir, b""), original);

        set_mode(&dir.path().join("run.sh"), 0o644);
        assert_ne!(digest_of(&dir, b""), original, "mode changed");
        set_mode(&dir.path().join("run.sh"), 0o755);

        fs::remove_file(dir.path().join("link")).unwrap();
        symlink("src/b.rs", dir.path().join("link")).unwrap();
        assert_ne!(digest_of(&dir, b""), original, "symlink target changed");
        fs::remove_file(dir.path().join("link")).unwrap();
        symlink("src/a.rs", dir.path().join("link")).unwrap();

        fs::create_dir(dir.path().join("new-empty-dir")).unwrap();
        assert_ne!(digest_of(&dir, b""), original, "directory added");
    }

    #[test]
    fn digest_frames_extra() {
        let dir = sample_tree(false, SystemTime::now());
        let digests = [
            digest_of(&dir, b""),
            digest_of(&dir, b"a"),
            digest_of(&dir, b"b"),
            digest_of(&dir, b"\0"),
        ];
        for (index, digest) in digests.iter().enumerate() {
            assert!(!digests[index + 1..].contains(digest), "{digests:?}");
        }
        // A file's content and the extra bytes cannot be traded against each other.
        let one = TempDir::new();
        one.write("Dockerfile", "FROM scratch\nx");
        let two = TempDir::new();
        two.write("Dockerfile", "FROM scratch\n");
        assert_ne!(digest_of(&one, b""), digest_of(&two, b"x"));
    }

    #[test]
    fn digest_covers_many_files_in_order() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        for index in 0..50 {
            dir.write(&format!("f{index:02}"), &"x".repeat(index * 3000));
        }
        let first = digest_of(&dir, b"");
        assert_eq!(first, digest_of(&dir, b""));
        dir.write("f49", &"y".repeat(49 * 3000));
        assert_ne!(first, digest_of(&dir, b""));
    }

    #[test]
    fn digest_fails_naming_a_file_that_changed_size() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        dir.write("data", "123");
        let err = files.digest(b"").unwrap_err().to_string();
        assert!(
            err.contains("data") && err.contains("changed size"),
            "{err}"
        );
        dir.write("data", "1234567");
        let err = files.digest(b"").unwrap_err().to_string();
        assert!(err.contains("changed size"), "{err}");
    }

    #[tokio::test]
    async fn tar_stream_holds_normalized_entries() {
        let dir = sample_tree(false, SystemTime::now());
        let long_dir = "d".repeat(60);
        let long_path = format!("{long_dir}/{}", "f".repeat(80));
        dir.write(&long_path, "long");
        set_mode(&dir.path().join("src/nested"), 0o700);
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        let expected_paths: Vec<String> = files.paths().map(str::to_owned).collect();
        let tar = tar_bytes(files).await;

        let mut archive = tar::Archive::new(tar.as_slice());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let header = entry.header().clone();
            let name = entry.path().unwrap().to_str().unwrap().to_owned();
            assert_eq!(header.uid().unwrap(), 0, "{name}");
            assert_eq!(header.gid().unwrap(), 0, "{name}");
            assert_eq!(header.mtime().unwrap(), 0, "{name}");
            assert_eq!(header.username_bytes().unwrap_or_default(), b"", "{name}");
            assert_eq!(header.groupname_bytes().unwrap_or_default(), b"", "{name}");
            let mut content = String::new();
            entry.read_to_string(&mut content).unwrap();
            match name.as_str() {
                "src/" => assert_eq!(header.entry_type(), tar::EntryType::Directory),
                "src/nested/" => assert_eq!(header.mode().unwrap(), 0o700),
                "run.sh" => {
                    assert_eq!(header.mode().unwrap(), 0o755);
                    assert_eq!(content, "#!/bin/sh\n");
                }
                "src/a.rs" => {
                    assert_eq!(header.entry_type(), tar::EntryType::Regular);
                    assert_eq!(header.mode().unwrap(), 0o644);
                    assert_eq!(content, "a");
                }
                "link" => {
                    assert_eq!(header.entry_type(), tar::EntryType::Symlink);
                    assert_eq!(entry.link_name().unwrap().unwrap(), Path::new("src/a.rs"));
                }
                _ if name == long_path => assert_eq!(content, "long"),
                _ => {}
            }
            seen.push(name.trim_end_matches('/').to_owned());
        }
        assert_eq!(seen, expected_paths);
        assert!(seen.contains(&long_path));
        assert!(!seen.contains(&"debug.log".to_owned()));
    }

    #[tokio::test]
    async fn tar_stream_is_reproducible_and_chunked() {
        let dir = sample_tree(false, SystemTime::now());
        dir.write("big.bin", &"z".repeat(300_000));
        let first = tar_bytes(collect(dir.path(), Path::new("Dockerfile")).unwrap()).await;
        let other = sample_tree(true, SystemTime::UNIX_EPOCH);
        other.write("big.bin", &"z".repeat(300_000));
        let second = tar_bytes(collect(other.path(), Path::new("Dockerfile")).unwrap()).await;
        assert_eq!(first, second);

        let chunks: Vec<Bytes> = collect(dir.path(), Path::new("Dockerfile"))
            .unwrap()
            .into_tar_stream()
            .try_collect()
            .await
            .unwrap();
        assert!(chunks.len() > 1);
        assert!(chunks.iter().all(|chunk| chunk.len() < 2 * CHUNK_SIZE));
    }

    #[tokio::test]
    async fn tar_stream_ends_with_an_error_naming_a_changed_file() {
        let dir = TempDir::new();
        dir.write("Dockerfile", "FROM scratch\n");
        dir.write("data", "12345");
        let files = collect(dir.path(), Path::new("Dockerfile")).unwrap();
        fs::remove_file(dir.path().join("data")).unwrap();
        let result: Result<Vec<Bytes>, io::Error> = files.into_tar_stream().try_collect().await;
        let err = result.unwrap_err().to_string();
        assert!(err.contains("data"), "{err}");
    }
}

#[cfg(test)]
mod proptests {
    //! Property tests of the .dockerignore matcher: no input makes it panic, and patterns without
    //! special characters behave as a simple model says.

    use super::*;
    use proptest::prelude::*;

    fn config(cases: u32) -> ProptestConfig {
        ProptestConfig {
            cases,
            // A failure prints its minimal input; nothing is written next to the sources.
            failure_persistence: None,
            ..ProptestConfig::default()
        }
    }

    /// Lines rich in the characters Docker's pattern compiler treats specially.
    fn pattern_line() -> impl Strategy<Value = String> {
        prop_oneof![
            r"[*?\[\]\\!/.ab^$(){}+|:# é\-,dQEpx\t\r]{0,12}",
            // Without a BOM, which only counts at the very start of the text.
            any::<String>().prop_map(|text| text.replace(['\n', '\u{feff}'], "")),
        ]
    }

    fn pattern_text() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<String>(),
            prop::collection::vec(pattern_line(), 0..6).prop_map(|lines| lines.join("\n")),
        ]
    }

    fn any_path() -> impl Strategy<Value = String> {
        prop_oneof![any::<String>(), r"[ab/.*\[\]é\-^:\\]{0,14}"]
    }

    /// A path segment without special characters; a small alphabet, so that patterns and paths
    /// meet often. Never `.` or `..`.
    fn plain_segment() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec!["a", "b", "a.b", "-x", "_1", "build", ".env"])
                .prop_map(str::to_owned),
            1 => "[a-c_\\-][a-c0-9._\\-]{0,3}",
        ]
    }

    fn plain_path() -> impl Strategy<Value = String> {
        prop::collection::vec(plain_segment(), 1..5).prop_map(|parts| parts.join("/"))
    }

    /// How a plain pattern may be written without changing what it means.
    fn decorate(pattern: &str, style: u8) -> String {
        match style % 6 {
            0 => pattern.to_owned(),
            1 => format!("/{pattern}"),
            2 => format!("./{pattern}"),
            3 => format!("{pattern}/"),
            4 => format!("  {pattern}\t"),
            _ => pattern.replace('/', "//"),
        }
    }

    fn under(path: &str, root: &str) -> bool {
        path.strip_prefix(root)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// Paths to ask about: the patterns themselves, their ancestors, things below them, and others.
    fn probes(patterns: &[String], extra: &[String]) -> Vec<String> {
        let mut paths: Vec<String> = extra.to_vec();
        for pattern in patterns {
            paths.push(pattern.clone());
            paths.push(format!("{pattern}/x"));
            paths.push(format!("{pattern}/a/b"));
            paths.push(format!("{pattern}x"));
            if let Some((parent, _)) = pattern.rsplit_once('/') {
                paths.push(parent.to_owned());
                paths.push(format!("{parent}/other"));
            }
        }
        paths
    }

    proptest! {
        #![proptest_config(config(512))]

        #[test]
        fn arbitrary_patterns_and_paths_never_panic(
            text in pattern_text(),
            paths in prop::collection::vec(any_path(), 0..6),
        ) {
            if let Ok(rules) = DockerIgnore::parse(&text) {
                for path in &paths {
                    rules.is_excluded(path);
                    rules.cli_excludes(path);
                }
            }
        }
    }

    proptest! {
        #![proptest_config(config(256))]

        #[test]
        fn a_plain_pattern_excludes_itself_and_what_is_below_it(
            pattern in plain_path(),
            style in any::<u8>(),
            others in prop::collection::vec(plain_path(), 0..6),
        ) {
            let rules = DockerIgnore::parse(&decorate(&pattern, style)).unwrap();
            for path in probes(std::slice::from_ref(&pattern), &others) {
                prop_assert_eq!(
                    rules.is_excluded(&path),
                    under(&path, &pattern),
                    "pattern {:?} ({:?}), path {:?}", pattern, decorate(&pattern, style), path
                );
            }
        }

        #[test]
        fn plain_exceptions_of_the_same_patterns_reinclude(
            patterns in prop::collection::vec((plain_path(), any::<u8>()), 1..5),
            excepted in prop::collection::vec(any::<prop::sample::Index>(), 0..3),
            others in prop::collection::vec(plain_path(), 0..6),
        ) {
            // `patterns`, then `!P` for some of those same P: a path is excluded when it is a
            // pattern or below one, unless it is an excepted pattern or below one.
            let plain: Vec<String> = patterns.iter().map(|(pattern, _)| pattern.clone()).collect();
            let exceptions: Vec<&String> =
                excepted.iter().map(|index| index.get(&plain)).collect();
            let mut lines: Vec<String> = patterns
                .iter()
                .map(|(pattern, style)| decorate(pattern, *style))
                .collect();
            lines.extend(exceptions.iter().map(|pattern| format!("!{pattern}")));
            let text = lines.join("\n");
            let rules = DockerIgnore::parse(&text).unwrap();
            for path in probes(&plain, &others) {
                let expected = plain.iter().any(|pattern| under(&path, pattern))
                    && !exceptions.iter().any(|pattern| under(&path, pattern));
                prop_assert_eq!(
                    rules.is_excluded(&path),
                    expected,
                    ".dockerignore {:?}, path {:?}", text, path
                );
            }
        }

        #[test]
        fn comments_blank_lines_and_line_endings_change_nothing(
            lines in prop::collection::vec(pattern_line(), 0..6),
            noise in prop::collection::vec(
                (any::<prop::sample::Index>(), prop_oneof![
                    "#[^\n]{0,10}",
                    "[ \t\r]{0,3}",
                ]),
                1..4,
            ),
            crlf in any::<bool>(),
            paths in prop::collection::vec(any_path(), 0..4),
        ) {
            let text = lines.join("\n");
            let mut noisy = lines.clone();
            for (index, line) in &noise {
                noisy.insert(index.index(noisy.len() + 1), line.clone());
            }
            let noisy = noisy.join(if crlf { "\r\n" } else { "\n" });
            match (DockerIgnore::parse(&text), DockerIgnore::parse(&noisy)) {
                (Ok(plain), Ok(with_noise)) => {
                    let from_patterns: Vec<String> = lines
                        .iter()
                        .map(|line| line.trim().trim_start_matches('!').trim().to_owned())
                        .collect();
                    for path in probes(&from_patterns, &paths) {
                        prop_assert_eq!(
                            plain.is_excluded(&path),
                            with_noise.is_excluded(&path),
                            "{:?} vs {:?}, path {:?}", text, noisy, path
                        );
                    }
                }
                (Err(_), Err(_)) => {}
                (plain, with_noise) => prop_assert!(
                    false,
                    "{:?} parses {}, {:?} {}",
                    text,
                    if plain.is_ok() { "fine" } else { "with an error" },
                    noisy,
                    if with_noise.is_ok() { "fine" } else { "with an error" },
                ),
            }
        }
    }
}
