//! `.dockerignore` with Docker's exact semantics. Sources followed: moby/patternmatcher
//! (`patternmatcher.go`, `ignorefile/ignorefile.go`). Patterns are compiled the way patternmatcher
//! compiles them: plain strings, `prefix**` and `**suffix` are string comparisons, anything else
//! becomes a Go regular expression, built character for character (quirks included) and run by
//! [`super::goregex`]. A pattern Go's regexp rejects fails at parse time rather than when Docker
//! first evaluates it.

use regex::Regex;

use super::{ContextError, goregex};
use crate::gopath::clean;

/// Parsed .dockerignore with Docker's semantics.
#[derive(Debug, Clone, Default)]
pub(crate) struct DockerIgnore {
    patterns: Vec<Pattern>,
    /// How many of `patterns` the file wrote; those after it are exceptions added for build files.
    written: usize,
}

impl DockerIgnore {
    /// Reads the file the way ignorefile.ReadAll does: a UTF-8 BOM dropped, lines starting with `#`
    /// skipped, whitespace trimmed, each pattern cleaned and stripped of a leading `/`.
    pub(crate) fn parse(text: &str) -> Result<DockerIgnore, ContextError> {
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
        let written = patterns.len();
        Ok(DockerIgnore { patterns, written })
    }

    /// Patterns as a list, the way patternmatcher.New takes BuildKit's include patterns and follow
    /// paths: each trimmed and cleaned, a leading `/` dropped, and none a comment (`#notes.txt`
    /// names a file).
    pub(crate) fn from_patterns<'a>(
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<DockerIgnore, ContextError> {
        let mut parsed = Vec::new();
        for pattern in patterns.into_iter().map(str::trim) {
            if pattern.is_empty() {
                continue;
            }
            parsed.push(Pattern::new(&normalize_line(pattern)).map_err(|reason| {
                ContextError::InvalidPattern {
                    pattern: pattern.to_owned(),
                    reason,
                }
            })?);
        }
        let written = parsed.len();
        Ok(DockerIgnore {
            patterns: parsed,
            written,
        })
    }

    /// Whether a build leaves `rel_path` out of the context. This is Docker's tar walk applied to
    /// the path's ancestors first: an excluded directory hides everything below it unless an
    /// exception pattern names the directory or something in it literally (`!docs/keep.md`
    /// re-includes `docs/keep.md` after `docs`; `!**/keep.md` does not).
    pub(crate) fn is_excluded(&self, rel_path: &str) -> bool {
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
    pub(super) fn evaluate(&self, path: &str, parent_matches: &[bool]) -> (bool, Vec<bool>) {
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
    pub(super) fn walks_excluded_dir(&self, dir: &str) -> bool {
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
    pub(super) fn cli_excludes(&self, path: &str) -> bool {
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

    /// The patterns as the file wrote them, without the exceptions added for build files; `None`
    /// where none were added.
    pub(super) fn as_written(&self) -> Option<DockerIgnore> {
        (self.written < self.patterns.len()).then(|| DockerIgnore {
            patterns: self.patterns[..self.written].to_vec(),
            written: self.written,
        })
    }

    pub(super) fn add_exception(&mut self, path: &str) -> Result<(), ContextError> {
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
    Regex(Regex),
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
            MatchKind::Regex(regex) => regex.is_match(path),
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
            MatchKind::Regex(goregex::compile(&regex)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ignore(text: &str) -> DockerIgnore {
        DockerIgnore::parse(text).unwrap()
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
            r"*\p{Nope}",
        ] {
            let text = format!("ok\n{bad}\n");
            let err = DockerIgnore::parse(&text).expect_err(bad).to_string();
            assert!(err.contains(&format!("{:?}", bad.trim())), "{bad}: {err}");
        }
    }

    /// moby/patternmatcher's TestMatches and TestMatch tables (Unix rows): pattern, path, excluded.
    const PATTERNMATCHER_TABLE: &[(&str, &str, bool)] = &[
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

    #[test]
    fn agrees_with_patternmatcher_tables() {
        for &(pattern, path, excluded) in PATTERNMATCHER_TABLE {
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
        // Unicode classes, as Go has them.
        assert!(ignore(r"*\p{L}").is_excluded("aé"));
        assert!(!ignore(r"*\p{L}").is_excluded("a1"));
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
