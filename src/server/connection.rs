//! One connection of the API listener under its watchdog: which phase it is in (request head,
//! requests in flight, idle), the deadline of each phase, the total deadline of a request body,
//! and a graceful close on shutdown or when idle.
//!
//! hyper's own `header_read_timeout` is not used: its clock also runs while an HTTP/1
//! connection waits idle between requests, so it cannot tell "slow head" from "idle keep-alive",
//! and HTTP/2 has no idle timeout at all. The watchdog knows the phase (see [`Phase`]) and so
//! which deadline applies.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Sleep};
use tower::ServiceExt;

use super::{stopped, HttpConfig};

/// Everything a connection task needs to apply the policy.
pub(super) struct Policy {
    builder: auto::Builder<TokioExecutor>,
    timeouts: Timeouts,
    body_read_timeout: Duration,
}

impl Policy {
    pub(super) fn new(config: &HttpConfig) -> Self {
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

    /// How long a TLS handshake, and then each request head, may take.
    pub(super) fn head_timeout(&self) -> Duration {
        self.timeouts.head
    }
}

/// Serves one connection under the watchdog until it ends, times out or has drained.
pub(super) async fn serve_connection<I>(
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
}
