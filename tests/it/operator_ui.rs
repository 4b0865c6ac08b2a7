//! The operator web page (`/ui`) through the real binary: sign-in, the session cookie's
//! scope, CSRF, escaping of agent-supplied content, role checks, and an approval made on
//! the page replaying exactly once; then issue 11's classes 11 and 13 (operator side):
//! hidden characters spelled out, encoded bodies decoded for reading or refused at park,
//! no page echoing its query, sessions following the live operators, and decoders that
//! survive escapes next to multi-byte characters.

use crate::common;

use crate::common::{empty, full, send, Behaviour, Proxy, Resp, Upstream, OPERATOR_SECRET};
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
    config_with(
        upstream,
        &format!(
            "{{ name: alice, token_sha256: \"{}\", roles: [viewer, approver] }}",
            hash(ALICE)
        ),
        "",
    )
}

/// The test config with `alice`'s operator entry as given (empty: no alice) and `extra`
/// top-level YAML.
fn config_with(upstream: &str, alice: &str, extra: &str) -> String {
    let alice = if alice.is_empty() {
        String::new()
    } else {
        format!("\x20 - {alice}\n")
    };
    format!(
        "{head}{alice}\
         \x20 - {{ name: vera, token_sha256: \"{}\", roles: [viewer] }}\n\
         upstreams: {{ api: {{ url: \"{upstream}\" }} }}\n\
         routes: [{{ prefix: /api, upstream: api }}]\n\
         profiles: {{ clerk: {{ tools: [\"api.things.list\"], approval: [\"api.things.create\"] }} }}\n\
         agents: {{ clerk: {{ profile: clerk, tenant: acme }} }}\n\
         {extra}\n",
        hash(VIEWER),
        head = common::Head::new(),
    )
}

