//! A minimal raw HTTP/2 client for what a library client will not send or will not show
//! (stream resets and their codes, the server's SETTINGS, more streams than the server
//! allows), used by the connection and canonicalisation tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

// ---------------------------------------------------------------------------------------
// A raw HTTP/2 client
// ---------------------------------------------------------------------------------------

pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const REFUSED_STREAM: u32 = 0x7;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

#[derive(Debug, Clone)]
pub struct H2Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl H2Frame {
    /// The error code of a RST_STREAM (or GOAWAY) frame.
    pub fn error_code(&self) -> u32 {
        let at = if self.ty == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
    /// The (id, value) pairs of a SETTINGS frame.
    pub fn settings(&self) -> Vec<(u16, u32)> {
        self.payload
            .chunks_exact(6)
            .map(|c| {
                (
                    u16::from_be_bytes([c[0], c[1]]),
                    u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                )
            })
            .collect()
    }
}

pub fn h2_frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    assert!(len < (1 << 24));
    let mut v = Vec::with_capacity(9 + len);
    v.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
    v.push(ty);
    v.push(flags);
    v.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn hpack_int(out: &mut Vec<u8>, prefix_bits: u32, first: u8, v: usize) {
    let max = (1usize << prefix_bits) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    let mut rest = v - max;
    while rest >= 128 {
        out.push((rest % 128) as u8 | 0x80);
        rest /= 128;
    }
    out.push(rest as u8);
}

/// An HPACK header block of literal fields without indexing (new names, no Huffman), so
/// the decoder's dynamic table is never touched.
pub fn hpack_block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (n, v) in fields {
        out.push(0x00);
        hpack_int(&mut out, 7, 0x00, n.len());
        out.extend_from_slice(n.as_bytes());
        hpack_int(&mut out, 7, 0x00, v.len());
        out.extend_from_slice(v.as_bytes());
    }
    out
}

