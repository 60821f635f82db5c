//! TLS listeners and per-connection handling (GOAWAY and reset faults live here); each
//! request is read, handed to its side's endpoint, recorded and answered.

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
use tokio_rustls::TlsAcceptor;

use super::exchange::{json_response, Received, Reply};
use super::record::RecordedRequest;
use super::state::State;
use crate::push::apns::wire::reason;

/// Requests larger than this are not provider requests; refuse to buffer them.
const MAX_REQUEST_BYTES: usize = 1024 * 1024;
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    });
    state.connection_accepted();
    let svc = {
        let conn = conn.clone();
        hyper::service::service_fn(move |req| handle(service, state.clone(), conn.clone(), req))
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
    let serving = builder.serve_connection(TokioIo::new(tls), svc);
    tokio::pin!(serving);
    let mut draining = false;
    loop {
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
            _ = stop.changed() => break,
        }
    }
}

async fn handle(
    service: Service,
    state: Arc<State>,
    conn: Arc<Conn>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let streams = conn.streams.fetch_add(1, Ordering::Relaxed) + 1;
    if state.faults().goaway_after_streams == Some(streams) {
        // This stream is still answered; later ones go to a new connection.
        conn.goaway.notify_one();
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
