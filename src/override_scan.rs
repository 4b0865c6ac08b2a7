//! `_method` in request bodies: frameworks that honour it (Rails/Rack and Laravel by
//! default, Symfony and Spring when enabled) run a `POST` whose form or JSON body
//! carries `_method=DELETE` as a `DELETE`, so the gate would have classified one tool
//! and the backend would run another. The scanners here find such a field while the
//! body streams, with a few bytes of state and no buffering of the body.
//!
//! What counts as the field is what those frameworks accept: names are matched after
//! PHP's and Rack's normalisation (leading spaces dropped, ` ` and `.` read as `_`,
//! ASCII case ignored, `_method[...]` included).

use crate::body::BoxError;
use crate::error::Error;
use bytes::Bytes;
use http::{header, HeaderMap};
use http_body::{Frame, SizeHint};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

/// The body formats a framework parses for `_method`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `application/x-www-form-urlencoded`, and a body with no Content-Type
    /// (Rack parses a POST without one as a form).
    UrlEncoded,
    /// `multipart/*`
    Multipart,
    /// Any `…json` media type (Laravel reads `_method` from a JSON body's top level).
    Json,
}

/// The format to scan a body as, from its Content-Type; `None` for formats no
/// framework reads `_method` from.
///
/// The media type is read as leniently as the frameworks read it: PHP cuts it at the
/// first `;`, `,` or space (`application/x-www-form-urlencoded, text/plain` is a form
/// there), and Laravel takes any header containing `/json` or `+json` for JSON
/// (`text/plain; profile="/json"`). A Content-Type that two of those readings take for
/// different formats, or a second Content-Type header (frameworks differ on which one
/// wins), has no one meaning: refused (`ambiguous_content_type`).
pub fn format_of(h: &HeaderMap) -> Result<Option<Format>, Error> {
    let mut values = h.get_all(header::CONTENT_TYPE).iter();
    let Some(v) = values.next() else {
        return Ok(Some(Format::UrlEncoded));
    };
    if values.next().is_some() {
        return Err(ambiguous("more than one Content-Type header"));
    }
    // Not ASCII: no framework agrees on what it says; scan it as the strictest.
    let Ok(v) = v.to_str() else {
        return Ok(Some(Format::UrlEncoded));
    };
    let lower = v.to_ascii_lowercase();
    let media = lower
        .trim_start()
        .split([';', ',', ' ', '\t'])
        .next()
        .unwrap_or("");
    let by_media = if media.is_empty() || media == "application/x-www-form-urlencoded" {
        Some(Format::UrlEncoded)
    } else if media.starts_with("multipart/") {
        Some(Format::Multipart)
    } else if media.contains("json") {
        Some(Format::Json)
    } else {
        None
    };
    let json_anywhere = lower.contains("/json") || lower.contains("+json");
    match by_media {
        Some(f) if f != Format::Json && json_anywhere => {
            Err(ambiguous("the Content-Type reads as a form and as JSON"))
        }
        None if json_anywhere => Ok(Some(Format::Json)),
        f => Ok(f),
    }
}

fn ambiguous(detail: &str) -> Error {
    Error::BadRequest {
        reason: "ambiguous_content_type",
        detail: format!("{detail}: frameworks would disagree on how to read the body"),
    }
}

/// A `_method` field was found.
#[derive(Debug, thiserror::Error)]
#[error("the body carries a `_method` field (method override)")]
pub struct Found;

/// The longest name kept for comparison; longer names cannot be `_method[…]`-short
/// and are only marked as too long.
const NAME_CAP: usize = 24;

/// A bounded name buffer: enough of a field name to compare with `_method`.
#[derive(Default)]
struct Name {
    buf: [u8; NAME_CAP],
    len: usize,
    long: bool,
    started: bool,
}

