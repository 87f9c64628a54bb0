//! Compose's variable interpolation (compose-spec `interpolation.md`): `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`,
//! `${VAR+other}`, `$$` for a `$`, defaults that interpolate again; and the `.env` file. One
//! difference, on purpose: a variable that is unset and has no default is an error, never the
//! empty string that would become an empty tag.

use std::collections::HashMap;

/// Where values come from: the process environment first, then the `.env` file.
pub(crate) struct Variables {
    environment: HashMap<String, String>,
    dotenv: HashMap<String, String>,
}

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum InterpolationError {
    /// Unset, with no default (or empty, with `:?`): the variable, and its `?` message if any.
    Missing {
        variable: String,
        message: Option<String>,
    },
    /// `${` without its `}`, or a name that is not one.
    Syntax(String),
}

impl Variables {
    pub(crate) fn new(
        environment: HashMap<String, String>,
        dotenv: HashMap<String, String>,
    ) -> Self {
        Self {
            environment,
            dotenv,
        }
    }

    fn get(&self, name: &str) -> Option<&str> {
        (self.environment.get(name))
            .or_else(|| self.dotenv.get(name))
            .map(String::as_str)
    }

    /// `text` with every variable replaced; a variable unset without a default is an error.
    pub(crate) fn interpolate(&self, text: &str) -> Result<String, InterpolationError> {
        self.interpolate_in(text, &mut None)
    }

    /// `text` with every variable replaced, as Compose does it: one unset without a default is
    /// the empty string, and is returned with the text (`${VAR?message}` is still an error).
    pub(crate) fn interpolate_leniently(
        &self,
        text: &str,
    ) -> Result<(String, Vec<String>), InterpolationError> {
        let mut unset = Some(Vec::new());
        let text = self.interpolate_in(text, &mut unset)?;
        Ok((text, unset.unwrap_or_default()))
    }

