//! Docker turns a .dockerignore pattern into a Go regular expression. This module reads that
//! expression with Go's rules (regexp/syntax with Perl flags) and writes the same language in the
//! `regex` crate's syntax, which then runs it. Only what differs is translated: `\Q…\E` quoting,
//! ASCII-only `\d \s \w \b`, Go's class syntax (where `[`, `&&` and `--` are plain characters),
//! octal escapes, a `{` that starts no repeat (a literal in Go), and Go's own errors (nested
//! repeats, counts over 1000, `\1`).

use regex::Regex;

/// Go's Perl classes are ASCII; the regex crate's are Unicode. These are Go's, as class members.
fn perl_class_members(letter: char) -> Option<(&'static str, bool)> {
    let members = match letter.to_ascii_lowercase() {
        'd' => "0-9",
        's' => r"\t\n\x0C\r ",
        'w' => "0-9A-Za-z_",
        _ => return None,
    };
    Some((members, letter.is_ascii_uppercase()))
}

const POSIX_CLASSES: [&str; 14] = [
    "alnum", "alpha", "ascii", "blank", "cntrl", "digit", "graph", "lower", "print", "punct",
    "space", "upper", "word", "xdigit",
];

/// Compiles a Go regular expression as Go would read it; the error says why Go refuses it.
pub(super) fn compile(go: &str) -> Result<Regex, String> {
    let translated = translate(go)?;
    Regex::new(&translated).map_err(|err| format!("invalid regular expression: {err}"))
}

/// The same language in the regex crate's syntax.
fn translate(go: &str) -> Result<String, String> {
    let mut out = String::with_capacity(go.len() * 2);
    // Where the last repeatable item starts in `out`, and whether a repeat was just applied.
    let mut item_start: Option<usize> = None;
    let mut after_repeat = false;
    let mut rest = go;
    while let Some(ch) = rest.chars().next() {
        rest = &rest[ch.len_utf8()..];
        let mut repeat: Option<String> = None;
        let start = out.len();
        match ch {
            '|' => {
                out.push('|');
                item_start = None;
                after_repeat = false;
                continue;
            }
            '*' | '+' | '?' => repeat = Some(ch.to_string()),
            '{' => match repeat_bounds(rest) {
                Some((bounds, after)) => {
                    repeat = Some(bounds?);
                    rest = after;
                }
                None => out.push_str(r"\{"),
            },
            '^' | '$' | '.' => out.push(ch),
            '[' => {
                let (class, after) = class(rest)?;
                out.push_str(&class);
                rest = after;
            }
            // Docker escapes a `(` or `)` of the pattern, so only its own `(.*/)` group occurs.
            '(' => {
                rest = rest.strip_prefix(".*/)").ok_or_else(unsupported)?;
                out.push_str("(?:.*/)");
            }
            ')' => return Err(unsupported()),
            '\\' => rest = escape(rest, &mut out)?,
            _ => out.push_str(&regex::escape(&ch.to_string())),
        }
        match repeat {
            Some(op) => {
                if after_repeat {
                    return Err("invalid nested repetition operator".to_owned());
                }
                let item = item_start.ok_or("missing argument to repetition operator")?;
                // Group the item: Go repeats `^` and `\b` too, which the regex crate takes in a group.
                out.insert_str(item, "(?:");
                out.push(')');
                out.push_str(&op);
                after_repeat = true;
            }
            None => {
                item_start = Some(start);
                after_repeat = false;
            }
        }
    }
    Ok(out)
}

fn unsupported() -> String {
    "Docker turns this pattern into a regular expression this tool does not support".to_owned()
}

/// Go's parseRepeat on the text after `{`: `n}`, `n,}` or `n,m}` with no leading zeros. `None`
/// when it is no repeat (the `{` is then a literal); an error when a count is out of range.
fn repeat_bounds(text: &str) -> Option<(Result<String, String>, &str)> {
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
    let bounds = match (valid, max) {
        (false, _) => Err("invalid repeat count".to_owned()),
        (true, None) => Ok(format!("{{{min},}}")),
        (true, Some(max)) => Ok(format!("{{{min},{max}}}")),
    };
    Some((bounds, rest))
}

/// A `\` sequence outside a class; `text` follows the backslash. Returns the text after it.
fn escape<'a>(text: &'a str, out: &mut String) -> Result<&'a str, String> {
    let mut chars = text.chars();
    let letter = chars.next().ok_or("trailing backslash")?;
    let after = chars.as_str();
    match letter {
        'A' => out.push_str(r"\A"),
        'z' => out.push_str(r"\z"),
        'b' => out.push_str(r"(?-u:\b)"),
        'B' => out.push_str(r"(?-u:\B)"),
        'Q' => {
            let (literal, after) = after.split_once(r"\E").unwrap_or((after, ""));
            out.push_str(&regex::escape(literal));
            return Ok(after);
        }
        'p' | 'P' => {
            let (class, after) = unicode_class(letter, after)?;
            out.push_str(&class);
            return Ok(after);
        }
        _ => match perl_class_members(letter) {
            Some((members, negated)) => {
                out.push_str(if negated { "[^" } else { "[" });
                out.push_str(members);
                out.push(']');
            }
            None => {
                let (code, after) = escaped_char(text)?;
                out.push_str(&format!(r"\x{{{code:x}}}"));
                return Ok(after);
            }
        },
    }
    Ok(after)
}

