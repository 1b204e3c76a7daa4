//! vmsilo guest agent: command server, idle watchdog, interface naming
