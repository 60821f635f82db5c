//! The HTTP client the OTLP exporter posts spans with: HTTP/1.1 over hyper, with rustls for
//! an https collector, one connection per export (a batch every few seconds at most).
//!
//! The exporter's batch processor runs on a thread of its own, outside the async runtime,
//! so each request is spawned onto the runtime and awaited from there. The collector is the
//! operator's own address, so unlike event endpoints it passes no address guard.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::rt::TokioIo;
use opentelemetry_http::{HttpClient, HttpError};
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The most of a collector's answer read (it is a small protobuf message).
const ANSWER_LIMIT: usize = 64 * 1024;

/// Posts export requests to the collector on the bridge's runtime.
#[derive(Clone)]
pub(super) struct CollectorClient {
    runtime: tokio::runtime::Handle,
    tls: TlsConnector,
    timeout: Duration,
}

impl std::fmt::Debug for CollectorClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollectorClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl CollectorClient {
    /// A client trusting the web PKI roots and `extra_root_certs`.
    pub(super) fn new(
        runtime: tokio::runtime::Handle,
        extra_root_certs: &[std::path::PathBuf],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let config =
            crate::tls::client_config_offering(extra_root_certs, &[crate::tls::ALPN_HTTP1])?;
        Ok(Self {
            runtime,
            tls: TlsConnector::from(config),
            timeout,
        })
    }
}

#[async_trait::async_trait]
impl HttpClient for CollectorClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let (tls, timeout) = (self.tls.clone(), self.timeout);
        let exchange = async move {
            match tokio::time::timeout(timeout, post(tls, request)).await {
                Ok(answer) => answer,
                Err(_) => Err(format!("no answer within {} ms", timeout.as_millis()).into()),
            }
        };
        self.runtime.spawn(exchange).await?
    }
}

/// One request over a new connection to the request's host.
async fn post(tls: TlsConnector, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
    let uri = request.uri().clone();
    let host = uri.host().ok_or("the collector URL has no host")?;
    let secure = uri.scheme_str() == Some("https");
    let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
    let bare_host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let tcp = tokio::net::TcpStream::connect((bare_host.as_str(), port)).await?;
    let _ = tcp.set_nodelay(true);
    let (mut parts, body) = request.into_parts();
    let authority = uri.authority().map(|a| a.as_str().to_string());
    parts.uri = uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()?;
    if let Some(authority) = authority {
        parts.headers.insert(http::header::HOST, authority.parse()?);
    }
    let request = Request::from_parts(parts, Full::new(body));
    if secure {
        let name = ServerName::try_from(bare_host)?;
        let stream = tls.connect(name, tcp).await?;
        exchange(TokioIo::new(stream), request).await
    } else {
        exchange(TokioIo::new(tcp), request).await
    }
}

async fn exchange<IO>(io: IO, request: Request<Full<Bytes>>) -> Result<Response<Bytes>, HttpError>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    // The connection task ends when the answer is read or the sender is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = Limited::new(body, ANSWER_LIMIT).collect().await?.to_bytes();
    Ok(Response::from_parts(parts, body))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn certs() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("certs")
    }

    /// Answers one request on `stream` with 200 and gives back its head and body.
    async fn answer_one<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
        mut stream: S,
    ) -> (String, Vec<u8>) {
        let mut read = Vec::new();
        let mut buf = [0u8; 4096];
        let (head, body) = loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "the request ended early");
            read.extend_from_slice(&buf[..n]);
            let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = String::from_utf8_lossy(&read[..end]).to_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(0);
            if read.len() >= end + 4 + length {
                break (head, read[end + 4..end + 4 + length].to_vec());
            }
        };
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            .await
            .expect("write");
        (head, body)
    }

    fn export_request(url: &str) -> Request<Bytes> {
        Request::post(url)
            .header("content-type", "application/x-protobuf")
            .body(Bytes::from_static(b"\x0a\x00spans"))
            .expect("request")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn posts_to_http_and_https_collectors_from_outside_the_runtime() {
        let ca = [certs().join("ca.pem")];
        let client = CollectorClient::new(
            tokio::runtime::Handle::current(),
            &ca,
            Duration::from_secs(5),
        )
        .expect("client");
        let acceptor = crate::tls::server_acceptor(
            &certs().join("server.pem"),
            &certs().join("server.key"),
            &[crate::tls::ALPN_HTTP1],
        )
        .expect("acceptor");
        for secure in [false, true] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            let port = listener.local_addr().expect("addr").port();
            let acceptor = acceptor.clone();
            let server = tokio::spawn(async move {
                let (tcp, _) = listener.accept().await.expect("accept");
                if secure {
                    answer_one(acceptor.accept(tcp).await.expect("TLS")).await
                } else {
                    answer_one(tcp).await
                }
            });
            let (scheme, host) = if secure {
                ("https", "localhost")
            } else {
                ("http", "127.0.0.1")
            };
            let url = format!("{scheme}://{host}:{port}/v1/traces");
            // As the exporter's batch thread does: no runtime of its own with IO or timers.
            let sender = client.clone();
            let response = std::thread::spawn(move || {
                let bare = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .expect("runtime");
                bare.block_on(sender.send_bytes(export_request(&url)))
            })
            .join()
            .expect("thread")
            .expect("answered");
            assert_eq!(response.status(), 200);
            assert_eq!(response.body().as_ref(), b"ok");
            let (head, body) = server.await.expect("server");
            assert!(head.starts_with("post /v1/traces http/1.1"), "{head}");
            assert!(
                head.contains("content-type: application/x-protobuf"),
                "{head}"
            );
            assert!(
                head.contains(&format!("\r\nhost: {host}:{port}\r\n")),
                "{head}"
            );
            assert_eq!(body, b"\x0a\x00spans");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_collector_that_does_not_answer_fails_the_export_in_time() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        // Accepts and then says nothing.
        let _silent = tokio::spawn(async move {
            let kept = listener.accept().await;
            tokio::time::sleep(Duration::from_secs(30)).await;
            drop(kept);
        });
        let client = CollectorClient::new(
            tokio::runtime::Handle::current(),
            &[],
            Duration::from_millis(200),
        )
        .expect("client");
        let url = format!("http://127.0.0.1:{port}/v1/traces");
        let err = client
            .send_bytes(export_request(&url))
            .await
            .expect_err("no answer");
        assert!(err.to_string().contains("no answer within 200 ms"), "{err}");
    }
}
