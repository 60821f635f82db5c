//! The API listener's connection policy, seen from raw TCP and TLS clients: slow or idle
//! connections are closed, the connection cap answers the excess at once, oversized bodies are
//! refused before they are sent, the backlog holds a burst, and stopping lets in-flight
//! requests finish.

use std::time::{Duration, Instant};

use crate::harness::wire::{
    connect, error_code, read_response, read_until_closed, tls_connect, PROMPTLY,
};
use crate::harness::{apns_token, certs_dir, Db, TestApp};
use pushbridge::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

async fn get_healthz<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) -> u16 {
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await
        .expect("write");
    read_response(stream).await.0
}

fn short_timeouts(c: &mut Config) {
    c.worker.enabled = false;
    c.http.header_read_timeout_secs = 1;
    c.http.body_read_timeout_secs = 1;
    c.http.keepalive_idle_secs = 1;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_after_the_header_timeout() {
    let t = TestApp::spawn_with(Db::Sqlite, short_timeouts).await;
    let mut idle = connect(&t).await;
    let (_, after) = read_until_closed(&mut idle, PROMPTLY)
        .await
        .expect("a silent connection is closed");
    assert!(after >= Duration::from_millis(800), "not before: {after:?}");
    t.shutdown().await;
}

#[tokio::test]
async fn headers_trickled_a_line_at_a_time_are_cut_off() {
    let t = TestApp::spawn_with(Db::Sqlite, short_timeouts).await;
    let stream = connect(&t).await;
    let (mut reader, mut writer) = stream.into_split();
    let trickle = tokio::spawn(async move {
        let _ = writer.write_all(b"GET /healthz HTTP/1.1\r\n").await;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let closed = read_until_closed(&mut reader, PROMPTLY).await;
    trickle.abort();
    let (answer, _) = closed.expect("a trickled head is cut off while still arriving");
    assert!(answer.is_empty(), "no answer to half a head");
    t.shutdown().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let t = TestApp::spawn_with(Db::Sqlite, |c| {
        c.worker.enabled = false;
        c.http.header_read_timeout_secs = 30;
        c.http.keepalive_idle_secs = 1;
    })
    .await;
    let mut conn = connect(&t).await;
    assert_eq!(get_healthz(&mut conn).await, 200);
    let (_, after) = read_until_closed(&mut conn, PROMPTLY)
        .await
        .expect("an idle keep-alive connection is closed");
    assert!(
        after < Duration::from_secs(8),
        "by the idle timeout, not the 30 s header timeout: {after:?}"
    );
    t.shutdown().await;
}

#[tokio::test]
async fn keep_alive_lasts_longer_than_the_header_timeout() {
    let t = TestApp::spawn_with(Db::Sqlite, |c| {
        c.worker.enabled = false;
        c.http.header_read_timeout_secs = 1;
        c.http.keepalive_idle_secs = 30;
    })
    .await;
    let mut conn = connect(&t).await;
    assert_eq!(get_healthz(&mut conn).await, 200);
    // Idle for longer than a request head may take: the connection is still usable.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(get_healthz(&mut conn).await, 200);
    t.shutdown().await;
}

async fn a_body_trickled_a_byte_at_a_time_gets_408_and_is_closed(db: Db) {
    let t = TestApp::spawn_with(db, short_timeouts).await;
    let app = t.new_app().await;
    let stream = connect(&t).await;
    let (mut reader, mut writer) = stream.into_split();
    let head = format!(
        "PUT /v1/devices/{} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{",
        apns_token(7),
        app.client_key
    );
    writer.write_all(head.as_bytes()).await.expect("head");
    let trickle = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if writer.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let (status, _, body) = read_response(&mut reader).await;
    assert_eq!(status, 408);
    assert_eq!(error_code(&body), "request_timeout");
    assert!(
        read_until_closed(&mut reader, PROMPTLY).await.is_some(),
        "and the connection is closed"
    );
    trickle.abort();
    let stored = t
        .store()
        .devices_page(&app.app.id, None, "", 10)
        .await
        .expect("devices");
    assert!(stored.is_empty(), "nothing stored from a timed-out body");
    t.shutdown().await;
}

async fn a_declared_body_over_the_limit_gets_413_before_it_is_sent(db: Db) {
    let t = TestApp::spawn_with(db, |c| {
        c.worker.enabled = false;
        c.webhooks.max_body_bytes = 1024;
    })
    .await;
    let app = t.new_app().await;
    let (status, source) = t
        .call(
            reqwest::Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(serde_json::json!({"name": "billing", "scheme": "generic"})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let too_big = pushbridge::http::DEFAULT_BODY_LIMIT + 1;
    let requests = [
        format!(
            "PUT /v1/devices/{} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {too_big}\r\n\r\n",
            apns_token(8),
            app.client_key
        ),
        format!(
            "POST /v1/webhooks/{}/billing HTTP/1.1\r\nhost: localhost\r\n\
             content-type: application/json\r\ncontent-length: 1025\r\n\r\n",
            app.app.id
        ),
    ];
    for request in requests {
        let mut conn = connect(&t).await;
        conn.write_all(request.as_bytes()).await.expect("head");
        // Not one byte of the body is sent; the answer must not wait for it.
        let (status, head, body) = read_response(&mut conn).await;
        assert_eq!(status, 413, "{request}");
        assert!(head.contains("content-type: application/json"), "{head}");
        assert_eq!(error_code(&body), "payload_too_large");
    }
    t.shutdown().await;
}

#[tokio::test]
async fn connections_over_the_cap_are_closed_at_once_and_capacity_frees_when_one_ends() {
    let t = TestApp::spawn_with(Db::Sqlite, |c| {
        c.worker.enabled = false;
        c.http.max_connections = 3;
        c.http.header_read_timeout_secs = 60;
        c.http.keepalive_idle_secs = 60;
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = connect(&t).await;
        assert_eq!(get_healthz(&mut conn).await, 200);
        held.push(conn);
    }
    let mut excess = connect(&t).await;
    let _ = excess
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
        .await;
    let (answer, after) = read_until_closed(&mut excess, PROMPTLY)
        .await
        .expect("the excess connection is closed, not left hanging");
    assert!(answer.is_empty(), "closed without an answer");
    assert!(after < Duration::from_secs(2), "at once: {after:?}");
    // The connections within the cap are still served.
    assert_eq!(get_healthz(&mut held[0]).await, 200);
    // One ends; a new connection is served again (the server notices the close promptly).
    drop(held.pop());
    let started = Instant::now();
    loop {
        let mut conn = connect(&t).await;
        let _ = conn
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n")
            .await;
        let mut buf = [0u8; 12];
        if conn.read_exact(&mut buf).await.is_ok() {
            assert_eq!(&buf, b"HTTP/1.1 200");
            break;
        }
        assert!(started.elapsed() < PROMPTLY, "capacity never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.shutdown().await;
}

#[tokio::test]
async fn the_listen_backlog_holds_a_burst_before_anything_is_accepted() {
    const BURST: usize = 500;
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse::<usize>().ok());
    if somaxconn.is_some_and(|n| n < BURST + 10) {
        eprintln!("notice: net.core.somaxconn is below {BURST}; backlog test skipped");
        return;
    }
    let config = Config {
        listen: "127.0.0.1:0".parse().expect("addr"),
        ..Config::default()
    };
    assert_eq!(config.http.listen_backlog, 1024, "the default");
    let listener = pushbridge::bind(&config).expect("bind");
    let addr = listener.local_addr().expect("addr");
    // Nothing accepts: every connection must fit in the kernel's queue. At a backlog of 128
    // the rest would wait for SYN retransmits.
    let connects: Vec<_> = (0..BURST)
        .map(|_| {
            tokio::spawn(async move {
                tokio::time::timeout(Duration::from_millis(900), TcpStream::connect(addr)).await
            })
        })
        .collect();
    let mut established = Vec::new();
    for c in connects {
        if let Ok(Ok(stream)) = c.await.expect("task") {
            established.push(stream);
        }
    }
    assert_eq!(established.len(), BURST, "all queued without an accept");
    drop(listener);
}

async fn an_in_flight_request_finishes_when_the_bridge_stops(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.worker.enabled = false).await;
    let app = t.new_app().await;
    let addr = t.running().addr;
    let body = br#"{"platform":"apns","user_id":"stopping"}"#;
    let mut conn = connect(&t).await;
    let head = format!(
        "PUT /v1/devices/{} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n",
        apns_token(9),
        app.server_key,
        body.len()
    );
    conn.write_all(head.as_bytes()).await.expect("head");
    conn.write_all(&body[..10]).await.expect("part of the body");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stopping = tokio::spawn(t.shutdown());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!stopping.is_finished(), "waits for the request in flight");
    let refused = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await;
    assert!(
        !matches!(refused, Ok(Ok(_))),
        "no new connections once stopping"
    );
    conn.write_all(&body[10..]).await.expect("rest of the body");
    let (status, head, _) = read_response(&mut conn).await;
    assert_eq!(status, 201, "the request in flight completes");
    assert!(head.contains("connection: close"), "{head}");
    tokio::time::timeout(PROMPTLY, stopping)
        .await
        .expect("shutdown finishes")
        .expect("task");
}

backend_tests!(
    a_body_trickled_a_byte_at_a_time_gets_408_and_is_closed,
    a_declared_body_over_the_limit_gets_413_before_it_is_sent,
    an_in_flight_request_finishes_when_the_bridge_stops,
);

#[tokio::test]
async fn the_tls_listener_applies_the_same_timeouts() {
    let certs = certs_dir();
    let t = TestApp::spawn_with(Db::Sqlite, |c| {
        short_timeouts(c);
        c.tls = Some(pushbridge::config::TlsConfig {
            cert_path: certs.join("server.pem"),
            key_path: certs.join("server.key"),
        });
    })
    .await;
    // A TCP connection that never starts its handshake.
    let mut silent = connect(&t).await;
    assert!(
        read_until_closed(&mut silent, PROMPTLY).await.is_some(),
        "a stalled TLS handshake is cut off"
    );
    // Handshake done, but no request follows.
    let mut quiet = tls_connect(t.running().addr, &[b"http/1.1"]).await;
    assert!(
        read_until_closed(&mut quiet, PROMPTLY).await.is_some(),
        "no request head after the handshake"
    );
    // HTTP/1.1 over TLS: served, then closed when idle.
    let mut h1 = tls_connect(t.running().addr, &[b"http/1.1"]).await;
    assert_eq!(get_healthz(&mut h1).await, 200);
    assert!(read_until_closed(&mut h1, PROMPTLY).await.is_some(), "idle");
    // HTTP/2 over TLS: served, then the idle connection is closed (GOAWAY).
    let h2 = tls_connect(t.running().addr, &[b"h2"]).await;
    assert_eq!(h2.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(h2),
    )
    .await
    .expect("h2 handshake");
    let driver = tokio::spawn(conn);
    let request = http::Request::get("https://localhost/healthz")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let response = sender.send_request(request).await.expect("h2 response");
    assert_eq!(response.status(), 200);
    drop(response);
    let ended = tokio::time::timeout(PROMPTLY, driver).await;
    assert!(ended.is_ok(), "an idle HTTP/2 connection is closed");
    t.shutdown().await;
}
