//! The front door of `prenv serve`: what a client without a signature can hold, so that idle and
//! slowloris connections cannot shut GitHub out.
//!
//! `axum::serve` (axum 0.8.9, axum/src/serve/mod.rs `handle_connection`) builds hyper-util's auto
//! connection builder (hyper-util 0.1.21 src/server/conn/auto/mod.rs `Builder::new`: a plain
//! `http1::Builder::new()`) without a timer, so hyper's 30 s default header-read timeout (hyper
//! 1.12 src/server/conn/http1.rs `Builder::new`) is off (src/common/time.rs `Time::check`:
//! "timeout `header_read_timeout` has default, but no timer set"),
//! and it accepts every connection it can; on an accept() error it logs and sleeps one second
//! (axum/src/serve/listener.rs `handle_accept_error`, taken from hyper 0.14's `tcp.rs`). With a
//! 256-file limit, 300 idle connections took every descriptor: /healthz and deliveries timed out.
//! axum's newer `ListenerExt::limit_connections` (tokio-rs/axum main, listener.rs) is a semaphore:
//! at the cap it stops accepting, so an attacker holding the cap still shuts GitHub out.
//!
//! So prenv runs its own loop on hyper's HTTP/1 connection (the protocol GitHub delivers with):
//! - hyper's `header_read_timeout` (hyper src/server/conn/http1.rs `Builder::header_read_timeout`)
//!   with tokio's timer. Its clock starts when hyper waits for a request head (src/proto/h1/conn.rs
//!   `Conn::poll_read_head`): on accept and again after every answer on a kept-alive connection, so
//!   it is the idle timeout as well as the slowloris one.
//! - a total deadline on each request from its head to its answer, which bounds a trickled body
//!   (tower-http's `RequestBodyTimeoutLayer` restarts its clock at every frame, so a byte every few
//!   seconds would never trip it); a late request is answered 408 and its connection closed.
//! - a cap on open connections sized to the open-file limit, and when it is reached the connection
//!   that has waited longest on its client (idle, sending a head, or not reading our answer) is
//!   closed to make room, as nginx reuses connections when worker_connections run short
//!   (nginx src/core/ngx_connection.c `ngx_drain_connections`). A request being answered is never
//!   closed; a new connection always finds room unless every connection is busy answering.
//! - accept() errors never end the loop: a peer that gave up is skipped; running out of files
//!   closes the connection that waited longest (freeing a descriptor) and pauses accepting, 10 ms
//!   doubling to 1 s while the errors last (nginx src/event/ngx_event_accept.c disables accepting
//!   on EMFILE/ENFILE for `accept_mutex_delay`; hyper 0.14 and axum sleep 1 s).
//!
//! Stopping: hyper's `graceful_shutdown` (src/server/conn/http1.rs) calls `Conn::disable_keep_alive`
//! (src/proto/h1/conn.rs), which closes a connection at once only when it is idle between
//! requests; a fresh one is `KA::Busy` until its first request, so it is the header-read timeout
//! that ends one that never sends. Draining therefore lasts at most the header plus the body
//! timeout, after which the rest are closed (hyper-util's `server::graceful::GracefulShutdown`
//! only signals, with no deadline of its own).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::sync::{Notify, mpsc, watch};

use super::Metrics;

/// Files kept out of the connection budget: the listener, the runtime, logs, and what a sync and
/// a full resync open (git packs, HTTPS to GitHub). Measured: an idle receiver holds 10, and 12 at
/// the peak of 60 syncs into a local repository; the rest is room for large repositories' packs.
const RESERVED_FILES: u64 = 64;
/// Fewer connections than this is no receiver: `prenv serve` refuses to start.
const MIN_CONNECTIONS: u64 = 8;
/// A request head larger than this is refused (431): GitHub's are a few KiB, and it bounds what an
/// open connection costs in memory.
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// The first pause after an accept() error; it doubles while the errors last.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
/// The longest pause, as hyper 0.14 and axum::serve sleep after an accept() error.
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// What a client may hold before it is cut off.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Open connections at most (already fitted to the open-file limit, see [`connection_cap`]).
    pub max_connections: usize,
    /// A request head must arrive within this long of the connection opening or of its previous
    /// answer; an idle connection is closed after it.
    pub header_timeout: Duration,
    /// A request must be read and answered within this long of its head.
    pub body_timeout: Duration,
}

