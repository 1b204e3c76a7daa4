//! A headless Wayland compositor with `wp_security_context_v1`, for testing the security-context
//! client without a desktop.
//!
//! Built on smithay: it offers `wl_compositor`, `wl_subcompositor`, `wl_shm`, `wl_seat`, `xdg_wm_base` and
//! `wp_security_context_manager_v1` on a socket at an absolute path, runs its event loop on a
//! thread, and records what a test needs to check: the metadata of every committed security
//! context, whether each context's listener is still accepting, and for every client whether it
//! came in through a context (and which). Like a real compositor, it hides the manager global from
//! clients that connected through a context. [`TestCompositor::stop`] (or drop) tears everything
//! down the way a crashing compositor would: all clients and listeners are closed.

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use smithay::input::{Seat, SeatHandler, SeatState};
use smithay::reexports::calloop::generic::Generic;
use smithay::reexports::calloop::{
    EventLoop, EventSource, Interest, LoopHandle, LoopSignal, Mode, Poll, PostAction, Readiness,
    Token, TokenFactory,
};
use smithay::reexports::wayland_server::backend::{ClientData, ClientId, DisconnectReason};
use smithay::reexports::wayland_server::protocol::{wl_buffer, wl_seat, wl_surface};
use smithay::reexports::wayland_server::{
    BindError, Client, Display, DisplayHandle, ListeningSocket,
};
use smithay::utils::Serial;
use smithay::wayland::buffer::BufferHandler;
use smithay::wayland::compositor::{CompositorClientState, CompositorHandler, CompositorState};
use smithay::wayland::security_context::{
    SecurityContext, SecurityContextHandler, SecurityContextListenerSource, SecurityContextState,
};
use smithay::wayland::shell::xdg::{
    PopupSurface, PositionerState, ToplevelSurface, XdgShellHandler, XdgShellState,
};
use smithay::wayland::shm::{ShmHandler, ShmState};

/// Why the test compositor could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum CompositorError {
    /// Binding the Wayland socket failed (path in use, directory missing...).
    #[error("cannot bind the compositor socket {path}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// What went wrong.
        #[source]
        source: BindError,
    },
    /// Creating the event loop or the display failed.
    #[error("cannot set up the compositor: {0}")]
    Setup(String),
    /// The compositor thread could not be spawned.
    #[error("cannot spawn the compositor thread")]
    Spawn(#[source] io::Error),
    /// The compositor thread panicked or its event loop failed.
    #[error("the compositor thread failed: {0}")]
    Thread(String),
}

/// Metadata of one security context, exactly as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextInfo {
    /// `set_sandbox_engine`, if sent.
    pub sandbox_engine: Option<String>,
    /// `set_app_id`, if sent.
    pub app_id: Option<String>,
    /// `set_instance_id`, if sent.
    pub instance_id: Option<String>,
}

/// One committed security context.
#[derive(Debug, Clone)]
pub struct ContextRecord {
    /// Its metadata.
    pub info: ContextInfo,
    /// False once the creator closed `close_fd`'s peer and the compositor stopped accepting.
    pub listening: bool,
}

/// One client connection.
#[derive(Debug, Clone)]
pub struct ClientRecord {
    /// Index into [`Snapshot::contexts`] of the context it came through; `None` for a normal
    /// client that connected to the compositor socket.
    pub context: Option<usize>,
    /// False once it disconnected.
    pub connected: bool,
}

/// Everything the compositor recorded so far.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Committed security contexts in commit order.
    pub contexts: Vec<ContextRecord>,
    /// Clients in connection order.
    pub clients: Vec<ClientRecord>,
}

impl Snapshot {
    /// Clients that came through context `index`.
    pub fn clients_of(&self, index: usize) -> impl Iterator<Item = &ClientRecord> {
        self.clients
            .iter()
            .filter(move |c| c.context == Some(index))
    }
}

type Shared = Arc<Mutex<Snapshot>>;

fn lock(shared: &Shared) -> MutexGuard<'_, Snapshot> {
    // A panic elsewhere must not hide what was recorded; the data stays consistent per field.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// A running headless compositor; stops when dropped.
#[derive(Debug)]
pub struct TestCompositor {
    socket: PathBuf,
    shared: Shared,
    signal: LoopSignal,
    thread: Option<JoinHandle<Result<(), String>>>,
}

impl TestCompositor {
    /// Start a compositor listening at `socket` (absolute path). Without `security_context` it
    /// offers the same globals minus `wp_security_context_manager_v1`, like an old compositor.
    pub fn start(socket: &Path, security_context: bool) -> Result<Self, CompositorError> {
        let listening = ListeningSocket::bind_absolute(socket.to_owned()).map_err(|source| {
            CompositorError::Bind {
                path: socket.to_owned(),
                source,
            }
        })?;
        let shared = Shared::default();
        let (ready_tx, ready_rx) = mpsc::channel();
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name("test-compositor".into())
            .spawn(move || serve(listening, security_context, thread_shared, ready_tx))
            .map_err(CompositorError::Spawn)?;
        match ready_rx.recv() {
            Ok(Ok(signal)) => Ok(Self {
                socket: socket.to_owned(),
                shared,
                signal,
                thread: Some(thread),
            }),
            Ok(Err(e)) => Err(CompositorError::Setup(e)),
            Err(_) => Err(CompositorError::Thread(join_message(thread))),
        }
    }

