//! Outbound HTTP to event endpoints: the address guard that keeps webhooks away from the
//! bridge's own network (checked when an endpoint is saved and again at connect time, since
//! DNS can change), and the one client that posts them, HTTP/1.1 over hyper with rustls (the
//! TLS stack the provider transport uses). Each attempt resolves the host, checks every
//! address, and connects to a checked address, so a name that turns private between the check
//! and the connection is never followed.

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use ipnet::IpNet;
use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

/// The first bytes of an answer body kept for the attempt log.
pub const RESPONSE_EXCERPT_BYTES: usize = 256;
/// The most of an answer body read before the connection is dropped.
const RESPONSE_READ_LIMIT: usize = 4096;

/// Where webhooks may go: https only and public addresses only, unless configured otherwise.
#[derive(Clone, Debug, Default)]
pub struct AddressGuard {
    /// Also accept `http://` URLs (development and tests).
    pub allow_insecure: bool,
    /// Private, loopback or link-local ranges that are nevertheless allowed.
    pub allowed_private_cidrs: Vec<IpNet>,
}

/// Why a URL or an address is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Not an absolute URL with a host.
    #[error("must be an absolute URL with a host")]
    NotAUrl,
    /// A scheme other than https (or http where insecure URLs are allowed).
    #[error("must use https")]
    Scheme,
    /// The host is, or resolves to, an address of a forbidden range.
    #[error("resolves to {0}, a loopback, private, link-local or metadata address")]
    Address(IpAddr),
}

/// A URL taken apart for connecting.
#[derive(Clone, Debug)]
pub struct Target {
    /// Whether TLS is used.
    pub tls: bool,
    /// Host name or address literal (without brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Path and query sent in the request line.
    pub path: String,
    /// The `Host` header.
    pub authority: String,
}

impl AddressGuard {
    /// Parses `url` and checks its scheme; addresses are checked by [`AddressGuard::resolve`].
    pub fn target(&self, url: &str) -> Result<Target, Refused> {
        let uri: http::Uri = url.parse().map_err(|_| Refused::NotAUrl)?;
        let tls = match uri.scheme_str() {
            Some("https") => true,
            Some("http") if self.allow_insecure => false,
            Some("http") => return Err(Refused::Scheme),
            _ => return Err(Refused::NotAUrl),
        };
        let authority = uri.authority().ok_or(Refused::NotAUrl)?;
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']');
        if host.is_empty() {
            return Err(Refused::NotAUrl);
        }
        Ok(Target {
            tls,
            host: host.to_string(),
            port: authority.port_u16().unwrap_or(if tls { 443 } else { 80 }),
            path: uri
                .path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
            authority: authority.as_str().to_string(),
        })
    }

    /// Whether webhooks may connect to `ip`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Refused> {
        if self
            .allowed_private_cidrs
            .iter()
            .any(|net| net.contains(&ip))
            || is_public(ip)
        {
            Ok(())
        } else {
            Err(Refused::Address(ip))
        }
    }

    /// Resolves `target` and returns its addresses, every one of them checked. One forbidden
    /// address refuses the whole name: a name that also points inside is not a public host.
    pub async fn resolve(
        &self,
        target: &Target,
    ) -> anyhow::Result<Result<Vec<SocketAddr>, Refused>> {
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host((target.host.as_str(), target.port))
            .await?
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "{} has no address", target.host);
        for addr in &addrs {
            if let Err(refused) = self.check(addr.ip()) {
                return Ok(Err(refused));
            }
        }
        Ok(Ok(addrs))
    }
}

/// Whether `ip` is a public unicast address: not loopback, private, link-local (where cloud
/// metadata services live), shared (CGNAT), unspecified, multicast or reserved.
fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_multicast()
                || v4.is_documentation()
                || a == 0
                || (a == 100 && (64..128).contains(&b))
                || a >= 240)
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public(IpAddr::V4(v4));
            }
            let first = v6.segments()[0];
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (first & 0xfe00) == 0xfc00
                || (first & 0xffc0) == 0xfe80)
        }
    }
}

/// What an endpoint answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Answer {
    /// HTTP status.
    pub status: u16,
    /// The first bytes of the body.
    pub excerpt: String,
    /// Its `Retry-After`, when it gave one.
    pub retry_after: Option<Duration>,
}

/// One attempt's result: an answer, or why there was none; and how long it took.
#[derive(Clone, Debug)]
pub struct Posted {
    /// The answer, or the reason there was none.
    pub result: Result<Answer, String>,
    /// From resolving to the end of the answer.
    pub duration: Duration,
}

/// Posts signed webhooks; cheap to clone.
#[derive(Clone)]
pub struct WebhookClient {
    guard: AddressGuard,
    tls: TlsConnector,
    timeout: Duration,
}

impl WebhookClient {
    /// A client that checks addresses with `guard`, trusts the web PKI roots and
    /// `extra_root_certs`, and gives each attempt `timeout`.
    pub fn new(
        guard: AddressGuard,
        extra_root_certs: &[std::path::PathBuf],
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let config =
            crate::tls::client_config_offering(extra_root_certs, &[crate::tls::ALPN_HTTP1])?;
        Ok(Self {
            guard,
            tls: TlsConnector::from(config),
            timeout,
        })
    }

    /// The guard this client connects through.
    pub fn guard(&self) -> &AddressGuard {
        &self.guard
    }

