use super::*;

fn env(name: &str) -> Option<String> {
    (name == "TICKETS_API_KEY").then(|| "canary-upstream-secret".to_string())
}

fn parse(text: &str) -> Result<Snapshot, ConfigError> {
    Snapshot::parse(Path::new("routes.yaml"), text, &env)
}

const GOOD: &str = "\
upstreams:
  tickets:
    url: http://127.0.0.1:7000/v2/
    inject: { header: Authorization, value_env: TICKETS_API_KEY }
routes:
  - prefix: /tickets
    upstream: tickets
    paths: [\"/tickets/{id}\"]
    tools:
      - { match: \"POST /tickets/{id}/refund\", name: tickets.refund, risk: critical }
profiles:
  reader: { tools: [\"tickets.get\"], max_risk: low }
agents:
  bot: { profile: reader, tenant: acme }
";

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config should be refused")
        .to_string()
}

#[test]
fn good_config_compiles() {
    let s = parse(GOOD).unwrap();
    assert_eq!(s.upstreams[0].base_path, "/v2");
    assert!(s.policy_version.starts_with("sha256:"));
    assert_eq!(s.routes[0].prefix, "/tickets");
    assert!(!format!("{:?}", s.upstreams[0]).contains("canary"));
}

#[test]
fn policy_version_ignores_formatting_but_not_content() {
    let a = parse(GOOD).unwrap().policy_version;
    let b = parse(&format!(
        "# a comment\n{}",
        GOOD.replace("max_risk: low", "max_risk:   low  ")
    ))
    .unwrap()
    .policy_version;
    let c = parse(&GOOD.replace("max_risk: low", "max_risk: medium"))
        .unwrap()
        .policy_version;
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn unknown_keys_are_refused_with_position() {
    let e = err(&GOOD.replace(
        "    upstream: tickets\n",
        "    upstream: tickets\n    upstrem: x\n",
    ));
    assert!(
        e.starts_with("routes.yaml:8:5: routes[0].upstrem: unknown field `upstrem`"),
        "{e}"
    );
    let e = err(&format!("{GOOD}bogus: 1\n"));
    assert!(
        e.contains("unknown field `bogus`") && e.starts_with("routes.yaml:"),
        "{e}"
    );
}

#[test]
fn semantic_errors_name_file_line_col_and_key() {
    let cases = [
        (
            GOOD.replace("upstream: tickets", "upstream: nope"),
            "routes.yaml:7:5: routes[0].upstream: unknown upstream `nope`",
        ),
        (
            GOOD.replace("/tickets/{id}\"]", "/tickets/:id\"]"),
            "routes.yaml:8:13: routes[0].paths[0]:",
        ),
        (
            GOOD.replace("/tickets/{id}\"]", "/tickets/{a}{b}\"]"),
            "routes[0].paths[0]: template",
        ),
        (
            GOOD.replace("risk: critical", "risk: severe"),
            "routes[0].tools[0].risk: `severe`",
        ),
        (
            GOOD.replace("value_env: TICKETS_API_KEY", "value_env: MISSING_VAR"),
            "upstreams.tickets.inject.value_env: environment variable `MISSING_VAR` is not set",
        ),
        (
            GOOD.replace("max_risk: low", "max_risk: extreme"),
            "profiles.reader.max_risk",
        ),
        (
            GOOD.replace("profile: reader", "profile: writer"),
            "agents.bot.profile: unknown profile `writer`",
        ),
        (
            GOOD.replace("prefix: /tickets", "prefix: /_portcullis"),
            "routes[0].prefix: routes may not overlap",
        ),
        (
            GOOD.replace("tenant: acme", "tenant: \"a b\""),
            "agents.bot.tenant",
        ),
        (
            GOOD.replace("url: http://127.0.0.1:7000/v2/", "url: ftp://x"),
            "upstreams.tickets.url",
        ),
    ];
    for (text, want) in cases {
        let e = err(&text);
        assert!(e.contains(want), "want {want:?} in {e:?}");
        assert!(e.starts_with("routes.yaml:"), "{e}");
    }
}

#[test]
fn duplicate_tool_names_and_prefixes() {
    let dup = GOOD.replace(
        "name: tickets.refund, risk: critical }",
        "name: tickets.refund, risk: critical }\n      - { match: \"POST /tickets/{id}/undo\", name: tickets.refund }",
    );
    assert!(err(&dup).contains("duplicate tool name `tickets.refund`"));
    let dup_route = GOOD.replace(
        "profiles:",
        "  - { prefix: /tickets, upstream: tickets }\nprofiles:",
    );
    assert!(err(&dup_route).contains("already routed"));
}

#[test]
fn overlapping_prefixes_longest_wins() {
    let text = GOOD.replace(
        "profiles:",
        "  - { prefix: /tickets/archive, upstream: tickets, tool_prefix: archive }\nprofiles:",
    );
    let s = parse(&text).unwrap();
    assert_eq!(
        s.shadows,
        vec![("/tickets".to_string(), "/tickets/archive".to_string())]
    );
    let t = s
        .classifier
        .classify(Method::Get, "/tickets/archive/5")
        .unwrap();
    assert_eq!(&*t.name, "archive.get");
    assert_eq!(
        &*s.classifier
            .classify(Method::Get, "/tickets/archivex/x")
            .unwrap()
            .name,
        "tickets.archivex.x.list"
    );
}

#[test]
fn tenant_header_needs_tenants() {
    let text = GOOD
        .replace("    inject:", "    tenant_header: X-Tenant-Id\n    inject:")
        .replace("tenant: acme", "owner: me");
    assert!(err(&text).contains("agents.bot: agent has no tenant"));
}

#[test]
fn connection_limits_have_defaults_and_refuse_zero() {
    let l = parse(GOOD).unwrap().limits;
    assert_eq!(l.idle_timeout, Duration::from_secs(60));
    assert_eq!(l.max_connections, 10_000);
    assert_eq!(l.max_connections_per_ip, 256);
    let set = |extra: &str| format!("{GOOD}limits:\n  {extra}\n");
    let l = parse(&set(
        "{ idle_timeout: 500ms, max_connections: 7, max_connections_per_ip: 3 }",
    ))
    .unwrap()
    .limits;
    assert_eq!(l.idle_timeout, Duration::from_millis(500));
    assert_eq!((l.max_connections, l.max_connections_per_ip), (7, 3));
    for (extra, key) in [
        ("idle_timeout: 0s", "limits.idle_timeout"),
        ("max_connections: 0", "limits.max_connections"),
        ("max_connections_per_ip: 0", "limits.max_connections_per_ip"),
    ] {
        let e = err(&set(extra));
        assert!(
            e.starts_with("routes.yaml:") && e.contains(&format!("{key}: must be more than zero")),
            "{e}"
        );
    }
    assert!(err(&set("max_connections: -1")).contains("limits.max_connections"));
}
