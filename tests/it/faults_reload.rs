//! Issue 12: a refused reload says why. `POST /reload` with an invalid file answers 422
//! `{"error":"invalid_config","detail":"<file>:<line>:<col>: <key>: …"}` — the text
//! `check` prints — `portcullis reload` prints it and exits 1, and the configuration in
//! force stays in force.

use crate::common::*;
use crate::support::admin::op;

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_reload_answers_422_with_the_file_position() {
    let up = Upstream::start(Behaviour::Echo).await;
    let good = config(&format!(
        "upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n  - {{ prefix: /api, upstream: api }}\n",
        up.url()
    ));
    let p = Proxy::start(&good, &[]);
    let token = p.agent_token("bot").await;
    let before = op(&p, "GET", "/policy", None).await.json()["policy_version"].clone();
    // routes[0].upstream names an upstream that does not exist.
    let bad = good.replace("upstream: api }", "upstream: nope }");
    p.write_config(&bad);
    let line = bad
        .lines()
        .position(|l| l.contains("upstream: nope"))
        .unwrap()
        + 1;
    let path = p.config_path.display().to_string();
    let check = run_bin(&["check", "--config", &path], &[], CLI_BOUND);
    let check_text = String::from_utf8_lossy(&check.stderr).to_string()
        + &String::from_utf8_lossy(&check.stdout);

    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"], "invalid_config", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("portcullis.yaml:{line}:"))
            && detail.contains("routes[0].upstream"),
        "{detail}"
    );
    assert!(
        check_text.contains(detail),
        "check printed {check_text:?}, reload said {detail:?}"
    );

    let admin = format!("http://{}", p.admin);
    let out = run_bin(
        &["reload", "--admin", &admin],
        &[("PORTCULLIS_OPERATOR_TOKEN", OPERATOR_SECRET)],
        CLI_BOUND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(detail), "{stderr}");

    // The configuration in force did not change, and still serves.
    let after = op(&p, "GET", "/policy", None).await.json()["policy_version"].clone();
    assert_eq!(before, after);
    let r = raw_request(
        p.addr,
        &raw_get("GET", b"/api/x", &p.addr.to_string(), &token, ""),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
}
