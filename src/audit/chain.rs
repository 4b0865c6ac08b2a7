//! The line format and its hash chain. A line is `{...,"prev":"P","hash":"H"}` where H is
//! the SHA-256 (hex) of the line's bytes up to `,"hash"` followed by `}` — so verifying
//! needs no re-serialisation, and any edited byte breaks it.

use sha2::{Digest, Sha256};

/// `,"hash":"` + 64 hex + `"}`.
pub const LINE_HASH_SUFFIX_LEN: usize = 9 + 64 + 2;

pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Seals a JSON object that already ends in `"prev":"..."}`: returns the full line
/// (without newline) and its hash.
#[cfg(test)]
pub fn seal(body: &str) -> (String, String) {
    let mut line = body.as_bytes().to_vec();
    let hash = seal_in_place(&mut line, 0);
    (String::from_utf8(line).expect("JSON is UTF-8"), hash)
}

/// Seals, in place, the JSON object `out[start..]` (which ends in `"prev":"..."}`):
/// appends the hash field to it and returns the hash. No copy of the line is made.
pub fn seal_in_place(out: &mut Vec<u8>, start: usize) -> String {
    let digest = Sha256::digest(&out[start..]);
    debug_assert_eq!(out.last(), Some(&b'}'));
    out.pop();
    out.extend_from_slice(b",\"hash\":\"");
    let at = out.len();
    out.resize(at + 64, 0);
    crate::digest::write_hex(&digest, &mut out[at..]);
    let hash = String::from_utf8(out[at..].to_vec()).expect("hex digits are ASCII");
    out.extend_from_slice(b"\"}");
    hash
}

/// Splits a sealed line into (body as it was hashed, claimed hash).
pub fn unseal(line: &str) -> Option<(String, &str)> {
    if line.len() < LINE_HASH_SUFFIX_LEN + 2 || !line.ends_with("\"}") {
        return None;
    }
    let cut = line.len() - LINE_HASH_SUFFIX_LEN;
    let suffix = &line[cut..];
    if !suffix.starts_with(",\"hash\":\"") {
        return None;
    }
    let hash = &suffix[9..9 + 64];
    if !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut body = line[..cut].to_string();
    body.push('}');
    Some((body, hash))
}

pub fn hash_of(body: &str) -> String {
    crate::digest::to_hex(&Sha256::digest(body.as_bytes()))
}

/// `path?query` with the values of the named query parameters replaced by `REDACTED`.
pub fn redact_query(path_and_query: &str, names: &[String]) -> String {
    let Some((path, q)) = path_and_query.split_once('?') else {
        return path_and_query.to_string();
    };
    let parts: Vec<String> = q
        .split('&')
        .map(|pair| {
            let (k, v) = pair
                .split_once('=')
                .map_or((pair, None), |(k, v)| (k, Some(v)));
            match v {
                Some(_) if names.iter().any(|n| n.eq_ignore_ascii_case(k)) => {
                    format!("{k}=REDACTED")
                }
                _ => pair.to_string(),
            }
        })
        .collect();
    format!("{path}?{}", parts.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_unseal_round_trip() {
        let (line, hash) = seal("{\"seq\":1,\"prev\":\"00\"}");
        let (body, claimed) = unseal(&line).unwrap();
        assert_eq!(claimed, hash);
        assert_eq!(hash_of(&body), hash);
        assert!(
            unseal(&line.replace("\"seq\":1", "\"seq\":2")).is_some_and(|(b, h)| hash_of(&b) != h)
        );
    }

    #[test]
    fn redaction() {
        let names = vec!["token".to_string(), "api_key".to_string()];
        assert_eq!(
            redact_query("/a?token=s3cret&x=1&API_KEY=k", &names),
            "/a?token=REDACTED&x=1&API_KEY=REDACTED"
        );
        assert_eq!(redact_query("/a", &names), "/a");
        assert_eq!(redact_query("/a?token", &names), "/a?token");
    }
}
