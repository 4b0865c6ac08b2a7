//! What an operator and an agent author get around an approval, through the real binary:
//! `Portcullis-Rationale` (checked, refused with 400 when bad, never forwarded — neither
//! on a forward nor on a replay —, kept with the park, in the park's audit record, the
//! admin API, `approvals show` and the webhook text; over MCP from `_meta`);
//! `approvals_needed`; the aligned `approvals list` and `--json`; the agent's long poll
//! `?until=final`; and `preview: current` (a GET under the injected credential, audited
//! as `preview`, not counted against the credential's budget, diffed in the API).

use crate::common::{self, Head, Proxy};
use crate::mcp::Mcp;
use crate::support::approvals::{
    self as ap, admin, agent_call, approval_id, approve, issue, park, view, wait_state, Hook,
    ReplayUpstream, ALICE, BOB, BOUND, EMBEDDED, ISSUER, UPSTREAM_KEY,
};
use serde_json::{json, Value};
use std::time::Duration;

const CANARY: &str = "RATIONALE-CANARY-3f9a";

fn start(up: &ReplayUpstream, extra: &str, env: &[(&str, &str)]) -> Proxy {
    let mut e = vec![("API_KEY", UPSTREAM_KEY)];
    e.extend_from_slice(env);
    Proxy::start(&ap::config("node-a", EMBEDDED, &up.url(), extra), &e)
}

