//! wp_security_context_v1 listener per VM