    /// The socket clients connect to.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A copy of everything recorded so far.
    pub fn snapshot(&self) -> Snapshot {
        lock(&self.shared).clone()
    }

    /// Poll the records until `check` returns `Some`, or give up after `timeout`.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut(&Snapshot) -> Option<T>,
    ) -> Option<T> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = check(&lock(&self.shared)) {
                return Some(found);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Stop the compositor: every client and listener is closed and the socket removed.
    pub fn stop(mut self) -> Result<Snapshot, CompositorError> {
        self.shutdown()?;
        Ok(self.snapshot())
    }

    fn shutdown(&mut self) -> Result<(), CompositorError> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.signal.stop();
        self.signal.wakeup();
        match thread.join() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(CompositorError::Thread(e)),
            Err(panic) => Err(CompositorError::Thread(panic_message(&*panic))),
        }
    }
}

impl Drop for TestCompositor {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!("{e}");
        }
    }
}

fn join_message(thread: JoinHandle<Result<(), String>>) -> String {
    match thread.join() {
        Ok(Ok(())) => "exited during setup".to_owned(),
        Ok(Err(e)) => e,
        Err(panic) => panic_message(&*panic),
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
        .unwrap_or_else(|| "panicked".to_owned())
}

/// The compositor thread: set up, report readiness, run until signalled.
fn serve(
    listening: ListeningSocket,
    security_context: bool,
    shared: Shared,
    ready: mpsc::Sender<Result<LoopSignal, String>>,
) -> Result<(), String> {
    let setup = || -> Result<(EventLoop<'static, App>, App), String> {
        let event_loop = EventLoop::<App>::try_new().map_err(|e| format!("event loop: {e}"))?;
        let display = Display::<App>::new().map_err(|e| format!("display: {e}"))?;
        let dh = display.handle();
        let security_context = security_context.then(|| {
            SecurityContextState::new::<App, _>(&dh, |client| {
                // Never offer the manager to a client that is itself inside a context.
                client
                    .get_data::<ClientState>()
                    .is_some_and(|data| data.context.is_none())
            })
        });
        let mut seat_state = SeatState::new();
        let seat = seat_state.new_wl_seat(&dh, "seat0");
        let app = App {
            seat_state,
            _seat: seat,
            compositor: CompositorState::new::<App>(&dh),
            shm: ShmState::new::<App>(&dh, Vec::new()),
            xdg: XdgShellState::new::<App>(&dh),
            _security_context: security_context,
            dh,
            handle: event_loop.handle(),
            shared: shared.clone(),
        };
        let handle = event_loop.handle();
        handle
            .insert_source(
                Generic::new(listening, Interest::READ, Mode::Level),
                |_, socket, app| {
                    while let Some(stream) = socket.accept()? {
                        app.insert_client(stream, None);
                    }
                    Ok(PostAction::Continue)
                },
            )
            .map_err(|e| format!("socket source: {e}"))?;
        handle
            .insert_source(
                Generic::new(display, Interest::READ, Mode::Level),
                |_, display, app| {
                    // SAFETY: the display is only borrowed for this call and never dropped or
                    // replaced here, which is what `get_mut` requires.
                    unsafe { display.get_mut() }.dispatch_clients(app)?;
                    Ok(PostAction::Continue)
                },
            )
            .map_err(|e| format!("display source: {e}"))?;
        Ok((event_loop, app))
    };
    let (mut event_loop, mut app) = match setup() {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e.clone()));
            return Err(e);
        }
    };
    if ready.send(Ok(event_loop.get_signal())).is_err() {
        return Ok(()); // the starter is gone
    }
    event_loop
        .run(None, &mut app, |app| {
            if let Err(e) = app.dh.flush_clients() {
                tracing::warn!("flush: {e}");
            }
        })
        .map_err(|e| format!("event loop: {e}"))
}

struct App {
    compositor: CompositorState,
    shm: ShmState,
    xdg: XdgShellState,
    seat_state: SeatState<App>,
    _seat: Seat<App>,
    _security_context: Option<SecurityContextState>,
    dh: DisplayHandle,
    handle: LoopHandle<'static, App>,
    shared: Shared,
}

