//! Compose's variable interpolation (compose-spec `interpolation.md`): `$VAR`, `${VAR}`,
//! `${VAR:-default}`, `${VAR-default}`, `${VAR:?message}`, `${VAR?message}`, `${VAR:+other}`,
//! `${VAR+other}`, `$$` for a `$`, defaults that interpolate again; and the `.env` file. One
//! difference, on purpose: a variable that is unset and has no default is an error, never the
//! empty string that would become an empty tag.

use std::collections::HashMap;

/// Where values come from: the process environment first, then the `.env` file.
pub struct Variables {
    environment: HashMap<String, String>,
    dotenv: HashMap<String, String>,
}

/// Why a value could not be interpolated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterpolationError {
    /// Unset, with no default (or empty, with `:?`): the variable, and its `?` message if any.
    Missing {
        variable: String,
        message: Option<String>,
    },
    /// `${` without its `}`, or a name that is not one.
    Syntax(String),
}

impl Variables {
    pub fn new(environment: HashMap<String, String>, dotenv: HashMap<String, String>) -> Self {
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

    /// `text` with every variable replaced.
    pub fn interpolate(&self, text: &str) -> Result<String, InterpolationError> {
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
                out.push_str(&self.expression(&braced[..end])?);
                rest = &braced[end + 1..];
            } else {
                let name_len = name_length(rest);
                if name_len == 0 {
                    // A `$` before anything but a name stays a `$`.
                    out.push('$');
                } else {
                    out.push_str(&self.value(&rest[..name_len], None)?);
                    rest = &rest[name_len..];
                }
            }
        }
        out.push_str(rest);
        Ok(out)
    }

    /// What is between `${` and `}`.
    fn expression(&self, expression: &str) -> Result<String, InterpolationError> {
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
            return self.value(name, None);
        }
        for (symbol, holds) in operators {
            let Some(argument) = operator.strip_prefix(symbol) else {
                continue;
            };
            return match (symbol.trim_start_matches(':'), holds) {
                ("-", true) => Ok(value.unwrap_or_default().to_owned()),
                ("-", false) => self.interpolate(argument),
                ("?", true) => Ok(value.unwrap_or_default().to_owned()),
                ("?", false) => Err(missing(&self.interpolate(argument)?)),
                (_, true) => self.interpolate(argument),
                (_, false) => Ok(String::new()),
            };
        }
        Err(InterpolationError::Syntax(format!(
            "${{{expression}}}: `{operator}` is not one of :- - :? ? :+ +"
        )))
    }

    fn value(&self, name: &str, message: Option<String>) -> Result<String, InterpolationError> {
        self.get(name)
            .map(str::to_owned)
            .ok_or_else(|| InterpolationError::Missing {
                variable: name.to_owned(),
                message,
            })
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

/// A `.env` file: `KEY=VALUE` lines, `#` comments, an optional `export `, values in single quotes
/// taken as they are, in double quotes with `\n`, `\"` and `\\` escapes.
pub fn parse_dotenv(text: &str) -> Result<HashMap<String, String>, String> {
    let mut values = HashMap::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let (key, value) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: `{line}` is not KEY=VALUE", number + 1))?;
        let key = key.trim();
        if name_length(key) != key.len() || key.is_empty() {
            return Err(format!(
                "line {}: `{key}` is not a variable name",
                number + 1
            ));
        }
        values.insert(key.to_owned(), dotenv_value(value.trim()));
    }
    Ok(values)
}

fn dotenv_value(value: &str) -> String {
    if let Some(quoted) = value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')) {
        return quoted.to_owned();
    }
    if let Some(quoted) = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        return quoted
            .replace("\\n", "\n")
            .replace("\\\"", "\"")
            .replace("\\\\", "\\");
    }
    // An unquoted value ends at ` #`.
    value
        .split(" #")
        .next()
        .unwrap_or_default()
        .trim_end()
        .to_owned()
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
        )
        .unwrap();
        assert_eq!(parsed["A"], "1");
        assert_eq!(parsed["B"], "two words");
        assert_eq!(parsed["C"], "$literal");
        assert_eq!(parsed["D"], "line\nnext");
        assert_eq!(parsed["E"], "x");
        assert!(parse_dotenv("no equals sign").is_err());
        assert!(parse_dotenv("1A=x").is_err());
    }
}
