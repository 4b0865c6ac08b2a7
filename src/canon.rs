//! Request → one canonical method, path and query, or a refusal.
//!
//! Everything downstream (routing, classification, scope, audit, forwarding) sees only
//! this form, so what is decided is byte for byte what is sent. What cannot be put into
//! one unambiguous form is refused here and never reaches a backend.

use crate::error::Error;
use http::{HeaderMap, Uri, Version};

/// The methods portcullis forwards. Anything else (including lower case) is 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Patch,
    Delete,
    Options,
}

impl Method {
    pub fn parse(s: &str) -> Option<Method> {
        Some(match s {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "PATCH" => Method::Patch,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
        }
    }
    pub fn to_http(self) -> http::Method {
        match self {
            Method::Get => http::Method::GET,
            Method::Head => http::Method::HEAD,
            Method::Post => http::Method::POST,
            Method::Put => http::Method::PUT,
            Method::Patch => http::Method::PATCH,
            Method::Delete => http::Method::DELETE,
            Method::Options => http::Method::OPTIONS,
        }
    }
}

impl std::fmt::Display for Method {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The one form a request is decided and forwarded in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Canonical {
    pub method: Method,
    pub path: String,
    pub query: Option<String>,
    /// The authority the client addressed (Host, or `:authority` on HTTP/2).
    pub host: String,
    /// The path kept a `%2F`; allowed only on routes with `allow_encoded_slash`.
    pub encoded_slash: bool,
}

impl Canonical {
    /// Path plus `?query` as forwarded.
    pub fn path_and_query(&self) -> String {
        match &self.query {
            Some(q) => format!("{}?{}", self.path, q),
            None => self.path.clone(),
        }
    }
}

const OVERRIDE_HEADERS: [&str; 3] = [
    "x-http-method-override",
    "x-http-method",
    "x-method-override",
];

fn bad(reason: &'static str, detail: impl Into<String>) -> Error {
    Error::BadRequest {
        reason,
        detail: detail.into(),
    }
}

/// Canonicalises method, target and the headers that change what a target means.
pub fn canonicalize(
    method: &http::Method,
    uri: &Uri,
    version: Version,
    headers: &HeaderMap,
) -> Result<Canonical, Error> {
    let m = match Method::parse(method.as_str()) {
        Some(m) => m,
        None => return Err(Error::MethodNotAllowed(method.as_str().to_string())),
    };
    let host = host_of(uri, version, headers)?;
    check_headers(headers)?;

    let path = uri.path();
    if uri.scheme().is_none() && uri.authority().is_some() {
        return Err(bad(
            "authority_form",
            "authority-form request targets are not accepted",
        ));
    }
    if !path.starts_with('/') {
        return Err(bad(
            "bad_target",
            "the request target must be an absolute path",
        ));
    }
    let (path, encoded_slash) = canonical_path(path)?;
    let query = match uri.query() {
        Some(q) => Some(canonical_query(q)?),
        None => None,
    };
    Ok(Canonical {
        method: m,
        path,
        query,
        host,
        encoded_slash,
    })
}

fn host_of(uri: &Uri, version: Version, headers: &HeaderMap) -> Result<String, Error> {
    let mut hosts = headers.get_all(http::header::HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(bad("duplicate_host", "more than one Host header"));
    }
    let host = match host {
        Some(h) => Some(
            h.to_str()
                .map_err(|_| bad("bad_host", "Host is not ASCII"))?,
        ),
        None => None,
    };
    let authority = uri.authority().map(|a| a.as_str());
    let chosen = match (host, authority) {
        (Some(h), Some(a)) => {
            if !h.eq_ignore_ascii_case(a) {
                let what = if version == Version::HTTP_2 {
                    ":authority"
                } else {
                    "the absolute-form target's authority"
                };
                return Err(bad("host_mismatch", format!("{what} differs from Host")));
            }
            h
        }
        (Some(h), None) => h,
        (None, Some(a)) if version == Version::HTTP_2 => a,
        _ => return Err(bad("missing_host", "the request has no Host")),
    };
    match chosen.parse::<http::uri::Authority>() {
        Ok(a) if !a.as_str().contains('@') && !a.host().is_empty() => Ok(a.as_str().to_string()),
        _ => Err(bad("bad_host", "Host is not a valid authority")),
    }
}

fn check_headers(headers: &HeaderMap) -> Result<(), Error> {
    for name in headers.keys() {
        let n = name.as_str();
        if n.contains('_') {
            return Err(bad(
                "underscore_header",
                format!("header names may not contain `_` ({n})"),
            ));
        }
        if OVERRIDE_HEADERS.contains(&n) {
            return Err(bad(
                "method_override",
                format!("method-override header {n} is not accepted"),
            ));
        }
        if n == "upgrade" {
            return Err(bad("upgrade", "protocol upgrades are not proxied"));
        }
    }
    Ok(())
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// pchar minus `;` (and minus `%`, handled by the caller).
fn is_path_char(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+' | b',' | b'=' | b':' | b'@'
        )
}

fn raw_refusal(b: u8) -> Error {
    match b {
        b'\\' => bad("backslash", "a raw `\\` is not accepted"),
        b';' => bad("semicolon", "a raw `;` is not accepted"),
        0..=0x1f | 0x7f => bad("control_byte", "control bytes are not accepted"),
        0x80..=0xff => bad("non_ascii", "non-ASCII bytes must be percent-encoded"),
        _ => bad(
            "bad_character",
            format!("`{}` is not accepted in a request target", b as char),
        ),
    }
}

/// Reads `%XX` at `i`; returns the byte it encodes.
fn escape_at(s: &[u8], i: usize) -> Result<u8, Error> {
    match (
        s.get(i + 1).copied().and_then(hex_val),
        s.get(i + 2).copied().and_then(hex_val),
    ) {
        (Some(h), Some(l)) => Ok(h << 4 | l),
        _ => Err(bad(
            "bad_escape",
            "a `%` that is not followed by two hex digits",
        )),
    }
}

/// Tracks the bytes the escapes of one target decode to: a backend decodes them as
/// UTF-8, so an invalid sequence (an overlong `..`, a lone continuation byte, a
/// surrogate) has no one meaning and is refused.
#[derive(Default)]
struct Utf8Check {
    pending: [u8; 4],
    len: usize,
}

impl Utf8Check {
    /// Feeds one decoded byte of an escape; a raw ASCII byte ends any sequence.
    fn escaped(&mut self, b: u8) -> Result<(), Error> {
        if self.len == 0 && b < 0x80 {
            return Ok(());
        }
        self.pending[self.len] = b;
        self.len += 1;
        match std::str::from_utf8(&self.pending[..self.len]) {
            Ok(_) => {
                self.len = 0;
                Ok(())
            }
            Err(e) if e.error_len().is_none() && self.len < 4 => Ok(()),
            Err(_) => Err(bad_utf8()),
        }
    }
    /// A raw byte or the end of the target: no sequence may be left open.
    fn boundary(&mut self) -> Result<(), Error> {
        if self.len != 0 {
            return Err(bad_utf8());
        }
        Ok(())
    }
}

fn bad_utf8() -> Error {
    bad(
        "bad_utf8",
        "percent-escapes must decode to valid UTF-8 (no overlong forms, surrogates or stray bytes)",
    )
}

fn canonical_path(path: &str) -> Result<(String, bool), Error> {
    let s = path.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut encoded_slash = false;
    let mut utf8 = Utf8Check::default();
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let v = escape_at(s, i)?;
            utf8.escaped(v)?;
            match v {
                b'/' => {
                    encoded_slash = true;
                    out.push_str(&path[i..i + 3]);
                }
                b'.' => return Err(bad("encoded_dot", "an encoded `.` is not accepted")),
                b'\\' => return Err(bad("encoded_backslash", "an encoded `\\` is not accepted")),
                b'%' => {
                    return Err(bad(
                        "encoded_percent",
                        "an encoded `%` (double encoding) is not accepted",
                    ))
                }
                b';' => return Err(bad("encoded_semicolon", "an encoded `;` is not accepted")),
                b'#' => return Err(bad("encoded_hash", "an encoded `#` is not accepted")),
                0..=0x1f | 0x7f => {
                    return Err(bad(
                        "encoded_control",
                        "an encoded NUL or control byte is not accepted",
                    ))
                }
                v if is_unreserved(v) => out.push(v as char),
                _ => out.push_str(&path[i..i + 3]),
            }
            i += 3;
            continue;
        }
        if b != b'/' && !is_path_char(b) {
            return Err(raw_refusal(b));
        }
        utf8.boundary()?;
        out.push(b as char);
        i += 1;
    }
    utf8.boundary()?;
    check_segments(&out)?;
    if encoded_slash {
        // A backend that decodes `%2F` before routing must not find dot or empty
        // segments either: check the path as it would see it.
        check_segments(&out.replace("%2F", "/").replace("%2f", "/"))?;
    }
    Ok((out, encoded_slash))
}

