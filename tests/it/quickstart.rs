//! What a new user meets first: `check`, `explain` and `test` work without the upstream
//! secrets (and `check` says which it did not check) while `serve` still refuses to
//! start; `check` warns about profile patterns that can match no known tool (spec
//! operations are known); the admin API's 401 says what to send, `GET /` leads to the
//! operator page, and the CLI says so when `--admin` points at the agent port; `serve`
//! on a taken port creates nothing; the README asks for the crate's Rust and stands alone.

use crate::common::{
    admin_call, base_config, crate_path, run_bin, run_bin_in, Proxy, CLI_BOUND, OPERATOR_SECRET,
};
use std::path::Path;

const KEY_VAR: &str = "PC_QUICKSTART_TICKETS_KEY";

fn config_with(profile: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: {{ embedded: data/p.redb }}
audit: {{ path: data/audit.jsonl }}
upstreams:
  tickets:
    url: http://127.0.0.1:7000/v2
    inject: {{ header: Authorization, value_env: {KEY_VAR} }}
routes:
  - prefix: /tickets
    upstream: tickets
    paths: ["/tickets", "/tickets/{{id}}"]
    tools:
      - {{ match: "POST /tickets/{{id}}/refund", name: tickets.refund, risk: critical }}
profiles:
  support: {profile}
agents: {{ bot: {{ profile: support }} }}
"#
    )
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn text(o: &std::process::Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn check_explain_and_test_work_without_the_secrets_but_serve_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "routes.yaml",
        &config_with(r#"{ tools: ["tickets.get"], approval: ["tickets.refund"] }"#),
    );
    let line = config_with("")
        .lines()
        .position(|l| l.contains("value_env"))
        .unwrap()
        + 1;

    // check: exit 0, the table, and a note naming the unchecked secret and its place.
    let out = run_bin_in(
        Some(dir.path()),
        &["check", "--config", &cfg],
        &[],
        CLI_BOUND,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("tickets.refund"), "{stdout}");
    let note = stdout
        .lines()
        .find(|l| l.starts_with("note: secret not checked:"))
        .unwrap_or_else(|| panic!("no note about the secret:\n{stdout}"));
    assert!(
        note.contains(&format!("{cfg}:{line}:"))
            && note.contains("upstreams.tickets.inject.value_env")
            && note.contains(KEY_VAR),
        "{note}"
    );
    assert!(stdout.contains("`serve` refuses to start"), "{stdout}");

    // check --require-secrets: as strict as serve.
    let out = run_bin_in(
        Some(dir.path()),
        &["check", "--require-secrets", "--config", &cfg],
        &[],
        CLI_BOUND,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{cfg}:{line}:")) && stderr.contains(KEY_VAR),
        "{stderr}"
    );

    // With the secret set, check checks it and notes nothing.
    let out = run_bin_in(
        Some(dir.path()),
        &["check", "--config", &cfg],
        &[(KEY_VAR, "Bearer k")],
        CLI_BOUND,
    );
    let (stdout, _) = text(&out);
    assert_eq!(out.status.code(), Some(0));
    assert!(!stdout.contains("note: secret not checked"), "{stdout}");

    // explain and test decide without it.
    let out = run_bin_in(
        Some(dir.path()),
        &[
            "explain",
            "--config",
            &cfg,
            "--agent",
            "bot",
            "POST",
            "/tickets/7/refund",
        ],
        &[],
        CLI_BOUND,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("park"), "{stdout}");
    let cases = write(
        dir.path(),
        "cases.yaml",
        "- { agent: bot, request: \"GET /tickets/1\", expect: allow }\n\
         - { agent: bot, request: \"POST /tickets/1/refund\", expect: park }\n",
    );
    let out = run_bin_in(
        Some(dir.path()),
        &["test", "--config", &cfg, &cases],
        &[],
        CLI_BOUND,
    );
    let (stdout, stderr) = text(&out);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );

    // serve fails closed, naming the secret, and creates no data directory.
    let out = run_bin_in(
        Some(dir.path()),
        &["serve", "--config", &cfg],
        &[],
        CLI_BOUND,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(KEY_VAR), "{stderr}");
    assert!(!dir.path().join("data").exists());
}

