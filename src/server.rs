//! The API listener: binding with a backlog, the one accept loop for plain HTTP and TLS, and the
//! connection policy: how many connections, how long a request head, a body or an idle
//! keep-alive may take, and how connections drain on shutdown.
//!
//! hyper's own `header_read_timeout` is not used: its clock also runs while an HTTP/1
//! connection waits idle between requests, so it cannot tell "slow head" from "idle keep-alive",
//! and HTTP/2 has no idle timeout at all. Instead each connection has a watchdog that knows
//! which phase the connection is in (see [`Phase`]) and which deadline applies.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use anyhow::Context as _;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt;

use crate::config::Config;

/// Limits and timeouts of the API listener (`[http]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    /// A request head (and a TLS handshake) must arrive within this many seconds of the
    /// connection opening or of the first byte of the next request.
    pub header_read_timeout_secs: u64,
    /// A request body must arrive in full within this many seconds of its head.
    pub body_read_timeout_secs: u64,
    /// A connection with no request in progress is closed after this many seconds.
    pub keepalive_idle_secs: u64,
    /// Open connections per instance; further ones are accepted and closed at once.
    pub max_connections: usize,
    /// Length of the kernel's queue of connections not yet accepted.
    pub listen_backlog: u32,
    /// Request URIs longer than this are answered 414.
    pub max_uri_bytes: usize,
    /// Request headers larger than this in total are answered 431.
    pub max_header_bytes: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 10,
            body_read_timeout_secs: 30,
            keepalive_idle_secs: 60,
            max_connections: 10_000,
            listen_backlog: 1024,
            max_uri_bytes: 8 * 1024,
            max_header_bytes: 16 * 1024,
        }
    }
}

/// hyper refuses longer request targets itself (with an empty 414), so ours must be below it.
const HYPER_MAX_URI_BYTES: usize = u16::MAX as usize - 1;

impl HttpConfig {
    /// Checks the values; the error names the field as `http.<name>: <why>`.
    pub fn validate(&self) -> Result<(), String> {
        for (field, value) in [
            ("header_read_timeout_secs", self.header_read_timeout_secs),
            ("body_read_timeout_secs", self.body_read_timeout_secs),
            ("keepalive_idle_secs", self.keepalive_idle_secs),
            ("max_connections", self.max_connections as u64),
            ("listen_backlog", u64::from(self.listen_backlog)),
        ] {
            if value == 0 {
                return Err(format!("http.{field}: must be at least 1"));
            }
        }
        if !(256..=HYPER_MAX_URI_BYTES).contains(&self.max_uri_bytes) {
            return Err(format!(
                "http.max_uri_bytes: must be between 256 and {HYPER_MAX_URI_BYTES}"
            ));
        }
        if !(1024..=1024 * 1024).contains(&self.max_header_bytes) {
            return Err("http.max_header_bytes: must be between 1024 and 1048576".into());
        }
        Ok(())
    }

    /// What the HTTP layer buffers at most for one request head before it cuts the connection
    /// off with an empty 431. Generous above our own limits, so that our JSON 414 and 431
    /// answer everything short of abuse, yet bounded, since every connection may hold this much.
    fn hard_head_bytes(&self) -> usize {
        (4 * (self.max_uri_bytes + self.max_header_bytes)).max(8 * 1024)
    }
}

/// Binds the configured API address with the configured backlog (the CLI's `serve` uses it;
/// tests bind port 0 themselves).
pub fn bind(config: &Config) -> anyhow::Result<TcpListener> {
    let addr = config.listen;
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating the listening socket")?;
    // As std and tokio do: a restarted bridge can bind while old connections linger.
    #[cfg(unix)]
    socket.set_reuseaddr(true)?;
    socket
        .bind(addr)
        .with_context(|| format!("binding {addr}"))?;
    // The kernel caps the backlog at net.core.somaxconn.
    socket
        .listen(config.http.listen_backlog)
        .with_context(|| format!("listening on {addr}"))
}

/// Descriptors kept for everything but client connections: database, provider pools, files.
const RESERVED_FDS: u64 = 256;

/// The connection cap: `http.max_connections`, raising the soft open-files limit as far as it
/// needs (never above the hard limit), and clamped below the limit when that is not enough.
/// Past the limit, `accept` fails with EMFILE and new clients hang in the backlog.
pub fn connection_cap(config: &Config) -> usize {
    let wanted = config.http.max_connections as u64;
    let Some(limit) = fd_limit::raise_to(wanted + RESERVED_FDS) else {
        return config.http.max_connections;
    };
    if limit >= wanted + RESERVED_FDS {
        return config.http.max_connections;
    }
    let cap = limit.saturating_sub(RESERVED_FDS).max(1);
    tracing::warn!(
        max_connections = wanted,
        open_files_limit = limit,
        clamped_to = cap,
        "http.max_connections does not fit the open-files limit (ulimit -n); clamped"
    );
    usize::try_from(cap).unwrap_or(config.http.max_connections)
}

