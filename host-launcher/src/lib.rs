//! vmsilo host tools.

pub mod qemu;
pub mod vm_service;
