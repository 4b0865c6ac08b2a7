//! README "Hot reload" under load: the new config is swapped in atomically, so requests
//! in flight while the file is replaced are answered wholly by the old or wholly by the
//! new config, never with an error; `*_file` secrets are re-read on reload, so an
//! upstream credential rotates without a restart (and a reload that cannot read it is
//! refused, the old credential still in force).

use crate::common::write_atomically;
use crate::common::*;
use crate::support::admin::{op, policy_version};
use hyper_util::rt::TokioIo;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpStream;

const BOUND: Duration = Duration::from_secs(20);

/// Config `n` (0 or 1): `/api` → upstream `a` (n = 0) or `b` (n = 1), and both upstreams
/// inject `X-Config: config-n`. An answer from `a` carrying `config-1` (or from `b`
/// carrying `config-0`) would be half of one config and half of the other.
fn config_n(a: &Upstream, b: &Upstream, n: usize) -> String {
    let target = ["a", "b"][n];
    config(&format!(
        "upstreams:\n\
         \x20 a: {{ url: \"{}\", inject: {{ header: X-Config, value_env: CONFIG_{n} }} }}\n\
         \x20 b: {{ url: \"{}\", inject: {{ header: X-Config, value_env: CONFIG_{n} }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: {target} }}\n",
        a.url(),
        b.url()
    ))
}