#[test]
fn check_warns_about_patterns_that_match_no_known_tool() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write(
        dir.path(),
        "routes.yaml",
        &config_with(
            r#"{ tools: ["tickets.get", "tickets.*"], approval: ["tickets.refnd"], deny: ["tickets.delet", "*.delete"] }"#,
        ),
    );
    let out = run_bin(&["check", "--config", &cfg], &[(KEY_VAR, "k")], CLI_BOUND);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("warning:") && l.contains("matches no known tool"))
        .collect();
    assert_eq!(warnings.len(), 2, "{stdout}");
    assert!(
        warnings[0].contains("profiles.support.approval[0]")
            && warnings[0].contains("`tickets.refnd`")
            && warnings[0].contains("did you mean `tickets.refund`"),
        "{}",
        warnings[0]
    );
    assert!(
        warnings[1].contains("profiles.support.deny[0]")
            && warnings[1].contains("did you mean `tickets.delete`"),
        "{}",
        warnings[1]
    );
}

#[test]
fn check_knows_the_names_of_spec_operations() {
    // An OpenAPI route's tools are named after its operations (`addPet` → `add_pet`),
    // not after a `paths` template: a pattern naming one is known, a typo of one is not.
    let dir = tempfile::tempdir().unwrap();
    let spec = std::fs::read(crate_path("tests/data/openapi/petstore/petstore-3.0.json")).unwrap();
    std::fs::write(dir.path().join("petstore.json"), spec).unwrap();
    let cfg = write(
        dir.path(),
        "routes.yaml",
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
store: { embedded: data/p.redb }
audit: { path: data/audit.jsonl }
upstreams: { api: { url: "http://127.0.0.1:9/v2" } }
routes:
  - { prefix: /petstore, upstream: api, tool_prefix: petstore, strip_prefix: true, openapi: petstore.json }
profiles:
  clerk: { tools: ["petstore.get_pet_by_id"], approval: ["petstore.add_pet", "petstore.ad_pet"] }
agents: { clerk: { profile: clerk } }
"#,
    );
    let out = run_bin(&["check", "--config", &cfg], &[], CLI_BOUND);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert!(
        stdout.lines().any(|l| l.starts_with("petstore.add_pet ")),
        "the operation is a tool: {stdout}"
    );
    let warnings: Vec<&str> = stdout
        .lines()
        .filter(|l| l.contains("matches no known tool"))
        .collect();
    assert_eq!(warnings.len(), 1, "{stdout}");
    assert!(
        warnings[0].contains("profiles.clerk.approval[1]")
            && warnings[0].contains("did you mean `petstore.add_pet`"),
        "{}",
        warnings[0]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_admin_api_says_what_to_send_and_the_cli_knows_the_agent_port() {
    let p = Proxy::start(&base_config(), &[]);

    // 401 names the header and the token kind.
    let r = admin_call(p.admin, "GET", "/approvals", "", None).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains("Authorization: Bearer pco_"),
        "{}",
        r.text()
    );
    let r = admin_call(p.admin, "GET", "/approvals", "pco_not-an-operator", None).await;
    assert_eq!(r.status, 401);
    assert!(
        r.text().contains("Authorization: Bearer pco_"),
        "{}",
        r.text()
    );
    // The agent port still says nothing beyond 401.
    let r = crate::common::get(p.addr, "/x", "").await;
    assert_eq!(r.status, 401);
    assert!(r.json().get("detail").is_none(), "{}", r.text());

    // GET / on the admin port: the operator page.
    let r = admin_call(p.admin, "GET", "/", "", None).await;
    assert_eq!(r.status, 303);
    assert_eq!(r.header("location"), Some("/ui"));

    // The CLI pointed at the agent port says so.
    let agent_url = format!("http://{}", p.addr);
    let out = tokio::task::spawn_blocking(move || {
        run_bin(
            &["approvals", "list", "--admin", &agent_url],
            &[("PORTCULLIS_OPERATOR_TOKEN", OPERATOR_SECRET)],
            CLI_BOUND,
        )
    })
    .await
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("agent port") && stderr.contains("admin_listen"),
        "{stderr}"
    );
    // And with a wrong token on the real admin port, it relays the hint.
    let admin_url = format!("http://{}", p.admin);
    let out = tokio::task::spawn_blocking(move || {
        run_bin(
            &["approvals", "list", "--admin", &admin_url],
            &[("PORTCULLIS_OPERATOR_TOKEN", "pco_wrong")],
            CLI_BOUND,
        )
    })
    .await
    .unwrap();
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("401") && stderr.contains("Bearer pco_") && !stderr.contains("agent port"),
        "{stderr}"
    );

    // A token narrowing that matches no known tool is answered with a warning.
    let r = admin_call(
        p.admin,
        "POST",
        "/tokens",
        OPERATOR_SECRET,
        Some(&serde_json::json!({"agent": "bot", "ttl": "1h", "tools": ["nothing.here", "*"]})),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let w = r.json()["warnings"].clone();
    assert_eq!(w.as_array().map(Vec::len), Some(1), "{w}");
    assert!(w[0].as_str().unwrap().contains("`nothing.here`"), "{w}");
}

