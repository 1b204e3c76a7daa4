//! vmsilo host tools.
