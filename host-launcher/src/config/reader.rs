//! A path-tracking reader over `serde_json::Value`.
//!
//! serde's derive stops at the first error and doesn't say where it was. Users fix a whole
//! configuration at once, so this reader records every problem with its JSON path and carries on,
//! applying the spec's default wherever a value is missing or unusable.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

/// One problem in a configuration document: where it is and what is allowed there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issue {
    /// JSON path of the offending value, e.g. `nixosVms[1].id`.
    pub path: String,
    /// What is wrong and what would be accepted.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = if self.path.is_empty() {
            "(top level)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.message)
    }
}

/// Collects issues while a document is read and validated.
#[derive(Debug, Default)]
pub(crate) struct Issues(RefCell<Vec<Issue>>);

impl Issues {
    pub(crate) fn push(&self, path: impl Into<String>, message: impl Into<String>) {
        self.0.borrow_mut().push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    pub(crate) fn contains_path(&self, path: &str) -> bool {
        self.0.borrow().iter().any(|issue| issue.path == path)
    }

    /// Every issue, sorted by JSON path (list indices as numbers, so `nixosVms[2]` comes
    /// before `nixosVms[10]`); issues at one path keep the order they were found in.
    pub(crate) fn into_vec(self) -> Vec<Issue> {
        let mut issues = self.0.into_inner();
        issues.sort_by_cached_key(|issue| path_key(&issue.path));
        issues
    }
}

/// One step of a JSON path, for sorting.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Step {
    Index(usize),
    Key(String),
}

/// `a.b[3]["odd key"]` as steps `a`, `b`, 3, `odd key`; text that doesn't parse stays one key.
fn path_key(path: &str) -> Vec<Step> {
    let mut steps = Vec::new();
    let mut rest = path;
    while !rest.is_empty() {
        if let Some(inner) = rest.strip_prefix('[') {
            if inner.starts_with('"') {
                let mut de = serde_json::Deserializer::from_str(inner).into_iter::<String>();
                if let Some(Ok(key)) = de.next() {
                    let after = &inner[de.byte_offset()..];
                    if let Some(after) = after.strip_prefix(']') {
                        steps.push(Step::Key(key));
                        rest = after;
                        continue;
                    }
                }
            } else if let Some((digits, after)) = inner.split_once(']')
                && let Ok(i) = digits.parse()
            {
                steps.push(Step::Index(i));
                rest = after;
                continue;
            }
            steps.push(Step::Key(rest.to_owned()));
            break;
        }
        let rest_trimmed = rest.strip_prefix('.').unwrap_or(rest);
        let end = rest_trimmed.find(['.', '[']).unwrap_or(rest_trimmed.len());
        steps.push(Step::Key(rest_trimmed[..end].to_owned()));
        rest = &rest_trimmed[end..];
    }
    steps
}

/// Append an object key to a path, quoting keys that aren't plain identifiers.
pub(crate) fn join(path: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (path.is_empty(), plain) {
        (true, true) => key.to_owned(),
        (false, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{}]", Value::String(key.to_owned())),
    }
}

/// Append a list index to a path.
pub(crate) fn index(path: &str, i: usize) -> String {
    format!("{path}[{i}]")
}

/// Human name of a JSON value's type, for "expected X, found Y" messages.
pub(crate) fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}

/// A JSON object being read: hands out fields by name and reports unknown keys up front.
pub(crate) struct Obj<'a> {
    issues: &'a Issues,
    path: String,
    map: Option<&'a Map<String, Value>>,
}

impl<'a> Obj<'a> {
    /// Read `value` at `path` as an object whose keys must be among `known`.
    ///
    /// `null` is treated like a missing object: every field takes its default.
    pub(crate) fn new(
        issues: &'a Issues,
        path: impl Into<String>,
        value: Option<&'a Value>,
        known: &[&str],
    ) -> Self {
        let path = path.into();
        let map = match value {
            None | Some(Value::Null) => None,
            Some(Value::Object(map)) => {
                for key in map.keys() {
                    if !known.contains(&key.as_str()) {
                        issues.push(
                            join(&path, key),
                            format!("unknown option; expected one of: {}", known.join(", ")),
                        );
                    }
                }
                Some(map)
            }
            Some(other) => {
                issues.push(
                    path.clone(),
                    format!("expected an attribute set, found {}", kind(other)),
                );
                None
            }
        };
        Self { issues, path, map }
    }