fn check_segments(path: &str) -> Result<(), Error> {
    let segs: Vec<&str> = path[1..].split('/').collect();
    for (n, seg) in segs.iter().enumerate() {
        if *seg == "." || *seg == ".." {
            return Err(bad(
                "dot_segment",
                "`.` and `..` path segments are not accepted",
            ));
        }
        if seg.is_empty() && n + 1 != segs.len() {
            return Err(bad("empty_segment", "`//` is not accepted"));
        }
    }
    Ok(())
}

fn canonical_query(q: &str) -> Result<String, Error> {
    let s = q.as_bytes();
    let mut out = String::with_capacity(s.len());
    let mut utf8 = Utf8Check::default();
    let mut i = 0;
    while i < s.len() {
        let b = s[i];
        if b == b'%' {
            let v = escape_at(s, i)?;
            utf8.escaped(v)?;
            if is_unreserved(v) {
                out.push(v as char);
            } else {
                out.push_str(&q[i..i + 3]);
            }
            i += 3;
            continue;
        }
        if !(is_path_char(b) || b == b'/' || b == b'?') {
            return Err(raw_refusal(b));
        }
        utf8.boundary()?;
        out.push(b as char);
        i += 1;
    }
    utf8.boundary()?;
    // Names are read as the frameworks that honour `_method` read them (PHP drops leading
    // spaces and turns ` `, `+` and `.` into `_`: `?+_method=` and `?.method=` are
    // Symfony's and Laravel's `_method` too), with the body scanner's urlencoded rules.
    let mut scan = crate::override_scan::Scanner::new(crate::override_scan::Format::UrlEncoded);
    if scan
        .feed(out.as_bytes())
        .and_then(|()| scan.finish())
        .is_err()
    {
        return Err(bad(
            "method_override",
            "a `_method` query parameter is not accepted",
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canon(method: &str, target: &str) -> Result<Canonical, Error> {
        canon_h(method, target, &[("host", "proxy.test")])
    }

    fn canon_h(method: &str, target: &str, hs: &[(&str, &str)]) -> Result<Canonical, Error> {
        let mut headers = HeaderMap::new();
        for (k, v) in hs {
            headers.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
            );
        }
        let uri: Uri = target.parse().unwrap();
        canonicalize(
            &http::Method::from_bytes(method.as_bytes()).unwrap(),
            &uri,
            Version::HTTP_11,
            &headers,
        )
    }

    fn reason(r: Result<Canonical, Error>) -> String {
        match r {
            Err(Error::BadRequest { reason, .. }) => reason.to_string(),
            Err(Error::MethodNotAllowed(_)) => "405".into(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn accepted_forms() {
        let cases = [
            ("/tickets/42", "/tickets/42", None),
            ("/tickets/42/", "/tickets/42/", None),
            ("/%61dmin", "/admin", None),
            ("/t/caf%C3%A9", "/t/caf%C3%A9", None),
            ("/t/caf%c3%a9", "/t/caf%c3%a9", None),
            (
                "/t/%E2%82%AC/%F0%9F%98%80",
                "/t/%E2%82%AC/%F0%9F%98%80",
                None,
            ),
            ("/t?q=%E2%82%AC", "/t", Some("q=%E2%82%AC")),
            ("/t/a%20b", "/t/a%20b", None),
            ("/t/%7euser", "/t/~user", None),
            ("/t?a=1&b=%2F", "/t", Some("a=1&b=%2F")),
            ("/t?q=%61b", "/t", Some("q=ab")),
            (
                "/t?pay.method=card&x_method=1&_methods=2&a=_method",
                "/t",
                Some("pay.method=card&x_method=1&_methods=2&a=_method"),
            ),
            ("/t?", "/t", Some("")),
            ("/", "/", None),
            ("/t/a:b@c,d=e+f", "/t/a:b@c,d=e+f", None),
            ("http://proxy.test/t/1", "/t/1", None),
        ];
        for (target, path, query) in cases {
            let c = canon("GET", target).unwrap_or_else(|e| panic!("{target}: {e:?}"));
            assert_eq!(
                (c.path.as_str(), c.query.as_deref()),
                (path, query),
                "{target}"
            );
        }
        assert!(canon("GET", "/a%2Fb").unwrap().encoded_slash);
        assert!(!canon("GET", "/a/b").unwrap().encoded_slash);
    }

    #[test]
    fn refused_targets() {
        let cases = [
            ("/a/%2e%2e/admin", "encoded_dot"),
            ("/a/%2E", "encoded_dot"),
            ("/a/%5cadmin", "encoded_backslash"),
            ("/a/%25252e", "encoded_percent"),
            ("/a/%3bx", "encoded_semicolon"),
            ("/a/%23x", "encoded_hash"),
            ("/a/%00", "encoded_control"),
            ("/a/%0a", "encoded_control"),
            ("/a/%7f", "encoded_control"),
            ("/a/%zz", "bad_escape"),
            ("/a/%4", "bad_escape"),
            ("/a/../admin", "dot_segment"),
            ("/a/./b", "dot_segment"),
            ("/a/..", "dot_segment"),
            ("//admin", "empty_segment"),
            ("/a//b", "empty_segment"),
            ("/a/1%2F..%2Fadmin", "dot_segment"),
            ("/a/%2F%2Fx", "empty_segment"),
            ("/a/x%2f.", "dot_segment"),
            ("/a;jsessionid=1", "semicolon"),
            ("/a?x=1;_method=DELETE", "semicolon"),
            ("/a?_method=DELETE", "method_override"),
            ("/a?x=1&_METHOD=DELETE", "method_override"),
            ("/a?%5Fmethod=DELETE", "method_override"),
            ("/a?+_method=DELETE", "method_override"),
            ("/a?%20_method=DELETE", "method_override"),
            ("/a?.method=DELETE", "method_override"),
            ("/a?x=1&_method%5B%5D=DELETE", "method_override"),
            ("/a?_method", "method_override"),
            ("http://evil.test/a", "host_mismatch"),
            ("*", "bad_target"),
            ("/a/%C0%AE%C0%AE/admin", "bad_utf8"),
            ("/a/%E0%80%AF", "bad_utf8"),
            ("/a/%80", "bad_utf8"),
            ("/a/x%BFy", "bad_utf8"),
            ("/a/%ED%A0%80", "bad_utf8"),
            ("/a/%C3", "bad_utf8"),
            ("/a/%C3x", "bad_utf8"),
            ("/a/%F4%90%80%80", "bad_utf8"),
            ("/a?q=%C0%AF", "bad_utf8"),
            ("/a?q=%E9", "bad_utf8"),
        ];
        for (target, want) in cases {
            assert_eq!(reason(canon("GET", target)), want, "{target}");
        }
    }

    #[test]
    fn refused_raw_bytes() {
        // Bytes `Uri` itself would refuse are refused by hyper before us; these get through it.
        for (target, want) in [
            ("/a\\b", "backslash"),
            ("/a{b", "bad_character"),
            ("/a|b", "bad_character"),
            ("/a^b", "bad_character"),
        ] {
            if let Ok(uri) = target.parse::<Uri>() {
                let mut h = HeaderMap::new();
                h.insert("host", "p".parse().unwrap());
                assert_eq!(
                    reason(canonicalize(&http::Method::GET, &uri, Version::HTTP_11, &h)),
                    want,
                    "{target}"
                );
            }
        }
        assert_eq!(
            reason(canonical_path("/caf\u{e9}").map(|_| canon("GET", "/").unwrap())),
            "non_ascii"
        );
        assert_eq!(
            reason(canonical_path("/a\x01").map(|_| canon("GET", "/").unwrap())),
            "control_byte"
        );
    }

    #[test]
    fn refused_methods_and_headers() {
        for m in ["CONNECT", "TRACE", "get", "PROPFIND", "Get"] {
            assert_eq!(reason(canon(m, "/a")), "405", "{m}");
        }
        let cases: [(&[(&str, &str)], &str); 8] = [
            (&[], "missing_host"),
            (&[("host", "a"), ("host", "b")], "duplicate_host"),
            (&[("host", "a"), ("x_tenant_id", "x")], "underscore_header"),
            (
                &[("host", "a"), ("x-http-method-override", "DELETE")],
                "method_override",
            ),
            (
                &[("host", "a"), ("x-http-method", "DELETE")],
                "method_override",
            ),
            (
                &[("host", "a"), ("x-method-override", "DELETE")],
                "method_override",
            ),
            (&[("host", "a"), ("upgrade", "websocket")], "upgrade"),
            (&[("host", "u@a")], "bad_host"),
        ];
        for (hs, want) in cases {
            assert_eq!(reason(canon_h("GET", "/a", hs)), want, "{hs:?}");
        }
    }

    #[test]
    fn http2_authority_must_agree_with_host() {
        let uri: Uri = "https://proxy.test/a".parse().unwrap();
        let mut h = HeaderMap::new();
        assert!(canonicalize(&http::Method::GET, &uri, Version::HTTP_2, &h).is_ok());
        h.insert("host", "other.test".parse().unwrap());
        assert_eq!(
            reason(canonicalize(&http::Method::GET, &uri, Version::HTTP_2, &h)),
            "host_mismatch"
        );
    }
}
