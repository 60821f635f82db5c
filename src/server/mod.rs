//! The API listener: binding with a backlog, the one accept loop for plain HTTP and TLS, the
//! connection cap, and the `[http]` settings. What happens on each connection (timeouts,
//! drain on shutdown) is `connection`'s.

mod connection;

pub use connection::BodyTimeout;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use connection::{serve_connection, Policy};

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
    pub(crate) fn hard_head_bytes(&self) -> usize {
        (4 * (self.max_uri_bytes + self.max_header_bytes)).max(8 * 1024)
    }
}

/// Binds `addr` with the configured backlog.
pub fn bind(addr: SocketAddr, config: &HttpConfig) -> anyhow::Result<TcpListener> {
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
        .listen(config.listen_backlog)
        .with_context(|| format!("listening on {addr}"))
}

/// Descriptors kept for everything but client connections: database, provider pools, files.
const RESERVED_FDS: u64 = 256;

/// The connection cap: `http.max_connections`, raising the soft open-files limit as far as it
/// needs (never above the hard limit), and clamped below the limit when that is not enough.
/// Past the limit, `accept` fails with EMFILE and new clients hang in the backlog.
pub fn connection_cap(config: &HttpConfig) -> usize {
    let wanted = config.max_connections as u64;
    let Some(limit) = fd_limit::raise_to(wanted + RESERVED_FDS) else {
        return config.max_connections;
    };
    if limit >= wanted + RESERVED_FDS {
        return config.max_connections;
    }
    let cap = limit.saturating_sub(RESERVED_FDS).max(1);
    tracing::warn!(
        max_connections = wanted,
        open_files_limit = limit,
        clamped_to = cap,
        "http.max_connections does not fit the open-files limit (ulimit -n); clamped"
    );
    usize::try_from(cap).unwrap_or(config.max_connections)
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

/// Serves `app` on `listener` (over TLS when `tls` is given) until `stop` turns true, then
/// stops accepting and waits for open connections to finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    config: &HttpConfig,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let policy = Arc::new(Policy::new(config));
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
                    match tokio::time::timeout(policy.head_timeout(), handshake).await {
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

#[cfg(test)]
mod tests {
    use super::*;

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
