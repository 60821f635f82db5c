//! Hostile and malformed input: property tests of the signature schemes and of the webhook
//! endpoint, and a thousand malformed or forged requests across the API. Nothing may panic,
//! answer 5xx, authenticate without a valid signature or key, or store anything.

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::Duration;

use crate::harness::{Db, TestApp, OPERATOR_KEY};
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use pushbridge::clock::now_ms;
use pushbridge::signature::Scheme;
use pushbridge::signature::{sign, verify, SignatureError};
use pushbridge::store::NewApp;
use reqwest::Method;
use serde_json::{json, Value};

const SCHEMES: [Scheme; 4] = [
    Scheme::StandardWebhooks,
    Scheme::Github,
    Scheme::Stripe,
    Scheme::Generic,
];
const TOLERANCE: u64 = 300;
const NOW: i64 = 1_750_000_000;

/// Every header name any scheme reads.
const SIGNATURE_HEADERS: [&str; 9] = [
    "webhook-id",
    "webhook-timestamp",
    "webhook-signature",
    "x-hub-signature-256",
    "x-github-delivery",
    "x-github-event",
    "stripe-signature",
    "x-webhook-signature",
    "x-webhook-timestamp",
];

/// A secret of the form the scheme uses (`whsec_` + base64 for Standard Webhooks).
fn secret_strategy() -> impl Strategy<Value = (String, String)> {
    (proptest::collection::vec(any::<u8>(), 1..48), "[ -~]{1,48}").prop_map(|(bytes, text)| {
        (
            format!(
                "whsec_{}",
                base64::engine::general_purpose::STANDARD.encode(bytes)
            ),
            text,
        )
    })
}

fn secret_for(scheme: Scheme, secrets: &(String, String)) -> String {
    match scheme {
        Scheme::StandardWebhooks => secrets.0.clone(),
        _ => secrets.1.clone(),
    }
}

fn header_map(pairs: &[(String, String)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (k, v) in pairs {
        map.append(
            HeaderName::from_bytes(k.as_bytes()).expect("header name"),
            HeaderValue::from_str(v).expect("header value"),
        );
    }
    map
}

/// Arbitrary values for the signature headers: printable text, look-alike prefixes, and raw
/// bytes outside ASCII.
fn header_value_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,120}".prop_map(String::into_bytes),
        "(v1,|sha256=|t=[0-9]{0,12},v1=)[ -~]{0,90}".prop_map(String::into_bytes),
        proptest::collection::vec(
            prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')],
            0..120
        ),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 400,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// A correctly signed body verifies; changing one byte of it, or signing with another
    /// secret, never does.
    #[test]
    fn only_the_exact_signed_body_verifies(
        scheme in prop::sample::select(SCHEMES.to_vec()),
        secrets in secret_strategy(),
        other in secret_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..600),
        id in "[A-Za-z0-9_-]{1,40}",
        skew in -(TOLERANCE as i64)..=(TOLERANCE as i64),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let secret = secret_for(scheme, &secrets);
        let headers = header_map(&sign(scheme, &secret, &body, &id, NOW + skew).expect("a valid secret"));
        let verified = verify(scheme, &headers, &body, &[&secret], NOW, TOLERANCE);
        prop_assert!(verified.is_ok(), "{scheme:?}: {verified:?}");
        if scheme != Scheme::Stripe {
            let event_id = verified.expect("ok").event_id;
            prop_assert_eq!(event_id.as_deref(), Some(id.as_str()));
        }

        // Rotation: any active secret verifies.
        let wrong = secret_for(scheme, &other);
        prop_assert!(verify(scheme, &headers, &body, &[&wrong, &secret], NOW, TOLERANCE).is_ok());
        if wrong != secret {
            prop_assert_eq!(
                verify(scheme, &headers, &body, &[&wrong], NOW, TOLERANCE),
                Err(SignatureError::Mismatch)
            );
        }
        prop_assert!(verify(scheme, &headers, &body, &[], NOW, TOLERANCE).is_err());

        let mut tampered = body.clone();
        if tampered.is_empty() {
            tampered.push(b'x');
        } else {
            let i = flip.index(tampered.len());
            tampered[i] ^= 1 << bit;
        }
        prop_assert_eq!(
            verify(scheme, &headers, &tampered, &[&secret], NOW, TOLERANCE),
            Err(SignatureError::Mismatch)
        );
    }

    /// Signed timestamps outside the window are refused even with a valid signature.
    #[test]
    fn stale_or_future_timestamps_are_refused(
        scheme in prop::sample::select(vec![Scheme::StandardWebhooks, Scheme::Stripe]),
        secrets in secret_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..200),
        skew in (TOLERANCE as i64 + 1)..1_000_000i64,
        future in any::<bool>(),
    ) {
        let secret = secret_for(scheme, &secrets);
        let ts = if future { NOW + skew } else { NOW - skew };
        let headers = header_map(&sign(scheme, &secret, &body, "evt_1", ts).expect("a valid secret"));
        prop_assert_eq!(
            verify(scheme, &headers, &body, &[&secret], NOW, TOLERANCE),
            Err(SignatureError::TimestampOutOfWindow)
        );
    }

    /// Arbitrary header values (and arbitrary extra headers) never panic and never verify.
    #[test]
    fn arbitrary_headers_never_verify(
        scheme in prop::sample::select(SCHEMES.to_vec()),
        secrets in secret_strategy(),
        body in proptest::collection::vec(any::<u8>(), 0..300),
        values in proptest::collection::vec(
            (prop::sample::select(SIGNATURE_HEADERS.to_vec()), header_value_strategy()),
            0..8
        ),
    ) {
        let secret = secret_for(scheme, &secrets);
        let mut headers = HeaderMap::new();
        for (name, value) in values {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                headers.append(name, v);
            }
        }
        let result = verify(scheme, &headers, &body, &[&secret], NOW, TOLERANCE);
        prop_assert!(result.is_err(), "{scheme:?} accepted {headers:?}");
    }
}

