//! host↔guest command protocol: framing, messages, limits