/// `\pL`, `\p{Greek}`, `\P{L}`, `\p{^Greek}`: the same in the regex crate, but for `\p{^…}`.
fn unicode_class(letter: char, text: &str) -> Result<(String, &str), String> {
    let (name, after) = match text.strip_prefix('{') {
        Some(braced) => braced.split_once('}').ok_or("missing closing }")?,
        None => {
            let first = text.chars().next().ok_or("invalid character class range")?;
            text.split_at(first.len_utf8())
        }
    };
    let (negated, name) = match name.strip_prefix('^') {
        Some(name) => (letter == 'p', name),
        None => (letter == 'P', name),
    };
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!(
            "invalid character class range \\{letter}{{{name}}}"
        ));
    }
    Ok((
        format!(r"\{}{{{name}}}", if negated { 'P' } else { 'p' }),
        after,
    ))
}

/// Go's parseEscape: octal, hex and C escapes, or escaped punctuation, as a code point.
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
    let (code, rest) = escape.ok_or_else(|| format!("invalid escape sequence \\{ch}"))?;
    // Surrogates and values past U+10FFFF can match nothing in a UTF-8 text.
    char::from_u32(code)
        .map(|_| (code, rest))
        .ok_or_else(|| format!("invalid escape sequence \\{ch}: no such character"))
}

/// The text after `\x`: two hex digits, or one or more in braces.
fn hex_escape(text: &str) -> Option<(u32, &str)> {
    if let Some(braced) = text.strip_prefix('{') {
        let (digits, after) = braced.split_once('}')?;
        if digits.is_empty() || !digits.chars().all(|ch| ch.is_ascii_hexdigit()) {
            return None;
        }
        return Some((u32::from_str_radix(digits, 16).ok()?, after));
    }
    let digits = text.get(..2)?;
    if !digits.chars().all(|ch| ch.is_ascii_hexdigit()) {
        return None;
    }
    Some((u32::from_str_radix(digits, 16).ok()?, &text[2..]))
}

/// Go's parseClass on the text after `[`; every member is written escaped, so that nothing in it
/// means more to the regex crate than to Go.
fn class(text: &str) -> Result<(String, &str), String> {
    let (negated, mut rest) = match text.strip_prefix('^') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let mut out = String::from(if negated { "[^" } else { "[" });
    let mut first = true;
    loop {
        if let Some(after) = rest.strip_prefix(']').filter(|_| !first) {
            out.push(']');
            return Ok((out, after));
        }
        // A `]` right after `[` is a member, not the end.
        first = false;
        // Go reads `[:name:]` as a POSIX class whenever a `:]` follows anywhere.
        if let Some((name, after)) = rest.strip_prefix("[:").and_then(|n| n.split_once(":]")) {
            if !POSIX_CLASSES.contains(&name.strip_prefix('^').unwrap_or(name)) {
                return Err(format!("invalid character class range [:{name}:]"));
            }
            out.push_str(&format!("[:{name}:]"));
            rest = after;
            continue;
        }
        if let Some(escaped) = rest.strip_prefix('\\') {
            let letter = escaped.chars().next();
            if let Some((members, negated)) = letter.and_then(perl_class_members) {
                out.push_str(&if negated {
                    format!("[^{members}]")
                } else {
                    members.to_owned()
                });
                rest = &escaped[1..];
                continue;
            }
            if let Some(letter @ ('p' | 'P')) = letter {
                let (class, after) = unicode_class(letter, &escaped[1..])?;
                out.push_str(&class);
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
        out.push_str(&format!(r"\x{{{lo:x}}}-\x{{{hi:x}}}"));
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

#[cfg(test)]
mod tests {
    use super::*;

    fn matches(go: &str, text: &str) -> bool {
        compile(go).unwrap().is_match(text)
    }

    #[test]
    fn go_only_syntax_keeps_its_go_meaning() {
        assert!(matches(r"^a\Q.*\E$", "a.*"));
        assert!(!matches(r"^a\Q.*\E$", "abc"));
        assert!(matches(r"^a\Q$", "a$"), "an open \\Q runs to the end");
        assert!(
            matches(r"^\d$", "7") && !matches(r"^\d$", "٣"),
            "ASCII digits only"
        );
        assert!(matches(r"^\w+$", "a_1") && !matches(r"^\w$", "é"));
        assert!(matches(r"^[\D]$", "x") && !matches(r"^[\D]$", "1"));
        assert!(
            matches(r"^a{$", "a{"),
            "a `{{` that starts no repeat is a literal"
        );
        assert!(matches(r"^a{2}$", "aa") && !matches(r"^a{2}$", "a"));
        assert!(matches(r"^[a&&b]$", "&"), "`&&` is no intersection in Go");
        assert!(matches(r"^[[a]$", "["), "`[` is a member in Go");
        assert!(matches(r"^[[^/]*]$", "^/]"), "Docker's `[*]` quirk");
        assert!(matches(r"^\101$", "A"), "octal");
        assert!(matches(r"^\x{e9}$", "é"));
        assert!(matches(r"^[[:^digit:]]$", "a"));
        assert!(matches(r"^\pL$", "é") && matches(r"^\p{^L}$", "1"));
        assert!(matches(r"^^*a$", "a"), "Go repeats an anchor");
    }

    #[test]
    fn go_refusals_stay_refusals() {
        for bad in [
            r"a**",
            r"*a",
            r"a{1001}",
            r"a{2,1}",
            r"\1",
            r"[z-a]",
            "[a",
            r"\C",
            r"[[:nope:]]",
            r"\p{",
            "(a)",
            ")",
            "\\",
        ] {
            assert!(compile(bad).is_err(), "{bad}");
        }
    }
}