pub(crate) async fn form_post(
    admin: SocketAddr,
    path: &str,
    cookie: Option<&str>,
    body: &str,
) -> Resp {
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

pub(crate) async fn page(admin: SocketAddr, path: &str, cookie: Option<&str>) -> Resp {
    let mut b = Request::get(path).header("host", admin.to_string());
    if let Some(c) = cookie {
        b = b.header("cookie", c);
    }
    send(admin, b.body(empty()).unwrap()).await.unwrap()
}

/// Signs in and returns the `pc_session=...` pair for a Cookie header.
pub(crate) async fn sign_in(admin: SocketAddr, token: &str) -> String {
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

pub(crate) fn csrf_of(html: &str) -> String {
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

/// The agent parks `POST /api/things` with `body` and `headers`; returns (id, request_sha256).
async fn park(
    proxy: &Proxy,
    token: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> (String, String) {
    let mut b = common::request("POST", proxy.addr, "/api/things", token);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    let r = send(proxy.addr, b.body(full(body)).unwrap()).await.unwrap();
    assert_eq!(r.status, 202, "park: {}", r.text());
    let v = r.json();
    (
        v["approval_id"].as_str().unwrap().to_string(),
        v["request_sha256"].as_str().unwrap().to_string(),
    )
}

/// `<U+XXXX>` as it appears HTML-escaped in a page.
fn spelled(html: &str, code: &str) -> bool {
    html.contains(&format!("&#60;U+{code}&#62;")) || html.contains(&format!("&lt;U+{code}&gt;"))
}

const WARNING: &str = "contains invisible or bidirectional control characters";

/// Class 11: bidirectional and invisible controls in a parked body are spelled out in a
/// distinct style, never rendered, and the page carries a warning; a clean request has
/// no warning.
#[tokio::test(flavor = "multi_thread")]
async fn class11_hidden_controls_are_spelled_out_with_a_warning() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    let token = proxy.agent_token("clerk").await;
    let tricky = "{\"to\":\"ACME \u{202E}LTD\u{202C}\",\"iban\":\"DE89\u{200B}3704\",\"x\":\"\u{2066}a\u{2069}\u{FEFF}\u{2060}\u{E0041}\"}";
    let (id, _) = park(
        &proxy,
        &token,
        &[("content-type", "application/json")],
        tricky.into(),
    )
    .await;
    let (clean, _) = park(&proxy, &token, &[], b"{\"to\":\"ACME LTD\"}".to_vec()).await;

    let alice = sign_in(proxy.admin, ALICE).await;
    let r = page(proxy.admin, &format!("/ui/approvals/{id}"), Some(&alice)).await;
    assert_eq!(r.status, 200);
    let html = r.text();
    for code in [
        "202E", "202C", "200B", "2066", "2069", "FEFF", "2060", "E0041",
    ] {
        assert!(spelled(&html, code), "U+{code} is not spelled out:\n{html}");
    }
    for c in [
        '\u{202E}',
        '\u{202C}',
        '\u{200B}',
        '\u{2066}',
        '\u{2069}',
        '\u{FEFF}',
        '\u{2060}',
        '\u{E0041}',
    ] {
        assert!(!html.contains(c), "U+{:04X} reaches the page raw", c as u32);
    }
    assert!(
        html.contains("class=\"hidden-char\""),
        "no distinct style:\n{html}"
    );
    assert!(html.contains(WARNING), "no warning banner:\n{html}");
    assert!(
        html.contains("ACME "),
        "the text around the controls is shown"
    );

    let r = page(proxy.admin, &format!("/ui/approvals/{clean}"), Some(&alice)).await;
    assert_eq!(r.status, 200);
    assert!(!r.text().contains(WARNING), "a clean request is flagged");
    assert!(!r.text().contains("class=\"hidden-char\""));
}

fn gzip(b: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// Class 11: a gzip body is decoded for reading (hidden characters inside it spelled out),
/// bounded by `max_parked_body_bytes`, while `request_sha256` and what is sent stay the
/// compressed bytes; a coding that cannot be decoded is refused at park with 415.
#[tokio::test(flavor = "multi_thread")]
async fn class11_encoded_bodies_are_decoded_for_reading_or_refused() {
    let up = Upstream::start(Behaviour::Consume).await;
    let alice_line = format!(
        "{{ name: alice, token_sha256: \"{}\", roles: [viewer, approver] }}",
        hash(ALICE)
    );
    let proxy = Proxy::start(
        &config_with(
            &up.url(),
            &alice_line,
            "limits: { max_parked_body_bytes: 4096 }",
        ),
        &[],
    );
    let token = proxy.agent_token("clerk").await;

    let plain = format!(
        "{{\"refund\":\"ALL-ORDERS-7731\",\"note\":\"ok\u{202E}\",\"pad\":\"{}\"}}",
        "abcd".repeat(500)
    );
    let z = gzip(plain.as_bytes());
    assert!(
        !z.windows(15).any(|w| w == b"ALL-ORDERS-7731"),
        "the marker must only show when decoded"
    );
    let (id, sha) = park(&proxy, &token, &[("content-encoding", "gzip")], z.clone()).await;
    // 100,000 decoded bytes from a small body: shown up to the bound, marked cut.
    let bomb = gzip(&[b'A'; 100_000]);
    assert!(bomb.len() < 4096);
    let (big, _) = park(&proxy, &token, &[("content-encoding", "gzip")], bomb).await;

    let alice = sign_in(proxy.admin, ALICE).await;
    let r = page(proxy.admin, &format!("/ui/approvals/{id}"), Some(&alice)).await;
    let html = r.text();
    assert!(
        html.contains("ALL-ORDERS-7731"),
        "the body is not decoded:\n{html}"
    );
    assert!(html.contains("decoded from gzip"), "{html}");
    assert!(
        spelled(&html, "202E") && html.contains(WARNING),
        "a control inside the encoded body is hidden:\n{html}"
    );
    assert!(
        html.contains(&format!("{} bytes as sent", z.len())),
        "{html}"
    );
    assert!(html.contains(&sha), "the hash over the bytes as sent");

    let r = page(proxy.admin, &format!("/ui/approvals/{big}"), Some(&alice)).await;
    let html = r.text();
    assert!(html.contains("the first 4096 bytes"), "{html}");
    assert!(
        html.contains(&"A".repeat(4096)) && !html.contains(&"A".repeat(4097)),
        "not cut at the bound"
    );

    // Approving sends the compressed bytes, not the decoded ones.
    let csrf = csrf_of(
        &page(proxy.admin, &format!("/ui/approvals/{id}"), Some(&alice))
            .await
            .text(),
    );
    let r = form_post(
        proxy.admin,
        &format!("/ui/approvals/{id}/approve"),
        Some(&alice),
        &format!("csrf={csrf}&request_sha256={sha}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    assert!(
        up.wait_hits(1, Duration::from_secs(15)).await,
        "the approval was not replayed"
    );
    assert!(up.wait_bodies_settled(Duration::from_secs(15)).await);
    let seen = up.last();
    assert_eq!(
        seen.body_bytes,
        z.len() as u64,
        "the upstream got other bytes than were approved"
    );
    assert_eq!(seen.header("content-encoding"), Some("gzip"));

    // Codings nobody could read are refused before anything is stored.
    for ce in [
        "zstd",
        "gzip, compress",
        "gzip;q=1",
        "gzip, gzip, gzip, gzip, gzip",
    ] {
        let req = common::request("POST", proxy.addr, "/api/things", &token)
            .header("content-encoding", ce)
            .body(full(z.clone()))
            .unwrap();
        let r = send(proxy.addr, req).await.unwrap();
        assert_eq!(r.status, 415, "Content-Encoding {ce}: {}", r.text());
        assert_eq!(r.reason().as_deref(), Some("unsupported_encoding"), "{ce}");
    }
    let pending = common::admin_call(
        proxy.admin,
        "GET",
        "/approvals?state=pending",
        OPERATOR_SECRET,
        None,
    )
    .await;
    assert_eq!(
        pending.json()["approvals"].as_array().map(Vec::len),
        Some(1),
        "{}",
        pending.text()
    );
    assert_eq!(up.hits(), 1);
}

/// Class 11: no page repeats text from its query string; `?done=` only selects one of
/// the server's fixed messages.
#[tokio::test(flavor = "multi_thread")]
async fn class11_no_page_reflects_its_query_string() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    let token = proxy.agent_token("clerk").await;
    let (id, _) = park(&proxy, &token, &[], b"{}".to_vec()).await;
    let alice = sign_in(proxy.admin, ALICE).await;
    const MARK: &str = "INJECTED-9d2c";
    let q = format!(
        "msg={MARK}&message={MARK}&state=Recorded:+{MARK}&done=Recorded:+{MARK}&error={MARK}"
    );
    for (path, cookie) in [
        (format!("/ui?{q}"), None),
        (format!("/ui?{q}"), Some(alice.as_str())),
        (format!("/ui/approvals/{id}?{q}"), Some(alice.as_str())),
        (
            format!("/ui/approvals/{id}?done={MARK}"),
            Some(alice.as_str()),
        ),
        (
            format!("/ui/approvals/{id}?done=approved%20{MARK}"),
            Some(alice.as_str()),
        ),
        (format!("/ui/approvals/nope?{q}"), Some(alice.as_str())),
        (format!("/ui/elsewhere?{q}"), Some(alice.as_str())),
    ] {
        let r = page(proxy.admin, &path, cookie).await;
        assert!(
            !r.all_text().contains(MARK),
            "{path} reflects its query: {}",
            r.all_text()
        );
    }
    let r = page(
        proxy.admin,
        &format!("/ui/approvals/{id}?done=approved"),
        Some(&alice),
    )
    .await;
    assert!(r.text().contains("Approved."), "the fixed message");
    let r = page(proxy.admin, "/ui?state=denied", Some(&alice)).await;
    assert!(r.text().contains("Approvals: denied"));
}

/// `POST /reload` as the harness operator after writing `yaml`; returns the new
/// policy_version once `GET /policy` reports it (polled, bounded).
async fn reload_to(proxy: &Proxy, yaml: &str) -> String {
    let version = || async {
        common::admin_call(proxy.admin, "GET", "/policy", OPERATOR_SECRET, None)
            .await
            .json()["policy_version"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    let before = version().await;
    proxy.write_config(yaml);
    let r = common::admin_call(proxy.admin, "POST", "/reload", OPERATOR_SECRET, None).await;
    assert_eq!(r.status, 200, "reload: {}", r.text());
    let new = r.json()["policy_version"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_ne!(new, before, "the config change did not change the policy");
    common::eventually(
        &format!("GET /policy reporting {new}"),
        Duration::from_secs(10),
        || async {
            let v = version().await;
            if v == new {
                Ok(())
            } else {
                Err(v)
            }
        },
    )
    .await;
    new
}

/// Class 13: an open page session re-reads its operator from the live configuration on
/// every request. Removed, demoted (approver → viewer) or re-keyed and reloaded out, the
/// session ends at its next request: the approval is not recorded and stays pending.
#[tokio::test(flavor = "multi_thread")]
async fn class13_sessions_end_when_the_operator_is_removed_demoted_or_rekeyed() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let url = up.url();
    let line = |roles: &str, token: &str| {
        format!(
            "{{ name: alice, token_sha256: \"{}\", roles: [{roles}] }}",
            hash(token)
        )
    };
    let original = config_with(&url, &line("viewer, approver", ALICE), "");
    let proxy = Proxy::start(&original, &[]);
    let token = proxy.agent_token("clerk").await;
    let (id, sha) = park(&proxy, &token, &[], b"{}".to_vec()).await;
    let approve = format!("/ui/approvals/{id}/approve");
    let mut version = String::new();

    for (what, changed) in [
        ("removed", config_with(&url, "", "")),
        ("demoted", config_with(&url, &line("viewer", ALICE), "")),
        (
            "re-keyed",
            config_with(
                &url,
                &line("viewer, approver", "pco-ui-alice-new-token-55aa"),
                "",
            ),
        ),
    ] {
        // A fresh session under the original config works...
        if !version.is_empty() {
            reload_to(&proxy, &original).await;
        }
        let alice = sign_in(proxy.admin, ALICE).await;
        let list = page(proxy.admin, "/ui", Some(&alice)).await;
        assert!(
            list.text().contains("alice") && list.text().contains(&id),
            "{what}: {}",
            list.text()
        );
        let csrf = csrf_of(&list.text());
        // ...until the operator is changed and the config reloaded.
        let v = reload_to(&proxy, &changed).await;
        assert_ne!(v, version);
        version = v;
        let r = form_post(
            proxy.admin,
            &approve,
            Some(&alice),
            &format!("csrf={csrf}&request_sha256={sha}"),
        )
        .await;
        assert_eq!(r.status, 303, "{what}: {}", r.text());
        assert_eq!(
            r.header("location"),
            Some("/ui"),
            "{what}: not sent to sign in"
        );
        assert!(
            r.header("set-cookie").unwrap_or("").contains("Max-Age=0"),
            "{what}: the cookie is not cleared"
        );
        let a = common::admin_call(
            proxy.admin,
            "GET",
            &format!("/approvals/{id}"),
            OPERATOR_SECRET,
            None,
        )
        .await;
        assert_eq!(a.json()["state"], "pending", "{what}: {}", a.text());
        assert_eq!(
            a.json()["approvals"].as_array().map(Vec::len),
            Some(0),
            "{what}: a vote was recorded"
        );
        let again = page(proxy.admin, "/ui", Some(&alice)).await;
        assert!(
            again.text().contains("Sign in"),
            "{what}: the session outlived the change"
        );
    }
    assert!(
        !proxy
            .audit_text()
            .lines()
            .any(|l| l.contains("\"operator\":\"alice\"") && l.contains("approval_")),
        "alice is recorded deciding after she was changed"
    );
    assert_eq!(up.hits(), 0);

    // The same steps with the operator unchanged do approve (the test can see success).
    reload_to(&proxy, &original).await;
    let alice = sign_in(proxy.admin, ALICE).await;
    let csrf = csrf_of(&page(proxy.admin, "/ui", Some(&alice)).await.text());
    let r = form_post(
        proxy.admin,
        &approve,
        Some(&alice),
        &format!("csrf={csrf}&request_sha256={sha}"),
    )
    .await;
    assert_eq!(r.status, 303);
    assert_eq!(
        r.header("location"),
        Some(format!("/ui/approvals/{id}?done=approved").as_str())
    );
}

/// Class 13: percent-escapes next to multi-byte characters, in every admin-side decoder
/// (sign-in form, page query, API query, session cookie), are answered, not a dropped
/// connection, and the server keeps serving.
#[tokio::test(flavor = "multi_thread")]
async fn class13_escapes_next_to_multibyte_characters_do_not_break_the_decoders() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start(&config(&up.url()), &[]);
    for body in [
        "token=%E2%82%AC€%4",
        "token=€%",
        "token=%€1",
        "€=%E2&csrf=%+1€",
    ] {
        let r = form_post(proxy.admin, "/ui/login", None, body).await;
        assert_eq!(r.status, 401, "{body}: {}", r.text());
    }
    let alice = sign_in(proxy.admin, ALICE).await;
    let csrf = csrf_of(&page(proxy.admin, "/ui", Some(&alice)).await.text());
    let r = form_post(
        proxy.admin,
        "/ui/logout",
        Some(&alice),
        &format!("x=%E2%82%AC€%4&csrf={csrf}"),
    )
    .await;
    assert_eq!(
        r.status,
        303,
        "a form with a multi-byte escape: {}",
        r.text()
    );
    let alice = sign_in(proxy.admin, ALICE).await;
    // A filter that does not decode is no filter: the queue is shown; an approval page
    // for an id that does not exist is 404 whatever its query says.
    for (path, want) in [
        ("/ui?state=%E2%82%AC%E2%82%AC%4", 200),
        ("/ui?state=%C3", 200),
        ("/ui/approvals/x?done=%E2%82%4", 404),
    ] {
        let r = page(proxy.admin, path, Some(&alice)).await;
        assert_eq!(r.status, want, "{path}: {}", r.text());
    }
    // Decoded as far as it goes (a cut escape kept as it is), then refused as a value.
    for (path, reason) in [
        ("/approvals?state=%E2%82%AC%4", "bad_state"),
        (
            "/explain?agent=%E2%82%AC%4&method=GET&path=/%E2%82",
            "unknown_agent",
        ),
    ] {
        let r = common::admin_call(proxy.admin, "GET", path, OPERATOR_SECRET, None).await;
        assert_eq!(
            (r.status, r.reason().as_deref()),
            (400, Some(reason)),
            "{path}: {}",
            r.text()
        );
    }
    // A session cookie with bytes this side never issues is no session.
    let req = Request::get("/ui")
        .header("host", proxy.admin.to_string())
        .header(
            "cookie",
            http::HeaderValue::from_bytes(b"pc_session=\xe2\x82\xac%4").unwrap(),
        )
        .body(empty())
        .unwrap();
    let r = send(proxy.admin, req).await.unwrap();
    assert!(r.text().contains("Sign in"));
    assert_eq!(page(proxy.admin, "/healthz", None).await.status, 200);
}

// ---------------------------------------------------------------------------------------
// admin_tls: required off loopback; the session cookie is `Secure` under it
// ---------------------------------------------------------------------------------------

/// The harness config with the admin listener at `admin` and `extra` top-level keys.
fn admin_config(admin: &str, extra: &str) -> String {
    common::config(extra).replace(
        "admin_listen: 127.0.0.1:0",
        &format!("admin_listen: {admin}"),
    )
}

/// README "routes.yaml reference": `admin_tls` is required when the admin listener is
/// not on loopback — a config error for `check` and `serve` alike, naming the key; with
/// `admin_tls` the same listener starts, serves only TLS, and a loopback listener needs
/// none.
#[tokio::test(flavor = "multi_thread")]
async fn admin_tls_is_required_off_loopback() {
    use crate::common::run_bin;
    let bound = Duration::from_secs(60);
    let dir = tempfile::tempdir().unwrap();
    let ca = common::TestCa::new();
    let leaf = ca.issue();
    std::fs::create_dir_all(dir.path().join("certs")).unwrap();
    std::fs::write(dir.path().join("certs/admin.crt"), &leaf.cert_pem).unwrap();
    std::fs::write(dir.path().join("certs/admin.key"), &leaf.key_pem).unwrap();
    let tls = "admin_tls: { cert: certs/admin.crt, key: certs/admin.key }\n";

    let bare = dir.path().join("bare.yaml");
    std::fs::write(&bare, admin_config("0.0.0.0:0", "")).unwrap();
    let bare_s = bare.to_str().unwrap();
    let out = run_bin(&["check", "--config", bare_s], &[], bound);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "check: {err}");
    assert!(
        err.contains("bare.yaml:") && err.contains("admin_listen") && err.contains("admin_tls"),
        "the error names the file, the key and admin_tls: {err}"
    );
    let out = run_bin(&["serve", "--config", bare_s], &[], bound);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "serve: {err}");
    assert!(err.contains("admin_tls"), "{err}");
    assert!(!err.contains("listening"), "serve listened anyway: {err}");

    // Controls: with admin_tls, and on another loopback address without it.
    for (name, text) in [
        ("with-tls.yaml", admin_config("0.0.0.0:0", tls)),
        ("loopback.yaml", admin_config("127.0.0.2:0", "")),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        let out = run_bin(&["check", "--config", p.to_str().unwrap()], &[], bound);
        assert_eq!(
            out.status.code(),
            Some(0),
            "{name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let proxy = Proxy::start_with_files(
        &admin_config("0.0.0.0:0", tls),
        &[],
        &[
            ("certs/admin.crt", leaf.cert_pem.as_bytes()),
            ("certs/admin.key", leaf.key_pem.as_bytes()),
        ],
    );
    let admin: SocketAddr = format!("127.0.0.1:{}", proxy.admin.port()).parse().unwrap();
    let req = Request::get("/healthz")
        .header("host", format!("localhost:{}", admin.port()))
        .body(empty())
        .unwrap();
    let (_, r) = common::send_tls(admin, &ca.pem(), &[b"http/1.1"], req)
        .await
        .expect("healthz over TLS");
    assert_eq!(r.status, 200, "{}", r.text());
    // The same port does not answer cleartext HTTP: one fatal TLS alert, then the close.
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    tokio::io::AsyncWriteExt::write_all(
        &mut s,
        format!("GET /healthz HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let got = common::read_to_eof(&mut s).await;
    assert!(
        got.len() == 7 && got[0] == 21 && got[5] == 2,
        "cleartext on the admin TLS port: want a fatal TLS alert, got {got:?}"
    );
}

/// README "The operator page": the session lives in an `HttpOnly; SameSite=Strict;
/// Path=/ui` cookie, `Secure` with `admin_tls` — and only then.
#[tokio::test(flavor = "multi_thread")]
async fn session_cookie_is_secure_with_admin_tls_and_only_then() {
    let ca = common::TestCa::new();
    let leaf = ca.issue();
    let up = Upstream::start(Behaviour::Fixed).await;
    let proxy = Proxy::start_with_files(
        &config_with(
            &up.url(),
            "",
            "admin_tls: { cert: certs/admin.crt, key: certs/admin.key }",
        ),
        &[],
        &[
            ("certs/admin.crt", leaf.cert_pem.as_bytes()),
            ("certs/admin.key", leaf.key_pem.as_bytes()),
        ],
    );
    let host = format!("localhost:{}", proxy.admin.port());
    let ca_pem = ca.pem();
    let tls = |req| common::send_tls(proxy.admin, &ca_pem, &[b"http/1.1"], req);
    let login = Request::post("/ui/login")
        .header("host", &host)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(full(format!("token={OPERATOR_SECRET}")))
        .unwrap();
    let (_, r) = tls(login).await.expect("sign-in over TLS");
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    for attr in ["HttpOnly", "SameSite=Strict", "Path=/ui", "Secure"] {
        assert!(attrs.contains(&attr), "cookie lacks {attr}: {set}");
    }
    // The cookie is a working session over TLS.
    let pair = attrs[0].to_string();
    let ui = Request::get("/ui")
        .header("host", &host)
        .header("cookie", &pair)
        .body(empty())
        .unwrap();
    let (_, r) = tls(ui).await.expect("page over TLS");
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("csrf"),
        "not the signed-in page: {}",
        r.text()
    );

    // Control: the same sign-in without admin_tls sets the cookie without `Secure`.
    let plain = Proxy::start(&config(&up.url()), &[]);
    let r = form_post(
        plain.admin,
        "/ui/login",
        None,
        &format!("token={OPERATOR_SECRET}"),
    )
    .await;
    assert_eq!(r.status, 303, "{}", r.text());
    let set = r
        .header("set-cookie")
        .expect("a session cookie")
        .to_string();
    let attrs: Vec<&str> = set.split(';').map(str::trim).collect();
    assert!(attrs.contains(&"HttpOnly"), "{set}");
    assert!(
        !attrs.contains(&"Secure"),
        "Secure without admin_tls: {set}"
    );
}
