//! The metadata a VM's security context carries, and the checks on its inputs.
//!
//! The compositor (and the KWin patch) identify a VM's clients only by this metadata, so the
//! inputs are validated before anything reaches the wire.

use std::fmt;
use std::str::FromStr;

/// Sandbox engine name every vmsilo context carries; the KWin patch keys its policy on it.
pub const SANDBOX_ENGINE: &str = "org.vmsilo";

/// Longest VM name accepted: the same limit as `vmsilo::config::VM_NAME_MAX`, because the name
/// also ends up in TAP interface names (15 bytes at most).
pub const MAX_VM_NAME_LEN: usize = 12;

/// Why a VM name or colour was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetadataError {
    /// The name is not one the vmsilo config accepts, so no VM (and no app id) can carry it.
    #[error(
        "invalid VM name {name:?}: use a lowercase letter then lowercase letters, digits or '-', \
         at most {MAX_VM_NAME_LEN} characters, not ending in '-'"
    )]
    VmName {
        /// The rejected name.
        name: String,
    },
    /// The colour is not `#` followed by six hex digits.
    #[error("invalid colour {color:?}: expected #rrggbb (six hex digits)")]
    Color {
        /// The rejected colour.
        color: String,
    },
}

/// A VM name as the vmsilo config defines it, so the app id `org.vmsilo.<vm>` we send is exactly
/// the one the rest of vmsilo (desktop files, the KWin patch) derives from the config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmName(String);

impl VmName {
    /// The name as given.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for VmName {
    type Err = MetadataError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if is_vm_name(name) {
            Ok(Self(name.to_owned()))
        } else {
            Err(MetadataError::VmName {
                name: name.to_owned(),
            })
        }
    }
}

/// Whether `name` is a valid vmsilo VM name.
///
/// This mirrors `vmsilo::config::is_vm_name` (host-launcher/src/config/validate.rs) on purpose
/// instead of depending on the `vmsilo` crate, which would pull the whole host launcher into this
/// small per-user binary. Keep the two in step: a name one accepts and the other refuses would give
/// a VM's windows an app id no desktop file or policy matches.
pub fn is_vm_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_VM_NAME_LEN
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-')
}

impl fmt::Display for VmName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A frame colour as `#rrggbb`, kept lower-case so the compositor sees one spelling per colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Color([u8; 3]);

impl Color {
    /// The red, green and blue components.
    pub fn rgb(self) -> [u8; 3] {
        self.0
    }
}

impl FromStr for Color {
    type Err = MetadataError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let err = || MetadataError::Color {
            color: text.to_owned(),
        };
        let hex = text.strip_prefix('#').ok_or_else(err)?;
        if hex.len() != 6 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(err());
        }
        let mut rgb = [0u8; 3];
        for (i, byte) in rgb.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| err())?;
        }
        Ok(Self(rgb))
    }
}

impl fmt::Display for Color {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [r, g, b] = self.0;
        write!(f, "#{r:02x}{g:02x}{b:02x}")
    }
}

/// What one VM's security context tells the compositor about the clients behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata {
    vm: VmName,
    color: Color,
}

impl Metadata {
    /// Metadata for the VM `vm` framed in `color`.
    pub fn new(vm: VmName, color: Color) -> Self {
        Self { vm, color }
    }

    /// The VM this context belongs to.
    pub fn vm(&self) -> &VmName {
        &self.vm
    }

    /// Sandbox engine sent with `set_sandbox_engine`: always [`SANDBOX_ENGINE`].
    pub fn sandbox_engine(&self) -> &'static str {
        SANDBOX_ENGINE
    }

    /// App id sent with `set_app_id`: `org.vmsilo.<vm>`, which stock KWin uses to pick policy.
    pub fn app_id(&self) -> String {
        format!("{SANDBOX_ENGINE}.{}", self.vm)
    }

    /// Instance id sent with `set_instance_id`: the colour, which the KWin patch paints.
    pub fn instance_id(&self) -> String {
        self.color.to_string()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn vm_names() {
        for ok in [
            "banking",
            "a",
            "dev-2",
            "a-b-c",
            "x1",
            &"x".repeat(MAX_VM_NAME_LEN),
        ] {
            assert_eq!(ok.parse::<VmName>().unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "-lead",
            "_lead",
            "1abc",
            "My_VM",
            "Banking",
            "dev_2",
            "trail-",
            "has space",
            "dot.ted",
            "sl/ash",
            "ünï",
            "nul\0",
            &"x".repeat(MAX_VM_NAME_LEN + 1),
        ] {
            assert_eq!(
                bad.parse::<VmName>(),
                Err(MetadataError::VmName {
                    name: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn colours_parse_and_normalise() {
        let c: Color = "#2ECC71".parse().unwrap();
        assert_eq!(c.rgb(), [0x2e, 0xcc, 0x71]);
        assert_eq!(c.to_string(), "#2ecc71");
        for bad in [
            "2ecc71", "#2ecc7", "#2ecc711", "#2ecc7g", "red", "", "#", "#+1+2+3",
        ] {
            assert_eq!(
                bad.parse::<Color>(),
                Err(MetadataError::Color {
                    color: bad.to_owned()
                }),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn metadata_fields() {
        let m = Metadata::new("banking".parse().unwrap(), "#3498DB".parse().unwrap());
        assert_eq!(m.sandbox_engine(), "org.vmsilo");
        assert_eq!(m.app_id(), "org.vmsilo.banking");
        assert_eq!(m.instance_id(), "#3498db");
    }
}