impl Name {
    fn push(&mut self, b: u8) {
        // Leading spaces are dropped (PHP and Rack both do).
        if !self.started && b == b' ' {
            return;
        }
        self.started = true;
        if self.len < NAME_CAP {
            self.buf[self.len] = b;
            self.len += 1;
        } else {
            self.long = true;
        }
    }
    fn reset(&mut self) {
        *self = Name::default();
    }
    fn is_override(&self) -> bool {
        is_override_name(&self.buf[..self.len], self.long)
    }
}

/// `_method`, `_METHOD`, ` .method`, `_method[]`… as PHP and Rack read them.
fn is_override_name(name: &[u8], long: bool) -> bool {
    const WANT: &[u8] = b"_method";
    if name.len() < WANT.len() {
        return false;
    }
    let norm = |b: u8| match b {
        b' ' | b'.' => b'_',
        b => b.to_ascii_lowercase(),
    };
    if !name[..WANT.len()]
        .iter()
        .map(|b| norm(*b))
        .eq(WANT.iter().copied())
    {
        return false;
    }
    match name.get(WANT.len()) {
        None => !long,
        Some(b'[') => true,
        Some(_) => false,
    }
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

/// Streams one body's bytes through the scanner of its format.
pub struct Scanner {
    format: Format,
    name: Name,
    /// urlencoded: inside a name (vs a value); `%` escape progress.
    in_name: bool,
    esc: Option<Option<u8>>,
    /// multipart: where in `; name="…"` we are.
    mp: Mp,
    prev: u8,
    /// json: nesting depth, string state, and whether the last string may be a key.
    depth: u32,
    in_str: bool,
    str_esc: Option<StrEsc>,
    key_pending: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mp {
    Scan,
    /// Matched this many bytes of `name`.
    Word(u8),
    AfterWord,
    BeforeValue,
    Quoted,
    QuotedEsc,
    Token,
}

#[derive(Clone, Copy)]
enum StrEsc {
    Backslash,
    /// `\u` and the hex digits read so far (count, value).
    Unicode(u8, u32),
}

impl Scanner {
    pub fn new(format: Format) -> Scanner {
        Scanner {
            format,
            name: Name::default(),
            in_name: true,
            esc: None,
            mp: Mp::Scan,
            prev: b'\n',
            depth: 0,
            in_str: false,
            str_esc: None,
            key_pending: false,
        }
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Found> {
        for &b in chunk {
            match self.format {
                Format::UrlEncoded => self.urlencoded(b)?,
                Format::Multipart => self.multipart(b)?,
                Format::Json => self.json(b)?,
            }
        }
        Ok(())
    }

    /// The body ended: a last field without `=` still counts.
    pub fn finish(&mut self) -> Result<(), Found> {
        match self.format {
            Format::UrlEncoded if self.in_name && self.name.is_override() => Err(Found),
            Format::Multipart if matches!(self.mp, Mp::Token) && self.name.is_override() => {
                Err(Found)
            }
            _ => Ok(()),
        }
    }

    fn urlencoded(&mut self, b: u8) -> Result<(), Found> {
        if !self.in_name {
            if b == b'&' || b == b';' {
                self.in_name = true;
                self.name.reset();
            }
            return Ok(());
        }
        if let Some(hi) = self.esc {
            match (hi, hex(b)) {
                (None, Some(h)) => self.esc = Some(Some(h)),
                (Some(h), Some(l)) => {
                    self.esc = None;
                    self.name.push(h << 4 | l);
                }
                // Not an escape after all: frameworks keep the bytes as they are.
                (hi, _) => {
                    self.esc = None;
                    self.name.push(b'%');
                    if let Some(h) = hi {
                        self.name.push(b"0123456789abcdef"[h as usize]);
                    }
                    return self.urlencoded(b);
                }
            }
            return Ok(());
        }
        match b {
            b'%' => self.esc = Some(None),
            b'+' => self.name.push(b' '),
            b'=' => {
                if self.name.is_override() {
                    return Err(Found);
                }
                self.in_name = false;
            }
            b'&' | b';' => {
                if self.name.is_override() {
                    return Err(Found);
                }
                self.name.reset();
            }
            _ => self.name.push(b),
        }
        Ok(())
    }

    fn multipart(&mut self, b: u8) -> Result<(), Found> {
        const WORD: &[u8] = b"name";
        let prev = std::mem::replace(&mut self.prev, b);
        match self.mp {
            Mp::Scan => {
                if b.eq_ignore_ascii_case(&b'n') && matches!(prev, b';' | b' ' | b'\t') {
                    self.mp = Mp::Word(1);
                }
            }
            Mp::Word(i) => {
                if b.eq_ignore_ascii_case(&WORD[i as usize]) {
                    self.mp = if i as usize + 1 == WORD.len() {
                        Mp::AfterWord
                    } else {
                        Mp::Word(i + 1)
                    };
                } else {
                    self.mp = Mp::Scan;
                    self.prev = prev;
                    return self.multipart(b);
                }
            }
            Mp::AfterWord => match b {
                b' ' | b'\t' | b'*' => {}
                b'=' => self.mp = Mp::BeforeValue,
                _ => {
                    self.mp = Mp::Scan;
                    self.prev = prev;
                    return self.multipart(b);
                }
            },
            Mp::BeforeValue => match b {
                b' ' | b'\t' => {}
                b'"' => {
                    self.name.reset();
                    self.mp = Mp::Quoted;
                }
                _ => {
                    self.name.reset();
                    self.mp = Mp::Token;
                    self.name.push(b);
                }
            },
            Mp::Quoted => match b {
                b'"' => {
                    self.mp = Mp::Scan;
                    return self.check_param();
                }
                b'\\' => self.mp = Mp::QuotedEsc,
                _ => self.name.push(b),
            },
            Mp::QuotedEsc => {
                self.name.push(b);
                self.mp = Mp::Quoted;
            }
            Mp::Token => match b {
                b';' | b' ' | b'\t' | b'\r' | b'\n' => {
                    self.mp = Mp::Scan;
                    return self.check_param();
                }
                _ => self.name.push(b),
            },
        }
        Ok(())
    }

    /// A multipart `name` parameter's value, also in RFC 2231 form (`utf-8''_method`).
    fn check_param(&mut self) -> Result<(), Found> {
        let v = &self.name.buf[..self.name.len];
        let v = match v.windows(2).position(|w| w == b"''") {
            Some(i) => &v[i + 2..],
            None => v,
        };
        if is_override_name(v, self.name.long) {
            return Err(Found);
        }
        Ok(())
    }

    fn json(&mut self, b: u8) -> Result<(), Found> {
        if self.in_str {
            match self.str_esc {
                Some(StrEsc::Backslash) => {
                    self.str_esc = None;
                    if b == b'u' {
                        self.str_esc = Some(StrEsc::Unicode(0, 0));
                    } else {
                        self.name.push(b);
                    }
                }
                Some(StrEsc::Unicode(n, v)) => {
                    let v = v << 4 | hex(b).map_or(0, u32::from);
                    if n == 3 {
                        self.str_esc = None;
                        // Only ASCII can spell `_method`; anything else just ends a match.
                        self.name.push(if v < 0x80 { v as u8 } else { 0xff });
                    } else {
                        self.str_esc = Some(StrEsc::Unicode(n + 1, v));
                    }
                }
                None => match b {
                    b'\\' => self.str_esc = Some(StrEsc::Backslash),
                    b'"' => {
                        self.in_str = false;
                        self.key_pending = self.depth == 1;
                    }
                    _ => self.name.push(b),
                },
            }
            return Ok(());
        }
        match b {
            b' ' | b'\t' | b'\r' | b'\n' => return Ok(()),
            b':' if self.key_pending => {
                // A top-level key: JSON keys are exact, so no PHP mangling here.
                let n = &self.name.buf[..self.name.len];
                if n == b"_method" && !self.name.long {
                    return Err(Found);
                }
            }
            b'"' => {
                self.in_str = true;
                self.name = Name {
                    started: true,
                    ..Name::default()
                };
            }
            b'{' | b'[' => self.depth = self.depth.saturating_add(1),
            b'}' | b']' => self.depth = self.depth.saturating_sub(1),
            _ => {}
        }
        self.key_pending = false;
        Ok(())
    }
}

/// The refusal for a body that carries `_method`.
pub fn refusal() -> Error {
    Error::BadRequest {
        reason: "method_override",
        detail: "a `_method` field in the body is not accepted (frameworks would run another method than the one decided)".into(),
    }
}

/// How much of a body is read and scanned before anything is sent upstream: a form
/// smaller than this that carries `_method` never reaches the backend at all.
pub const PRESCAN_BYTES: usize = 64 * 1024;

/// A body whose first bytes were read and scanned already, followed by the rest,
/// scanned as it streams. A `_method` found in the rest fails the stream, which
/// aborts the upstream request before its body is complete.
pub struct Guarded<B> {
    head: VecDeque<Bytes>,
    rest: Option<B>,
    scanner: Scanner,
}

/// Reads up to [`PRESCAN_BYTES`] of `body` through the scanner and returns a body that
/// replays them and scans the rest. A `_method` in the prefix is refused here.
pub async fn guard<B>(mut body: B, format: Format) -> Result<Guarded<B>, Error>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    let mut scanner = Scanner::new(format);
    let mut head = VecDeque::new();
    let mut seen = 0;
    while seen < PRESCAN_BYTES {
        match body.frame().await {
            None => {
                scanner.finish().map_err(|_| refusal())?;
                return Ok(Guarded {
                    head,
                    rest: None,
                    scanner,
                });
            }
            Some(Err(e)) => {
                let e: BoxError = e.into();
                return Err(if crate::body::is_too_large(&*e) {
                    Error::BodyTooLarge {
                        limit: crate::body::too_large_limit(&*e).unwrap_or(0),
                    }
                } else {
                    Error::BadRequest {
                        reason: "bad_body",
                        detail: "the request body could not be read".into(),
                    }
                });
            }
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    scanner.feed(&data).map_err(|_| refusal())?;
                    seen += data.len();
                    head.push_back(data);
                }
            }
        }
    }
    Ok(Guarded {
        head,
        rest: Some(body),
        scanner,
    })
}