async fn cli(p: &Proxy, args: &[&str]) -> (bool, String) {
    let admin_url = format!("http://{}", p.admin);
    let mut all: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    all.extend(["--admin".to_string(), admin_url]);
    let out = tokio::task::spawn_blocking(move || {
        let a: Vec<&str> = all.iter().map(String::as_str).collect();
        common::run_bin(
            &a,
            &[("PORTCULLIS_OPERATOR_TOKEN", ALICE)],
            Duration::from_secs(30),
        )
    })
    .await
    .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn rationale_is_checked_kept_shown_and_never_forwarded() {
    let hook = Hook::start().await;
    let up = ReplayUpstream::start().await;
    let url = hook.url();
    let p = start(
        &up,
        "notify: { webhook: { url_env: HOOK }, admin_url: \"https://ops.example/\" }",
        &[("HOOK", &url)],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let said = format!("Customer {CANARY} asked for a refund; caf%C3%A9 order 77");

    // A forwarded request: the header is checked, then dropped.
    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        "/tickets/5",
        &[("portcullis-rationale", &said)],
        b"",
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // Bad rationales: 400 bad_rationale, nothing sent.
    let long = "a".repeat(1001);
    let long_encoded = "%41".repeat(1001);
    for bad in [
        "bidi %E2%80%AE here",
        "zero%E2%80%8Bwidth",
        "line%0Abreak",
        "%FF%FE",
        long.as_str(),
        long_encoded.as_str(),
    ] {
        let r = agent_call(
            p.addr,
            &bot,
            "GET",
            "/tickets/5",
            &[("portcullis-rationale", bad)],
            b"",
        )
        .await;
        assert_eq!(r.status, 400, "{bad}: {}", r.text());
        assert_eq!(r.reason().as_deref(), Some("bad_rationale"), "{}", r.text());
    }
    // A parked request keeps it.
    let id = approval_id(
        &park(
            &p,
            &bot,
            "/tickets/9/refund",
            &[("portcullis-rationale", &said)],
            b"{}",
        )
        .await,
    );
    let v = view(p.admin, &id).await;
    let want = format!("Customer {CANARY} asked for a refund; café order 77");
    assert_eq!(v["rationale"], want.as_str(), "{v}");
    assert_eq!(v["approvals_needed"], 2, "critical: two approvers: {v}");
    assert_eq!(v["votes_line"], "needs 2 distinct approvers", "{v}");
    // The park's audit record carries it.
    let audit = p.audit_text();
    assert!(
        audit.lines().any(|l| l.contains("\"decision\":\"park\"")
            && l.contains(&format!("\"approval_id\":\"{id}\""))
            && l.contains(&format!("\"rationale\":\"{want}\""))),
        "no park record with the rationale:\n{audit}"
    );
    // The webhook text: rationale, risk, description line, link to the page.
    assert!(hook.wait_about(&id, 1, BOUND).await, "no webhook for {id}");
    let t = hook.about(&id)[0].json()["text"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(t.contains(&want) && t.contains("critical risk"), "{t}");
    assert!(
        t.contains(&format!("https://ops.example/ui/approvals/{id}")),
        "{t}"
    );

    // One vote: one more needed, everywhere.
    let r = approve(p.admin, ALICE, &id, Some(json!({"comment": "looks right"}))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let v = view(p.admin, &id).await;
    assert_eq!(v["approvals_needed"], 1, "{v}");
    assert_eq!(v["votes_line"], "1 of 2 approvals — needs another approver");
    let (ok, out) = cli(&p, &["approvals", "list"]).await;
    assert!(ok, "{out}");
    let lines: Vec<&str> = out.lines().collect();
    let header = lines[0];
    for col in ["ID", "TOOL", "RISK", "AGENT", "AGE", "LEFT", "VOTES"] {
        assert!(header.contains(col), "{header}");
    }
    let row = lines
        .iter()
        .find(|l| l.starts_with(&id))
        .expect("a row for the approval");
    assert_eq!(header.find("RISK"), row.find("critical"), "aligned:\n{out}");
    assert_eq!(header.find("VOTES"), row.find("1/2"), "aligned:\n{out}");
    let (ok, out) = cli(&p, &["approvals", "list", "--json"]).await;
    assert!(ok, "{out}");
    let j: Value = serde_json::from_str(&out).expect("--json prints JSON");
    assert_eq!(j["approvals"][0]["approvals_needed"], 1, "{j}");
    let (ok, out) = cli(&p, &["approvals", "show", &id]).await;
    assert!(ok, "{out}");
    assert!(
        out.lines()
            .next()
            .unwrap()
            .contains("POST /tickets/9/refund"),
        "{out}"
    );
    assert!(
        out.contains(&want) && out.contains("needs another approver"),
        "{out}"
    );
    assert!(out.contains("alice: \"looks right\""), "{out}");

    // The replay does not carry it either.
    let r = approve(p.admin, BOB, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    wait_state(p.admin, &id, "executed", BOUND).await;
    let seen = up.seen();
    assert_eq!(seen.len(), 2, "the forward and the replay");
    for s in &seen {
        assert!(!s.has("portcullis-rationale"), "forwarded: {:?}", s.headers);
        let all = format!(
            "{} {:?} {}",
            s.target,
            s.headers,
            String::from_utf8_lossy(&s.body)
        );
        assert!(
            !all.contains(CANARY),
            "the rationale reached the upstream: {all}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn rationale_over_mcp_meta_and_the_final_long_poll() {
    let up = ReplayUpstream::start_holding().await;
    let p = start(&up, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let mut m = Mcp::modern(p.addr, &bot, false);
    let res = m
        .call(
            "tools/call",
            json!({"name": "tickets.close", "arguments": {"id": "4"},
                   "_meta": {"portcullis/rationale": "the customer closed it by mail"}}),
        )
        .await;
    let text = res.to_string();
    let id = p
        .audit_text()
        .lines()
        .filter(|l| l.contains("\"decision\":\"park\""))
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            v["approval_id"].as_str().map(str::to_string)
        })
        .unwrap_or_else(|| panic!("no park from the MCP call: {text}"));
    assert_eq!(
        view(p.admin, &id).await["rationale"],
        "the customer closed it by mail"
    );
    let bad = m
        .raw(
            "tools/call",
            json!({"name": "tickets.close", "arguments": {"id": "5"},
                   "_meta": {"portcullis/rationale": "evil \u{202e} text"}}),
        )
        .await;
    assert!(bad.text().contains("bad_rationale"), "{}", bad.text());

    // `?until=final` waits through `approved` to the outcome, in one request.
    let poll = {
        let (addr, bot, id) = (p.addr, bot.clone(), id.clone());
        tokio::spawn(async move {
            agent_call(
                addr,
                &bot,
                "GET",
                &format!("/_portcullis/approvals/{id}?until=final&wait=30"),
                &[],
                b"",
            )
            .await
        })
    };
    let r = approve(p.admin, ALICE, &id, None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    // The replay is held upstream: approved, executing — the poll still waits.
    wait_state(p.admin, &id, "executing", BOUND).await;
    assert!(up.wait_got(1, BOUND).await);
    assert!(
        !poll.is_finished(),
        "the final poll answered before the outcome"
    );
    up.release();
    let r = poll.await.unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "executed", "{}", r.text());
    let r = agent_call(
        p.addr,
        &bot,
        "GET",
        &format!("/_portcullis/approvals/{id}?until=later"),
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
}

/// `preview: current` on a route of its own.
fn preview_config(upstream: &str) -> String {
    preview_config_with(upstream, Head::new())
}

fn preview_config_with(upstream: &str, head: Head) -> String {
    format!(
        "{head}\x20 - {{ name: issuer, token_sha256: \"{i}\", roles: [viewer, approver, admin] }}\n\
         \x20 - {{ name: alice, token_sha256: \"{a}\", roles: [viewer, approver] }}\n\
         upstreams:\n\
         \x20 api:\n\
         \x20   url: {upstream}\n\
         \x20   inject: {{ header: Authorization, value_env: API_KEY }}\n\
         routes:\n\
         \x20 - prefix: /docs\n\
         \x20   upstream: api\n\
         \x20   preview: current\n\
         \x20   tools:\n\
         \x20     - {{ match: \"GET /docs/{{id}}\", name: docs.get, risk: low }}\n\
         \x20     - {{ match: \"PATCH /docs/{{id}}\", name: docs.update, risk: high }}\n\
         \x20     - {{ match: \"PUT /docs/{{id}}\", name: docs.replace, risk: high, preview: none }}\n\
         profiles: {{ p: {{ tools: [\"docs.get\"], approval: [\"docs.update\", \"docs.replace\"] }} }}\n\
         agents: {{ bot: {{ profile: p }} }}\n",
        head = head.without_tester(),
        i = ap::sha_hex(ISSUER),
        a = ap::sha_hex(ALICE),
    )
}

/// An agent over its pending quota gets 429 before anything reads the upstream: with
/// `preview: current` the quota is looked at before the preview, even when the body came
/// whole with the head (where, without a preview, the creation alone checks it).
#[tokio::test(flavor = "multi_thread")]
async fn a_full_quota_is_refused_before_the_preview_read() {
    let up = common::Upstream::start(common::Behaviour::Reply(
        common::Reply::new(200, r#"{"status":"draft"}"#).header("content-type", "application/json"),
    ))
    .await;
    let cfg = format!(
        "{}limits: {{ max_pending_per_agent: 1 }}\n",
        preview_config(&up.url())
    );
    let p = Proxy::start(&cfg, &[("API_KEY", UPSTREAM_KEY)]);
    let (bot, _) = issue(p.admin, "bot").await;
    let call = |method: &'static str, path: &'static str| {
        let bot = bot.clone();
        async move {
            let json = [("content-type", "application/json")];
            agent_call(p.addr, &bot, method, path, &json, br#"{"status":"final"}"#).await
        }
    };
    let r = call("PATCH", "/docs/3").await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(up.seen().len(), 1, "the first park's preview read");
    let r = call("PATCH", "/docs/4").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["reason"], "pending_quota", "{}", r.text());
    assert_eq!(up.seen().len(), 1, "no preview read for a refused park");
    // Without a preview (PUT: `preview: none`), the body that came with the head is
    // taken and the creation refuses: the same answer.
    let r = call("PUT", "/docs/5").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["reason"], "pending_quota", "{}", r.text());
    assert_eq!(up.seen().len(), 1);
}

/// The page's re-read of a previewed resource is an upstream read like any other: while
/// the audit trail cannot take its record, nothing is sent (and the page still opens).
#[tokio::test(flavor = "multi_thread")]
async fn no_preview_read_while_the_audit_trail_is_down() {
    use crate::operator_ui::{page, sign_in};
    use crate::support::faults::Tmpfs;
    let Some(fs) = Tmpfs::mount("preview_audit", "size=1m") else {
        return;
    };
    fs.prepare_filler();
    let up = common::Upstream::start(common::Behaviour::Reply(
        common::Reply::new(200, r#"{"status":"draft"}"#).header("content-type", "application/json"),
    ))
    .await;
    let audit = fs.path().join("audit.jsonl");
    let head = Head::new().audit(&format!("{{ path: \"{}\" }}", audit.display()));
    let p = Proxy::start(
        &preview_config_with(&up.url(), head),
        &[("API_KEY", UPSTREAM_KEY)],
    );
    let (bot, _) = issue(p.admin, "bot").await;
    let r = agent_call(
        p.addr,
        &bot,
        "PATCH",
        "/docs/3",
        &[("content-type", "application/json")],
        br#"{"status":"final"}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = approval_id(&r.json());
    assert_eq!(up.seen().len(), 1, "the park's preview read");
    let cookie = sign_in(p.admin, ALICE).await;
    let path = format!("/ui/approvals/{id}");
    // Control: with the trail healthy, opening the page reads the resource again.
    assert_eq!(page(p.admin, &path, Some(&cookie)).await.status, 200);
    assert_eq!(up.seen().len(), 2, "the page's re-read");

    // Full disk: a request's record fails to write and the trail reports not ready.
    fs.fill();
    common::eventually(
        "the full disk is noticed",
        Duration::from_secs(10),
        || async {
            let _ = common::get(p.addr, "/docs/3", &bot).await;
            let r = common::admin_call(p.admin, "GET", "/readyz", "", None).await;
            if r.status == 503 {
                Ok(())
            } else {
                Err(format!("/readyz {}", r.status))
            }
        },
    )
    .await;
    let before = up.seen().len();
    let r = page(p.admin, &path, Some(&cookie)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        up.seen().len(),
        before,
        "no upstream read while the trail cannot record it"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn preview_reads_the_current_resource_once_and_the_api_shows_the_diff() {
    let up = common::Upstream::start(common::Behaviour::Reply(
        common::Reply::new(200, r#"{"title":"Q3 plan","owner":"kim","status":"draft"}"#)
            .header("content-type", "application/json"),
    ))
    .await;
    let p = Proxy::start(&preview_config(&up.url()), &[("API_KEY", UPSTREAM_KEY)]);
    // Two calls on this credential: the park spends one, the preview none.
    let r = admin(
        p.admin,
        ISSUER,
        "POST",
        "/tokens",
        Some(&json!({"agent": "bot", "ttl": "1h", "max_calls": 2})),
    )
    .await;
    let bot = r.json()["secret"].as_str().unwrap().to_string();
    let r = agent_call(
        p.addr,
        &bot,
        "PATCH",
        "/docs/3",
        &[("content-type", "application/json")],
        br#"{"status":"final","owner":null}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = approval_id(&r.json());
    let seen = up.seen();
    assert_eq!(seen.len(), 1, "one preview read, nothing else");
    assert_eq!(seen[0].method, "GET");
    assert_eq!(seen[0].target, "/docs/3");
    assert_eq!(
        seen[0].header("authorization"),
        Some(UPSTREAM_KEY),
        "the upstream's credential, injected"
    );
    let v = view(p.admin, &id).await;
    let changes = &v["preview"]["changes"];
    assert_eq!(
        changes,
        &json!([
            {"field": "owner", "before": "kim", "after": null},
            {"field": "status", "before": "draft", "after": "final"},
        ]),
        "{v}"
    );
    let audit = p.audit_text();
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"preview\"")
            && l.contains("\"tool\":\"docs.update\"")
            && l.contains("\"upstream_status\":200")),
        "no preview record:\n{audit}"
    );
    // The budget: the second call still goes through; a third does not.
    assert_eq!(
        agent_call(p.addr, &bot, "GET", "/docs/3", &[], b"")
            .await
            .status,
        200
    );
    let r = agent_call(p.addr, &bot, "GET", "/docs/3", &[], b"").await;
    assert_eq!(r.reason().as_deref(), Some("token_budget"), "{}", r.text());
    // `preview: none` on the tool: no read.
    let (bot2, _) = issue(p.admin, "bot").await;
    let before = up.seen().len();
    let r = agent_call(
        p.addr,
        &bot2,
        "PUT",
        "/docs/3",
        &[("content-type", "application/json")],
        b"{}",
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(
        up.seen().len(),
        before,
        "no preview for a tool with preview: none"
    );
    assert!(view(p.admin, &approval_id(&r.json()))
        .await
        .get("preview")
        .is_none());

    // Opening the page reads the resource again and warns when it changed.
    let login = common::send(
        p.admin,
        http::Request::post("/ui/login")
            .header("host", p.admin.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(common::full(format!("token={ALICE}")))
            .unwrap(),
    )
    .await
    .unwrap();
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = || async {
        let r = common::send(
            p.admin,
            http::Request::get(format!("/ui/approvals/{id}"))
                .header("host", p.admin.to_string())
                .header("cookie", cookie.as_str())
                .body(common::empty())
                .unwrap(),
        )
        .await
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        r.text()
    };
    const CHANGED: &str = "The resource has changed since this request parked";
    let html = page().await;
    assert!(
        html.contains("draft") && html.contains("final"),
        "the diff: {html}"
    );
    assert!(!html.contains(CHANGED), "unchanged resource flagged");
    let up2 = common::Upstream::start(common::Behaviour::Reply(
        common::Reply::new(
            200,
            r#"{"title":"Q3 plan","owner":"lee","status":"review"}"#,
        )
        .header("content-type", "application/json"),
    ))
    .await;
    p.write_config(&preview_config(&up2.url()));
    let r = admin(p.admin, ISSUER, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    common::eventually(
        "the page warns that the resource changed",
        BOUND,
        || async {
            let html = page().await;
            if html.contains(CHANGED) {
                Ok(())
            } else {
                Err("no warning yet".to_string())
            }
        },
    )
    .await;
    assert!(up2.seen().iter().all(|s| s.method == "GET"), "only reads");
}

/// The page's history: filters narrow the list; a filter value the server does not know
/// is dropped, never echoed.
#[tokio::test(flavor = "multi_thread")]
async fn history_filters_by_agent_state_and_operator() {
    let up = ReplayUpstream::start().await;
    let p = start(&up, "", &[]);
    let (bot, _) = issue(p.admin, "bot").await;
    let (other, _) = issue(p.admin, "other").await;
    let a = approval_id(&park(&p, &bot, "/tickets/1/close", &[], b"{}").await);
    let b = approval_id(&park(&p, &bot, "/tickets/2/close", &[], b"{}").await);
    let c = approval_id(&park(&p, &other, "/tickets/3/close", &[], b"{}").await);
    let r = admin(
        p.admin,
        BOB,
        "POST",
        &format!("/approvals/{b}/deny"),
        Some(&json!({"reason": "no"})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let login = common::send(
        p.admin,
        http::Request::post("/ui/login")
            .header("host", p.admin.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(common::full(format!("token={ALICE}")))
            .unwrap(),
    )
    .await
    .unwrap();
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = |q: &'static str| {
        let (admin, cookie) = (p.admin, cookie.clone());
        async move {
            let r = common::send(
                admin,
                http::Request::get(format!("/ui/history?{q}"))
                    .header("host", admin.to_string())
                    .header("cookie", cookie)
                    .body(common::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
            assert_eq!(r.status, 200, "{}", r.text());
            r.text()
        }
    };
    let all = page("").await;
    assert!(
        all.contains(&a) && all.contains(&b) && all.contains(&c),
        "{all}"
    );
    let h = page("agent=bot").await;
    assert!(h.contains(&a) && h.contains(&b) && !h.contains(&c), "{h}");
    let h = page("agent=bot&state=denied").await;
    assert!(!h.contains(&a) && h.contains(&b) && !h.contains(&c), "{h}");
    let h = page("operator=bob").await;
    assert!(!h.contains(&a) && h.contains(&b), "{h}");
    let h = page("agent=INJECTED-77c1&from=2099-01-01").await;
    assert!(
        !h.contains("INJECTED-77c1"),
        "an unknown filter value is echoed"
    );
    assert!(h.contains("Nothing matches"), "from 2099: nothing: {h}");
}