impl App {
    fn insert_client(&mut self, stream: UnixStream, context: Option<(usize, ContextInfo)>) {
        let mut snapshot = lock(&self.shared);
        let index = snapshot.clients.len();
        snapshot.clients.push(ClientRecord {
            context: context.as_ref().map(|(i, _)| *i),
            connected: true,
        });
        drop(snapshot);
        let data = ClientState {
            compositor: CompositorClientState::default(),
            context: context.map(|(_, info)| info),
            index,
            shared: self.shared.clone(),
        };
        if let Err(e) = self.dh.insert_client(stream, Arc::new(data)) {
            tracing::warn!("cannot insert client: {e}");
            lock(&self.shared).clients[index].connected = false;
        }
    }
}

struct ClientState {
    compositor: CompositorClientState,
    context: Option<ContextInfo>,
    index: usize,
    shared: Shared,
}

impl ClientData for ClientState {
    fn disconnected(&self, _client_id: ClientId, _reason: DisconnectReason) {
        if let Some(record) = lock(&self.shared).clients.get_mut(self.index) {
            record.connected = false;
        }
    }
}

impl SecurityContextHandler for App {
    fn context_created(&mut self, source: SecurityContextListenerSource, context: SecurityContext) {
        let info = ContextInfo {
            sandbox_engine: context.sandbox_engine,
            app_id: context.app_id,
            instance_id: context.instance_id,
        };
        let mut snapshot = lock(&self.shared);
        let index = snapshot.contexts.len();
        snapshot.contexts.push(ContextRecord {
            info: info.clone(),
            listening: true,
        });
        drop(snapshot);
        let tracked = TrackedListener {
            inner: source,
            index,
            shared: self.shared.clone(),
        };
        let inserted = self.handle.insert_source(tracked, move |stream, _, app| {
            app.insert_client(stream, Some((index, info.clone())));
        });
        if let Err(e) = inserted {
            tracing::warn!("cannot watch security context listener: {e}");
            lock(&self.shared).contexts[index].listening = false;
        }
    }
}

/// Smithay's listener source, plus a record of when it stops (its `close_fd` closed).
struct TrackedListener {
    inner: SecurityContextListenerSource,
    index: usize,
    shared: Shared,
}

impl EventSource for TrackedListener {
    type Event = UnixStream;
    type Metadata = ();
    type Ret = ();
    type Error = io::Error;

    fn process_events<F>(
        &mut self,
        readiness: Readiness,
        token: Token,
        callback: F,
    ) -> Result<PostAction, Self::Error>
    where
        F: FnMut(Self::Event, &mut Self::Metadata) -> Self::Ret,
    {
        let action = self.inner.process_events(readiness, token, callback)?;
        if action == PostAction::Remove {
            lock(&self.shared).contexts[self.index].listening = false;
        }
        Ok(action)
    }

    fn register(
        &mut self,
        poll: &mut Poll,
        factory: &mut TokenFactory,
    ) -> smithay::reexports::calloop::Result<()> {
        self.inner.register(poll, factory)
    }

    fn reregister(
        &mut self,
        poll: &mut Poll,
        factory: &mut TokenFactory,
    ) -> smithay::reexports::calloop::Result<()> {
        self.inner.reregister(poll, factory)
    }

    fn unregister(&mut self, poll: &mut Poll) -> smithay::reexports::calloop::Result<()> {
        self.inner.unregister(poll)
    }
}

impl CompositorHandler for App {
    fn compositor_state(&mut self) -> &mut CompositorState {
        &mut self.compositor
    }

    fn client_compositor_state<'a>(&self, client: &'a Client) -> &'a CompositorClientState {
        match client.get_data::<ClientState>() {
            Some(data) => &data.compositor,
            // Every client is inserted with ClientState; anything else is a bug in this file.
            None => unreachable!("client without ClientState"),
        }
    }

    fn commit(&mut self, _surface: &wl_surface::WlSurface) {}
}

impl BufferHandler for App {
    fn buffer_destroyed(&mut self, _buffer: &wl_buffer::WlBuffer) {}
}

impl ShmHandler for App {
    fn shm_state(&self) -> &ShmState {
        &self.shm
    }
}

impl XdgShellHandler for App {
    fn xdg_shell_state(&mut self) -> &mut XdgShellState {
        &mut self.xdg
    }

    fn new_toplevel(&mut self, surface: ToplevelSurface) {
        surface.send_configure();
    }

    fn new_popup(&mut self, _surface: PopupSurface, _positioner: PositionerState) {}

    fn grab(&mut self, _surface: PopupSurface, _seat: wl_seat::WlSeat, _serial: Serial) {}

    fn reposition_request(
        &mut self,
        _surface: PopupSurface,
        _positioner: PositionerState,
        _token: u32,
    ) {
    }
}

impl SeatHandler for App {
    type KeyboardFocus = wl_surface::WlSurface;
    type PointerFocus = wl_surface::WlSurface;
    type TouchFocus = wl_surface::WlSurface;

    fn seat_state(&mut self) -> &mut SeatState<Self> {
        &mut self.seat_state
    }
}

smithay::delegate_compositor!(App);
smithay::delegate_seat!(App);
smithay::delegate_shm!(App);
smithay::delegate_xdg_shell!(App);
smithay::delegate_security_context!(App);