/// Decodes the `:status` a header block starts with, when it is a static-table index
/// (200, 204, 206, 304, 400, 404, 500) or a literal value (raw or Huffman-coded digits)
/// with the static `:status` name. `None` for anything else (e.g. a dynamic-table index).
pub fn h2_status(block: &[u8]) -> Option<u16> {
    let b = *block.first()?;
    if b & 0x80 != 0 {
        return match b & 0x7f {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // Literal with incremental indexing (01xxxxxx), without indexing (0000xxxx) or
    // never indexed (0001xxxx), name = static index 8..=14 (`:status`).
    let name_idx = if b & 0xc0 == 0x40 { b & 0x3f } else { b & 0x0f };
    if !(8..=14).contains(&name_idx) {
        return None;
    }
    let lb = *block.get(1)?;
    let len = (lb & 0x7f) as usize;
    let s = block.get(2..2 + len)?;
    let digits = if lb & 0x80 != 0 {
        huffman_digits(s)?
    } else {
        String::from_utf8(s.to_vec()).ok()?
    };
    digits.parse().ok()
}

/// HPACK Huffman decoding restricted to the digits `0`-`9` (all a status needs).
fn huffman_digits(s: &[u8]) -> Option<String> {
    let bits: Vec<u8> = s
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let code = |from: usize, n: usize| -> Option<u32> {
        bits.get(from..from + n)
            .map(|b| b.iter().fold(0u32, |a, &x| (a << 1) | x as u32))
    };
    while i < bits.len() {
        // Padding: the rest is all ones and shorter than 8 bits.
        if bits.len() - i < 8 && bits[i..].iter().all(|&b| b == 1) {
            break;
        }
        match code(i, 5)? {
            0b00000 => out.push('0'),
            0b00001 => out.push('1'),
            0b00010 => out.push('2'),
            _ => match code(i, 6)? {
                v @ 0b011001..=0b011111 => {
                    out.push(char::from(b'3' + (v - 0b011001) as u8));
                    i += 6;
                    continue;
                }
                _ => return None,
            },
        }
        i += 5;
    }
    Some(out)
}

/// One raw HTTP/2 connection (cleartext, prior knowledge). SETTINGS and PINGs from the
/// server are acknowledged as they are read.
pub struct H2Raw {
    s: TcpStream,
    buf: Vec<u8>,
    /// Every frame read so far, in order.
    pub frames: Vec<H2Frame>,
}

impl H2Raw {
    /// Connects, sends the preface, an empty SETTINGS and a large connection window.
    pub async fn connect(addr: SocketAddr) -> H2Raw {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        let mut hello = H2_PREFACE.to_vec();
        hello.extend(h2_frame(SETTINGS, 0, 0, &[]));
        hello.extend(h2_frame(WINDOW_UPDATE, 0, 0, &(1u32 << 30).to_be_bytes()));
        s.write_all(&hello).await.expect("write preface");
        H2Raw {
            s,
            buf: Vec::new(),
            frames: Vec::new(),
        }
    }

    pub async fn write(&mut self, bytes: &[u8]) {
        self.s.write_all(bytes).await.expect("write frames");
    }

    /// The frames of one request's header block (HEADERS, then CONTINUATIONs past 16 KiB).
    pub fn headers_frames(stream: u32, fields: &[(&str, &str)], end_stream: bool) -> Vec<u8> {
        let block = hpack_block(fields);
        let chunks: Vec<&[u8]> = block.chunks(16_384).collect();
        let mut out = Vec::new();
        for (i, c) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            let mut flags = if last { END_HEADERS } else { 0 };
            let ty = if i == 0 {
                if end_stream {
                    flags |= END_STREAM;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            out.extend(h2_frame(ty, flags, stream, c));
        }
        out
    }

    pub async fn send_headers(&mut self, stream: u32, fields: &[(&str, &str)], end_stream: bool) {
        let bytes = Self::headers_frames(stream, fields, end_stream);
        self.write(&bytes).await;
    }

    /// The next frame, or `None` on EOF or when nothing arrives within `bound`.
    pub async fn next_frame(&mut self, bound: Duration) -> Option<H2Frame> {
        let end = tokio::time::Instant::now() + bound;
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let f = H2Frame {
                        ty: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    if f.ty == SETTINGS && f.flags & 0x1 == 0 {
                        self.write(&h2_frame(SETTINGS, 0x1, 0, &[])).await;
                    }
                    if f.ty == PING && f.flags & 0x1 == 0 {
                        let pong = h2_frame(PING, 0x1, 0, &f.payload);
                        self.write(&pong).await;
                    }
                    self.frames.push(f.clone());
                    return Some(f);
                }
            }
            let mut tmp = [0u8; 16_384];
            match tokio::time::timeout_at(end, self.s.read(&mut tmp)).await {
                Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
                Ok(Ok(n)) => self.buf.extend_from_slice(&tmp[..n]),
            }
        }
    }

    /// Reads until `pred` holds for a frame (returned), or panics after `bound`.
    pub async fn until(
        &mut self,
        what: &str,
        bound: Duration,
        pred: impl Fn(&H2Frame) -> bool,
    ) -> H2Frame {
        let end = Instant::now() + bound;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Some(f) if pred(&f) => return f,
                Some(_) => continue,
                None => panic!(
                    "no frame {what} within {bound:?}; frames so far: {:?}",
                    self.frames
                        .iter()
                        .map(|f| (f.ty, f.flags, f.stream, f.payload.len()))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    /// Reads one whole response on `stream`: its status (see [`h2_status`]) and body,
    /// or the RST_STREAM code that ended it.
    pub async fn response(&mut self, stream: u32, bound: Duration) -> H2Answer {
        let mut status = None;
        let mut body = Vec::new();
        let end = Instant::now() + bound;
        // Frames of this stream already read (e.g. while waiting for another).
        let mut seen: Vec<H2Frame> = self
            .frames
            .iter()
            .filter(|f| f.stream == stream)
            .cloned()
            .collect();
        loop {
            for f in seen.drain(..) {
                match f.ty {
                    HEADERS if status.is_none() => status = Some(h2_status(&f.payload)),
                    DATA => body.extend_from_slice(&f.payload),
                    RST_STREAM => return H2Answer::Reset(f.error_code()),
                    _ => {}
                }
                if f.flags & END_STREAM != 0 && (f.ty == HEADERS || f.ty == DATA) {
                    return H2Answer::Response {
                        status: status.flatten(),
                        body,
                    };
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            match self.next_frame(left).await {
                Some(f) if f.stream == stream => seen.push(f),
                Some(f) if f.ty == GOAWAY => {
                    panic!(
                        "GOAWAY (code {}) while waiting for stream {stream}",
                        f.error_code()
                    )
                }
                Some(_) => {}
                None => panic!("stream {stream}: no complete response within {bound:?}"),
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum H2Answer {
    Response { status: Option<u16>, body: Vec<u8> },
    Reset(u32),
}

/// The request pseudo-headers and credential for a GET over the raw client.
pub fn h2_get<'a>(authority: &'a str, path: &'a str, auth: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", authority),
        (":path", path),
        ("authorization", auth),
    ]
}