/// Status and raw body of a response.
async fn post_raw(
    t: &TestApp,
    path: &str,
    headers: &[(String, Vec<u8>)],
    body: Vec<u8>,
) -> (u16, String) {
    let mut req = t
        .client
        .post(t.url(path))
        .header("content-type", "application/json")
        .body(body);
    for (k, v) in headers {
        req = req.header(
            k.as_str(),
            reqwest::header::HeaderValue::from_bytes(v).expect("valid bytes"),
        );
    }
    let resp = req.send().await.expect("send");
    (
        resp.status().as_u16(),
        resp.text().await.unwrap_or_default(),
    )
}

async fn source(t: &TestApp, app: &NewApp, name: &str, scheme: &str) -> String {
    let (status, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": name, "scheme": scheme})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string()
}

/// How one generated webhook request is built.
#[derive(Clone, Debug)]
enum Forgery {
    /// Correctly signed JSON object: the one case that must be accepted.
    Signed,
    /// Correctly signed, then one body byte changed.
    Tampered(prop::sample::Index),
    /// Signed with another secret.
    WrongSecret,
    /// The correct headers with one value replaced by arbitrary bytes.
    Garbled(prop::sample::Index, Vec<u8>),
    /// Arbitrary headers only.
    Arbitrary(Vec<(&'static str, Vec<u8>)>),
}

fn forgery_strategy() -> impl Strategy<Value = Forgery> {
    prop_oneof![
        Just(Forgery::Signed),
        any::<prop::sample::Index>().prop_map(Forgery::Tampered),
        Just(Forgery::WrongSecret),
        (any::<prop::sample::Index>(), header_value_strategy())
            .prop_map(|(i, v)| Forgery::Garbled(i, v)),
        proptest::collection::vec(
            (
                prop::sample::select(SIGNATURE_HEADERS.to_vec()),
                header_value_strategy()
            ),
            0..6
        )
        .prop_map(Forgery::Arbitrary),
    ]
}

fn body_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        ("[a-z.]{1,20}", "[ -~]{0,40}", any::<i64>()).prop_map(|(ty, text, n)| {
            json!({"type": ty, "data": {"text": text, "n": n}})
                .to_string()
                .into_bytes()
        }),
        proptest::collection::vec(any::<u8>(), 0..400),
        "[ -~]{0,200}".prop_map(String::into_bytes),
    ]
}

/// The webhook endpoint over HTTP with generated headers and bodies: never 5xx, never 2xx
/// unless the request carries a valid signature over a JSON object body.
#[test]
fn webhook_endpoint_never_fails_open_or_errors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let (t, app, secrets) = rt.block_on(async {
        let t = TestApp::spawn_with(Db::Sqlite, |c| c.worker.enabled = false).await;
        let app = t.new_app().await;
        let mut secrets = Vec::new();
        for (name, scheme) in [
            ("standard_webhooks", Scheme::StandardWebhooks),
            ("github", Scheme::Github),
            ("stripe", Scheme::Stripe),
            ("generic", Scheme::Generic),
        ] {
            secrets.push((scheme, name, source(&t, &app, name, name).await));
        }
        (t, app, secrets)
    });
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let counter = std::cell::Cell::new(0u64);
    let accepted = std::cell::Cell::new(0u32);
    runner
        .run(
            &(0..4usize, forgery_strategy(), body_strategy()),
            |(which, forgery, body)| {
                counter.set(counter.get() + 1);
                let (scheme, name, secret) = &secrets[which];
                let id = format!("evt-{}", counter.get());
                let now = now_ms() / 1000;
                let signed = sign(*scheme, secret, &body, &id, now).expect("a valid secret");
                let to_bytes = |pairs: Vec<(String, String)>| -> Vec<(String, Vec<u8>)> {
                    pairs
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect()
                };
                let (headers, sent_body) = match &forgery {
                    Forgery::Signed => (to_bytes(signed), body.clone()),
                    Forgery::Tampered(i) => {
                        let mut b = body.clone();
                        if b.is_empty() {
                            b.push(b'{');
                        } else {
                            let k = i.index(b.len());
                            b[k] = b[k].wrapping_add(1);
                        }
                        (to_bytes(signed), b)
                    }
                    Forgery::WrongSecret => {
                        let wrong = if *scheme == Scheme::StandardWebhooks {
                            "whsec_dGhlIHdyb25nIHNlY3JldCwgMjQgYnl0ZQ=="
                        } else {
                            "not-the-secret"
                        };
                        (
                            to_bytes(
                                sign(*scheme, wrong, &body, &id, now).expect("a valid secret"),
                            ),
                            body.clone(),
                        )
                    }
                    Forgery::Garbled(i, v) => {
                        // Only headers that carry or feed the signature (GitHub's delivery id
                        // and the generic scheme's id are not signed).
                        let mut h: Vec<_> = to_bytes(signed)
                            .into_iter()
                            .filter(|(k, _)| {
                                *scheme == Scheme::StandardWebhooks || k.contains("signature")
                            })
                            .collect();
                        let k = i.index(h.len());
                        if h[k].1 == *v {
                            return Ok(());
                        }
                        h[k].1 = v.clone();
                        (h, body.clone())
                    }
                    Forgery::Arbitrary(pairs) => (
                        pairs
                            .iter()
                            .map(|(k, v)| (k.to_string(), v.clone()))
                            .collect(),
                        body.clone(),
                    ),
                };
                let (status, text) = rt.block_on(post_raw(
                    &t,
                    &format!("/v1/webhooks/{}/{name}", app.app.id),
                    &headers,
                    sent_body.clone(),
                ));
                prop_assert!(status < 500, "{status} {text}");
                let is_object = serde_json::from_slice::<Value>(&sent_body)
                    .map(|v| v.is_object())
                    .unwrap_or(false);
                let must_accept = matches!(forgery, Forgery::Signed) && is_object;
                if must_accept {
                    prop_assert!(status == 202, "{status} {text}");
                    accepted.set(accepted.get() + 1);
                } else if matches!(forgery, Forgery::Signed) {
                    prop_assert_eq!(status, 400, "{}", text);
                } else {
                    prop_assert!((400..500).contains(&status), "{status} {text}");
                }
                let answer: Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("non-JSON answer {text}: {e}")))?;
                if status >= 400 {
                    prop_assert!(answer["error"]["code"].is_string(), "{}", text);
                }
                Ok(())
            },
        )
        .expect("property holds");
    assert!(
        accepted.get() > 0,
        "the generator produced valid webhooks too"
    );
    rt.block_on(t.shutdown());
}