/// One answer a traffic client saw.
#[derive(Debug)]
enum Seen {
    /// 200 from upstream `host` with the injected `X-Config: config`; `done` is the number of
    /// reloads completed before the request was sent, `begun` the number begun when its
    /// answer had arrived: the config in force was one of `done..=begun`.
    From {
        host: String,
        config: String,
        done: usize,
        begun: usize,
    },
    Failed {
        why: String,
    },
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_traffic_answers_from_the_old_or_the_new_config_never_an_error() {
    // Every request is in flight for 30 ms at the upstream, so reloads land on requests
    // being forwarded, not only between them.
    let a = Upstream::start(Behaviour::Slow(Duration::from_millis(30))).await;
    let b = Upstream::start(Behaviour::Slow(Duration::from_millis(30))).await;
    let configs = [config_n(&a, &b, 0), config_n(&a, &b, 1)];
    let proxy = Proxy::start(
        &configs[0],
        &[("CONFIG_0", "config-0"), ("CONFIG_1", "config-1")],
    );
    let hosts = [a.addr.to_string(), b.addr.to_string()];
    let token = proxy.agent_token("bot").await;
    let reloads = Arc::new(AtomicUsize::new(0));
    let begun = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let answers: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let mut clients = Vec::new();
    for c in 0..4 {
        let (reloads, begun, stop, answers, token) = (
            reloads.clone(),
            begun.clone(),
            stop.clone(),
            answers.clone(),
            token.clone(),
        );
        let addr = proxy.addr;
        clients.push(tokio::spawn(async move {
            // A kept-alive connection per client, as an agent holds one; a new one only
            // if the proxy closed it.
            let mut conn: Option<hyper::client::conn::http1::SendRequest<Body>> = None;
            let mut i = 0;
            while !stop.load(Ordering::SeqCst) {
                if conn.as_ref().is_none_or(|t| t.is_closed()) {
                    let tcp = TcpStream::connect(addr).await.expect("connect");
                    let (tx, c) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                        .await
                        .expect("handshake");
                    tokio::spawn(c);
                    conn = Some(tx);
                }
                let tx = conn.as_mut().unwrap();
                let done = reloads.load(Ordering::SeqCst);
                let req = request("GET", addr, &format!("/api/c{c}/{i}"), &token)
                    .body(empty())
                    .unwrap();
                i += 1;
                let seen = match tokio::time::timeout(REQUEST_BOUND, tx.send_request(req)).await {
                    Err(_) => Seen::Failed {
                        why: "no answer in time".into(),
                    },
                    Ok(Err(e)) => Seen::Failed {
                        why: format!("request failed: {e}"),
                    },
                    Ok(Ok(resp)) => {
                        let status = resp.status();
                        match http_body_util::BodyExt::collect(resp.into_body()).await {
                            Err(e) => Seen::Failed {
                                why: format!("{status}, body failed: {e}"),
                            },
                            Ok(body) => {
                                let body = body.to_bytes();
                                let v: serde_json::Value =
                                    serde_json::from_slice(&body).unwrap_or_default();
                                let header = |name: &str| {
                                    v["headers"]
                                        .as_array()
                                        .into_iter()
                                        .flatten()
                                        .find(|h| h[0] == name)
                                        .and_then(|h| h[1].as_str())
                                        .map(str::to_string)
                                };
                                match (status.as_u16(), header("host"), header("x-config")) {
                                    (200, Some(host), Some(config)) => Seen::From {
                                        host,
                                        config,
                                        done,
                                        begun: begun.load(Ordering::SeqCst),
                                    },
                                    _ => Seen::Failed {
                                        why: format!(
                                            "{status}: {}",
                                            String::from_utf8_lossy(&body)
                                        ),
                                    },
                                }
                            }
                        }
                    }
                };
                answers.lock().unwrap().push(seen);
            }
        }));
    }
    let answered = || answers.lock().unwrap().len();
    // Traffic is flowing before the first reload.
    assert!(
        poll_until_async(BOUND, || answered() >= 16).await,
        "no traffic"
    );
    let mut versions = vec![policy_version(&proxy).await];
    for k in 1..=6 {
        let text = &configs[k % 2];
        begun.store(k, Ordering::SeqCst);
        proxy.write_config(text);
        let r = op(&proxy, "POST", "/reload", None).await;
        assert_eq!(r.status, 200, "reload {k}: {}", r.text());
        let v = r.json()["policy_version"].as_str().unwrap().to_string();
        assert_ne!(&v, versions.last().unwrap(), "reload {k} changed nothing");
        versions.push(v);
        reloads.store(k, Ordering::SeqCst);
        // Let every client get requests through under this config before the next swap.
        let before = answered();
        assert!(
            poll_until_async(BOUND, || answered() >= before + 16).await,
            "traffic stalled after reload {k}"
        );
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.await.expect("client task");
    }
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let failures: Vec<&str> = answers
        .iter()
        .filter_map(|s| match s {
            Seen::Failed { why } => Some(why.as_str()),
            _ => None,
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed across the reloads: {failures:#?}",
        failures.len(),
        answers.len()
    );
    // A request that no reload overlapped is answered by exactly the config in force; one
    // that a reload overlapped by the old or the new one (the two alternate, so either).
    let name = |k: usize| ["config-0", "config-1"][k % 2];
    let mut quiet = [0usize; 7];
    for s in &answers {
        let Seen::From {
            host,
            config,
            done,
            begun,
        } = s
        else {
            unreachable!()
        };
        let n = if config == "config-0" { 0 } else { 1 };
        assert_eq!(
            host, &hosts[n],
            "answered by one config's upstream with the other's credential: {s:?}"
        );
        assert!(begun >= done && begun - done <= 1, "{s:?}");
        if begun == done {
            quiet[*done] += 1;
            assert_eq!(
                config,
                name(*done),
                "a request between reloads {done} and {} was answered by the other config",
                done + 1
            );
        }
    }
    assert!(
        quiet.iter().all(|&n| n >= 1),
        "every config served requests of its own: {quiet:?}"
    );
    // The version alternates between the two configs' versions.
    assert_eq!(versions[0], versions[2]);
    assert_eq!(versions[1], versions[3]);
    assert_eq!(a.hits() + b.hits(), answers.len());
    eprintln!(
        "{} requests across 6 reloads, {quiet:?} outside them",
        answers.len()
    );
}

#[tokio::test]
async fn file_secrets_are_re_read_on_reload() {
    let up = Upstream::start(Behaviour::Echo).await;
    let cfg = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\", inject: {{ header: X-Api-Key, value_file: secrets/api.key }} }}\n\
         routes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let proxy = Proxy::start_with_files(&cfg, &[], &[("secrets/api.key", b"key-one\n")]);
    let token = proxy.agent_token("bot").await;
    let key_file = proxy.path("secrets/api.key");
    let key_seen = |up: &Upstream| {
        up.last()
            .header_all("x-api-key")
            .into_iter()
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let r = get(proxy.addr, "/api/one", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(key_seen(&up), vec!["key-one"], "trailing newline trimmed");
    let v1 = policy_version(&proxy).await;

    // Rotate the credential file; the config file itself does not change.
    write_atomically(&key_file, b"key-two\n");
    let r = op(&proxy, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "reload: {}", r.text());
    assert_eq!(
        policy_version(&proxy).await,
        v1,
        "a secret's value is not part of the policy version"
    );
    let r = get(proxy.addr, "/api/two", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        key_seen(&up),
        vec!["key-two"],
        "the rotated credential, once, after reload"
    );

    // A reload that cannot read the secret is refused whole; the last one stays in force.
    std::fs::remove_file(&key_file).unwrap();
    let r = op(&proxy, "POST", "/reload", None).await;
    assert_eq!(
        r.status,
        422,
        "reload without the secret file: {}",
        r.text()
    );
    assert_eq!(
        r.reason().as_deref(),
        Some("invalid_config"),
        "{}",
        r.text()
    );
    assert!(
        r.text().contains("api.key"),
        "the error names the file: {}",
        r.text()
    );
    let r = get(proxy.addr, "/api/three", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(key_seen(&up), vec!["key-two"]);
    assert_eq!(up.hits(), 3);
}