impl<B> http_body::Body for Guarded<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(b) = this.head.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(b))));
        }
        let Some(rest) = this.rest.as_mut() else {
            return Poll::Ready(None);
        };
        loop {
            match Pin::new(&mut *rest).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => {
                        if this.scanner.feed(&data).is_err() {
                            return Poll::Ready(Some(Err(Box::new(Found))));
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Err(_trailers) => continue,
                },
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e.into()))),
                Poll::Ready(None) => {
                    this.rest = None;
                    if this.scanner.finish().is_err() {
                        return Poll::Ready(Some(Err(Box::new(Found))));
                    }
                    return Poll::Ready(None);
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.head.is_empty() && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let head: u64 = self.head.iter().map(|b| b.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(head),
            Some(r) => {
                let h = r.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(h.lower() + head);
                if let Some(u) = h.upper() {
                    out.set_upper(u + head);
                }
                out
            }
        }
    }
}

/// Whether an error chain holds a [`Found`].
pub fn is_found(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<Found>() {
            return true;
        }
        cur = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(f: Format, body: &[u8]) -> bool {
        // Every split point: the state carries across chunk boundaries.
        let whole = {
            let mut s = Scanner::new(f);
            s.feed(body).and_then(|_| s.finish()).is_err()
        };
        for cut in 0..body.len() {
            let mut s = Scanner::new(f);
            let r = s
                .feed(&body[..cut])
                .and_then(|_| s.feed(&body[cut..]))
                .and_then(|_| s.finish())
                .is_err();
            assert_eq!(
                r,
                whole,
                "split at {cut}: {}",
                String::from_utf8_lossy(body)
            );
        }
        whole
    }

    #[test]
    fn urlencoded() {
        for b in [
            "_method=DELETE",
            "a=1&_method=DELETE",
            "a=1;_method=DELETE",
            "%5Fmethod=DELETE",
            "%5fMETHOD=PATCH",
            "_method",
            "a=1&_method",
            " _method=x",
            "+_method=x",
            ".method=x",
            "+.method=x",
            "_method[]=DELETE",
            "a=%26&_method=x",
            "a=1&%5F%6D%65%74%68%6F%64=DELETE",
        ] {
            assert!(found(Format::UrlEncoded, b.as_bytes()), "{b}");
        }
        for b in [
            "a=_method",
            "method=DELETE",
            "+method=x",
            "_methods=x",
            "x_method=x",
            "a=1&b=_method%3DDELETE",
            "",
            "_metho",
            "%zz_method=1",
        ] {
            assert!(!found(Format::UrlEncoded, b.as_bytes()), "{b}");
        }
    }

    #[test]
    fn multipart() {
        let part = |disp: &str| {
            format!("--b\r\nContent-Disposition: form-data; {disp}\r\n\r\nDELETE\r\n--b--\r\n")
        };
        for d in [
            "name=\"_method\"",
            "NAME=\"_METHOD\"",
            "name = \"_method\"",
            "name=_method",
            "name*=utf-8''_method",
            "name=\"_method[]\"",
            "name=\" _method\"",
        ] {
            assert!(found(Format::Multipart, part(d).as_bytes()), "{d}");
        }
        for d in ["name=\"method\"", "filename=\"x\"", "name=\"a\"; x=_method"] {
            assert!(!found(Format::Multipart, part(d).as_bytes()), "{d}");
        }
    }

    #[test]
    fn json_top_level_keys() {
        for b in [
            r#"{"_method":"DELETE"}"#,
            r#"{"a":1, "_method" : "DELETE"}"#,
            r#"{"\u005fmethod":"DELETE"}"#,
            r#"{"a":{"b":[1,2]},"_method":"x"}"#,
        ] {
            assert!(found(Format::Json, b.as_bytes()), "{b}");
        }
        for b in [
            r#"{"a":{"_method":"DELETE"}}"#,
            r#"{"a":"_method"}"#,
            r#"["_method"]"#,
            r#"{"a":"\"_method\":"}"#,
            r#"{"_methods":1}"#,
        ] {
            assert!(!found(Format::Json, b.as_bytes()), "{b}");
        }
    }

    #[test]
    fn content_types() {
        let ct = |v: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = v {
                h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            }
            format_of(&h).unwrap()
        };
        assert_eq!(ct(None), Some(Format::UrlEncoded));
        assert_eq!(
            ct(Some("application/x-www-form-urlencoded; charset=utf-8")),
            Some(Format::UrlEncoded)
        );
        assert_eq!(
            ct(Some("Multipart/Form-Data; boundary=x")),
            Some(Format::Multipart)
        );
        assert_eq!(ct(Some("application/vnd.api+json")), Some(Format::Json));
        assert_eq!(ct(Some("application/octet-stream")), None);
        // PHP's reading: the media type ends at `;`, `,` or a space.
        for v in [
            "application/x-www-form-urlencoded, text/plain",
            "application/x-www-form-urlencoded foo",
            " Application/X-WWW-Form-Urlencoded;charset=utf-8",
        ] {
            assert_eq!(ct(Some(v)), Some(Format::UrlEncoded), "{v}");
        }
        assert_eq!(
            ct(Some("text/plain, application/x-www-form-urlencoded")),
            None
        );
        // Laravel's isJson(): `/json` or `+json` anywhere in the header.
        assert_eq!(
            ct(Some("text/plain; profile=\"/json\"")),
            Some(Format::Json)
        );
        let refused = |h: &HeaderMap| match format_of(h) {
            Err(Error::BadRequest { reason, .. }) => reason == "ambiguous_content_type",
            _ => false,
        };
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; x=/json"
                .parse()
                .unwrap(),
        );
        assert!(refused(&h));
        let mut h = HeaderMap::new();
        h.append(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        h.append(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        assert!(refused(&h));
    }
}
