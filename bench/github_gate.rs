//! The gate-benchmark setup shared by `benches/gate.rs` and the `bench-gate-github`
//! driver: an agent request's headers, GitHub's spec decompressed, and the config on it.

use http::{HeaderMap, HeaderValue};
use std::path::Path;

/// The headers of an agent's request (Host, a bearer credential, Accept, User-Agent).
pub fn request_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(http::header::HOST, HeaderValue::from_static("api.example"));
    headers.insert(
        http::header::AUTHORIZATION,
        HeaderValue::from_static("Bearer pcx_0123456789abcdef_secret"),
    );
    headers.insert(http::header::ACCEPT, HeaderValue::from_static("*/*"));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static("agent/1.0"),
    );
    headers
}

/// GitHub's REST description, decompressed into `dir`; returns its path.
pub fn github_spec(dir: &Path) -> std::path::PathBuf {
    use std::io::Read;
    let gz = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/openapi/github/api.github.com-3.0.json.gz");
    let mut bytes = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(gz).expect("github spec"))
        .read_to_end(&mut bytes)
        .expect("gunzip");
    let out = dir.join("github.json");
    std::fs::write(&out, bytes).expect("write spec");
    out
}

/// One route importing GitHub's description, a scoped profile and an admin one.
pub fn github_yaml(spec: &Path) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
         upstreams:\n  github: {{ url: \"https://api.github.com\", inject: {{ header: Authorization, value_env: KEY }} }}\n\
         routes:\n  - prefix: /github\n    upstream: github\n    strip_prefix: true\n    validate: request\n    openapi: {}\n\
         profiles:\n  \
         scoped:\n    tools: [\"github.issues.*\", \"github.repos.get*\", \"github.pulls.list*\"]\n    \
         max_risk: medium\n    approval: [\"github.repos.create_*\"]\n    deny: [\"*.delete*\"]\n  \
         ops: {{ admin: true }}\n\
         agents:\n  bot: {{ profile: scoped }}\n  opsbot: {{ profile: ops }}\n",
        spec.display()
    )
}
