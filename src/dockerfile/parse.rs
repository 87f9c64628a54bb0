//! A Dockerfile's text as instructions, as BuildKit's parser reads it: parser directives, the
//! escape character, continuations, comments, heredocs; each instruction's keyword, flags and
//! line.

use super::{Whole, whole};

/// One instruction: its keyword (upper case), flags (`--name=value`, in order) and the rest.
#[derive(Debug)]
pub(super) struct Instruction {
    pub(super) keyword: String,
    pub(super) flags: Vec<(String, String)>,
    pub(super) args: String,
    /// A heredoc follows (`<<EOF`): the instruction's sources are inline, not in the context.
    pub(super) heredoc: bool,
    /// Where it starts in the file (1-based).
    pub(super) line: usize,
}

/// The instructions, after parser directives, the escape character, continuations, comments
/// and heredocs.
pub(super) fn parse(text: &str) -> Result<Vec<Instruction>, Whole> {
    let mut lines = text.lines().enumerate().peekable();
    let mut escape = '\\';
    // Parser directives: `# key=value` lines at the very top.
    while let Some((_, line)) = lines.peek() {
        let Some((key, value)) = directive(line) else {
            break;
        };
        if key == "escape" {
            escape = match value.as_str() {
                "\\" => '\\',
                "`" => '`',
                other => return whole(format!("unknown escape character `{other}`")),
            };
        }
        lines.next();
    }
    let mut instructions = Vec::new();
    while let Some((index, line)) = lines.next() {
        let trimmed = line.trim_start();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        // Continuations: a line ending in the escape character goes on; comment and empty lines
        // inside are skipped.
        let mut logical = String::new();
        let mut current = trimmed.trim_end().to_owned();
        while current.ends_with(escape) {
            current.pop();
            logical.push_str(&current);
            current = loop {
                match lines.next() {
                    None => break String::new(),
                    Some((_, next))
                        if next.trim().is_empty() || next.trim_start().starts_with('#') => {}
                    Some((_, next)) => break next.trim_end().to_owned(),
                }
            };
        }
        logical.push_str(&current);
        let mut instruction = instruction(&logical);
        instruction.line = index + 1;
        // A heredoc's body is not instructions: skip to each terminator.
        for (word, strip_tabs) in heredoc_words(&instruction) {
            loop {
                let Some((_, body)) = lines.next() else {
                    return whole(format!("line {}: heredoc `{word}` has no end", index + 1));
                };
                let body = if strip_tabs {
                    body.trim_start_matches('\t')
                } else {
                    body
                };
                if body == word {
                    break;
                }
            }
        }
        instructions.push(instruction);
    }
    Ok(instructions)
}

/// A parser directive line (`# syntax=…`, `# escape=…`): its key (lower case) and value.
pub(super) fn directive(line: &str) -> Option<(String, String)> {
    let (key, value) = line.trim().strip_prefix('#')?.split_once('=')?;
    let key = key.trim().to_ascii_lowercase();
    (!key.contains(char::is_whitespace)).then(|| (key, value.trim().to_owned()))
}

/// Splits a logical line into keyword, leading `--flags` and the rest.
pub(super) fn instruction(line: &str) -> Instruction {
    let (keyword, mut rest) = line
        .split_once(char::is_whitespace)
        .map_or((line, ""), |(k, r)| (k, r.trim_start()));
    let keyword = keyword.to_ascii_uppercase();
    let mut flags = Vec::new();
    if matches!(keyword.as_str(), "FROM" | "COPY" | "ADD" | "RUN") {
        while let Some(flag) = rest.strip_prefix("--") {
            let (word, after) = flag
                .split_once(char::is_whitespace)
                .map_or((flag, ""), |(w, a)| (w, a.trim_start()));
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            flags.push((name.to_ascii_lowercase(), value.to_owned()));
            rest = after;
        }
    }
    let heredoc = matches!(keyword.as_str(), "RUN" | "COPY" | "ADD") && rest.contains("<<");
    Instruction {
        keyword,
        flags,
        args: rest.to_owned(),
        heredoc,
        line: 0,
    }
}

/// The terminators of the heredocs an instruction opens (`<<EOF`, `<<-EOF`, `<<"EOF"`,
/// `<<EOT-1`), and whether leading tabs are stripped. As BuildKit's parser, only a word that
/// starts with `<<` (after a file descriptor's digits) opens one: `$((1<<2))` does not.
pub(super) fn heredoc_words(instruction: &Instruction) -> Vec<(String, bool)> {
    if !instruction.heredoc {
        return Vec::new();
    }
    let mut words = Vec::new();
    for word in instruction.args.split_whitespace() {
        let Some(rest) = word
            .trim_start_matches(|c: char| c.is_ascii_digit())
            .strip_prefix("<<")
        else {
            continue;
        };
        let strip_tabs = rest.starts_with('-');
        let rest = if strip_tabs { &rest[1..] } else { rest };
        let word: String = rest
            .chars()
            .take_while(|c| !matches!(c, '>' | '|' | '&' | ';' | '<'))
            .filter(|c| !matches!(c, '"' | '\''))
            .collect();
        if !word.is_empty() {
            words.push((word, strip_tabs));
        }
    }
    words
}

/// The frontend a `# syntax=` directive names, if there is one.
pub(super) fn syntax_frontend(text: &str) -> Option<String> {
    (text.lines().map_while(directive))
        .find(|(key, _)| key == "syntax")
        .map(|(_, frontend)| frontend)
}
