//! The operator page in a real headless Chromium (WebDriver through `fantoccini`),
//! against the real binary: sign in; a parked request appears in the queue without a
//! reload; the rationale and the PATCH diff are shown; a critical request approved by
//! two operators (the first sees that another approver is needed and no form, the
//! second sees the upstream's answer); a denial with a reason; a `<script>` and a
//! U+202E in a body shown as flagged text; a form posted without its CSRF token
//! refused; an agent paused from the Switches page has its next request denied.
//! Screenshots of the queue, a request with a diff and an agent page go to `docs/`.

use crate::common::{self, full, send, Behaviour, Head, Proxy, Reply, Upstream};
use crate::support::browser::Browser;
use sha2::{Digest, Sha256};
use std::time::Duration;

const ALICE: &str = "pco-browser-alice-5b8e3c1d2a9f";
const BOB: &str = "pco-browser-bob-7d6c5b4a3f2e";
const WAIT: Duration = Duration::from_secs(20);

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

const TICKET: &str = r#"{"id":42,"title":"Printer on floor 3 is jammed","status":"open","priority":"high","assignee":"sam"}"#;

fn config(upstream: &str) -> String {
    format!(
        "{head}\
         \x20 - {{ name: alice, token_sha256: \"{a}\", roles: [viewer, approver, admin] }}\n\
         \x20 - {{ name: bob, token_sha256: \"{b}\", roles: [viewer, approver] }}\n\
         upstreams: {{ api: {{ url: \"{upstream}\" }} }}\n\
         routes:\n\
         \x20 - prefix: /api\n\
         \x20   upstream: api\n\
         \x20   preview: current\n\
         \x20   tools:\n\
         \x20     - {{ match: \"GET /api/tickets/{{id}}\", name: tickets.get, risk: low }}\n\
         \x20     - {{ match: \"PATCH /api/tickets/{{id}}\", name: tickets.update, risk: high, description: \"Change a ticket's fields (title, status, priority, assignee)\" }}\n\
         \x20     - {{ match: \"DELETE /api/tickets/{{id}}\", name: tickets.delete, risk: critical, description: \"Delete a ticket for good\" }}\n\
         \x20     - {{ match: \"POST /api/notes\", name: notes.create, risk: medium }}\n\
         profiles: {{ clerk: {{ tools: [\"tickets.get\"], approval: [\"tickets.update\", \"tickets.delete\", \"notes.create\"] }} }}\n\
         agents: {{ clerk: {{ profile: clerk, tenant: acme, owner: support-team }} }}\n",
        head = Head::new(),
        a = hash(ALICE),
        b = hash(BOB),
    )
}

async fn agent(
    proxy: &Proxy,
    token: &str,
    method: &str,
    path: &str,
    rationale: Option<&str>,
    body: &str,
) -> common::Resp {
    let mut b = common::request(method, proxy.addr, path, token);
    if let Some(r) = rationale {
        b = b.header("portcullis-rationale", r);
    }
    if !body.is_empty() {
        b = b.header("content-type", "application/json");
    }
    send(proxy.addr, b.body(full(body.to_string())).unwrap())
        .await
        .unwrap()
}

async fn park(
    proxy: &Proxy,
    token: &str,
    method: &str,
    path: &str,
    rationale: Option<&str>,
    body: &str,
) -> String {
    let r = agent(proxy, token, method, path, rationale, body).await;
    assert_eq!(r.status, 202, "park {method} {path}: {}", r.text());
    r.json()["approval_id"].as_str().unwrap().to_string()
}

