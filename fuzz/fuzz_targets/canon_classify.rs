//! Arbitrary method, request target and header bytes through
//! `portcullis::canon::canonicalize`, then the classifier of a small fixed config: no
//! panic, and an accepted canonical path and query re-canonicalise to themselves.
//!
//! Input: byte 0 picks the HTTP version (bits 0-1) and whether a `Host` is added when
//! none is given (bit 2); the rest is split on `\n`: method, target, then `name:value`
//! header lines.
#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri, Version};
use libfuzzer_sys::fuzz_target;
use portcullis::canon::canonicalize;
use portcullis::config::Snapshot;
use std::sync::OnceLock;

const CONFIG: &str = r#"
listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: { embedded: data/p.redb }
audit: { path: data/audit.jsonl }
upstreams:
  api: { url: "http://127.0.0.1:9/v1" }
  files: { url: "http://127.0.0.1:9" }
routes:
  - prefix: /api
    upstream: api
    tool_prefix: api
    paths: ["/api/items/{id}", "/api/items/export", "/api/users/{id}/keys"]
    tools:
      - { match: "POST /api/items/{id}/refund", name: items.refund, risk: critical }
  - prefix: /files
    upstream: files
    allow_encoded_slash: true
profiles:
  reader: { tools: ["api.items.get"] }
agents:
  bot: { profile: reader }
"#;

fn snapshot() -> &'static Snapshot {
    static SNAP: OnceLock<Snapshot> = OnceLock::new();
    SNAP.get_or_init(|| {
        Snapshot::parse(std::path::Path::new("/fuzz/routes.yaml"), CONFIG, &|_| None)
            .expect("the fuzz config parses")
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let version = match flags & 3 {
        0 => Version::HTTP_10,
        1 => Version::HTTP_11,
        _ => Version::HTTP_2,
    };
    let mut lines = rest.split(|&b| b == b'\n');
    let (Some(m), Some(t)) = (lines.next(), lines.next()) else {
        return;
    };
    // What hyper would not hand over never reaches canon.
    let (Ok(method), Ok(uri)) = (Method::from_bytes(m), Uri::try_from(t)) else {
        return;
    };
    let mut headers = HeaderMap::new();
    for l in lines {
        let Some(at) = l.iter().position(|&b| b == b':') else {
            continue;
        };
        let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(&l[..at]),
            HeaderValue::from_bytes(l[at + 1..].trim_ascii()),
        ) else {
            continue;
        };
        headers.append(n, v);
    }
    if flags & 4 != 0 && !headers.contains_key(http::header::HOST) {
        headers.insert(http::header::HOST, HeaderValue::from_static("api.example"));
    }
    let Ok(c) = canonicalize(&method, &uri, version, &headers) else {
        return;
    };
    let _ = snapshot().classifier.classify(c.method, &c.path);

    // The canonical form is a fixed point.
    let pq = c.path_and_query();
    let mut again = Uri::builder();
    if let (Some(s), Some(a)) = (uri.scheme(), uri.authority()) {
        again = again.scheme(s.clone()).authority(a.clone());
    }
    let again = again
        .path_and_query(pq.as_str())
        .build()
        .unwrap_or_else(|e| panic!("canonical `{pq}` is not a request target: {e}"));
    let c2 = canonicalize(&method, &again, version, &headers)
        .unwrap_or_else(|e| panic!("canonical `{pq}` is refused when sent again: {e}"));
    assert_eq!(
        (c2.path.as_str(), c2.query.as_deref()),
        (c.path.as_str(), c.query.as_deref()),
        "`{pq}` canonicalises to something else"
    );
});
