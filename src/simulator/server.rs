//! TLS listeners and per-connection handling (GOAWAY, reset and black-hole faults live
//! here); each request is read, handed to its side's endpoint, recorded and answered.
//!
//! GOAWAY: the APNs side sends what Apple sends, one GOAWAY naming the last stream it
//! processes with `{"reason":"Shutdown"}` as debug data; later streams are never processed,
//! and the connection closes once the processed ones are answered. The FCM side keeps
//! hyper's graceful shutdown (GOAWAY, PING, final GOAWAY).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use super::exchange::{json_response, Received, Reply};
use super::record::RecordedRequest;
use super::state::State;
use super::tap::{Tap, TapControl};
use crate::push::apns::wire::reason;

/// Requests larger than this are not provider requests; refuse to buffer them.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// After an APNs GOAWAY, how long the answers of the last processed streams get to leave
/// before the connection closes.
const GOAWAY_LINGER: Duration = Duration::from_millis(200);

/// Which simulated provider a listener serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Service {
    Apns,
    Fcm,
}

/// Per-connection controls shared with the request handlers.
struct Conn {
    id: u64,
    streams: AtomicU64,
    kill: Notify,
    goaway: Notify,
    tap: Arc<TapControl>,
    /// After an APNs GOAWAY: the count of streams it covers; later ones are ignored.
    last_processed: AtomicU64,
    /// Streams being answered (for closing after an APNs GOAWAY).
    answering: AtomicU64,
    /// The streams an APNs GOAWAY covers are answered.
    answered: Notify,
}

/// What becomes of one stream, decided in the order the client opened them.
enum Admission {
    Serve,
    /// Never answered: the connection went silent, or the stream came after GOAWAY.
    Ignore,
}

/// Counts a stream being answered; the last one after an APNs GOAWAY lets the connection close.
struct Answering(Arc<Conn>);

impl Answering {
    fn new(conn: Arc<Conn>) -> Self {
        conn.answering.fetch_add(1, Ordering::Relaxed);
        Self(conn)
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        let left = self.0.answering.fetch_sub(1, Ordering::Relaxed) - 1;
        if left == 0 && self.0.last_processed.load(Ordering::Relaxed) > 0 {
            self.0.answered.notify_one();
        }
    }
}

/// Accepts connections until `stop` fires (or its sender is dropped).
pub(super) async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    service: Service,
    state: Arc<State>,
    ids: Arc<AtomicU64>,
    max_streams: u32,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let tcp = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((tcp, _)) => tcp,
                Err(e) => {
                    tracing::warn!(error = %e, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => break,
        };
        tokio::spawn(connection(
            tcp,
            acceptor.clone(),
            service,
            state.clone(),
            ids.clone(),
            max_streams,
            stop.clone(),
        ));
    }
}

async fn connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    service: Service,
    state: Arc<State>,
    ids: Arc<AtomicU64>,
    max_streams: u32,
    mut stop: watch::Receiver<bool>,
) {
    let _ = tcp.set_nodelay(true);
    let tls = match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "simulator TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let conn = Arc::new(Conn {
        id: ids.fetch_add(1, Ordering::Relaxed),
        streams: AtomicU64::new(0),
        kill: Notify::new(),
        goaway: Notify::new(),
        tap: Arc::new(TapControl::default()),
        last_processed: AtomicU64::new(0),
        answering: AtomicU64::new(0),
        answered: Notify::new(),
    });
    state.connection_accepted();
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| {
            // hyper calls this in the order the streams were opened; the handlers then run
            // as separate tasks in any order, so stream faults are decided here.
            let admission = admit(service, &state, &conn);
            let answering =
                matches!(admission, Admission::Serve).then(|| Answering::new(conn.clone()));
            handle(
                service,
                state.clone(),
                conn.clone(),
                admission,
                answering,
                req,
            )
        })
    };
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder
        .http2()
        .max_concurrent_streams(max_streams)
        .timer(TokioTimer::new());
    // APNs is HTTP/2 only; FCM, like Google's front end, also answers HTTP/1.1.
    let builder = match service {
        Service::Apns => builder.http2_only(),
        Service::Fcm => builder,
    };
    let serving = builder.serve_connection(TokioIo::new(Tap::new(tls, conn.tap.clone())), svc);
    tokio::pin!(serving);
    let mut draining = false;
    let mut closing_at: Option<Instant> = None;
    loop {
        let linger = tokio::time::sleep_until(closing_at.unwrap_or_else(Instant::now));
        tokio::select! {
            result = serving.as_mut() => {
                if let Err(e) = result {
                    tracing::debug!(conn = conn.id, error = %e, "simulator connection ended with an error");
                }
                break;
            }
            // Dropping the connection closes the socket mid-request.
            () = conn.kill.notified() => break,
            () = conn.goaway.notified(), if !draining => {
                draining = true;
                serving.as_mut().graceful_shutdown();
            }
            () = conn.answered.notified(), if closing_at.is_none() => {
                closing_at = Some(Instant::now() + GOAWAY_LINGER);
            }
            () = linger, if closing_at.is_some() => break,
            _ = stop.changed() => break,
        }
    }
}

