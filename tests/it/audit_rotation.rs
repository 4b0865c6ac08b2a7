//! Audit rotation under concurrent traffic: the request path's check that the audit
//! file is still in place must not mistake the writer's own rotation for a vanished
//! file (it once answered a few requests 503 `audit_unavailable` mid-rotation).

use crate::common::{config, get, Behaviour, Proxy, Upstream};

#[tokio::test(flavor = "multi_thread")]
async fn rotation_under_load_refuses_nothing_and_keeps_the_chain() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let yaml = config(&format!(
        "upstreams: {{ api: {{ url: \"{}\" }} }}\nroutes: [{{ prefix: /api, upstream: api }}]\n",
        up.url()
    ))
    .replace(
        "audit: { path: data/audit.jsonl }",
        "audit: { path: data/audit.jsonl, rotate_bytes: 4096 }",
    );
    let mut proxy = Proxy::start(&yaml, &[]);
    let token = proxy.agent_token("bot").await;
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (addr, token) = (proxy.addr, token.clone());
            tokio::spawn(async move {
                let mut bad = Vec::new();
                for i in 0..60 {
                    let r = get(addr, &format!("/api/items/{i}"), &token).await;
                    if r.status != 200 {
                        bad.push((r.status, r.text()));
                    }
                }
                bad
            })
        })
        .collect();
    let mut bad = Vec::new();
    for t in tasks {
        bad.extend(t.await.unwrap());
    }
    assert!(
        bad.is_empty(),
        "refused during rotation: {:?}",
        &bad[..bad.len().min(3)]
    );
    assert_eq!(up.hits(), 16 * 60);

    // Every record is there after a graceful stop, across the rotated files, in one
    // verifiable chain.
    assert!(proxy
        .terminate(std::time::Duration::from_secs(30))
        .await
        .is_some_and(|s| s.success()));
    let dir = proxy.path("data");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_str()
                .unwrap()
                .starts_with("audit.jsonl.")
        })
        .collect();
    files.sort();
    assert!(files.len() >= 3, "rotation happened: {files:?}");
    files.push(dir.join("audit.jsonl"));
    let mut args = vec!["audit".to_string(), "verify".to_string()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = crate::common::run_bin(&args, &[], crate::common::CLI_BOUND);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let records: u64 = text
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(records >= 16 * 60, "{text}");
}