    pub(crate) fn issues(&self) -> &'a Issues {
        self.issues
    }

    /// Path of a field of this object.
    pub(crate) fn at(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of a field; `null` counts as absent, as Nix's `null` defaults do.
    pub(crate) fn raw(&self, key: &str) -> Option<&'a Value> {
        self.map?.get(key).filter(|v| !v.is_null())
    }

    /// Whether the document sets this field (to anything but null).
    pub(crate) fn has(&self, key: &str) -> bool {
        self.raw(key).is_some()
    }

    /// A nested object.
    pub(crate) fn obj(&self, key: &str, known: &[&str]) -> Obj<'a> {
        Obj::new(self.issues, self.at(key), self.raw(key), known)
    }

    fn wrong(&self, key: &str, expected: &str, found: &Value) {
        self.issues.push(
            self.at(key),
            format!("expected {expected}, found {}", kind(found)),
        );
    }

    pub(crate) fn bool(&self, key: &str, default: bool) -> bool {
        match self.raw(key) {
            None => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                self.wrong(key, "true or false", other);
                default
            }
        }
    }

    pub(crate) fn opt_string(&self, key: &str) -> Option<String> {
        match self.raw(key) {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.wrong(key, "a string", other);
                None
            }
        }
    }

    /// A required string; reports it missing and returns an empty string.
    pub(crate) fn required_string(&self, key: &str, what: &str) -> String {
        if !self.has(key) {
            self.issues.push(self.at(key), format!("required: {what}"));
            return String::new();
        }
        let value = self.opt_string(key).unwrap_or_default();
        if value.is_empty() && matches!(self.raw(key), Some(Value::String(_))) {
            self.issues
                .push(self.at(key), format!("must not be empty: {what}"));
        }
        value
    }

    /// An unsigned integer within `range`, else the default (or `None` when required and absent).
    pub(crate) fn opt_uint(&self, key: &str, min: u64, max: u64) -> Option<u64> {
        self.opt_uint_as(
            key,
            min,
            max,
            &format!("a whole number from {min} to {max}"),
        )
    }

    /// [`Self::opt_uint`] with the wording of what is expected given by the caller, for fields
    /// whose real rule is narrower than the range read here (checked later).
    pub(crate) fn opt_uint_as(&self, key: &str, min: u64, max: u64, expected: &str) -> Option<u64> {
        let value = self.raw(key)?;
        match value.as_u64() {
            Some(n) if (min..=max).contains(&n) => Some(n),
            Some(n) => {
                self.issues.push(
                    self.at(key),
                    format!("{n} is out of range; allowed: {min} to {max}"),
                );
                None
            }
            None => {
                match value {
                    // Say which number was wrong, not just that it was a number.
                    Value::Number(n) => self
                        .issues
                        .push(self.at(key), format!("{n} is not {expected}")),
                    other => self.wrong(key, expected, other),
                }
                None
            }
        }
    }

    pub(crate) fn uint(&self, key: &str, default: u64, min: u64, max: u64) -> u64 {
        self.opt_uint(key, min, max).unwrap_or(default)
    }

    /// A list of strings.
    pub(crate) fn strings(&self, key: &str) -> Vec<String> {
        self.list(key)
            .into_iter()
            .filter_map(|(path, value)| match value {
                Value::String(s) => Some(s.clone()),
                other => {
                    self.issues
                        .push(path, format!("expected a string, found {}", kind(other)));
                    None
                }
            })
            .collect()
    }

    /// A list, as (path, element) pairs.
    pub(crate) fn list(&self, key: &str) -> Vec<(String, &'a Value)> {
        match self.raw(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let base = self.at(key);
                items
                    .iter()
                    .enumerate()
                    .map(|(i, v)| (index(&base, i), v))
                    .collect()
            }
            Some(other) => {
                self.wrong(key, "a list", other);
                Vec::new()
            }
        }
    }

    /// An attribute set with free-form keys, as (key, path, value) triples.
    pub(crate) fn entries(&self, key: &str) -> Vec<(String, String, &'a Value)> {
        match self.raw(key) {
            None => Vec::new(),
            Some(Value::Object(map)) => {
                let base = self.at(key);
                map.iter()
                    .map(|(k, v)| (k.clone(), join(&base, k), v))
                    .collect()
            }
            Some(other) => {
                self.wrong(key, "an attribute set", other);
                Vec::new()
            }
        }
    }

    /// One of a closed set of strings, mapped to its value; the error lists what is allowed.
    pub(crate) fn choice<T: Copy>(
        &self,
        key: &str,
        what: &str,
        options: &[(&str, T)],
    ) -> Option<T> {
        self.parsed(key, |t| {
            options
                .iter()
                .find(|(name, _)| *name == t)
                .map(|(_, value)| *value)
                .ok_or_else(|| {
                    let allowed: Vec<String> = options
                        .iter()
                        .map(|(name, _)| format!("{name:?}"))
                        .collect();
                    format!("{t:?} is not {what}; allowed: {}", allowed.join(", "))
                })
        })
    }

    /// A string parsed by `parse`, whose error text explains what is allowed.
    pub(crate) fn parsed<T>(
        &self,
        key: &str,
        parse: impl Fn(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.opt_string(key)?;
        parse_at(self.issues, &self.at(key), &text, parse)
    }
}