/// The soft open-file limit (RLIMIT_NOFILE) of this process; `None` when unlimited or unknown.
#[cfg(unix)]
pub fn open_file_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct it is given.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0;
    // rlim_t is u64 on Linux and the BSDs but not everywhere.
    #[allow(clippy::unnecessary_cast)]
    let soft = limit.rlim_cur as u64;
    (ok && limit.rlim_cur != libc::RLIM_INFINITY).then_some(soft)
}

#[cfg(not(unix))]
pub fn open_file_limit() -> Option<u64> {
    None
}

/// The connection cap: `requested`, lowered so that connections never take the files a sync needs
/// ([`RESERVED_FILES`]) under the soft open-file limit `open_files`. An error says what to raise.
pub fn connection_cap(requested: u64, open_files: Option<u64>) -> std::result::Result<usize, String> {
    let budget = open_files.map_or(u64::MAX, |limit| limit.saturating_sub(RESERVED_FILES));
    let needed = MIN_CONNECTIONS.min(requested);
    if budget < needed {
        return Err(format!(
            "the open-file limit (RLIMIT_NOFILE) is {}: prenv serve keeps {RESERVED_FILES} files for syncs and needs room for at least {needed} connections; raise the limit (`ulimit -n 1024`, LimitNOFILE= in a systemd unit)",
            open_files.unwrap_or_default()
        ));
    }
    Ok(usize::try_from(requested.min(budget)).unwrap_or(usize::MAX))
}

/// How connections end when the receiver stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Serve,
    /// Finish the request in hand, then close.
    Drain,
    /// Close now: the grace period is over.
    Now,
}

/// One open connection as the pool sees it.
struct Slot {
    /// Since when the connection waits on its client (for a request, or to read our answer);
    /// `None` while a request is being answered.
    waiting_since: Option<Instant>,
    /// Told to close, to make room; it holds its file until its task has ended.
    closing: bool,
    close: Arc<Notify>,
}

/// Every connection whose task is alive, closing ones included: they hold a file until it ends.
#[derive(Default)]
struct Slots {
    next_id: u64,
    open: HashMap<u64, Slot>,
    closing: usize,
}

impl Slots {
    /// The connection that has waited longest on its client and is not closing yet.
    fn longest_waiting(&self) -> Option<u64> {
        self.open
            .iter()
            .filter(|(_, s)| !s.closing)
            .filter_map(|(id, s)| s.waiting_since.map(|since| (since, *id)))
            .min()
            .map(|(_, id)| id)
    }
}

/// The open connections: the cap, and which one gives up its place when a new one needs it.
struct Pool {
    cap: usize,
    slots: Mutex<Slots>,
    /// Woken when a connection ends or starts waiting on its client: the accept loop may go on.
    room: Notify,
    metrics: Arc<Metrics>,
}