/// Applies the connection-level faults to the next stream the client opened.
fn admit(service: Service, state: &State, conn: &Conn) -> Admission {
    let n = conn.streams.fetch_add(1, Ordering::Relaxed) + 1;
    let faults = state.faults();
    if faults
        .blackhole_after_streams
        .is_some_and(|after| n > after)
    {
        conn.tap.silence();
        return Admission::Ignore;
    }
    let last = conn.last_processed.load(Ordering::Relaxed);
    if last > 0 && n > last {
        // Beyond the GOAWAY's last stream id: the client resends it elsewhere.
        return Admission::Ignore;
    }
    if faults.goaway_after_streams == Some(n) {
        // This stream is still answered; later ones go to a new connection.
        match (service, conn.tap.stream_id(n)) {
            (Service::Apns, Some(stream_id)) => {
                let data = serde_json::json!({ "reason": reason::SHUTDOWN }).to_string();
                conn.tap.go_away(stream_id, data.as_bytes());
                conn.last_processed.store(n, Ordering::Relaxed);
            }
            _ => conn.goaway.notify_one(),
        }
    }
    Admission::Serve
}

async fn handle(
    service: Service,
    state: Arc<State>,
    conn: Arc<Conn>,
    admission: Admission,
    _answering: Option<Answering>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if let Admission::Ignore = admission {
        // Not recorded: it never reached the provider. The connection task drops this future.
        return std::future::pending().await;
    }
    let (parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| parts.uri.path().to_string());
    let body = match Limited::new(body, MAX_REQUEST_BYTES).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Ok(json_response(
                StatusCode::PAYLOAD_TOO_LARGE,
                &serde_json::json!({ "reason": reason::PAYLOAD_TOO_LARGE }),
            ))
        }
    };
    let received = Received {
        method: parts.method,
        path,
        version: format!("{:?}", parts.version),
        headers: parts.headers,
        body,
    };
    let handled = match service {
        Service::Apns => super::apns::handle(&state, &received).await,
        Service::Fcm => super::fcm::handle(&state, &received).await,
    };
    let status = match &handled.reply {
        Reply::Respond(response) => response.status().as_u16(),
        Reply::Reset => 0,
    };
    state.record(RecordedRequest {
        side: handled.side,
        method: received.method.to_string(),
        path: received.path.clone(),
        version: received.version.clone(),
        headers: recorded_headers(&received.headers),
        body: handled.body,
        token: handled.token,
        status,
        connection_id: conn.id,
    });
    match handled.reply {
        Reply::Respond(response) => Ok(response),
        Reply::Reset => {
            conn.kill.notify_one();
            // The connection task drops this future along with the connection.
            std::future::pending().await
        }
    }
}

fn recorded_headers(headers: &HeaderMap) -> BTreeMap<String, String> {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            name == "authorization" || name == "content-type" || name.starts_with("apns-")
        })
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}