    /// Posts `body` with `headers` to `url`: one attempt, bounded by the timeout.
    pub async fn post(&self, url: &str, headers: &[(String, String)], body: Bytes) -> Posted {
        let started = Instant::now();
        let result =
            match tokio::time::timeout(self.timeout, self.attempt(url, headers, body)).await {
                Ok(result) => result,
                Err(_) => Err(format!("no answer within {} s", self.timeout.as_secs())),
            };
        Posted {
            result,
            duration: started.elapsed(),
        }
    }

    async fn attempt(
        &self,
        url: &str,
        headers: &[(String, String)],
        body: Bytes,
    ) -> Result<Answer, String> {
        let target = self.guard.target(url).map_err(|e| format!("url {e}"))?;
        let addrs = match self.guard.resolve(&target).await {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(refused)) => return Err(format!("refused: {} {refused}", target.host)),
            Err(e) => return Err(format!("resolving {} failed: {e}", target.host)),
        };
        let tcp = connect_any(&addrs).await?;
        let _ = tcp.set_nodelay(true);
        if target.tls {
            let name = ServerName::try_from(target.host.clone())
                .map_err(|_| format!("{} is not a valid TLS server name", target.host))?;
            let stream = self
                .tls
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS handshake failed: {e}"))?;
            exchange(TokioIo::new(stream), &target, headers, body).await
        } else {
            exchange(TokioIo::new(tcp), &target, headers, body).await
        }
    }
}

/// Connects to the first of `addrs` that accepts.
async fn connect_any(addrs: &[SocketAddr]) -> Result<tokio::net::TcpStream, String> {
    let mut last = String::from("no address");
    for addr in addrs {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(stream) => return Ok(stream),
            Err(e) => last = format!("connecting to {addr} failed: {e}"),
        }
    }
    Err(last)
}

/// Sends the request over an established connection and reads the start of the answer.
async fn exchange<IO>(
    io: IO,
    target: &Target,
    headers: &[(String, String)],
    body: Bytes,
) -> Result<Answer, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| format!("HTTP handshake failed: {e}"))?;
    // The connection task ends when the answer is read or the sender is dropped.
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut request = http::Request::post(target.path.as_str())
        .header(http::header::HOST, target.authority.as_str())
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(
            http::header::USER_AGENT,
            concat!("pushbridge/", env!("CARGO_PKG_VERSION")),
        );
    for (name, value) in headers {
        request = request.header(name.as_str(), value.as_str());
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("building the request failed: {e}"))?;
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| format!("request failed: {e}"))?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(parse_retry_after);
    let mut body = response.into_body();
    let mut read = Vec::new();
    while read.len() < RESPONSE_READ_LIMIT {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    read.extend_from_slice(data);
                }
            }
            // The status is the answer; a body cut short does not change it.
            Some(Err(_)) | None => break,
        }
    }
    Ok(Answer {
        status,
        excerpt: excerpt(&read),
        retry_after,
    })
}

/// `Retry-After` as seconds or an HTTP date.
fn parse_retry_after(value: &str) -> Option<Duration> {
    if let Ok(secs) = value.trim().parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(value.trim()).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// The first [`RESPONSE_EXCERPT_BYTES`] of `bytes` as text, cut at a character boundary.
fn excerpt(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(&bytes[..bytes.len().min(RESPONSE_EXCERPT_BYTES)]);
    text.trim_end_matches('\u{FFFD}').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_private_link_local_and_metadata_addresses_are_refused_unless_allowed() {
        let guard = AddressGuard::default();
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "::1",
            "fe80::1",
            "fd00:ec2::254",
            "::ffff:127.0.0.1",
        ] {
            let ip: IpAddr = ip.parse().expect("ip");
            assert_eq!(guard.check(ip), Err(Refused::Address(ip)), "{ip}");
        }
        for ip in ["93.184.216.34", "2606:4700::1111"] {
            assert_eq!(guard.check(ip.parse().expect("ip")), Ok(()), "{ip}");
        }
        let allowed = AddressGuard {
            allow_insecure: true,
            allowed_private_cidrs: vec!["127.0.0.0/8".parse().expect("cidr")],
        };
        assert_eq!(allowed.check("127.0.0.1".parse().expect("ip")), Ok(()));
        assert!(allowed
            .check("169.254.169.254".parse().expect("ip"))
            .is_err());
    }

    #[test]
    fn only_https_urls_are_taken_unless_insecure_ones_are_allowed() {
        let guard = AddressGuard::default();
        assert_eq!(
            guard.target("http://example.com/x").err(),
            Some(Refused::Scheme)
        );
        assert_eq!(
            guard.target("ftp://example.com/x").err(),
            Some(Refused::NotAUrl)
        );
        assert_eq!(guard.target("/relative").err(), Some(Refused::NotAUrl));
        let t = guard
            .target("https://[::1]:8443/hooks?x=1")
            .expect("target");
        assert_eq!(
            (t.host.as_str(), t.port, t.path.as_str()),
            ("::1", 8443, "/hooks?x=1")
        );
        let insecure = AddressGuard {
            allow_insecure: true,
            ..AddressGuard::default()
        };
        assert_eq!(
            insecure.target("http://example.com").expect("target").port,
            80
        );
    }

    #[test]
    fn retry_after_is_read_as_seconds() {
        assert_eq!(parse_retry_after("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after("soon"), None);
    }
}
