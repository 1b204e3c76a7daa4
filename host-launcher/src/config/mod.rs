//! The configuration document `/etc/vmsilo/config.json`: parse, default, validate.
//!
//! The NixOS module serialises `programs.vmsilo` with the spec's option names; a hand-written
//! document that omits fields means the same thing, because every default is applied here.
//! Reading happens in three separate steps: `read` (types, allowed keys, defaults), then
//! `validate` (rules across fields and VMs); every problem from both is reported together.

mod read;
mod reader;
pub mod types;
mod validate;

pub mod model;

use std::fmt;
use std::path::{Path, PathBuf};

pub use model::*;
pub use read::{
    BLOCK_OPTIONS, DEFAULT_GPU_CONTEXT_TYPES, GPU_OPTIONS, SHARED_DIR_OPTIONS, VFIO_OPTIONS,
    VHOST_USER_OPTIONS, VHOST_USER_TYPES,
};
pub use reader::{Issue, Scalar};
pub use validate::{VM_NAME_MAX, is_ifname, is_vm_name};

/// Where the NixOS module writes the document.
pub const SYSTEM_CONFIG: &str = "/etc/vmsilo/config.json";

/// The quick-start example from the spec, bundled so that every tool can be tried without NixOS.
pub const EXAMPLE_QUICKSTART: &str = include_str!("../../../assets/examples/quickstart.json");

/// The VM-to-VM networking example from the spec.
pub const EXAMPLE_VM_SWITCH: &str = include_str!("../../../assets/examples/vm-switch-network.json");

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The text is not JSON.
    #[error("{origin} is not valid JSON (line {line}, column {column})")]
    Syntax {
        /// File name or "the document".
        origin: String,
        /// 1-based line of the syntax error.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's complaint.
        #[source]
        source: serde_json::Error,
    },
    /// The JSON does not describe a valid configuration.
    #[error("{origin} has {} problem{}:\n{}", .issues.len(), if .issues.len() == 1 { "" } else { "s" }, IssueList(.issues))]
    Invalid {
        /// File name or "the document".
        origin: String,
        /// Every problem found, sorted by JSON path.
        issues: Vec<Issue>,
    },
}

impl ConfigError {
    /// The individual problems, when the document parsed but was invalid.
    pub fn issues(&self) -> &[Issue] {
        match self {
            Self::Invalid { issues, .. } => issues,
            _ => &[],
        }
    }
}

struct IssueList<'a>(&'a [Issue]);

impl fmt::Display for IssueList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

/// Largest configuration document accepted; real ones are a few KiB.
pub const MAX_DOCUMENT_BYTES: u64 = 16 << 20;

/// Parse, default and validate a document given as text; `origin` names it in errors.
///
/// A leading byte-order mark is ignored, and a key given twice in one object is an error (JSON
/// parsers disagree on which one wins, so neither may).
pub fn from_json_str_named(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut de = serde_json::Deserializer::from_str(text);
    let doc = serde::Deserialize::deserialize(&mut de)
        .and_then(|StrictValue(doc)| de.end().map(|()| doc))
        .map_err(|source| ConfigError::Syntax {
            origin: origin.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
    from_value(&doc, origin)
}

/// A JSON value that rejects duplicate object keys while it is parsed.
struct StrictValue(serde_json::Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(StrictVisitor).map(StrictValue)
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = serde_json::Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(serde_json::Number::from_f64(v).map_or(serde_json::Value::Null, Into::into))
    }

    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(v.into())
    }

    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(serde_json::Value::Null)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.into())
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut out = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(serde::de::Error::custom(format!(
                    "the key {key:?} appears twice in one object"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            out.insert(key, value);
        }
        Ok(out.into())
    }
}

/// Parse, default and validate a document given as text.
pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
    from_json_str_named(text, "the document")
}

/// Default and validate an already parsed document.
pub fn from_value(doc: &serde_json::Value, origin: &str) -> Result<Config, ConfigError> {
    if !doc.is_object() {
        // Nothing else can be said about a document that isn't an object at all.
        return Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            issues: vec![Issue {
                path: String::new(),
                message: format!(
                    "expected an attribute set (a JSON object) with \"user\" and \"nixosVms\", found {}",
                    reader::kind(doc)
                ),
            }],
        });
    }
    let issues = reader::Issues::default();
    let config = read::config(&issues, doc);
    validate::config(&issues, &config);
    let issues = issues.into_vec();
    if issues.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid {
            origin: origin.to_owned(),
            issues,
        })
    }
}

/// Load a document from a file: a regular file of at most [`MAX_DOCUMENT_BYTES`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let read_error = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let bytes = crate::files::read_regular(path, MAX_DOCUMENT_BYTES).map_err(read_error)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        read_error(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "not UTF-8 text (invalid byte at offset {})",
                e.utf8_error().valid_up_to()
            ),
        ))
    })?;
    from_json_str_named(&text, &path.display().to_string())
}

/// Which document a command ended up using.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file named on the command line or the system file.
    File(PathBuf),
    /// The bundled quick-start example (no system configuration on this machine).
    BundledExample,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::File(path) => write!(f, "{}", path.display()),
            Self::BundledExample => f.write_str("the bundled quick-start example"),
        }
    }
}

/// Load `explicit` if given; else the system document if it exists; else the bundled example.
pub fn load_or_default(explicit: Option<&Path>) -> Result<(Config, Source), ConfigError> {
    load_or_default_from(explicit, Path::new(SYSTEM_CONFIG))
}

/// [`load_or_default`] with the system path made explicit, for tests.
pub fn load_or_default_from(
    explicit: Option<&Path>,
    system: &Path,
) -> Result<(Config, Source), ConfigError> {
    if let Some(path) = explicit {
        return Ok((load(path)?, Source::File(path.to_owned())));
    }
    if system.exists() {
        return Ok((load(system)?, Source::File(system.to_owned())));
    }
    let config = from_json_str_named(EXAMPLE_QUICKSTART, "the bundled quick-start example")?;
    Ok((config, Source::BundledExample))
}

#[cfg(test)]
mod tests;