    /// With `unset` (lenient), unset variables are collected there instead of failing.
    fn interpolate_in(
        &self,
        text: &str,
        unset: &mut Option<Vec<String>>,
    ) -> Result<String, InterpolationError> {
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(dollar) = rest.find('$') {
            out.push_str(&rest[..dollar]);
            rest = &rest[dollar + 1..];
            if let Some(after) = rest.strip_prefix('$') {
                out.push('$');
                rest = after;
            } else if let Some(braced) = rest.strip_prefix('{') {
                let end = closing_brace(braced).ok_or_else(|| {
                    InterpolationError::Syntax(format!("${{{braced}: no closing }}"))
                })?;
                out.push_str(&self.expression(&braced[..end], unset)?);
                rest = &braced[end + 1..];
            } else {
                let name_len = name_length(rest);
                if name_len == 0 {
                    // A `$` before anything but a name stays a `$`.
                    out.push('$');
                } else {
                    out.push_str(&self.value(&rest[..name_len], unset)?);
                    rest = &rest[name_len..];
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// What is between `${` and `}`.
    fn expression(
        &self,
        expression: &str,
        unset: &mut Option<Vec<String>>,
    ) -> Result<String, InterpolationError> {
        let name_len = name_length(expression);
        let (name, operator) = expression.split_at(name_len);
        if name.is_empty() {
            return Err(InterpolationError::Syntax(format!(
                "${{{expression}}}: no variable name"
            )));
        }
        let value = self.get(name);
        let set_and_not_empty = value.is_some_and(|v| !v.is_empty());
        let missing = |message: &str| InterpolationError::Missing {
            variable: name.to_owned(),
            message: Some(message.to_owned()).filter(|m| !m.is_empty()),
        };
        let operators: [(&str, bool); 6] = [
            (":-", set_and_not_empty),
            ("-", value.is_some()),
            (":?", set_and_not_empty),
            ("?", value.is_some()),
            (":+", set_and_not_empty),
            ("+", value.is_some()),
        ];
        if operator.is_empty() {
            return self.value(name, unset);
        }
        for (symbol, holds) in operators {
            let Some(argument) = operator.strip_prefix(symbol) else {
                continue;
            };
            return match (symbol.trim_start_matches(':'), holds) {
                ("-", true) => Ok(value.unwrap_or_default().to_owned()),
                ("-", false) => self.interpolate_in(argument, unset),
                ("?", true) => Ok(value.unwrap_or_default().to_owned()),
                ("?", false) => Err(missing(&self.interpolate_in(argument, unset)?)),
                (_, true) => self.interpolate_in(argument, unset),
                (_, false) => Ok(String::new()),
            };
        }
        Err(InterpolationError::Syntax(format!(
            "${{{expression}}}: `{operator}` is not one of :- - :? ? :+ +"
        )))
    }

    fn value(
        &self,
        name: &str,
        unset: &mut Option<Vec<String>>,
    ) -> Result<String, InterpolationError> {
        match (self.get(name), unset) {
            (Some(value), _) => Ok(value.to_owned()),
            (None, Some(unset)) => {
                unset.push(name.to_owned());
                Ok(String::new())
            }
            (None, None) => Err(InterpolationError::Missing {
                variable: name.to_owned(),
                message: None,
            }),
        }
    }

    /// A variable's value: the environment's, else the `.env` file's.
    pub(crate) fn lookup(&self, name: &str) -> Option<&str> {
        self.get(name)
    }

    /// The environment alone (what an included project's own `.env` is read against).
    pub(crate) fn environment(&self) -> &HashMap<String, String> {
        &self.environment
    }
}

/// The length of the variable name `text` starts with: `[_A-Za-z][_A-Za-z0-9]*`.
fn name_length(text: &str) -> usize {
    let mut chars = text.char_indices();
    match chars.next() {
        Some((_, c)) if c == '_' || c.is_ascii_alphabetic() => {}
        _ => return 0,
    }
    chars
        .find(|(_, c)| !(*c == '_' || c.is_ascii_alphanumeric()))
        .map_or(text.len(), |(at, _)| at)
}

/// The `}` that closes an expression, past nested `${…}` in its default.
fn closing_brace(text: &str) -> Option<usize> {
    let mut depth = 0usize;
    let bytes = text.as_bytes();
    let mut at = 0;
    while at < bytes.len() {
        match bytes[at] {
            b'$' if bytes.get(at + 1) == Some(&b'{') => {
                depth += 1;
                at += 1;
            }
            b'}' if depth == 0 => return Some(at),
            b'}' => depth -= 1,
            _ => {}
        }
        at += 1;
    }
    None
}

/// A `.env` file as Compose reads it (compose-go's dotenv parser): `KEY=VALUE` (or `KEY: VALUE`)
/// statements, an optional `export `, `#` comment lines, and a key alone on its line taking its
/// value from the environment. An unquoted value ends at the line's end or at ` #`; a value in
/// single quotes is taken as it is; one in double quotes has escapes (`\n`, `\t`, `\"`, `\\`,
/// `\$`, …). Either kind of quotes may span lines. Unquoted and double-quoted values are
/// interpolated, from the environment first and then the values above them; a variable unset
/// there is the empty string, as Compose has it.
pub(crate) fn parse_dotenv(
    text: &str,
    environment: &HashMap<String, String>,
) -> Result<HashMap<String, String>, String> {
    let mut values: HashMap<String, String> = HashMap::new();
    let mut rest = text;
    let mut line = 1;
    loop {
        // The next statement: past blank space and comment lines.
        let start = rest.trim_start();
        line += rest[..rest.len() - start.len()].matches('\n').count();
        rest = start;
        if rest.is_empty() {
            return Ok(values);
        }
        if rest.starts_with('#') {
            rest = rest.split_once('\n').map_or("", |(_, after)| after);
            line += 1;
            continue;
        }
        if let Some(after) = rest.strip_prefix("export")
            && after.starts_with([' ', '\t'])
        {
            rest = after.trim_start_matches([' ', '\t']);
        }
        let end = rest.find(['=', ':', '\n']).unwrap_or(rest.len());
        let key = rest[..end].trim_end();
        let valid = |c: char| c.is_alphanumeric() || "_.-[]".contains(c);
        if key.is_empty() || !key.chars().all(valid) {
            let shown = rest.lines().next().unwrap_or_default();
            return Err(format!("line {line}: `{shown}` is not KEY=VALUE"));
        }
        let key = key.to_owned();
        if !rest[end..].starts_with(['=', ':']) {
            // A key alone: its value is the environment's, if it has one.
            if let Some(value) = environment.get(&key) {
                values.insert(key, value.clone());
            }
            rest = rest.get(end + 1..).unwrap_or("");
            line += 1;
            continue;
        }
        let after = rest[end + 1..].trim_start_matches([' ', '\t']);
        let (raw, quote, remaining) = split_value(after)
            .ok_or_else(|| format!("line {line}: the quoted value of {key} has no end"))?;
        line += after[..after.len() - remaining.len()].matches('\n').count();
        let value = match quote {
            Some('\'') => raw,
            Some(_) => dotenv_interpolate(&unescape(&raw), environment, &values),
            None => dotenv_interpolate(&raw, environment, &values),
        };
        values.insert(key, value);
        rest = remaining;
    }
}

/// A value: its raw text, its quote, and what follows it.
fn split_value(text: &str) -> Option<(String, Option<char>, &str)> {
    let Some(quote) = text.chars().next().filter(|c| *c == '"' || *c == '\'') else {
        let (value, rest) = text.split_once('\n').unwrap_or((text, ""));
        let value = value.split(" #").next().unwrap_or_default().trim_end();
        return Some((value.to_owned(), None, rest));
    };
    let mut raw = String::new();
    let mut escaped = false;
    for (at, c) in text[1..].char_indices() {
        if c == quote && !escaped {
            let rest = &text[1 + at + 1..];
            let rest = rest.split_once('\n').map_or("", |(_, after)| after);
            return Some((raw, Some(quote), rest));
        }
        if escaped {
            // Only the quote loses its backslash here; the rest keep theirs for unescape.
            if c != quote {
                raw.push('\\');
            }
            raw.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            raw.push(c);
        }
    }
    None
}

/// The escapes of a double-quoted value; `\$` stays a literal `$` (as `$$`).
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('a') => out.push('\u{7}'),
            Some('b') => out.push('\u{8}'),
            Some('f') => out.push('\u{c}'),
            Some('v') => out.push('\u{b}'),
            Some('$') => out.push_str("$$"),
            Some(other @ ('"' | '\\')) => out.push(other),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// A `.env` value interpolated: the environment first, then the values above it; unset is empty.
fn dotenv_interpolate(
    value: &str,
    environment: &HashMap<String, String>,
    above: &HashMap<String, String>,
) -> String {
    let mut known = above.clone();
    known.extend(environment.iter().map(|(k, v)| (k.clone(), v.clone())));
    let variables = Variables::new(known, HashMap::new());
    variables
        .interpolate_leniently(value)
        .map_or_else(|_| value.to_owned(), |(text, _)| text)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Variables {
        let env = [("SET", "value"), ("EMPTY", ""), ("NESTED", "n")];
        let dotenv = [
            ("FROM_DOTENV", "dot"),
            ("SET", "overridden by the environment"),
        ];
        Variables::new(
            env.iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
            dotenv
                .iter()
                .map(|(k, v)| ((*k).into(), (*v).into()))
                .collect(),
        )
    }

    fn ok(text: &str) -> String {
        vars().interpolate(text).unwrap()
    }

    #[test]
    fn every_form_of_the_specification() {
        assert_eq!(ok("a-$SET-${SET}-b"), "a-value-value-b");
        assert_eq!(ok("${FROM_DOTENV}"), "dot");
        assert_eq!(ok("${UNSET:-d}|${EMPTY:-d}|${SET:-d}"), "d|d|value");
        assert_eq!(ok("${UNSET-d}|${EMPTY-d}|${SET-d}"), "d||value");
        assert_eq!(ok("${UNSET:+r}|${EMPTY:+r}|${SET:+r}"), "||r");
        assert_eq!(ok("${UNSET+r}|${EMPTY+r}|${SET+r}"), "|r|r");
        assert_eq!(ok("$$SET and $${SET}"), "$SET and ${SET}");
        assert_eq!(ok("${UNSET:-${ALSO_UNSET:-${NESTED}}}x"), "nx");
        assert_eq!(ok("${UNSET:-a b}"), "a b");
        assert_eq!(ok("cost: 5$ or $1"), "cost: 5$ or $1");
        assert_eq!(ok("${EMPTY?unused}"), "");
    }

    #[test]
    fn an_unset_variable_without_a_default_is_an_error() {
        let missing = |variable: &str, message: Option<&str>| InterpolationError::Missing {
            variable: variable.into(),
            message: message.map(str::to_owned),
        };
        assert_eq!(
            vars().interpolate("app:${APP_VERSION}"),
            Err(missing("APP_VERSION", None))
        );
        assert_eq!(
            vars().interpolate("$APP_VERSION"),
            Err(missing("APP_VERSION", None))
        );
        assert_eq!(
            vars().interpolate("${EMPTY:?must be set}"),
            Err(missing("EMPTY", Some("must be set")))
        );
        assert_eq!(vars().interpolate("${UNSET?}"), Err(missing("UNSET", None)));
        assert!(matches!(
            vars().interpolate("${SET"),
            Err(InterpolationError::Syntax(_))
        ));
        assert!(matches!(
            vars().interpolate("${}"),
            Err(InterpolationError::Syntax(_))
        ));
        assert!(matches!(
            vars().interpolate("${SET/x}"),
            Err(InterpolationError::Syntax(_))
        ));
    }

    #[test]
    fn dotenv_files() {
        let parsed = parse_dotenv(
            "# comment\n\nA=1\nexport B = two words \nC='$literal'\nD=\"line\\nnext\"\nE=x # note\n",
            &HashMap::new(),
        )
        .unwrap();
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "two words");
        assert_eq!(parsed["C"], "$literal");
        assert_eq!(parsed["D"], "line\nnext");
        assert_eq!(parsed["E"], "x");
        assert!(parse_dotenv("no equals sign here", &HashMap::new()).is_err());
        assert!(parse_dotenv("A=\"open", &HashMap::new()).is_err());
    }

    #[test]
    fn dotenv_files_as_compose_reads_them() {
        let environment = HashMap::from([
            ("BASE".to_owned(), "from-env".to_owned()),
            ("ALONE".to_owned(), "inherited".to_owned()),
        ]);
        let text = "BASE=from-file\nTAG=${BASE}-x\nLOCAL=one\nREF=$LOCAL-${UNSET:-d}-${UNSET}\n\
                    MULTI=\"first\nsecond \\\"q\\\" \\$LOCAL\"\nSINGLE='${LOCAL} \\n\nstill'\n\
                    export   EXPORTED=yes # a comment\nHASH=a#b\nYAML: style\nALONE\nMISSING_ALONE\n\
                    dotted.key-1=ok\nEMPTY=\nQUOTED_HASH=\"x # y\"\n";
        let parsed = parse_dotenv(text, &environment).unwrap();
        assert_eq!(parsed["BASE"], "from-file");
        assert_eq!(parsed["TAG"], "from-env-x", "the environment comes first");
        assert_eq!(parsed["REF"], "one-d-");
        assert_eq!(parsed["MULTI"], "first\nsecond \"q\" $LOCAL");
        assert_eq!(parsed["SINGLE"], "${LOCAL} \\n\nstill");
        assert_eq!(parsed["EXPORTED"], "yes");
        assert_eq!(parsed["HASH"], "a#b");
        assert_eq!(parsed["YAML"], "style");
        assert_eq!(parsed["ALONE"], "inherited");
        assert!(!parsed.contains_key("MISSING_ALONE"));
        assert_eq!(parsed["dotted.key-1"], "ok");
        assert_eq!(parsed["EMPTY"], "");
        assert_eq!(parsed["QUOTED_HASH"], "x # y");
    }

    #[test]
    fn lenient_interpolation_is_compose_s_empty_string_and_names_the_variable() {
        let (text, unset) = vars()
            .interpolate_leniently("a-${UNSET}-$ALSO-${SET}")
            .unwrap();
        assert_eq!(text, "a---value");
        assert_eq!(unset, ["UNSET", "ALSO"]);
        assert!(vars().interpolate_leniently("${UNSET?needed}").is_err());
    }
}
