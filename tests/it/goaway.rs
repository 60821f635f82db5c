//! The simulator's APNs GOAWAY as a third-party client sees it on the wire: Apple's single
//! GOAWAY with the last processed stream id and JSON debug data, no shutdown PING.

use std::time::Duration;

use crate::harness::simulator;
use crate::harness::wire::{read_until_closed, tls_connect};
use pushbridge::simulator::{apns_test_token, ApnsTestKind, Faults, Side};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = len.to_be_bytes()[1..].to_vec();
    out.extend_from_slice(&[kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HPACK "literal header field without indexing, new name", no Huffman coding.
fn header_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.push(0);
        out.push(name.len() as u8);
        out.extend_from_slice(name.as_bytes());
        out.push(value.len() as u8);
        out.extend_from_slice(value.as_bytes());
    }
    out
}

fn request(stream: u32, token: &str) -> Vec<u8> {
    let path = format!("/3/device/{token}");
    let block = header_block(&[
        (":method", "POST"),
        (":scheme", "https"),
        (":authority", "localhost"),
        (":path", &path),
        ("apns-topic", "com.example.app"),
    ]);
    let mut out = frame(HEADERS, END_HEADERS, stream, &block);
    out.extend(frame(
        DATA,
        END_STREAM,
        stream,
        br#"{"aps":{"alert":"hi"}}"#,
    ));
    out
}

/// (type, flags, stream id, payload) of each frame in `bytes`.
fn frames(mut bytes: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
    let mut out = Vec::new();
    while bytes.len() >= 9 {
        let len = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let stream = u32::from_be_bytes([bytes[5], bytes[6], bytes[7], bytes[8]]) & 0x7fff_ffff;
        let payload = bytes[9..9 + len].to_vec();
        out.push((bytes[3], bytes[4], stream, payload));
        bytes = &bytes[9 + len..];
    }
    out
}

#[tokio::test]
async fn apns_goaway_is_a_single_frame_with_the_last_stream_and_a_json_reason() {
    let sim = simulator().await;
    sim.set_faults(Faults {
        goaway_after_streams: Some(1),
        ..Faults::default()
    });
    let mut tls = tls_connect(sim.apns_addr(), &[b"h2"]).await;
    let mut out = PREFACE.to_vec();
    out.extend(frame(SETTINGS, 0, 0, &[]));
    out.extend(request(1, &apns_test_token(ApnsTestKind::Success, 1)));
    out.extend(request(3, &apns_test_token(ApnsTestKind::Success, 2)));
    tls.write_all(&out).await.unwrap();

    let (bytes, _) = read_until_closed(&mut tls, Duration::from_secs(8))
        .await
        .expect("the simulator closes the connection after its GOAWAY");

    let frames = frames(&bytes);
    let goaways: Vec<_> = frames.iter().filter(|f| f.0 == GOAWAY).collect();
    assert_eq!(goaways.len(), 1, "{frames:?}");
    let payload = &goaways[0].3;
    assert_eq!(u32::from_be_bytes(payload[0..4].try_into().unwrap()), 1);
    assert_eq!(u32::from_be_bytes(payload[4..8].try_into().unwrap()), 0);
    let debug: Value = serde_json::from_slice(&payload[8..]).unwrap();
    assert_eq!(debug, serde_json::json!({"reason": "Shutdown"}));
    assert!(!frames.iter().any(|f| f.0 == PING), "{frames:?}");
    // Stream 1 is answered; stream 3, beyond the GOAWAY, is neither answered nor processed.
    assert!(frames.iter().any(|f| f.0 == HEADERS && f.2 == 1));
    assert!(!frames.iter().any(|f| f.0 == HEADERS && f.2 == 3));
    assert_eq!(
        sim.records()
            .iter()
            .filter(|r| r.side == Side::Apns)
            .count(),
        1
    );
}