#[test]
fn serve_on_a_taken_port_creates_no_data_directory() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    for (listen, admin) in [
        (addr.to_string(), "127.0.0.1:0".to_string()),
        ("127.0.0.1:0".to_string(), addr.to_string()),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let yaml = base_config().replace(
            "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0",
            &format!("listen: {listen}\nadmin_listen: {admin}"),
        );
        assert!(yaml.contains(&addr.to_string()));
        let cfg = write(dir.path(), "routes.yaml", &yaml);
        let out = run_bin(&["serve", "--config", &cfg], &[], CLI_BOUND);
        let (_, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains(&addr.to_string()), "{stderr}");
        assert!(
            !dir.path().join("data").exists(),
            "serve created its data directory before binding {addr}"
        );
    }
}

#[test]
fn an_admin_listener_off_loopback_needs_tls_or_the_trusted_network_flag() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = base_config().replace("admin_listen: 127.0.0.1:0", "admin_listen: 0.0.0.0:0");
    let cfg = write(dir.path(), "routes.yaml", &yaml);
    let out = run_bin(&["check", "--config", &cfg], &[], CLI_BOUND);
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{cfg}:2:"))
            && stderr.contains("admin_tls")
            && stderr.contains("admin_trusted_network"),
        "{stderr}"
    );
    let cfg = write(
        dir.path(),
        "trusted.yaml",
        &format!("admin_trusted_network: true\n{yaml}"),
    );
    let out = run_bin(&["check", "--config", &cfg], &[], CLI_BOUND);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
}

#[test]
fn the_cli_says_when_nothing_answers_at_admin() {
    let dead = crate::common::DeadPort::new();
    let out = run_bin(
        &["approvals", "list", "--admin", &dead.url()],
        &[("PORTCULLIS_OPERATOR_TOKEN", OPERATOR_SECRET)],
        CLI_BOUND,
    );
    let (_, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("nothing answers at") && stderr.contains("admin_listen"),
        "{stderr}"
    );
}

/// The README a new user reads first asks for the crate's own `rust-version`, and stands
/// alone: every link is a file of this repository, no URL outside code (a rendered page
/// would make it a link), no internal issue or pull-request number.
#[test]
fn the_readme_stands_alone_and_asks_for_the_crates_rust() {
    let readme = std::fs::read_to_string(crate_path("README.md")).unwrap();
    let cargo = std::fs::read_to_string(crate_path("Cargo.toml")).unwrap();
    let rust = cargo
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .expect("Cargo.toml has a rust-version")
        .trim_matches('"');
    assert!(
        readme.contains(&format!("- Rust {rust} or newer")),
        "the README's prerequisites do not ask for Rust {rust} (Cargo.toml's rust-version)"
    );

    // Prose only, line for line: fenced blocks and inline code are examples.
    let mut fenced = false;
    let prose: Vec<String> = readme
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("```") {
                fenced = !fenced;
                return String::new();
            }
            if fenced {
                return String::new();
            }
            l.split('`').step_by(2).collect::<Vec<_>>().join(" ")
        })
        .collect();
    for (n, line) in prose.iter().enumerate() {
        let at = format!("README.md:{}: {line}", n + 1);
        let lower = line.to_lowercase();
        for url in ["http://", "https://", "www."] {
            assert!(!lower.contains(url), "a URL outside code: {at}");
        }
        let mut rest = line.as_str();
        while let Some(i) = rest.find("](") {
            rest = &rest[i + 2..];
            let target = &rest[..rest.find(')').unwrap_or(rest.len())];
            let file = target.split('#').next().unwrap_or_default();
            assert!(
                !target.contains(':') && !file.is_empty() && crate_path(file).exists(),
                "a link to `{target}`, not a file of this repository: {at}"
            );
        }
        let words: Vec<&str> = lower
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '#'))
            .filter(|w| !w.is_empty())
            .collect();
        let number = |w: &str| !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit());
        for w in &words {
            assert!(
                !w.strip_prefix('#').is_some_and(number),
                "an issue number: {at}"
            );
        }
        for pair in words.windows(2) {
            assert!(
                !(["issue", "issues", "pr"].contains(&pair[0])
                    && number(pair[1].trim_start_matches('#'))),
                "an issue number: {at}"
            );
        }
    }
}