#[cfg(unix)]
mod fd_limit {
    /// Raises the soft RLIMIT_NOFILE to `wanted` (or the hard limit) if it is lower; returns
    /// the soft limit in force afterwards, or None when it cannot be read. (`rlim_t` is u64 on
    /// the 64-bit targets we build for.)
    pub fn raise_to(wanted: u64) -> Option<u64> {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct we pass, which lives for the call.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            return None;
        }
        let current = limit.rlim_cur;
        if current >= wanted || limit.rlim_cur == libc::RLIM_INFINITY {
            return Some(current.max(wanted));
        }
        let raised = libc::rlimit {
            rlim_cur: wanted.min(limit.rlim_max),
            rlim_max: limit.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Some(current);
        }
        tracing::info!(
            from = current,
            to = raised.rlim_cur,
            "raised the open-files limit"
        );
        Some(raised.rlim_cur)
    }
}

#[cfg(not(unix))]
mod fd_limit {
    pub fn raise_to(_wanted: u64) -> Option<u64> {
        None
    }
}

/// Everything a connection task needs to apply the policy.
struct Policy {
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    body_read_timeout: Duration,
}

impl Policy {
    fn new(config: &HttpConfig) -> Self {
        let hard = config.hard_head_bytes();
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().header_read_timeout(None).max_buf_size(hard);
        builder
            .http2()
            .max_header_list_size(u32::try_from(hard).unwrap_or(u32::MAX));
        Self {
            builder,
            timeouts: Timeouts {
                head: Duration::from_secs(config.header_read_timeout_secs),
                idle: Duration::from_secs(config.keepalive_idle_secs),
            },
            body_read_timeout: Duration::from_secs(config.body_read_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, then
/// stops accepting and waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    config: &Config,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let policy = Arc::new(Policy::new(&config.http));
    let permits = Arc::new(Semaphore::new(connection_cap(config)));
    let mut connections = JoinSet::new();
    let mut refusals = Refusals::default();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    accept_failed(&e).await;
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        // Over the cap, close at once: a client (or its load balancer) learns right away
        // and can go elsewhere, and answering with a 503 would mean reading the request (and
        // for TLS, a handshake) with resources we do not have.
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            refusals.note();
            drop(tcp);
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let (app, policy, stop, tls) = (app.clone(), policy.clone(), stop.clone(), tls.clone());
        connections.spawn(async move {
            let _permit = permit;
            match tls {
                None => serve_connection(tcp, peer, app, &policy, stop).await,
                Some(acceptor) => {
                    let handshake = acceptor.accept(tcp);
                    match tokio::time::timeout(policy.timeouts.head, handshake).await {
                        Ok(Ok(stream)) => serve_connection(stream, peer, app, &policy, stop).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
        while connections.try_join_next().is_some() {}
    }
    // Closing the listener now makes new clients fail fast instead of queueing.
    drop(listener);
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Resolves once `stop` turns true (or its sender is gone).
async fn stopped(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send; drop it here.
    let _ = stop.wait_for(|s| *s).await;
}

/// Connection errors (a peer that reset before we accepted) are the peer's business; anything
/// else (EMFILE, ENOBUFS) would spin the loop, so back off briefly.
async fn accept_failed(e: &std::io::Error) {
    use std::io::ErrorKind::*;
    if matches!(
        e.kind(),
        ConnectionAborted | ConnectionReset | ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Connections refused over the cap, logged at most every ten seconds (a flood must not flood
/// the log too).
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn note(&mut self) {
        self.since_log += 1;
        let now = Instant::now();
        if self
            .last_log
            .is_none_or(|at| now - at >= Duration::from_secs(10))
        {
            tracing::warn!(
                refused = self.since_log,
                "connection limit (http.max_connections) reached; closing new connections"
            );
            self.since_log = 0;
            self.last_log = Some(now);
        }
    }
}

/// Serves one connection under the watchdog until it ends, times out or has drained.
async fn serve_connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    policy: &Policy,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new(Instant::now()));
    let watched = TokioIo::new(Watched {
        inner: io,
        activity: activity.clone(),
    });
    let body_timeout = policy.body_read_timeout;
    let tracked = activity.clone();
    let service = hyper::service::service_fn(move |request| {
        handle(request, peer, app.clone(), tracked.clone(), body_timeout)
    });
    let conn = policy.builder.serve_connection(watched, service);
    tokio::pin!(conn);
    let mut closing: Option<Instant> = None;
    loop {
        let next = next_deadline(activity.phase(), closing, &policy.timeouts);
        let sleep = async {
            match next {
                Some((at, _)) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = conn.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            () = stopped(&mut stop), if closing.is_none() => {
                conn.as_mut().graceful_shutdown();
                closing = Some(Instant::now());
            }
            () = activity.changed.notified() => {}
            () = sleep => match next {
                Some((_, Expiry::GoAway)) => {
                    tracing::debug!(%peer, "idle connection closed");
                    conn.as_mut().graceful_shutdown();
                    closing = Some(Instant::now());
                }
                Some((_, Expiry::Drop)) => {
                    tracing::debug!(%peer, "connection timed out");
                    return;
                }
                None => {}
            }
        }
    }
}

/// One request: the peer address for handlers, the body deadline, and in-flight tracking.
async fn handle(
    request: hyper::Request<Incoming>,
    peer: SocketAddr,
    app: Router,
    activity: Arc<Activity>,
    body_timeout: Duration,
) -> Result<axum::response::Response, Infallible> {
    let in_flight = InFlight::start(activity);
    let (mut parts, body) = request.into_parts();
    parts.extensions.insert(ConnectInfo(peer));
    let body = Body::new(DeadlineBody::new(Body::new(body), body_timeout));
    let response = app.oneshot(http::Request::from_parts(parts, body)).await?;
    Ok(response.map(|body| {
        Body::new(Tracked {
            body,
            _in_flight: in_flight,
        })
    }))
}

/// Where a connection is in its request cycle; each phase has its own deadline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// Waiting for a request head since this instant (the connection opened, or the first
    /// byte of the next request arrived).
    Head(Instant),
    /// This many requests are being served; no deadline (body deadlines are per request).
    Busy(usize),
    /// No request in progress since this instant.
    Idle(Instant),
}

/// What to do when a deadline passes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expiry {
    /// Close politely: HTTP/1 closes at once when idle, HTTP/2 sends GOAWAY first.
    GoAway,
    /// Close the socket now.
    Drop,
}

#[derive(Clone, Copy, Debug)]
struct Timeouts {
    head: Duration,
    idle: Duration,
}

/// The next deadline of a connection in `phase`, `closing` since the given instant (after
/// shutdown or an idle timeout). A closing connection gets a head timeout's worth of time for
/// its goodbye once no request is left.
fn next_deadline(
    phase: Phase,
    closing: Option<Instant>,
    timeouts: &Timeouts,
) -> Option<(Instant, Expiry)> {
    match (phase, closing) {
        (Phase::Head(since), _) => Some((since + timeouts.head, Expiry::Drop)),
        (Phase::Busy(_), _) => None,
        (Phase::Idle(since), None) => Some((since + timeouts.idle, Expiry::GoAway)),
        (Phase::Idle(since), Some(closed)) => {
            Some((since.max(closed) + timeouts.head, Expiry::Drop))
        }
    }
}

/// The HTTP/2 connection preface; a connection starting with anything else is HTTP/1.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// This many bytes of the HTTP/2 preface matched so far.
    Sniffing(usize),
    Http1,
    Http2,
}

/// The phase of one connection, shared by its reads, its requests and its watchdog.
struct Activity {
    state: Mutex<(Phase, Protocol)>,
    /// Wakes the watchdog when the phase changes, so it re-arms its deadline.
    changed: Notify,
}

impl Activity {
    fn new(now: Instant) -> Self {
        Self {
            state: Mutex::new((Phase::Head(now), Protocol::Sniffing(0))),
            changed: Notify::new(),
        }
    }

    fn phase(&self) -> Phase {
        self.lock().0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Phase, Protocol)> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn set(&self, state: &mut (Phase, Protocol), phase: Phase) {
        if state.0 != phase {
            state.0 = phase;
            self.changed.notify_one();
        }
    }

    /// Bytes arrived. On HTTP/1, the first byte after an idle spell starts a request head;
    /// HTTP/2 frames between requests (PING, SETTINGS) do not.
    fn on_read(&self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        let mut state = self.lock();
        if let Protocol::Sniffing(seen) = state.1 {
            let end = (seen + bytes.len()).min(H2_PREFACE.len());
            let matched = H2_PREFACE[seen..end] == bytes[..end - seen];
            state.1 = match (matched, end == H2_PREFACE.len()) {
                (false, _) => Protocol::Http1,
                (true, true) => Protocol::Http2,
                (true, false) => Protocol::Sniffing(end),
            };
            if state.1 == Protocol::Http2 && matches!(state.0, Phase::Head(_)) {
                self.set(&mut state, Phase::Idle(Instant::now()));
            }
        }
        if state.1 == Protocol::Http1 && matches!(state.0, Phase::Idle(_)) {
            self.set(&mut state, Phase::Head(Instant::now()));
        }
    }

    fn request_started(&self) {
        let mut state = self.lock();
        let busy = match state.0 {
            Phase::Busy(n) => n + 1,
            _ => 1,
        };
        self.set(&mut state, Phase::Busy(busy));
    }

    fn request_ended(&self) {
        let mut state = self.lock();
        let phase = match state.0 {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle(Instant::now()),
        };
        self.set(&mut state, phase);
    }
}

/// A request in progress, from its head until its response body is done or dropped.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn start(activity: Arc<Activity>) -> Self {
        activity.request_started();
        Self(activity)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_ended();
    }
}

/// A response body that keeps its request counted as in flight until it is sent.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The error of a request body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("request body not received within {} s", .0.as_secs())]
pub struct BodyTimeout(pub Duration);

/// A request body that fails with [`BodyTimeout`] once its deadline passes: a total, not a
/// per-chunk, timeout, so a body trickled a byte at a time cannot hold a connection.
struct DeadlineBody {
    body: Body,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
}

impl DeadlineBody {
    fn new(body: Body, timeout: Duration) -> Self {
        Self {
            body,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
        }
    }
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::BoxError>>> {
        let this = self.get_mut();
        if let Poll::Ready(frame) = Pin::new(&mut this.body).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyTimeout(this.timeout).into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A connection's socket, reporting what it reads to the connection's [`Activity`].
struct Watched<I> {
    inner: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = result {
            this.activity.on_read(&buf.filled()[before..]);
        }
        result
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timeouts() -> Timeouts {
        Timeouts {
            head: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }

    #[test]
    fn each_phase_has_its_deadline() {
        let t0 = Instant::now();
        let t = timeouts();
        assert_eq!(
            next_deadline(Phase::Head(t0), None, &t),
            Some((t0 + t.head, Expiry::Drop))
        );
        assert_eq!(next_deadline(Phase::Busy(2), None, &t), None);
        assert_eq!(
            next_deadline(Phase::Idle(t0), None, &t),
            Some((t0 + t.idle, Expiry::GoAway))
        );
        // Closing and idle: a head timeout for the goodbye, counted from the later of both.
        let later = t0 + Duration::from_secs(3);
        assert_eq!(
            next_deadline(Phase::Idle(t0), Some(later), &t),
            Some((later + t.head, Expiry::Drop))
        );
        // Closing while busy: in-flight requests finish first.
        assert_eq!(next_deadline(Phase::Busy(1), Some(later), &t), None);
    }

    #[tokio::test]
    async fn reads_move_an_http1_connection_between_idle_and_head() {
        let a = Activity::new(Instant::now());
        a.on_read(b"GET / HT");
        assert!(matches!(a.phase(), Phase::Head(_)));
        a.request_started();
        a.request_started();
        a.request_ended();
        assert_eq!(a.phase(), Phase::Busy(1));
        a.request_ended();
        assert!(matches!(a.phase(), Phase::Idle(_)));
        a.on_read(b"G");
        assert!(matches!(a.phase(), Phase::Head(_)), "next request's head");
    }

    #[tokio::test]
    async fn http2_is_recognised_across_split_reads_and_frames_do_not_start_a_head() {
        let a = Activity::new(Instant::now());
        a.on_read(&H2_PREFACE[..3]);
        assert!(matches!(a.phase(), Phase::Head(_)), "not known yet");
        a.on_read(&H2_PREFACE[3..]);
        assert!(matches!(a.phase(), Phase::Idle(_)), "preface seen: idle");
        a.on_read(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00ping....");
        assert!(matches!(a.phase(), Phase::Idle(_)), "a PING is not a head");
    }

    #[test]
    fn limits_are_validated_with_their_field() {
        let bad = HttpConfig {
            max_uri_bytes: 70_000,
            ..HttpConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("too long")
            .starts_with("http.max_uri_bytes"));
        let bad = HttpConfig {
            keepalive_idle_secs: 0,
            ..HttpConfig::default()
        };
        assert!(bad
            .validate()
            .expect_err("zero")
            .starts_with("http.keepalive_idle_secs"));
        assert!(HttpConfig::default().validate().is_ok());
        assert!(HttpConfig::default().hard_head_bytes() > HttpConfig::default().max_header_bytes);
    }
}
