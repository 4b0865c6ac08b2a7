//! `Content-Encoding` of a parked body: the codings parking accepts (any other is
//! refused with 415 `unsupported_encoding` before the body is read), and decoding them
//! for an approver to read, bounded. The stored bytes — what will be sent, what
//! `request_sha256` covers — are never changed.

use crate::error::Error;
use flate2::read::{DeflateDecoder, MultiGzDecoder, ZlibDecoder};
use std::io::Read;

/// More stacked codings than this is no real client: refused, and not worth decoding.
const MAX_CODINGS: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
    Br,
}

impl Coding {
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
            Coding::Br => "br",
        }
    }
}

/// The codings `Content-Encoding` values name, in the order they were applied
/// (`identity` and empty list elements dropped); `None` when one cannot be decoded here
/// or there are more than four.
pub fn codings<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Option<Vec<Coding>> {
    let mut out = Vec::new();
    for v in values {
        for t in v.split(|&b| b == b',').map(<[u8]>::trim_ascii) {
            let c = match t.to_ascii_lowercase().as_slice() {
                b"" | b"identity" => continue,
                b"gzip" | b"x-gzip" => Coding::Gzip,
                b"deflate" => Coding::Deflate,
                b"br" => Coding::Br,
                _ => return None,
            };
            out.push(c);
        }
    }
    (out.len() <= MAX_CODINGS).then_some(out)
}

/// Parking refuses a body an approver could not read decoded: 415 `unsupported_encoding`.
pub fn check_parkable(headers: &http::HeaderMap) -> Result<(), Error> {
    let values = headers
        .get_all(http::header::CONTENT_ENCODING)
        .iter()
        .map(|v| v.as_bytes());
    match codings(values) {
        Some(_) => Ok(()),
        None => Err(Error::UnsupportedMediaType {
            reason: "unsupported_encoding",
            detail: format!(
                "a request that waits for approval may carry a body encoded with gzip, x-gzip, deflate or br (at most {MAX_CODINGS} codings), or none; an approver could not read this one"
            ),
        }),
    }
}

/// A parked body as an approver reads it.
#[derive(Debug, PartialEq, Eq)]
pub enum ForDisplay {
    /// No `Content-Encoding` (or only `identity`): the bytes as sent.
    AsSent,
    /// Decoded through `codings` (outermost first), at most `limit` bytes of it.
    Decoded {
        bytes: Vec<u8>,
        truncated: bool,
        codings: Vec<Coding>,
    },
    /// The header names a coding that cannot be decoded, or the bytes do not decode.
    Undecodable,
}

/// Decodes `raw` as its kept `headers` say, keeping at most `limit` decoded bytes.
pub fn for_display(raw: &[u8], headers: &[(String, String)], limit: usize) -> ForDisplay {
    let values = headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("content-encoding"))
        .map(|(_, v)| v.as_bytes());
    let Some(codings) = codings(values) else {
        return ForDisplay::Undecodable;
    };
    if codings.is_empty() || raw.is_empty() {
        return ForDisplay::AsSent;
    }
    let mut bytes = raw.to_vec();
    let mut truncated = false;
    for c in codings.iter().rev() {
        match layer(&bytes, *c, limit) {
            Ok((b, t)) => {
                bytes = b;
                truncated |= t;
            }
            // An inner layer cut at the bound ends early: what was decoded stands.
            Err(b) if truncated => {
                bytes = b;
            }
            Err(_) => return ForDisplay::Undecodable,
        }
    }
    ForDisplay::Decoded {
        bytes,
        truncated,
        codings,
    }
}

/// One coding undone: (at most `limit` bytes, cut?) or, on a decoding error, what was
/// decoded before it.
fn layer(input: &[u8], c: Coding, limit: usize) -> Result<(Vec<u8>, bool), Vec<u8>> {
    let r: Box<dyn Read + '_> = match c {
        Coding::Gzip => Box::new(MultiGzDecoder::new(input)),
        // HTTP's `deflate` is the zlib format; some clients send raw deflate, which
        // servers commonly accept too.
        Coding::Deflate if zlib_header(input) => Box::new(ZlibDecoder::new(input)),
        Coding::Deflate => Box::new(DeflateDecoder::new(input)),
        Coding::Br => Box::new(brotli_decompressor::Decompressor::new(input, 4096)),
    };
    let mut out = Vec::new();
    let read = r.take(limit as u64 + 1).read_to_end(&mut out);
    let cut = out.len() > limit;
    out.truncate(limit);
    match read {
        Ok(_) => Ok((out, cut)),
        Err(_) => Err(out),
    }
}