/// One request written byte for byte.
struct RawRequest {
    what: String,
    bytes: Vec<u8>,
}

fn request(
    what: impl Into<String>,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
    body: &[u8],
) -> RawRequest {
    let mut bytes = format!("{method} {path} HTTP/1.1\r\nhost: localhost\r\n").into_bytes();
    for (k, v) in headers {
        bytes.extend_from_slice(k.as_bytes());
        bytes.extend_from_slice(b": ");
        bytes.extend_from_slice(v);
        bytes.extend_from_slice(b"\r\n");
    }
    bytes.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
    bytes.extend_from_slice(body);
    RawRequest {
        what: what.into(),
        bytes,
    }
}

/// Whether `out` holds a complete response (head plus a body of its content-length or a
/// finished chunked body).
fn complete(out: &[u8]) -> bool {
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let body = &out[split + 4..];
    if head.contains("transfer-encoding: chunked") {
        return body.ends_with(b"0\r\n\r\n");
    }
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    body.len() >= length
}

/// Sends raw bytes on a keep-alive connection and returns status, head (lowercased) and the
/// de-chunked body; status 0 if the connection closed without an answer.
fn exchange(addr: SocketAddr, raw: &[u8]) -> (u16, String, Vec<u8>) {
    let stream = std::net::TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // Read while writing: the server may answer (431, 401) before it has read everything.
    let mut reader = stream.try_clone().expect("clone");
    let read = std::thread::spawn(move || {
        let mut out = Vec::new();
        let mut buf = [0u8; 16 * 1024];
        while !complete(&out) {
            match reader.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
        out
    });
    let mut writer = &stream;
    let _ = writer.write_all(raw);
    let out = read.join().expect("reader");
    let Some(split) = out.windows(4).position(|w| w == b"\r\n\r\n") else {
        return (0, String::new(), out);
    };
    let head = String::from_utf8_lossy(&out[..split]).to_ascii_lowercase();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let mut body = out[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        let mut plain = Vec::new();
        let mut rest = &body[..];
        while let Some(eol) = rest.windows(2).position(|w| w == b"\r\n") {
            let size = usize::from_str_radix(
                std::str::from_utf8(&rest[..eol])
                    .expect("chunk size")
                    .trim(),
                16,
            )
            .expect("chunk size");
            if size == 0 {
                break;
            }
            plain.extend_from_slice(&rest[eol + 2..eol + 2 + size]);
            rest = &rest[eol + 4 + size..];
        }
        body = plain;
    }
    (status, head, body)
}

/// A thousand malformed and forged requests built from these families, each varied.
fn malformed_requests(
    app: &NewApp,
    other_webhook: &str,
    signed_secret: &str,
    n: usize,
) -> Vec<RawRequest> {
    let server = format!("Bearer {}", app.server_key);
    let client = format!("Bearer {}", app.client_key);
    let apns = "ab".repeat(32);
    let device_body = br#"{"platform":"apns","user_id":"u1"}"#.as_slice();
    let json_ct: (&str, &[u8]) = ("content-type", b"application/json");
    let endpoints: Vec<(&str, String)> = vec![
        ("PUT", format!("/v1/devices/{apns}")),
        ("GET", format!("/v1/devices/{apns}")),
        ("DELETE", format!("/v1/devices/{apns}")),
        ("GET", "/v1/users/u1/devices".into()),
        ("POST", "/v1/sources".into()),
        ("GET", "/v1/sources".into()),
        ("PATCH", "/v1/sources/billing".into()),
        ("DELETE", "/v1/sources/billing".into()),
        ("POST", "/v1/sources/billing/secrets".into()),
        ("GET", "/v1/events".into()),
        ("PUT", "/v1/templates/t1".into()),
        ("PUT", "/v1/rules/r1".into()),
        ("POST", "/v1/notifications".into()),
        ("GET", "/v1/deliveries".into()),
        ("POST", "/v1/deliveries/retry".into()),
        ("GET", "/v1/app".into()),
        ("PUT", "/v1/app/callback".into()),
        ("POST", "/v1/app/user-auth".into()),
        ("POST", "/v1/app/user-auth/keys".into()),
        ("GET", "/v1/stats".into()),
        ("GET", "/metrics".into()),
        ("GET", "/v1/admin/apps".into()),
    ];
    let deep_array = {
        let depth = 100_000;
        let mut b = vec![b'['; depth];
        b.extend(std::iter::repeat_n(b']', depth));
        b
    };
    let deep_object = {
        let mut s = String::from(r#"{"platform":"apns","attributes":"#);
        s.push_str(&r#"{"a":"#.repeat(20_000));
        s.push('1');
        s.push_str(&"}".repeat(20_001));
        s.into_bytes()
    };
    let huge_string = format!(
        r#"{{"platform":"apns","user_id":"{}"}}"#,
        "x".repeat(2 * 1024 * 1024)
    )
    .into_bytes();
    let huge_header = "a".repeat(512 * 1024);
    let invalid_utf8: Vec<u8> = vec![b'{', b'"', b'p', 0xff, 0xfe, b'"', b':', 0xc3, b'}'];
    let now = now_ms() / 1000;
    let webhook_body = br#"{"type":"payment.succeeded","data":{}}"#;

    let mut families: Vec<Box<dyn Fn(usize) -> RawRequest>> = Vec::new();
    // Wrong or missing credentials on every endpoint.
    let bad_auth: Vec<Vec<u8>> = vec![
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("a:b")
        )
        .into_bytes(),
        format!("Token {}", app.server_key).into_bytes(),
        b"Bearer".to_vec(),
        b"Bearer ".to_vec(),
        format!("Bearer {}", &app.server_key[..app.server_key.len() - 3]).into_bytes(),
        format!("Bearer {}x", app.server_key).into_bytes(),
        // The server key's id with the client key's secret.
        format!(
            "Bearer {}_{}",
            app.server_key.rsplit_once('_').expect("key").0,
            app.client_key.rsplit_once('_').expect("key").1
        )
        .into_bytes(),
        b"Bearer pb_server_\xff\xfe\x80garbage".to_vec(),
        format!("Bearer {OPERATOR_KEY}x").into_bytes(),
        b"Bearer ' OR '1'='1".to_vec(),
    ];
    {
        let endpoints = endpoints.clone();
        families.push(Box::new(move |i| {
            let (m, p) = &endpoints[i % endpoints.len()];
            let auth = &bad_auth[(i / endpoints.len()) % bad_auth.len()];
            request(
                format!("bad auth {i} {m} {p}"),
                m,
                p,
                &[("authorization", auth), json_ct],
                device_body,
            )
        }));
    }
    // No credentials at all.
    {
        let endpoints = endpoints.clone();
        families.push(Box::new(move |i| {
            let (m, p) = &endpoints[i % endpoints.len()];
            request(format!("no auth {m} {p}"), m, p, &[json_ct], device_body)
        }));
    }
    // A client key on every server endpoint.
    {
        let client = client.clone();
        let endpoints: Vec<_> = endpoints
            .iter()
            .filter(|(_, p)| !p.starts_with("/v1/devices/"))
            .cloned()
            .collect();
        families.push(Box::new(move |i| {
            let (m, p) = &endpoints[i % endpoints.len()];
            request(
                format!("client key {m} {p}"),
                m,
                p,
                &[("authorization", client.as_bytes()), json_ct],
                br#"{"to":{"user":"u1"},"template":{"title":"x"}}"#,
            )
        }));
    }
    // Bodies that are not valid input, with a valid key.
    let bodies: Vec<(&str, Vec<u8>)> = vec![
        ("invalid UTF-8", invalid_utf8),
        ("deep array", deep_array),
        ("deep object", deep_object),
        ("huge string", huge_string),
        (
            "truncated JSON",
            br#"{"platform":"apns","user_id":"u"#.to_vec(),
        ),
        ("JSON array", b"[1,2,3]".to_vec()),
        ("JSON null", b"null".to_vec()),
        ("empty", Vec::new()),
        ("NUL bytes", b"{\"platform\":\"apns\0\"}".to_vec()),
        (
            "wrong types",
            br#"{"platform":42,"tags":"x","attributes":[]}"#.to_vec(),
        ),
        ("unknown platform", br#"{"platform":"blackberry"}"#.to_vec()),
        (
            "duplicate keys",
            br#"{"platform":"apns","platform":"fcm","locale":"??"}"#.to_vec(),
        ),
    ];
    let writes: Vec<(&str, String, &str)> = vec![
        ("PUT", format!("/v1/devices/{apns}"), "client"),
        ("POST", "/v1/notifications".into(), "server"),
        ("POST", "/v1/sources".into(), "server"),
        ("PUT", "/v1/templates/t1".into(), "server"),
        ("PUT", "/v1/rules/r1".into(), "server"),
        ("PUT", "/v1/app/callback".into(), "server"),
        ("POST", "/v1/endpoints".into(), "server"),
    ];
    {
        let (server, client) = (server.clone(), client.clone());
        families.push(Box::new(move |i| {
            let (what, body) = &bodies[i % bodies.len()];
            let (m, p, key) = &writes[(i / bodies.len()) % writes.len()];
            let auth = if *key == "client" { &client } else { &server };
            request(
                format!("{what} to {m} {p}"),
                m,
                p,
                &[("authorization", auth.as_bytes()), json_ct],
                body,
            )
        }));
    }
    // Wrong content types for a body that would otherwise be accepted.
    let content_types: Vec<&[u8]> = vec![
        b"text/plain",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=x",
        b"application/xml",
        b"application/jsonx",
        b"",
        b"\xff\xfe",
    ];
    {
        let client = client.clone();
        let apns = apns.clone();
        families.push(Box::new(move |i| {
            let ct = content_types[i % content_types.len()];
            request(
                format!("content type {:?}", String::from_utf8_lossy(ct)),
                "PUT",
                &format!("/v1/devices/{apns}"),
                &[("authorization", client.as_bytes()), ("content-type", ct)],
                device_body,
            )
        }));
    }
    // Traversal and junk in path parameters.
    let paths: Vec<&str> = vec![
        "/v1/devices/..%2F..%2Fetc%2Fpasswd",
        "/v1/devices/%2e%2e",
        "/v1/devices/..",
        "/v1/devices/abc%00def",
        "/v1/devices/%",
        "/v1/devices/ab'%3B%20DROP%20TABLE%20devices%3B--",
        "/v1/devices/../admin/apps",
        "/v1/users/..%2F..%2F/devices",
        "/v1/sources/..%2Fsecrets",
        "/v1/events/..%2F..%2Fadmin",
        "/v1/deliveries/%2e%2e%2fretry",
        "/v1/webhooks/..%2F..%2Fv1%2Fadmin/apps",
        "/v1/webhooks/app_x/..%2Fbilling",
    ];
    {
        let client = client.clone();
        families.push(Box::new(move |i| {
            let p = paths[i % paths.len()];
            let m = ["PUT", "GET", "DELETE", "POST"][(i / paths.len()) % 4];
            request(
                format!("path {m} {p}"),
                m,
                p,
                &[("authorization", client.as_bytes()), json_ct],
                device_body,
            )
        }));
    }
    // NUL characters, which PostgreSQL text cannot hold, in path parameters and JSON strings.
    let nul_requests: Vec<(&str, String, &[u8])> = vec![
        ("GET", "/v1/devices/abc%00def".into(), b""),
        ("DELETE", "/v1/devices/abc%00def".into(), b""),
        ("GET", "/v1/sources/bill%00ing".into(), b""),
        ("PATCH", "/v1/sources/bill%00ing".into(), b"{}"),
        ("DELETE", "/v1/sources/bill%00ing".into(), b""),
        ("DELETE", "/v1/sources/billing/secrets/sec%00x".into(), b""),
        ("GET", "/v1/events/evt%00x".into(), b""),
        ("GET", "/v1/events/evt%00x/deliveries".into(), b""),
        ("GET", "/v1/deliveries/del%00x".into(), b""),
        ("POST", "/v1/deliveries/del%00x/retry".into(), b""),
        ("GET", "/v1/templates/t%001".into(), b""),
        ("DELETE", "/v1/rules/r%001".into(), b""),
        ("GET", "/v1/stats?app_id=a%00b".into(), b""),
        (
            "PUT",
            format!("/v1/devices/{apns}"),
            br#"{"platform":"apns","user_id":"u\u0000"}"#,
        ),
        (
            "PUT",
            format!("/v1/devices/{apns}"),
            br#"{"platform":"apns","tags":["a\u0000"],"locale":"fr\u0000"}"#,
        ),
        (
            "POST",
            "/v1/sources".into(),
            br#"{"name":"n\u0000","scheme":"github"}"#,
        ),
        ("PUT", "/v1/templates/t%001".into(), br#"{"title":"x"}"#),
    ];
    {
        let server = server.clone();
        families.push(Box::new(move |i| {
            let (m, p, body) = &nul_requests[i % nul_requests.len()];
            request(
                format!("NUL {m} {p}"),
                m,
                p,
                &[("authorization", server.as_bytes()), json_ct],
                body,
            )
        }));
    }
    // Oversized and garbage headers: the HTTP layer may refuse these itself.
    {
        let server = server.clone();
        families.push(Box::new(move |i| {
            let p = format!("/v1/devices/{}", "ab".repeat(32));
            match i % 4 {
                0 => request(
                    "huge authorization",
                    "GET",
                    &p,
                    &[("authorization", format!("Bearer {huge_header}").as_bytes())],
                    b"",
                ),
                1 => request(
                    "huge header",
                    "GET",
                    "/v1/events",
                    &[
                        ("authorization", server.as_bytes()),
                        ("x-junk", huge_header.as_bytes()),
                    ],
                    b"",
                ),
                2 => RawRequest {
                    what: "header without colon".into(),
                    bytes: b"GET /v1/events HTTP/1.1\r\nhost: x\r\nthis is not a header\r\n\r\n"
                        .to_vec(),
                },
                _ => RawRequest {
                    what: "control bytes in header".into(),
                    bytes: b"GET /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer \x01\x02\r\n\r\n"
                        .to_vec(),
                },
            }
        }));
    }
    // Forged webhooks: wrong secret, stale timestamp, signature for another body, another
    // app's path, unknown source.
    {
        let webhook = format!("/v1/webhooks/{}/billing", app.app.id);
        let other = other_webhook.to_string();
        let secret = signed_secret.to_string();
        families.push(Box::new(move |i| {
            let id = format!("forged-{i}");
            let (path, secret, body, ts): (&str, &str, &[u8], i64) = match i % 5 {
                0 => (&webhook, "wrong-secret", webhook_body, now),
                1 => (&webhook, &secret, webhook_body, now - 3_600),
                2 => (&webhook, &secret, br#"{"type":"other"}"#, now),
                3 => (&other, &secret, webhook_body, now),
                _ => (
                    "/v1/webhooks/app_unknown/billing",
                    &secret,
                    webhook_body,
                    now,
                ),
            };
            let mut headers = sign(Scheme::Stripe, secret, body, &id, ts).expect("a valid secret");
            if i % 5 == 2 {
                // Signed over another body than the one sent.
                headers =
                    sign(Scheme::Stripe, secret, webhook_body, &id, ts).expect("a valid secret");
            }
            let sent: &[u8] = if i % 5 == 2 { br#"{"type":"x"}"# } else { body };
            let hv: Vec<(&str, &[u8])> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_bytes()))
                .chain(std::iter::once(json_ct))
                .collect();
            request(format!("forged webhook {}", i % 5), "POST", path, &hv, sent)
        }));
    }
    (0..n)
        .map(|i| families[i % families.len()](i / families.len()))
        .collect()
}

/// A refusal must be a 4xx with a JSON error body; only the HTTP layer itself (unparsable
/// requests, oversized headers) may answer 400 or 431 without one, before any route runs.
fn check_refusal(status: u16, head: &str, body: &[u8]) -> Result<(), String> {
    let text = String::from_utf8_lossy(body);
    if !(400..500).contains(&status) {
        return Err(format!("{status} {text}"));
    }
    if body.is_empty() {
        return if status == 400 || status == 431 {
            Ok(())
        } else {
            Err(format!("{status} without a body"))
        };
    }
    let json: Value =
        serde_json::from_slice(body).map_err(|_| format!("{status} non-JSON body {text:?}"))?;
    if !json["error"]["code"].is_string() || !head.contains("content-type: application/json") {
        return Err(format!("{status} not an API error: {head} {json}"));
    }
    Ok(())
}

async fn counts(t: &TestApp, app: &NewApp) -> (usize, usize, usize, usize) {
    let store = t.store();
    let devices = store
        .devices_page(&app.app.id, None, "", 10_000)
        .await
        .expect("devices")
        .len();
    let events = store
        .list_events(&app.app.id, None, None, 10_000)
        .await
        .expect("events")
        .len();
    let sources = store
        .list_sources(&app.app.id)
        .await
        .expect("sources")
        .len();
    let apps = store.list_apps().await.expect("apps").len();
    (devices, events, sources, apps)
}

async fn a_thousand_malformed_or_forged_requests_are_refused_and_store_nothing(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.worker.enabled = false).await;
    let app = t.new_app().await;
    let other = t.new_app().await;
    let (status, source) = t
        .call(
            Method::POST,
            "/v1/sources",
            Some(&app.server_key),
            Some(json!({"name": "billing", "scheme": "stripe"})),
        )
        .await;
    assert_eq!(status, 201, "{source}");
    let secret = source["secrets"][0]["secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let before = counts(&t, &app).await;
    let other_before = counts(&t, &other).await;

    let addr = t.running().addr;
    let requests = malformed_requests(
        &app,
        &format!("/v1/webhooks/{}/billing", other.app.id),
        &secret,
        1_000,
    );
    let mut by_status = std::collections::BTreeMap::<u16, usize>::new();
    let answers = tokio::task::spawn_blocking(move || {
        requests
            .iter()
            .map(|r| (r.what.clone(), exchange(addr, &r.bytes)))
            .collect::<Vec<_>>()
    })
    .await
    .expect("requests");
    let mut problems = Vec::new();
    for (what, (status, head, body)) in &answers {
        *by_status.entry(*status).or_default() += 1;
        if let Err(problem) = check_refusal(*status, head, body) {
            problems.push(format!("{what}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    eprintln!("malformed requests by status: {by_status:?}");
    assert_eq!(counts(&t, &app).await, before, "nothing stored for the app");
    assert_eq!(counts(&t, &other).await, other_before, "nor for another");
    assert!(
        t.store()
            .get_spec(pushbridge::store::SpecKind::Template, &app.app.id, "t1")
            .await
            .expect("spec")
            .is_none()
            && t.store()
                .get_spec(pushbridge::store::SpecKind::Rule, &app.app.id, "r1")
                .await
                .expect("spec")
                .is_none(),
        "no template or rule stored"
    );
    let (status, shown) = t
        .call(Method::GET, "/v1/app", Some(&app.server_key), None)
        .await;
    assert_eq!(status, 200);
    assert!(shown["callback_url"].is_null(), "no callback set: {shown}");
    t.shutdown().await;
}

backend_tests!(a_thousand_malformed_or_forged_requests_are_refused_and_store_nothing);

/// A path parameter that is not UTF-8 once percent-decoded is refused like any other bad
/// input: 4xx with a JSON error body.
#[tokio::test]
async fn a_non_utf8_path_parameter_gets_a_json_error() {
    let t = TestApp::spawn_with(Db::Sqlite, |c| c.worker.enabled = false).await;
    let app = t.new_app().await;
    let addr = t.running().addr;
    let auth = format!("Bearer {}", app.server_key);
    let mut problems = Vec::new();
    for (method, path) in [
        ("GET", "/v1/devices/%ff%fe"),
        ("PUT", "/v1/devices/%ff%fe"),
        ("DELETE", "/v1/devices/%ff%fe"),
        ("GET", "/v1/users/%ff/devices"),
        ("GET", "/v1/sources/%ff"),
        ("GET", "/v1/events/%ff"),
        ("GET", "/v1/deliveries/%ff"),
        ("GET", "/v1/templates/%ff"),
        ("POST", "/v1/webhooks/%ff/%fe"),
    ] {
        let raw = request(
            path,
            method,
            path,
            &[
                ("authorization", auth.as_bytes()),
                ("content-type", b"application/json"),
            ],
            br#"{"platform":"apns"}"#,
        );
        let (status, head, body) = tokio::task::spawn_blocking(move || exchange(addr, &raw.bytes))
            .await
            .expect("request");
        if let Err(problem) = check_refusal(status, &head, &body) {
            problems.push(format!("{method} {path}: {problem}"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// A direct send whose audience holds a NUL character is either refused or completes: it
/// must not wedge the fan-out (PostgreSQL cannot compare text with NUL in it).
async fn an_audience_with_a_nul_character_does_not_wedge_the_fan_out(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.worker.poll_interval_ms = 20).await;
    let app = t.new_app().await;
    let (status, resp) = t
        .call(
            Method::POST,
            "/v1/notifications",
            Some(&app.server_key),
            Some(json!({"to": {"user": "u\u{0}1"}, "template": {"title": "x", "body": "y"}})),
        )
        .await;
    if status == 202 {
        let id = resp["event_id"].as_str().expect("event id");
        t.wait_for(&format!("/v1/events/{id}"), &app.server_key, |e| {
            e["status"] == "completed"
        })
        .await;
    } else {
        assert!(check_refusal_json(status, &resp), "{status} {resp}");
    }
    t.shutdown().await;
}

fn check_refusal_json(status: u16, body: &Value) -> bool {
    (400..500).contains(&status) && body["error"]["code"].is_string()
}

backend_tests!(an_audience_with_a_nul_character_does_not_wedge_the_fan_out);

/// NUL characters in path parameters, query parameters and JSON strings get the same 400,
/// naming the parameter, on SQLite (which could store them) and PostgreSQL (which cannot).
async fn nul_characters_are_refused_alike_on_every_backend(db: Db) {
    let t = TestApp::spawn(db).await;
    let app = t.new_app().await;
    let apns = "ab".repeat(32);
    let cases: Vec<(Method, String, Option<Value>, &str)> = vec![
        (Method::GET, "/v1/devices/abc%00def".into(), None, "token"),
        (Method::GET, "/v1/sources/bill%00ing".into(), None, "name"),
        (Method::GET, "/v1/events/evt%00x".into(), None, "id"),
        (
            Method::POST,
            "/v1/deliveries/del%00x/retry".into(),
            None,
            "id",
        ),
        (
            Method::GET,
            "/v1/users/u%001/devices".into(),
            None,
            "user_id",
        ),
        (Method::GET, "/v1/events?type=a%00b".into(), None, "type"),
        (
            Method::POST,
            "/v1/deliveries/retry".into(),
            Some(json!({"event_id": "evt\u{0}"})),
            "event_id",
        ),
        (
            Method::PUT,
            format!("/v1/devices/{apns}"),
            Some(json!({"platform": "apns", "attributes": {"name": "a\u{0}"}})),
            "attributes.name",
        ),
        (
            Method::POST,
            "/v1/notifications".into(),
            Some(json!({"to": {"users": ["u1", "u\u{0}2"]}, "template": {"body": "x"}})),
            "to.users[1]",
        ),
    ];
    for (method, path, body, field) in cases {
        let (status, resp) = t
            .call(method.clone(), &path, Some(&app.server_key), body)
            .await;
        assert_eq!(status, 400, "{method} {path}: {resp}");
        assert_eq!(resp["error"]["code"], "bad_request", "{method} {path}");
        assert_eq!(resp["error"]["field"], field, "{method} {path}: {resp}");
    }
    t.shutdown().await;
}

backend_tests!(nul_characters_are_refused_alike_on_every_backend);

/// A method a route does not have gets 405, the JSON error body and an `Allow` header that
/// names the methods it does have.
#[tokio::test]
async fn a_wrong_method_gets_405_with_allow_and_a_json_error() {
    let t = TestApp::spawn_with(Db::Sqlite, |c| c.worker.enabled = false).await;
    for (method, path, allowed) in [
        (
            Method::DELETE,
            "/v1/sources".to_string(),
            vec!["GET", "POST"],
        ),
        (
            Method::PATCH,
            format!("/v1/devices/{}", crate::harness::apns_token(1)),
            vec!["GET", "PUT", "DELETE"],
        ),
    ] {
        let resp = t
            .client
            .request(method.clone(), t.url(&path))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 405, "{method} {path}");
        let allow = resp
            .headers()
            .get("allow")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        for m in allowed {
            assert!(
                allow.split(',').any(|a| a.trim() == m),
                "{path}: Allow {allow:?}"
            );
        }
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(body["error"]["code"], "method_not_allowed", "{body}");
    }
    t.shutdown().await;
}

/// The `Bearer` scheme name is matched case-insensitively, as HTTP says auth schemes are.
async fn the_bearer_scheme_is_case_insensitive(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.worker.enabled = false).await;
    let app = t.new_app().await;
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let resp = t
            .client
            .get(t.url("/v1/app"))
            .header("authorization", format!("{scheme} {}", app.server_key))
            .send()
            .await
            .expect("request");
        assert_eq!(resp.status(), 200, "{scheme}");
    }
    for bad in [
        format!("Bearerx {}", app.server_key),
        format!("Basic {}", app.server_key),
    ] {
        let (status, body) = {
            let resp = t
                .client
                .get(t.url("/v1/app"))
                .header("authorization", bad.clone())
                .send()
                .await
                .expect("request");
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.expect("JSON"))
        };
        assert_eq!(status, 401, "{bad}: {body}");
    }
    t.shutdown().await;
}

/// 414, 415 and 431 come with the API's JSON error body, like every other refusal.
async fn oversized_uris_and_headers_and_wrong_media_types_get_json_errors(db: Db) {
    let t = TestApp::spawn_with(db, |c| c.worker.enabled = false).await;
    let app = t.new_app().await;
    let limits = pushbridge::server::HttpConfig::default();
    let long_uri = t.url(&format!("/v1/app?pad={}", "x".repeat(limits.max_uri_bytes)));
    let cases = [
        (
            t.client.get(long_uri).bearer_auth(&app.server_key),
            414,
            "uri_too_long",
        ),
        (
            t.client
                .get(t.url("/v1/app"))
                .bearer_auth(&app.server_key)
                .header("x-pad", "y".repeat(limits.max_header_bytes + 1)),
            431,
            "headers_too_large",
        ),
        (
            t.client
                .put(t.url(&format!("/v1/devices/{}", crate::harness::apns_token(2))))
                .bearer_auth(&app.client_key)
                .header("content-type", "text/plain")
                .body(r#"{"platform":"apns"}"#),
            415,
            "unsupported_media_type",
        ),
    ];
    for (request, status, code) in cases {
        let resp = request.send().await.expect("request");
        assert_eq!(resp.status(), status, "{code}");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json"),
            "{code}"
        );
        let body: Value = resp.json().await.expect("JSON body");
        assert_eq!(body["error"]["code"], code, "{body}");
    }
    t.shutdown().await;
}

backend_tests!(
    the_bearer_scheme_is_case_insensitive,
    oversized_uris_and_headers_and_wrong_media_types_get_json_errors,
);
