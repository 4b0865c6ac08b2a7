//! The operator web page (`/ui`) through the real binary: sign-in, the session cookie's
//! scope, CSRF, escaping of agent-supplied content, role checks, and an approval made on
//! the page replaying exactly once.

mod common;

use common::{empty, full, send, Behaviour, Proxy, Resp, Upstream, OPERATOR_SECRET};
use http::Request;
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::time::Duration;

const ALICE: &str = "pco-ui-alice-6c1f0e2d9b8a7f65";
const VIEWER: &str = "pco-ui-viewer-0a1b2c3d4e5f6a7b";

fn hash(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn config(upstream: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\n\
         admin_listen: 127.0.0.1:0\n\
         store: {{ embedded: data/p.redb }}\n\
         audit: {{ path: data/audit.jsonl }}\n\
         operators:\n\
         \x20 - {{ name: tester, token_sha256: \"{}\", roles: [viewer, approver, admin] }}\n\
         \x20 - {{ name: alice, token_sha256: \"{}\", roles: [viewer, approver] }}\n\
         \x20 - {{ name: vera, token_sha256: \"{}\", roles: [viewer] }}\n\
         upstreams: {{ api: {{ url: \"{upstream}\" }} }}\n\
         routes: [{{ prefix: /api, upstream: api }}]\n\
         profiles: {{ clerk: {{ tools: [\"api.things.list\"], approval: [\"api.things.create\"] }} }}\n\
         agents: {{ clerk: {{ profile: clerk, tenant: acme }} }}\n",
        hash(OPERATOR_SECRET),
        hash(ALICE),
        hash(VIEWER)
    )
}

async fn form_post(admin: SocketAddr, path: &str, cookie: Option<&str>, body: &str) -> Resp {
    let mut b = Request::post(path)
        .header("host", admin.to_string())
        .header("content-type", "application/x-www-form-urlencoded");
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    send(admin, b.body(full(body.to_string())).unwrap())
        .await
        .unwrap()
}

async fn page(admin: SocketAddr, path: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::get(path).header("host", admin.to_string());
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    send(admin, b.body(empty()).unwrap()).await.unwrap()
}

/// Signs in and returns the `pc_session=...` pair for a Cookie header.
async fn sign_in(admin: SocketAddr, token: &str) -> String {
    let r = form_post(admin, "/ui/login", None, &format!("token={token}")).await;
    assert_eq!(r.status, 303, "sign-in: {}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui"] {
        assert!(set.contains(attr), "cookie lacks {attr}: {set}");
    }
    set.split(';').next().unwrap().to_string()
}

fn csrf_of(html: &str) -> String {
    let at = html
        .find("name=\"csrf\" value=\"")
        .expect("a CSRF field on the page");
    html[at + 19..].split('"').next().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn operator_page_approves_exactly_what_it_shows() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    let token = proxy.agent_token("clerk").await;

    // Signed out: the sign-in form; a wrong token is refused.
    let r = page(proxy.admin, "/ui", None).await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("Sign in"));
    let r = form_post(proxy.admin, "/ui/login", None, "token=pco-not-an-operator").await;
    assert_eq!(r.status, 401);
    assert!(r.header("set-cookie").is_none());
    let r = form_post(proxy.admin, "/ui/login", None, &format!("token={token}")).await;
    assert_eq!(r.status, 401, "an agent credential never opens the page");

    // The agent parks a request whose body tries to inject markup.
    let req = common::request("POST", proxy.addr, "/api/things", &token)
        .body(full("<script>alert(1)</script>"))
        .unwrap();
    let parked = send(proxy.addr, req).await.unwrap();
    assert_eq!(parked.status, 202, "{}", parked.text());
    let id = parked.json()["approval_id"].as_str().unwrap().to_string();
    let sha = parked.json()["request_sha256"]
        .as_str()
        .unwrap()
        .to_string();

    let alice = sign_in(proxy.admin, ALICE).await;
    let list = page(proxy.admin, "/ui", Some(&alice)).await;
    assert_eq!(list.status, 200);
    assert!(list.text().contains(&id) && list.text().contains("api.things.create"));

    let detail = page(proxy.admin, &format!("/ui/approvals/{id}"), Some(&alice)).await;
    assert_eq!(detail.status, 200);
    let html = detail.text();
    assert!(
        !html.contains("<script>alert(1)</script>"),
        "agent content must be escaped"
    );
    assert!(html.contains("&#60;script&#62;") || html.contains("&lt;script&gt;"));
    assert!(html.contains(&sha), "the page shows the hash it approves");
    let csp = detail.header("content-security-policy").unwrap_or("");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    let csrf = csrf_of(&html);

    // The cookie is honoured only under /ui: the JSON API still wants a bearer token.
    let api = page(proxy.admin, "/approvals", Some(&alice)).await;
    assert_eq!(api.status, 401);

    // A forged form (wrong CSRF token) and a viewer's session decide nothing.
    let approve = format!("/ui/approvals/{id}/approve");
    let r = form_post(
        proxy.admin,
        &approve,
        Some(&alice),
        &format!("csrf=0000&request_sha256={sha}"),
    )
    .await;
    assert_eq!(r.status, 403);
    let vera = sign_in(proxy.admin, VIEWER).await;
    let vera_csrf = csrf_of(&page(proxy.admin, "/ui", Some(&vera)).await.text());
    let r = form_post(
        proxy.admin,
        &approve,
        Some(&vera),
        &format!("csrf={vera_csrf}&request_sha256={sha}"),
    )
    .await;
    assert_eq!(r.status, 403, "a viewer cannot approve: {}", r.text());
    // A stale hash is refused (409) and nothing is sent.
    let r = form_post(
        proxy.admin,
        &approve,
        Some(&alice),
        &format!("csrf={csrf}&request_sha256={}", "0".repeat(64)),
    )
    .await;
    assert_eq!(r.status, 409);
    assert_eq!(up.hits(), 0);

    // The real approval replays once and the agent sees it executed.
    let r = form_post(
        proxy.admin,
        &approve,
        Some(&alice),
        &format!("csrf={csrf}&request_sha256={sha}&comment=checked+on+the+page"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let mut status;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let s = common::get(
            proxy.addr,
            &format!("/_portcullis/approvals/{id}?wait=2"),
            &token,
        )
        .await;
        status = s.json()["status"].as_str().unwrap_or("").to_string();
        if status == "executed" || tokio::time::Instant::now() > deadline {
            break;
        }
    }
    assert_eq!(status, "executed");
    assert_eq!(up.hits(), 1);
    assert!(proxy
        .audit_text()
        .lines()
        .any(|l| l.contains("\"approval_approved\"")
            && l.contains("\"operator\":\"alice\"")
            && l.contains("checked on the page")));

    // Signing out ends the session.
    let r = form_post(
        proxy.admin,
        "/ui/logout",
        Some(&alice),
        &format!("csrf={csrf}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert!(r.header("set-cookie").unwrap_or("").contains("Max-Age=0"));
    assert!(page(proxy.admin, "/ui", Some(&alice))
        .await
        .text()
        .contains("Sign in"));
}
