//! vmsilo host tools.
//!
//! - [`desktop`]: host desktop entries, icons and menu folders generated from guest packages.

pub mod desktop;