fn zlib_header(b: &[u8]) -> bool {
    matches!(b, [cmf, flg, ..] if cmf & 0x0f == 8 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{GzEncoder, ZlibEncoder};
    use flate2::Compression;
    use std::io::Write;

    fn gzip(b: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    }

    fn ce(v: &str) -> Vec<(String, String)> {
        vec![("content-encoding".into(), v.into())]
    }

    #[test]
    fn codings_parse_and_unknown_ones_are_refused() {
        let c = |v: &str| codings([v.as_bytes()]);
        assert_eq!(c("gzip"), Some(vec![Coding::Gzip]));
        assert_eq!(
            c(" X-GZip , br,,identity"),
            Some(vec![Coding::Gzip, Coding::Br])
        );
        assert_eq!(c(""), Some(vec![]));
        for bad in [
            "zstd",
            "compress",
            "gzip, zstd",
            "gzip;q=1",
            "gzip,gzip,gzip,gzip,gzip",
        ] {
            assert_eq!(c(bad), None, "{bad}");
        }
        let mut h = http::HeaderMap::new();
        h.append("content-encoding", "gzip".parse().unwrap());
        assert!(check_parkable(&h).is_ok());
        h.append("content-encoding", "zstd".parse().unwrap());
        let e = check_parkable(&h).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.reason()),
            (415, "unsupported_encoding")
        );
    }

    #[test]
    fn encoded_bodies_decode_bounded() {
        let text = "refund \u{202E}all".repeat(100);
        let z = gzip(text.as_bytes());
        assert_eq!(
            for_display(&z, &ce("gzip"), 1 << 20),
            ForDisplay::Decoded {
                bytes: text.as_bytes().to_vec(),
                truncated: false,
                codings: vec![Coding::Gzip]
            }
        );
        // A bomb is cut at the bound.
        let bomb = gzip(&vec![b'a'; 4 << 20]);
        match for_display(&bomb, &ce("gzip"), 1000) {
            ForDisplay::Decoded {
                bytes, truncated, ..
            } => {
                assert_eq!((bytes.len(), truncated), (1000, true));
            }
            other => panic!("{other:?}"),
        }
        // Two layers, the inner one cut by the bound: still shown, marked cut.
        let two = gzip(&gzip(&vec![b'b'; 100_000]));
        match for_display(&two, &ce("gzip, gzip"), 50) {
            ForDisplay::Decoded {
                bytes, truncated, ..
            } => assert!(truncated && bytes.len() <= 50),
            other => panic!("{other:?}"),
        }
        let mut zl = ZlibEncoder::new(Vec::new(), Compression::default());
        zl.write_all(b"deflated").unwrap();
        let zl = zl.finish().unwrap();
        assert!(
            matches!(for_display(&zl, &ce("deflate"), 100), ForDisplay::Decoded { bytes, .. } if bytes == b"deflated")
        );
        // Brotli (vectors from the decoder's own tests: 20 bytes, and 176,128 bytes).
        let br = [
            0x1b, 0x13, 0x00, 0x00, 0xa4, 0xb0, 0xb2, 0xea, 0x81, 0x47, 0x02, 0x8a,
        ];
        assert!(
            matches!(for_display(&br, &ce("br"), 100), ForDisplay::Decoded { bytes, truncated: false, .. } if bytes == b"XXXXXXXXXXYYYYYYYYYY")
        );
        let fox = [
            0x5B, 0xFF, 0xAF, 0x02, 0xC0, 0x22, 0x79, 0x5C, 0xFB, 0x5A, 0x8C, 0x42, 0x3B, 0xF4,
            0x25, 0x55, 0x19, 0x5A, 0x92, 0x99, 0xB1, 0x35, 0xC8, 0x19, 0x9E, 0x9E, 0x0A, 0x7B,
            0x4B, 0x90, 0xB9, 0x3C, 0x98, 0xC8, 0x09, 0x40, 0xF3, 0xE6, 0xD9, 0x4D, 0xE4, 0x6D,
            0x65, 0x1B, 0x27, 0x87, 0x13, 0x5F, 0xA6, 0xE9, 0x30, 0x96, 0x7B, 0x3C, 0x15, 0xD8,
            0x53, 0x1C,
        ];
        assert!(
            matches!(for_display(&fox, &ce("br"), 1000), ForDisplay::Decoded { bytes, truncated: true, .. } if bytes.starts_with(b"The quick brown fox") && bytes.len() == 1000)
        );
        assert_eq!(for_display(b"plain", &[], 100), ForDisplay::AsSent);
        assert_eq!(
            for_display(b"not gzip", &ce("gzip"), 100),
            ForDisplay::Undecodable
        );
        assert_eq!(for_display(b"x", &ce("zstd"), 100), ForDisplay::Undecodable);
    }
}
