//! The plaintext byte stream under one simulated HTTP/2 connection, between TLS and hyper:
//! it can go silent (every byte the server writes is dropped, as on a dead network path), it
//! can slip a frame hyper does not know how to send (APNs' GOAWAY with JSON debug data) in
//! between two of hyper's frames, and it learns the id of each stream the client opens.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const FRAME_HEADER_LEN: usize = 9;
const CLIENT_PREFACE_LEN: usize = 24;
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const END_STREAM: u8 = 0x1;
const GOAWAY: u8 = 0x7;
const NO_ERROR: u32 = 0;

/// What the connection's handlers share with its byte stream.
#[derive(Default)]
pub(super) struct TapControl {
    silent: AtomicBool,
    inner: Mutex<Shared>,
}

#[derive(Default)]
struct Shared {
    /// Ids of the streams the client opened, in the order their HEADERS arrived (the order
    /// in which hyper hands them to the service).
    opened: Vec<u32>,
    /// A frame to write at the next frame boundary.
    inject: Option<Bytes>,
    /// A frame to write once the server has ended this stream (its response is out).
    inject_after: Option<(u32, Bytes)>,
}

impl TapControl {
    /// From now on, everything the server writes is dropped; TCP stays open.
    pub fn silence(&self) {
        self.silent.store(true, Ordering::Relaxed);
    }

    /// The id of the `n`th stream (1-based) the client opened, if it has arrived.
    pub fn stream_id(&self, n: u64) -> Option<u32> {
        let shared = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let index = usize::try_from(n.checked_sub(1)?).ok()?;
        shared.opened.get(index).copied()
    }

    /// Queues a GOAWAY (NO_ERROR) naming `last_stream_id`, with `debug_data`, to go out
    /// right after the server's response on that stream: the client has every answer it was
    /// promised before it learns the connection is going away. (Some clients, python-h2
    /// among them, treat a received GOAWAY as the end of the connection and refuse frames
    /// that follow it.)
    pub fn go_away(&self, last_stream_id: u32, debug_data: &[u8]) {
        let mut frame = BytesMut::with_capacity(FRAME_HEADER_LEN + 8 + debug_data.len());
        let len = 8 + debug_data.len();
        frame.put_uint(len as u64, 3);
        frame.put_u8(GOAWAY);
        frame.put_u8(0);
        frame.put_u32(0);
        frame.put_u32(last_stream_id & 0x7fff_ffff);
        frame.put_u32(NO_ERROR);
        frame.put_slice(debug_data);
        self.inner
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .inject_after = Some((last_stream_id & 0x7fff_ffff, frame.freeze()));
    }
}

/// Follows HTTP/2 frame boundaries in one direction of a byte stream.
struct FrameScanner {
    /// Bytes still to skip before the first frame (the client preface).
    skip: usize,
    header: [u8; FRAME_HEADER_LEN],
    have: usize,
    payload_left: usize,
}

impl FrameScanner {
    fn new(skip: usize) -> Self {
        Self {
            skip,
            header: [0; FRAME_HEADER_LEN],
            have: 0,
            payload_left: 0,
        }
    }

    fn at_boundary(&self) -> bool {
        self.skip == 0 && self.have == 0 && self.payload_left == 0
    }

    /// Consumes `bytes`, calling `on_header(type, flags, stream_id)` for each complete frame
    /// header.
    fn scan(&mut self, mut bytes: &[u8], mut on_header: impl FnMut(u8, u8, u32)) {
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = self.skip.min(bytes.len());
                self.skip -= n;
                bytes = &bytes[n..];
            } else if self.payload_left > 0 {
                let n = self.payload_left.min(bytes.len());
                self.payload_left -= n;
                bytes = &bytes[n..];
            } else {
                let n = (FRAME_HEADER_LEN - self.have).min(bytes.len());
                self.header[self.have..self.have + n].copy_from_slice(&bytes[..n]);
                self.have += n;
                bytes = &bytes[n..];
                if self.have == FRAME_HEADER_LEN {
                    self.have = 0;
                    let h = &self.header;
                    self.payload_left =
                        (usize::from(h[0]) << 16) | (usize::from(h[1]) << 8) | usize::from(h[2]);
                    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
                    on_header(h[3], h[4], stream);
                }
            }
        }
    }
}

/// The tapped stream.
pub(super) struct Tap<T> {
    io: T,
    control: Arc<TapControl>,
    inbound: FrameScanner,
    outbound: FrameScanner,
    /// An injected frame not yet fully written.
    pending: Bytes,
}

impl<T> Tap<T> {
    pub fn new(io: T, control: Arc<TapControl>) -> Self {
        Self {
            io,
            control,
            inbound: FrameScanner::new(CLIENT_PREFACE_LEN),
            outbound: FrameScanner::new(0),
            pending: Bytes::new(),
        }
    }
}

impl<T: AsyncWrite + Unpin> Tap<T> {
    /// Writes the injected frame, if any is due and the stream is between two frames.
    fn poll_injected(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.pending.is_empty() && self.outbound.at_boundary() {
            let mut shared = self.control.inner.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(frame) = shared.inject.take() {
                self.pending = frame;
            }
        }
        while !self.pending.is_empty() {
            let n = std::task::ready!(Pin::new(&mut self.io).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Tap<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        std::task::ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        let control = &this.control;
        this.inbound
            .scan(&buf.filled()[before..], |kind, _, stream| {
                if kind == HEADERS && stream % 2 == 1 {
                    let mut shared = control.inner.lock().unwrap_or_else(|e| e.into_inner());
                    // Trailers arrive as HEADERS on a stream already open.
                    if shared.opened.last().is_none_or(|&last| stream > last) {
                        shared.opened.push(stream);
                    }
                }
            });
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tap<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if self.control.silent.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(buf.len()));
        }
        std::task::ready!(self.poll_injected(cx))?;
        let this = &mut *self;
        let n = std::task::ready!(Pin::new(&mut this.io).poll_write(cx, buf))?;
        let control = &this.control;
        this.outbound.scan(&buf[..n], |kind, flags, stream| {
            if (kind == DATA || kind == HEADERS) && flags & END_STREAM != 0 {
                let mut shared = control.inner.lock().unwrap_or_else(|e| e.into_inner());
                if shared
                    .inject_after
                    .as_ref()
                    .is_some_and(|(s, _)| *s == stream)
                {
                    // Written at the boundary after this frame.
                    shared.inject = shared.inject_after.take().map(|(_, frame)| frame);
                }
            }
        });
        Poll::Ready(Ok(n))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.control.silent.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        std::task::ready!(self.poll_injected(cx))?;
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.control.silent.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scanner_finds_headers_split_across_reads() {
        let mut frame = vec![0, 0, 3, HEADERS, 4, 0, 0, 0, 5, 1, 2, 3];
        frame.extend_from_slice(&[0, 0, 0, 0x4, 0, 0, 0, 0, 0]);
        let mut scanner = FrameScanner::new(0);
        let mut seen = Vec::new();
        for chunk in frame.chunks(4) {
            scanner.scan(chunk, |kind, _, stream| seen.push((kind, stream)));
        }
        assert_eq!(seen, vec![(HEADERS, 5), (0x4, 0)]);
        assert!(scanner.at_boundary());
    }
}