impl Pool {
    fn new(cap: usize, metrics: Arc<Metrics>) -> Pool {
        metrics.connections_max.store(cap as u64, Ordering::Relaxed);
        Pool {
            cap,
            slots: Mutex::default(),
            room: Notify::new(),
            metrics,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slots> {
        self.slots.lock().expect("connection pool lock")
    }

    /// True when a new connection would find a place: below the cap, or at it with one that can
    /// be closed and no other closing still (so connections never hold more than cap + 1 files).
    fn has_room(&self) -> bool {
        let slots = self.lock();
        slots.open.len() < self.cap || (slots.closing == 0 && slots.longest_waiting().is_some())
    }

    /// Registers a new connection, at the cap closing the one that has waited longest on its
    /// client. `None` when every connection is busy answering: the new one is turned away.
    fn admit(&self) -> Option<(u64, Arc<Notify>)> {
        let mut slots = self.lock();
        if slots.open.len() >= self.cap && !self.evict(&mut slots) {
            self.metrics.dropped("refused");
            return None;
        }
        slots.next_id += 1;
        let id = slots.next_id;
        let close = Arc::new(Notify::new());
        let slot = Slot {
            waiting_since: Some(Instant::now()),
            closing: false,
            close: close.clone(),
        };
        slots.open.insert(id, slot);
        self.metrics
            .connections_open
            .store(slots.open.len() as u64, Ordering::Relaxed);
        Some((id, close))
    }

    /// Tells the connection that has waited longest on its client to close; false when none waits.
    fn evict(&self, slots: &mut Slots) -> bool {
        let Some(slot) = slots.longest_waiting().and_then(|id| slots.open.get_mut(&id)) else {
            return false;
        };
        slot.closing = true;
        // The permit is kept if the connection's task is not listening at this instant.
        slot.close.notify_one();
        slots.closing += 1;
        self.metrics.dropped("evicted");
        true
    }

    /// Frees a file when accept() ran out of them.
    fn evict_one(&self) {
        let mut slots = self.lock();
        self.evict(&mut slots);
    }

    /// A request arrived; false when the connection is closing to make room.
    fn serving(&self, id: u64) -> bool {
        match self.lock().open.get_mut(&id) {
            Some(slot) if !slot.closing => {
                slot.waiting_since = None;
                true
            }
            _ => false,
        }
    }

    /// The request is answered; the connection waits on its client again.
    fn waiting(&self, id: u64) {
        if let Some(slot) = self.lock().open.get_mut(&id) {
            slot.waiting_since = Some(Instant::now());
        }
        self.room.notify_one();
    }

    /// The connection's task ended and its file is closed.
    fn leave(&self, id: u64) {
        let mut slots = self.lock();
        if slots.open.remove(&id).is_some_and(|s| s.closing) {
            slots.closing -= 1;
        }
        self.metrics
            .connections_open
            .store(slots.open.len() as u64, Ordering::Relaxed);
        drop(slots);
        self.room.notify_one();
    }
}

/// Takes a connection out of the pool however its task ends.
struct Leave(Arc<Pool>, u64);

impl Drop for Leave {
    fn drop(&mut self) {
        self.0.leave(self.1);
    }
}

/// The source of connections: tokio's listener, or a fake that fails like one.
trait Acceptor {
    type Stream;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

impl Acceptor for tokio::net::TcpListener {
    type Stream = tokio::net::TcpStream;

    async fn accept(&self) -> std::io::Result<tokio::net::TcpStream> {
        tokio::net::TcpListener::accept(self).await.map(|(stream, _)| stream)
    }
}

/// The pause after accept() errors: 10 ms doubling to 1 s while they last, reset by a success.
#[derive(Debug, Default)]
struct Pause {
    current: Duration,
    logged: Option<Instant>,
}

impl Pause {
    fn next(&mut self) -> Duration {
        self.current = (self.current * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX);
        self.current
    }
}

/// The peer gave up before its connection was accepted: nothing to wait for.
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// The process (or the system) ran out of files or buffers.
#[cfg(unix)]
fn out_of_files(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(not(unix))]
fn out_of_files(_: &std::io::Error) -> bool {
    false
}

/// The next connection to serve: waits while every connection is busy answering, and rides out
/// accept() errors (see the front door's comment) instead of spinning or giving up.
async fn next_stream<A: Acceptor>(acceptor: &A, pool: &Pool, pause: &mut Pause) -> A::Stream {
    loop {
        loop {
            let room = pool.room.notified();
            if pool.has_room() {
                break;
            }
            room.await;
        }
        match acceptor.accept().await {
            Ok(stream) => {
                pause.current = Duration::ZERO;
                return stream;
            }
            Err(e) if is_connection_error(&e) => {}
            Err(e) => {
                pool.metrics.accept_errors.fetch_add(1, Ordering::Relaxed);
                if out_of_files(&e) {
                    pool.evict_one();
                }
                let wait = pause.next();
                // At most once a second, so that running out of files does not also flood the log.
                if pause.logged.is_none_or(|at| at.elapsed() >= ACCEPT_PAUSE_MAX) {
                    pause.logged = Some(Instant::now());
                    tracing::error!(error = %e, retry_in = ?wait, "accepting a connection failed; closed the longest-waiting connection and pausing");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// An answer that also closes the connection.
fn closing(status: StatusCode, text: &'static str) -> axum::response::Response {
    let mut response = axum::response::IntoResponse::into_response((status, text));
    response.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// The router behind the connection `id`, under the body timeout: a request of a connection told
/// to close is answered 503, one not read and answered in time 408, both closing the connection.
fn answering(
    pool: Arc<Pool>,
    app: axum::Router,
    id: u64,
    body_timeout: Duration,
) -> impl hyper::service::Service<
    hyper::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future + Send,
> {
    let app = TowerToHyperService::new(app);
    hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let pool = pool.clone();
        let answer = hyper::service::Service::call(&app, request);
        async move {
            if !pool.serving(id) {
                return Ok(closing(StatusCode::SERVICE_UNAVAILABLE, "busy, try again\n"));
            }
            let answered = tokio::time::timeout(body_timeout, answer).await;
            pool.waiting(id);
            Ok::<_, Infallible>(match answered {
                Ok(Ok(response)) => response,
                Ok(Err(never)) => match never {},
                Err(_) => {
                    pool.metrics.dropped("body_timeout");
                    closing(StatusCode::REQUEST_TIMEOUT, "request not received in time\n")
                }
            })
        }
    })
}

/// Serves one connection with hyper's HTTP/1 under the limits, until it ends, is closed to make
/// room, or the receiver stops.
fn spawn_connection(
    stream: tokio::net::TcpStream,
    pool: &Arc<Pool>,
    app: &axum::Router,
    limits: Limits,
    mut stop: watch::Receiver<Stop>,
    alive: mpsc::Sender<()>,
) {
    let Some((id, close)) = pool.admit() else {
        return;
    };
    let leave = Leave(pool.clone(), id);
    let service = answering(pool.clone(), app.clone(), id, limits.body_timeout);
    let metrics = pool.metrics.clone();
    tokio::spawn(async move {
        let (_alive, _leave) = (alive, leave);
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_header_size(MAX_HEADER_BYTES);
        let conn = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(conn);
        loop {
            // Biased: the connection writes out an answer before a close request is honoured.
            tokio::select! {
                biased;
                done = conn.as_mut() => {
                    match done {
                        Err(e) if e.is_timeout() => metrics.dropped("header_timeout"),
                        Err(e) => tracing::debug!(error = %e, "connection ended"),
                        Ok(()) => {}
                    }
                    break;
                }
                () = close.notified() => break,
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() == Stop::Now {
                        break;
                    }
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    });
}

/// Serves `app` on `listener` until `signal`; then lets the requests in hand finish (within the
/// header and body timeouts, after which the rest are closed) and returns once every connection is
/// gone, and with them every handle on the work queue.
pub(super) async fn front_door(
    listener: tokio::net::TcpListener,
    app: axum::Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    signal: impl Future<Output = ()>,
) {
    let pool = Arc::new(Pool::new(limits.max_connections, metrics));
    let (stop_tx, stop_rx) = watch::channel(Stop::Serve);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let accepting = async {
        let mut pause = Pause::default();
        loop {
            let stream = next_stream(&listener, &pool, &mut pause).await;
            spawn_connection(stream, &pool, &app, limits, stop_rx.clone(), alive_tx.clone());
        }
    };
    tokio::select! {
        _ = accepting => {}
        () = signal => {}
    }
    drop(listener);
    let _ = stop_tx.send(Stop::Drain);
    drop(alive_tx);
    let grace = limits.header_timeout + limits.body_timeout;
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!(?grace, "closing the connections still open after the grace period");
        let _ = stop_tx.send(Stop::Now);
        let _ = alive_rx.recv().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_fits_the_open_file_limit() {
        // (requested, soft limit, cap or error)
        let table: &[(u64, Option<u64>, Option<usize>)] = &[
            (512, None, Some(512)),
            (512, Some(1024), Some(512)),
            (512, Some(256), Some(192)),
            (100, Some(256), Some(100)),
            (512, Some(72), Some(8)),
            (512, Some(71), None),
            (512, Some(20), None),
            (4, Some(68), Some(4)),
        ];
        for (requested, limit, want) in table {
            let got = connection_cap(*requested, *limit);
            assert_eq!(got.as_ref().ok(), want.as_ref(), "{requested} under {limit:?}: {got:?}");
            if let Err(e) = got {
                assert!(e.contains("RLIMIT_NOFILE") && e.contains("ulimit -n"), "{e}");
            }
        }
    }

    #[test]
    fn the_accept_pause_doubles_to_a_second() {
        let mut pause = Pause::default();
        let steps: Vec<u64> = (0..10).map(|_| pause.next().as_millis() as u64).collect();
        assert_eq!(steps, [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }

    #[test]
    fn a_full_pool_closes_the_connection_that_waited_longest_and_never_one_being_answered() {
        let pool = Pool::new(2, Arc::new(Metrics::default()));
        let (first, close_first) = pool.admit().unwrap();
        let (second, _) = pool.admit().unwrap();
        assert!(pool.serving(second));
        assert!(pool.has_room(), "the first one waits and can make room");
        let (third, _) = pool.admit().unwrap();
        // The first is told to close and holds its file until its task ends: no more room.
        assert!(!pool.has_room());
        assert!(!pool.serving(first), "a closing connection takes no request");
        pool.leave(first);
        assert!(pool.serving(third));
        // Both remaining connections are answering: nothing can be closed, a new one is refused.
        assert!(!pool.has_room());
        assert!(pool.admit().is_none());
        pool.waiting(second);
        assert!(pool.has_room());
        // The close request reached the first connection even though nobody listened then.
        let waker = futures::task::noop_waker();
        let mut cx = std::task::Context::from_waker(&waker);
        let notified = close_first.notified();
        futures::pin_mut!(notified);
        assert!(std::future::Future::poll(notified, &mut cx).is_ready());
        let metrics = pool.metrics.render();
        assert!(
            metrics.contains("prenv_webhook_connections_dropped_total{reason=\"evicted\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains("prenv_webhook_connections_dropped_total{reason=\"refused\"} 1"),
            "{metrics}"
        );
    }

    /// Fails like accept() out of files, `failures` times, then yields a connection.
    struct OutOfFiles {
        failures: usize,
        calls: std::sync::atomic::AtomicUsize,
        error: fn() -> std::io::Error,
    }

    impl Acceptor for OutOfFiles {
        type Stream = usize;

        async fn accept(&self) -> std::io::Result<usize> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            if call < self.failures {
                Err((self.error)())
            } else {
                Ok(call)
            }
        }
    }

    #[tokio::test]
    async fn accept_errors_pause_the_loop_instead_of_spinning_or_ending_it() {
        let pool = Pool::new(4, Arc::new(Metrics::default()));
        let (waiting, _) = pool.admit().unwrap();
        let emfile = OutOfFiles {
            failures: 4,
            calls: 0.into(),
            error: || std::io::Error::from_raw_os_error(libc::EMFILE),
        };
        let mut pause = Pause::default();
        let start = Instant::now();
        assert_eq!(next_stream(&emfile, &pool, &mut pause).await, 4);
        // 10 + 20 + 40 + 80 ms of pauses, and one call per pause: no busy loop.
        assert!(start.elapsed() >= Duration::from_millis(150), "{:?}", start.elapsed());
        assert_eq!(emfile.calls.load(Ordering::Relaxed), 5);
        assert_eq!(pause.current, Duration::ZERO, "a success resets the pause");
        assert!(
            !pool.serving(waiting),
            "running out of files closes the longest-waiting connection"
        );
        assert_eq!(pool.metrics.accept_errors.load(Ordering::Relaxed), 4);

        // A peer that gave up before it was accepted is skipped at once.
        let aborted = OutOfFiles {
            failures: 50,
            calls: 0.into(),
            error: || std::io::ErrorKind::ConnectionAborted.into(),
        };
        let start = Instant::now();
        assert_eq!(next_stream(&aborted, &pool, &mut pause).await, 50);
        assert!(start.elapsed() < Duration::from_millis(100), "{:?}", start.elapsed());
        assert_eq!(pool.metrics.accept_errors.load(Ordering::Relaxed), 4);
    }
}
