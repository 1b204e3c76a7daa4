//! Starting and stopping VM units through systemd's D-Bus API (polkit decides who may).

/// Why a systemd call failed.
#[derive(Debug, thiserror::Error)]
pub enum UnitError {
    /// The async runtime for the D-Bus client could not be created.
    #[error("cannot create the D-Bus client runtime")]
    Runtime(#[source] std::io::Error),
    /// Connecting to the system bus failed.
    #[error("cannot connect to the system D-Bus")]
    Connect(#[source] zbus::Error),
    /// systemd answered with an error.
    #[error("systemd {method} failed")]
    Call {
        /// The manager method.
        method: &'static str,
        /// The cause.
        #[source]
        source: zbus::Error,
    },
}

/// Name of a VM's service unit, which runs the VMM.
pub fn vm_unit(vm: &str) -> String {
    format!("vmsilo-{vm}-vm.service")
}

fn manager_call(method: &'static str, unit: &str) -> Result<(), UnitError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(UnitError::Runtime)?;
    rt.block_on(async {
        let conn = zbus::Connection::system()
            .await
            .map_err(UnitError::Connect)?;
        conn.call_method(
            Some("org.freedesktop.systemd1"),
            "/org/freedesktop/systemd1",
            Some("org.freedesktop.systemd1.Manager"),
            method,
            &(unit, "replace"),
        )
        .await
        .map_err(|source| UnitError::Call { method, source })?;
        Ok(())
    })
}

/// `StartUnit(unit, "replace")`; returns once systemd queued the job.
pub fn start_unit(unit: &str) -> Result<(), UnitError> {
    manager_call("StartUnit", unit)
}

/// `StopUnit(unit, "replace")`.
pub fn stop_unit(unit: &str) -> Result<(), UnitError> {
    manager_call("StopUnit", unit)
}
