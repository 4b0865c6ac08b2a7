//! `Portcullis-Rationale`: the agent's one-paragraph reason for a request, read from its
//! header (or an MCP call's `_meta`), checked, and kept with a parked request for the
//! operator. Never forwarded upstream (`upstream::CLIENT_STRIPPED` drops the header).

use crate::approval::controls::is_hidden;
use crate::error::Error;
use http::HeaderMap;

/// The request header an agent sends its rationale in.
pub const HEADER: http::HeaderName = http::HeaderName::from_static("portcullis-rationale");
/// The most bytes a rationale may hold after percent-decoding.
pub const MAX_BYTES: usize = 1000;

fn bad(detail: &str) -> Error {
    Error::BadRequest {
        reason: "bad_rationale",
        detail: format!("Portcullis-Rationale: {detail}"),
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// The rationale a request carries, if any: its header percent-decoded (`%XX` only;
/// `+` stays `+`), UTF-8, at most [`MAX_BYTES`], without control, invisible or
/// bidirectional characters (line breaks and tabs included: it is one paragraph).
/// An empty value is no rationale; more than one header is refused.
pub fn from_headers(h: &HeaderMap) -> Result<Option<String>, Error> {
    let mut all = h.get_all(HEADER).iter();
    let Some(v) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(bad("sent more than once"));
    }
    parse(v.as_bytes())
}

/// [`from_headers`] for one value.
pub fn parse(raw: &[u8]) -> Result<Option<String>, Error> {
    if raw.len() > MAX_BYTES * 3 {
        return Err(bad("longer than 1000 bytes"));
    }
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        if raw[i] == b'%' {
            match (
                raw.get(i + 1).copied().and_then(hex),
                raw.get(i + 2).copied().and_then(hex),
            ) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                    continue;
                }
                _ => return Err(bad("a `%` not followed by two hex digits")),
            }
        }
        out.push(raw[i]);
        i += 1;
    }
    if out.len() > MAX_BYTES {
        return Err(bad("longer than 1000 bytes after percent-decoding"));
    }
    let s = String::from_utf8(out).map_err(|_| bad("not UTF-8 after percent-decoding"))?;
    if let Some(c) = s.chars().find(|&c| c.is_control() || is_hidden(c)) {
        return Err(bad(&format!(
            "holds U+{:04X}, a control, invisible or bidirectional character",
            c as u32
        )));
    }
    let s = s.trim();
    Ok((!s.is_empty()).then(|| s.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Option<String> {
        parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn rationale_is_percent_decoded_utf8_text() {
        assert_eq!(ok("fix typo in title"), Some("fix typo in title".into()));
        assert_eq!(ok("caf%C3%A9 50%25 a+b"), Some("café 50% a+b".into()));
        assert_eq!(ok("  "), None);
        // Raw UTF-8 in the header is UTF-8 too.
        assert_eq!(parse("naïve".as_bytes()).unwrap(), Some("naïve".into()));
        assert_eq!(ok(&"a".repeat(1000)), Some("a".repeat(1000)));
        assert_eq!(ok(&"%41".repeat(1000)), Some("A".repeat(1000)));
    }

    #[test]
    fn rationale_refusals() {
        for bad in [
            "a".repeat(1001).into_bytes(),
            "%41".repeat(1001).into_bytes(),
            b"%E2%80%AEevil".to_vec(), // U+202E
            b"%E2%80%8B".to_vec(),     // zero width space
            b"line%0Abreak".to_vec(),
            b"nul%00".to_vec(),
            b"tab\there".to_vec(),
            b"%FF%FE".to_vec(),
            b"%zz".to_vec(),
            b"50%".to_vec(),
        ] {
            let e = parse(&bad).unwrap_err();
            assert_eq!(e.status(), http::StatusCode::BAD_REQUEST);
            assert_eq!(
                e.reason(),
                "bad_rationale",
                "{:?}",
                String::from_utf8_lossy(&bad)
            );
        }
    }
}