/// Parse `text` found at `path`, recording the parser's complaint as an issue.
pub(crate) fn parse_at<T>(
    issues: &Issues,
    path: &str,
    text: &str,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Option<T> {
    match parse(text) {
        Ok(value) => Some(value),
        Err(message) => {
            issues.push(path, message);
            None
        }
    }
}

/// A scalar value of a free-form crosvm option (`ro = false`, `block-size = 4096`, `id = "data"`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Scalar {
    /// `true` / `false`.
    Bool(bool),
    /// A whole number.
    Int(i64),
    /// Any text.
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Bool(b) => write!(f, "{b}"),
            Self::Int(n) => write!(f, "{n}"),
            Self::Str(s) => f.write_str(s),
        }
    }
}

/// Read a free-form attrset of crosvm options, keeping only scalar values and keys in `allowed`.
///
/// `skip` names keys that the caller reads itself (e.g. `path`).
pub(crate) fn scalar_options(
    issues: &Issues,
    path: &str,
    map: &Map<String, Value>,
    allowed: &[&str],
    skip: &[&str],
    flag: &str,
) -> BTreeMap<String, Scalar> {
    let mut out = BTreeMap::new();
    for (key, value) in map {
        if skip.contains(&key.as_str()) {
            continue;
        }
        let at = join(path, key);
        if !allowed.contains(&key.as_str()) {
            issues.push(
                at,
                format!(
                    "crosvm {flag} has no option `{key}`; allowed: {}",
                    allowed.join(", ")
                ),
            );
            continue;
        }
        let scalar = match value {
            Value::Bool(b) => Scalar::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(n) => Scalar::Int(n),
                None => {
                    issues.push(at, "expected a whole number");
                    continue;
                }
            },
            Value::String(s) => {
                if s.contains([',', '\n']) || (flag == "--shared-dir" && s.contains(':')) {
                    issues.push(
                        at,
                        format!("{s:?} contains a separator crosvm would misread"),
                    );
                    continue;
                }
                Scalar::Str(s.clone())
            }
            other => {
                issues.push(
                    at,
                    format!(
                        "expected a string, number or boolean, found {}",
                        kind(other)
                    ),
                );
                continue;
            }
        };
        out.insert(key.clone(), scalar);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_keys_split_keys_indices_and_quoted_keys() {
        assert_eq!(
            path_key(r#"a.b[10]["x.y]"].c"#),
            [
                Step::Key("a".into()),
                Step::Key("b".into()),
                Step::Index(10),
                Step::Key("x.y]".into()),
                Step::Key("c".into())
            ]
        );
        assert!(path_key("v[2].z") < path_key("v[10].a"));
        assert_eq!(path_key(""), []);
    }
}
