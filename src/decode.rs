//! The admin side's decoders of client text: percent-escapes, query parameters, form
//! bodies and the session cookie. They work on bytes, so no input can make them slice
//! inside a character; `fuzz/fuzz_targets/admin_decoders.rs` runs them on arbitrary bytes.

use std::collections::HashMap;

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `%XX` (two hex digits) → that byte, `+` → space, everything else as it is; the bytes
/// are then read as UTF-8, an invalid sequence becoming U+FFFD. A `%` not followed by
/// two hex digits stays a `%`.
pub fn percent_decode(s: &[u8]) -> String {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'%' => match (
                s.get(i + 1).copied().and_then(hex),
                s.get(i + 2).copied().and_then(hex),
            ) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `k=v` pairs of a query string or an `application/x-www-form-urlencoded` body, both
/// sides decoded; a pair without `=` has an empty value.
pub fn pairs(s: &[u8]) -> impl Iterator<Item = (String, String)> + '_ {
    s.split(|&b| b == b'&').filter(|p| !p.is_empty()).map(|p| {
        match p.iter().position(|&b| b == b'=') {
            Some(at) => (percent_decode(&p[..at]), percent_decode(&p[at + 1..])),
            None => (percent_decode(p), String::new()),
        }
    })
}

/// The first value of parameter `name` in a query string.
pub fn query_param(query: &str, name: &str) -> Option<String> {
    pairs(query.as_bytes()).find_map(|(k, v)| (k == name).then_some(v))
}

/// A form body as a map; of a repeated field, the first value counts.
pub fn form(body: &[u8]) -> HashMap<String, String> {
    let mut m = HashMap::new();
    for (k, v) in pairs(body) {
        m.entry(k).or_insert(v);
    }
    m
}

/// The value of cookie `name` in the `Cookie` header values given (first match). Only
/// visible ASCII counts: a cookie with other bytes is not a session this side issued.
pub fn cookie<'a>(values: impl IntoIterator<Item = &'a [u8]>, name: &str) -> Option<String> {
    values
        .into_iter()
        .flat_map(|v| v.split(|&b| b == b';'))
        .find_map(|c| {
            let c = c.trim_ascii();
            let v = c.strip_prefix(name.as_bytes())?.strip_prefix(b"=")?;
            (!v.is_empty() && v.iter().all(|b| b.is_ascii_graphic()))
                .then(|| String::from_utf8_lossy(v).into_owned())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_next_to_multibyte_characters_decode_on_bytes() {
        assert_eq!(percent_decode("%E2%82%AC€%4".as_bytes()), "€€%4");
        assert_eq!(percent_decode("€%".as_bytes()), "€%");
        assert_eq!(percent_decode("%€1".as_bytes()), "%€1");
        assert_eq!(percent_decode(b"%+1%2"), "% 1%2");
        assert_eq!(percent_decode(b"a+b%20c%zz"), "a b c%zz");
        assert_eq!(percent_decode(b"%ff%C3%A9"), "\u{FFFD}é");
        assert_eq!(percent_decode(b"%41"), "A");
    }

    #[test]
    fn forms_queries_and_cookies() {
        let f = form("token=%E2%82%AC€%4&csrf=a&csrf=b&flag&=x".as_bytes());
        assert_eq!(f["token"], "€€%4");
        assert_eq!(f["csrf"], "a");
        assert_eq!(f["flag"], "");
        assert_eq!(
            query_param("x=1&done=approved", "done").as_deref(),
            Some("approved")
        );
        assert_eq!(query_param("st%61te=all", "state").as_deref(), Some("all"));
        assert_eq!(query_param("done", "state"), None);
        let h: [&[u8]; 2] = [b"a=1; pc_s=zz", b" pc_session=abc123 ; b=2"];
        assert_eq!(cookie(h, "pc_session").as_deref(), Some("abc123"));
        let bad: [&[u8]; 1] = ["pc_session=\u{e9}".as_bytes()];
        assert_eq!(cookie(bad, "pc_session"), None);
    }
}