async fn upstream() -> Upstream {
    Upstream::start(Behaviour::Reply(
        Reply::new(200, TICKET).header("content-type", "application/json"),
    ))
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn queue_diff_and_two_operator_approval_in_chromium() {
    let up = upstream().await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    let token = proxy.agent_token("clerk").await;
    let b = Browser::start().await;
    let ui = format!("http://{}/ui", proxy.admin);

    b.sign_in(proxy.admin, ALICE).await;
    b.wait_text("Nothing is waiting", WAIT).await;
    assert!(
        b.title().await.starts_with("(0) pending"),
        "{}",
        b.title().await
    );

    // Parked while the queue is open: it appears without a reload.
    let patch = park(
        &proxy,
        &token,
        "PATCH",
        "/api/tickets/42",
        Some("Customer%20confirmed%20by%20phone%20the%20printer%20works%20again%3B%20closing%20ticket%2042."),
        r#"{"status":"closed","priority":null}"#,
    )
    .await;
    b.wait_text("PATCH /api/tickets/42", WAIT).await;
    let del = park(
        &proxy,
        &token,
        "DELETE",
        "/api/tickets/7",
        Some("Duplicate of ticket 42."),
        "",
    )
    .await;
    b.wait_text("DELETE /api/tickets/7", WAIT).await;
    common::eventually("the count in the title", WAIT, || async {
        let t = b.title().await;
        if t.starts_with("(2) pending") {
            Ok(())
        } else {
            Err(t)
        }
    })
    .await;
    let q = b.text().await;
    assert!(
        q.contains("CRITICAL") && q.contains("HIGH"),
        "risk badges carry text: {q}"
    );
    assert!(
        q.find("PATCH /api/tickets/42") < q.find("DELETE /api/tickets/7"),
        "oldest first"
    );
    b.screenshot("ui-queue.png").await;

    // The request page: rationale first, then the change against the current resource.
    b.click(&format!("a[href='/ui/approvals/{patch}']")).await;
    let t = b.wait_text("Why the agent wants this", WAIT).await;
    assert!(
        t.contains("Customer confirmed by phone the printer works again; closing ticket 42."),
        "{t}"
    );
    assert!(
        t.find("Why the agent wants this") < t.find("What will change"),
        "rationale first"
    );
    let diff =
        b.c.find(fantoccini::Locator::Css("#diff"))
            .await
            .expect("a diff table")
            .text()
            .await
            .unwrap();
    assert!(
        diff.contains("status") && diff.contains("open") && diff.contains("closed"),
        "{diff}"
    );
    assert!(
        diff.contains("priority") && diff.contains("(removed)"),
        "{diff}"
    );
    assert!(
        !diff.contains("title"),
        "unchanged fields are not listed: {diff}"
    );
    assert!(
        t.contains("Change a ticket's fields") && t.contains("support-team"),
        "context: {t}"
    );
    b.screenshot("ui-request-diff.png").await;

    // A critical request: alice approves (typing the tool's name) and is told another
    // approver is needed; she then sees her vote, not the form.
    b.goto(&format!("{ui}/approvals/{del}")).await;
    b.wait_text("needs 2 distinct approvers", WAIT).await;
    // A wrong confirmation reaches the server and is refused (an empty one the
    // browser's `required` already stops).
    b.fill("#confirm", "tickets.delet").await;
    b.click("button.approve").await;
    b.wait_text("type the tool's name", WAIT).await;
    b.fill("#confirm", "tickets.delete").await;
    b.fill("#comment", "checked: it is a duplicate").await;
    b.click("button.approve").await;
    let t = b
        .wait_text("Approved. Waiting for a second approver.", WAIT)
        .await;
    assert!(
        t.contains("1 of 2 approvals — needs another approver"),
        "{t}"
    );
    assert!(t.contains("You approved this"), "{t}");
    assert_eq!(
        b.count("form[action$='/approve']").await,
        0,
        "a voter sees no form"
    );
    assert_eq!(b.count("form[action$='/deny']").await, 0);

    b.sign_out().await;
    b.sign_in(proxy.admin, BOB).await;
    b.goto(&format!("{ui}/approvals/{del}")).await;
    b.wait_text("1 of 2 approvals — needs another approver", WAIT)
        .await;
    b.fill("#confirm", "tickets.delete").await;
    b.click("button.approve").await;
    let t = b.wait_text("Status 200", WAIT).await;
    assert!(
        t.contains("alice approved") && t.contains("checked: it is a duplicate"),
        "votes with comments: {t}"
    );
    assert!(
        t.contains("\"assignee\": \"sam\""),
        "the upstream's body, pretty: {t}"
    );
    common::eventually("the upstream saw the DELETE", WAIT, || async {
        if up.seen().iter().any(|s| s.method == "DELETE") {
            Ok(())
        } else {
            Err("not yet".to_string())
        }
    })
    .await;

    // The agents page: bob (no admin role) is not offered credential forms.
    b.goto(&format!("{ui}/agents/clerk")).await;
    b.wait_text("Credentials", WAIT).await;
    assert_eq!(
        b.count("form[action$='/tokens']").await,
        0,
        "roles hide what bob cannot do"
    );
    b.sign_out().await;
    b.sign_in(proxy.admin, ALICE).await;
    b.goto(&format!("{ui}/agents/clerk")).await;
    let t = b.wait_text("Credentials", WAIT).await;
    assert!(
        t.contains("tickets.update") && t.contains("may request (approval)"),
        "{t}"
    );
    assert!(t.contains("tickets.get") && t.contains("may call"), "{t}");
    // Issue a narrowed credential: its secret is shown once, and it works.
    b.fill("#tk-ttl", "2h").await;
    b.fill("#tk-tools", "tickets.get").await;
    b.click("form[action='/ui/agents/clerk/tokens'] button")
        .await;
    let t = b.wait_text("shown once", WAIT).await;
    let secret = t
        .split_whitespace()
        .find(|w| w.starts_with("pcx_"))
        .unwrap_or_else(|| panic!("no secret on the page: {t}"))
        .to_string();
    assert!(
        t.contains("tools tickets.get"),
        "the narrowing is listed: {t}"
    );
    assert_eq!(
        common::get(proxy.addr, "/api/tickets/1", &secret)
            .await
            .status,
        200
    );
    b.goto(&format!("{ui}/agents/clerk")).await;
    assert!(
        !b.text().await.contains(&secret),
        "the secret is shown only once"
    );
    b.screenshot("ui-agents.png").await;
    // Revoke it from the page: refused from then on.
    let id = secret.split('_').nth(1).unwrap().to_string();
    b.click(&format!(
        "form[action='/ui/agents/clerk/tokens/{id}/revoke'] button"
    ))
    .await;
    b.wait_text("revoked", WAIT).await;
    common::eventually("the revoked credential is refused", WAIT, || async {
        let r = common::get(proxy.addr, "/api/tickets/1", &secret).await;
        if r.status == 401 {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn escaping_denial_csrf_and_switches_in_chromium() {
    let up = upstream().await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    let token = proxy.agent_token("clerk").await;
    let b = Browser::start().await;
    let ui = format!("http://{}/ui", proxy.admin);
    b.sign_in(proxy.admin, ALICE).await;

    // A body with markup and a right-to-left override: text, flagged, never markup.
    let evil = park(
        &proxy,
        &token,
        "POST",
        "/api/notes",
        None,
        "{\"text\":\"<script>document.title='pwned'</script> refund \u{202e}0001$\"}",
    )
    .await;
    b.goto(&format!("{ui}/approvals/{evil}")).await;
    let t = b.wait_text("invisible or bidirectional", WAIT).await;
    assert!(
        t.contains("<script>document.title='pwned'</script>"),
        "shown as text: {t}"
    );
    assert!(t.contains("<U+202E>"), "{t}");
    assert!(b.count(".hidden-char").await >= 1);
    assert!(!b.title().await.contains("pwned"));
    assert!(
        !b.html().await.contains("<script>document.title"),
        "never parsed as markup"
    );

    // A form posted without its CSRF token is refused, and nothing is recorded.
    b.c.execute(
        "document.querySelector(\"form[action$='/deny'] input[name=csrf]\").remove();",
        vec![],
    )
    .await
    .expect("remove the token");
    b.fill("#reason", "no").await;
    b.click("button.deny").await;
    b.wait_text("CSRF", WAIT).await;
    b.goto(&format!("{ui}/approvals/{evil}")).await;
    b.wait_text("pending", WAIT).await;

    // Deny with a reason.
    b.fill("#reason", "Notes with markup are not allowed").await;
    b.click("button.deny").await;
    let t = b.wait_text("Denied.", WAIT).await;
    assert!(t.contains("Notes with markup are not allowed"), "{t}");
    let s = common::get(
        proxy.addr,
        &format!("/_portcullis/approvals/{evil}"),
        &token,
    )
    .await;
    assert_eq!(s.json()["status"], "denied", "{}", s.text());

    // Pause the agent from the Switches page: its next request is denied.
    assert_eq!(
        common::get(proxy.addr, "/api/tickets/1", &token)
            .await
            .status,
        200
    );
    b.goto(&format!("{ui}/switches")).await;
    b.select("#sw-action", "pause").await;
    b.select("#sw-scope", "agent").await;
    b.fill("#sw-target", "clerk").await;
    b.fill("#sw-note", "incident 4711: runaway agent").await;
    b.click("#sw-confirm").await;
    b.click("form[action='/ui/switches'] button").await;
    let t = b.wait_text("Paused agent clerk.", WAIT).await;
    assert!(t.contains("clerk"), "{t}");
    common::eventually("the paused agent is refused", WAIT, || async {
        let r = common::get(proxy.addr, "/api/tickets/1", &token).await;
        if r.status == 403 && r.reason().as_deref() == Some("paused") {
            Ok(())
        } else {
            Err(r.text())
        }
    })
    .await;
    let audit = proxy.audit_text();
    assert!(
        audit.lines().any(|l| l.contains("\"event\":\"pause\"")
            && l.contains("\"operator\":\"alice\"")
            && l.contains("incident 4711")),
        "the switch is recorded with the operator and the note"
    );
    b.close().await;
}
