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
        /// Every problem found, in document order.
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

/// Parse, default and validate a document given as text; `origin` names it in errors.
pub fn from_json_str_named(text: &str, origin: &str) -> Result<Config, ConfigError> {
    let doc: serde_json::Value =
        serde_json::from_str(text).map_err(|source| ConfigError::Syntax {
            origin: origin.to_owned(),
            line: source.line(),
            column: source.column(),
            source,
        })?;
    from_value(&doc, origin)
}

/// Parse, default and validate a document given as text.
pub fn from_json_str(text: &str) -> Result<Config, ConfigError> {
    from_json_str_named(text, "the document")
}

/// Default and validate an already parsed document.
pub fn from_value(doc: &serde_json::Value, origin: &str) -> Result<Config, ConfigError> {
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

/// Load a document from a file.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
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
