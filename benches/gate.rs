//! The gate micro-benchmark: `canon::canonicalize` + `classifier.classify` +
//! `policy::decide` on a generated 200-route configuration, per request.
//!
//! ```sh
//! CARGO_TARGET_DIR=target/bench cargo bench --bench gate
//! ```
//!
//! Criterion reports the time per iteration (= per request) for each case; after it, a
//! plain timing loop prints one `gate ns/request` line per case so the number is easy to
//! grep (target: ≤ 1 µs, issue 6).
//!
//! The `github_*` cases run the same gate on a config whose one route imports GitHub's
//! whole REST description (`openapi:`, 1,223 operations; target ≤ 2 µs, issue 15), and
//! `validate_issue_create` times `validate: request` for one JSON body and query against
//! the `issues/create` schema (it runs only on routes that opt in).
//!
//! The `cond_*` cases time conditions: the same tool and 1 KiB JSON body for an agent
//! whose grant has no condition (`cond_none`: the body is not read) and one whose grant
//! is `{ tool, when: "request.body.amount <= 50" }` (`cond_body`: the body parsed
//! strictly, the values built, the expression run); target: ≤ 5 µs more.

use criterion::Criterion;
use http::{HeaderMap, Method, Uri, Version};
use portcullis::canon;
use portcullis::conditions::body::Read;
use portcullis::config::Snapshot;
use portcullis::policy::{decide, Agent, Decision, Input, Narrowing, Switches};
use std::fmt::Write;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

#[path = "../bench/github_gate.rs"]
mod github_gate;
use github_gate::{github_spec, github_yaml, request_headers};

const ROUTES: usize = 200;
const UPSTREAMS: usize = 10;

/// A 200-route config: every route has known templates, an explicit critical tool and a
/// sensitive path; every fourth route refuses unknown paths. One scoped profile (tools by
/// glob, resources, approval, deny, a risk ceiling) and one admin profile.
fn config_yaml() -> String {
    let mut y = String::new();
    y.push_str("listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n");
    y.push_str("sensitive_paths: [\"/admin/{*rest}\", \"/billing/{*rest}\"]\n");
    y.push_str("upstreams:\n");
    for u in 0..UPSTREAMS {
        let _ = writeln!(
            y,
            "  u{u}:\n    url: http://127.0.0.1:7000/v{u}\n    \
             inject: {{ header: Authorization, value_env: KEY_{u} }}\n    \
             tenant_header: X-Tenant-Id"
        );
    }
    y.push_str("routes:\n");
    for r in 0..ROUTES {
        let unknown = if r % 4 == 3 { "deny" } else { "classify" };
        let _ = writeln!(
            y,
            "  - prefix: /svc{r}\n    upstream: u{u}\n    tool_prefix: svc{r}\n    \
             unknown_paths: {unknown}\n    \
             paths: [\"/svc{r}/items/{{id}}\", \"/svc{r}/items/{{id}}/comments\", \
             \"/svc{r}/orders/{{id}}\", \"/svc{r}/orders/{{id}}/lines/{{line}}\"]\n    \
             sensitive_paths: [\"/svc{r}/items/{{id}}/export\"]\n    \
             tools:\n      - {{ match: \"POST /svc{r}/items/{{id}}/refund\", name: svc{r}.refund, \
             risk: critical }}",
            u = r % UPSTREAMS
        );
    }
    // Resources: a handful of routes' subtrees, as a real scoped profile would list.
    let resources: Vec<String> = (100..ROUTES)
        .step_by(10)
        .chain([122])
        .map(|r| format!("\"/svc{r}\", \"/svc{r}/{{*rest}}\""))
        .collect();
    let _ = write!(
        y,
        "profiles:\n  \
         scoped:\n    \
         tools: [\"svc1*.items.get\", \"svc1*.items.list\", \"svc*.items.comments.*\", \"svc*.orders.get\", \"svc*.invoices.get\"]\n    \
         resources: [{}]\n    \
         max_risk: medium\n    \
         approval: [\"*.refund\"]\n    \
         deny: [\"*.delete\"]\n  \
         ops: {{ admin: true }}\n\
         agents:\n  \
         bot: {{ profile: scoped, tenant: acme }}\n  \
         opsbot: {{ profile: ops, tenant: acme }}\n",
        resources.join(", ")
    );
    y
}

struct Case {
    name: &'static str,
    agent: Arc<Agent>,
    method: Method,
    uri: Uri,
    expect: &'static str,
    body: Option<Read>,
}

struct Gate {
    snap: Snapshot,
    headers: HeaderMap,
    narrowing: Narrowing,
    switches: Switches,
}

impl Gate {
    fn new() -> Gate {
        let g = Gate::from_yaml(&config_yaml());
        assert_eq!(g.snap.routes.len(), ROUTES);
        g
    }

    fn from_yaml(text: &str) -> Gate {
        let snap = Snapshot::parse(Path::new("bench.yaml"), text, &|_| Some("k".into()))
            .unwrap_or_else(|e| panic!("the generated config is invalid: {e}"));
        let headers = request_headers();
        Gate {
            snap,
            headers,
            narrowing: Narrowing::default(),
            switches: Switches::default(),
        }
    }

    fn case(
        &self,
        name: &'static str,
        agent: &str,
        m: Method,
        target: &str,
        e: &'static str,
    ) -> Case {
        Case {
            name,
            agent: self.snap.agents[agent].clone(),
            method: m,
            uri: target.parse().expect("target"),
            expect: e,
            body: None,
        }
    }

    /// One request through the gate as the proxy runs it: canonical form, tool, the
    /// conditions that can apply (none: nothing is built), decision.
    fn run(&self, c: &Case) -> Decision {
        let canon = canon::canonicalize(&c.method, &c.uri, Version::HTTP_11, &self.headers)
            .expect("canonical");
        let tool = self
            .snap
            .classifier
            .classify(canon.method, &canon.path)
            .expect("classified");
        match portcullis::pipeline::decide_all(
            &self.snap,
            &c.agent,
            &self.narrowing,
            &self.switches,
            &canon,
            &self.headers,
            c.body.as_ref(),
            tool,
        ) {
            Ok(j) => j.decision,
            Err(e) => panic!("{}: {e}", c.name),
        }
    }

    /// The same without the conditions step: classify, then `decide` alone.
    fn run_bare(&self, c: &Case) -> Decision {
        let canon = canon::canonicalize(&c.method, &c.uri, Version::HTTP_11, &self.headers)
            .expect("canonical");
        let tool = self
            .snap
            .classifier
            .classify(canon.method, &canon.path)
            .expect("classified");
        decide(&Input {
            agent: &c.agent,
            narrowing: &self.narrowing,
            tool: &tool,
            path: &canon.path,
            switches: &self.switches,
            approved: false,
            evaluated: &Default::default(),
        })
    }
}

/// One route, one tool, two agents: `plain` granted it outright, `cond` granted it when
/// the body's amount is at most 50.
fn cond_yaml() -> String {
    "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\n\
     upstreams:\n  pay: { url: \"http://127.0.0.1:7000\" }\n\
     routes:\n  - prefix: /pay\n    upstream: pay\n    paths: [\"/pay/{id}\"]\n    \
     tools: [{ match: \"POST /pay/{id}/refund\", name: pay.refund, risk: medium }]\n\
     profiles:\n  \
     plain: { tools: [pay.refund], max_risk: medium }\n  \
     cond: { tools: [{ tool: pay.refund, when: \"request.body.amount <= 50\" }], max_risk: medium }\n\
     agents:\n  plain: { profile: plain }\n  cond: { profile: cond }\n"
        .to_string()
}

/// A 1 KiB JSON refund body.
fn refund_body() -> Vec<u8> {
    let mut items = String::new();
    let mut i = 0;
    let mut body = String::new();
    while body.len() < 1024 {
        if i > 0 {
            items.push_str(", ");
        }
        let _ = write!(
            items,
            r#"{{"sku": "SKU-{i:05}", "qty": {}, "price": 9.5}}"#,
            i % 4 + 1
        );
        i += 1;
        body = format!(
            r#"{{"amount": 42, "currency": "EUR", "reason": "damaged in transit", "items": [{items}]}}"#
        );
    }
    body.into_bytes()
}

fn cond_cases(g: &Gate) -> Vec<Case> {
    let body = Read::Bytes {
        bytes: refund_body().into(),
        json: true,
    };
    let mut none = g.case("cond_none", "plain", Method::POST, "/pay/7/refund", "allow");
    none.body = Some(body.clone());
    let mut cond = g.case("cond_body", "cond", Method::POST, "/pay/7/refund", "allow");
    cond.body = Some(body);
    vec![none, cond]
}

fn cases(g: &Gate) -> Vec<Case> {
    vec![
        g.case("allow", "bot", Method::GET, "/svc150/items/42", "allow"),
        g.case(
            "allow_query",
            "bot",
            Method::GET,
            "/svc150/items/42/comments?page=2&sort=desc",
            "allow",
        ),
        g.case(
            "heuristic_allow",
            "bot",
            Method::GET,
            "/svc122/invoices/0190b6f2-5c1e-7c3a-9f0e-2b1d4c6a8e90",
            "allow",
        ),
        g.case("deny", "bot", Method::DELETE, "/svc150/items/42", "deny"),
        g.case(
            "park_lenient",
            "bot",
            Method::POST,
            "/svc150/items/42/Refund.json",
            "park",
        ),
        g.case(
            "passthrough",
            "opsbot",
            Method::GET,
            "/svc199/items/42",
            "allow",
        ),
    ]
}

fn github_cases(g: &Gate) -> Vec<Case> {
    vec![
        g.case(
            "github_allow",
            "bot",
            Method::GET,
            "/github/repos/octo/hello/issues/42/comments?per_page=50",
            "allow",
        ),
        g.case(
            "github_deny",
            "bot",
            Method::DELETE,
            "/github/repos/octo/hello",
            "deny",
        ),
        g.case(
            "github_park",
            "bot",
            Method::POST,
            "/github/repos/octo/hello/forks",
            "park",
        ),
        g.case(
            "github_lenient",
            "bot",
            Method::GET,
            "/github/repos/octo/hello/Pulls.json",
            "deny",
        ),
        g.case(
            "github_passthrough",
            "opsbot",
            Method::PATCH,
            "/github/repos/octo/hello/issues/7",
            "allow",
        ),
    ]
}

/// `validate: request` for `POST /github/repos/{owner}/{repo}/issues`: the body parsed
/// (repeated keys refused), the query read as its schema's types, one validation.
fn validate_issue_create(g: &Gate, body: &[u8]) -> bool {
    let op = g
        .snap
        .openapi
        .by_name("github.issues.create")
        .expect("issues/create");
    let check = op.request_check().expect("validate: request is on");
    let mut instance = serde_json::Map::new();
    instance.insert(
        "query".into(),
        portcullis::openapi::validate::query_object(op, None),
    );
    instance.insert(
        "body".into(),
        portcullis::openapi::validate::strict_json(body).expect("json"),
    );
    check.check(&serde_json::Value::Object(instance)).is_ok()
}

fn main() {
    let g = Gate::new();
    let cases = cases(&g);
    for c in &cases {
        let d = g.run(c);
        assert_eq!(d.label(), c.expect, "{}: {d:?}", c.name);
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = github_spec(dir.path());
    let t = Instant::now();
    let gh = Gate::from_yaml(&github_yaml(&spec));
    let import = t.elapsed();
    assert_eq!(gh.snap.openapi.operations().count(), 1223);
    let gh_cases = github_cases(&gh);
    for c in &gh_cases {
        let d = gh.run(c);
        assert_eq!(d.label(), c.expect, "{}: {d:?}", c.name);
    }
    let cg = Gate::from_yaml(&cond_yaml());
    let c_cases = cond_cases(&cg);
    for c in &c_cases {
        let d = cg.run(c);
        assert_eq!(d.label(), c.expect, "{}: {d:?}", c.name);
    }
    assert!(c_cases[0].body.as_ref().is_some_and(|b| match b {
        Read::Bytes { bytes, .. } => (1024..1200).contains(&bytes.len()),
        Read::Empty => false,
    }));
    let body: &[u8] = br#"{"title": "Found a bug", "body": "I'm having a problem with this.", "assignees": ["octocat"], "milestone": 1, "labels": ["bug"]}"#;
    assert!(validate_issue_create(&gh, body));
    assert!(!validate_issue_create(&gh, br#"{"body": "no title"}"#));

    // The agent's rationale (checked on every request that carries one) and the
    // preview diff (once per page view of a previewed write).
    let said: &[u8] = b"Customer%20confirmed%20by%20phone%20that%20the%20printer%20works%20again%3B%20closing%20ticket%2042%20as%20resolved.";
    let said_max = "%C3%A9".repeat(166);
    let doc: String = format!(
        "{{{}}}",
        (0..40)
            .map(|i| format!("\"field_{i}\": \"value number {i}\""))
            .collect::<Vec<_>>()
            .join(",")
    );
    let patch: &[u8] = br#"{"field_3": "changed", "field_17": null, "extra": {"a": 1}}"#;
    assert!(portcullis::rationale::parse(said).unwrap().is_some());
    assert!(portcullis::rationale::parse(said_max.as_bytes())
        .unwrap()
        .is_some());

    let mut crit = Criterion::default().configure_from_args();
    {
        let mut group = crit.benchmark_group("approval_text");
        group.bench_function("rationale_120b", |b| {
            b.iter(|| portcullis::rationale::parse(black_box(said)))
        });
        group.bench_function("rationale_996b", |b| {
            b.iter(|| portcullis::rationale::parse(black_box(said_max.as_bytes())))
        });
        group.bench_function("diff_patch_40_fields", |b| {
            b.iter(|| {
                portcullis::approval::diff::diff(
                    "PATCH",
                    black_box(doc.as_bytes()),
                    black_box(patch),
                )
            })
        });
        group.finish();
    }
    {
        let mut group = crit.benchmark_group("gate");
        for c in &cases {
            group.bench_function(c.name, |b| b.iter(|| g.run(black_box(c))));
        }
        for c in &gh_cases {
            group.bench_function(c.name, |b| b.iter(|| gh.run(black_box(c))));
        }
        group.bench_function("validate_issue_create", |b| {
            b.iter(|| validate_issue_create(&gh, black_box(body)))
        });
        for c in &c_cases {
            group.bench_function(c.name, |b| b.iter(|| cg.run(black_box(c))));
        }
        group.finish();
    }
    crit.final_summary();

    // `cargo bench` passes `--bench`; `cargo test --benches` does not, and only checks
    // that every case runs once (above).
    if std::env::args().any(|a| a == "--bench") {
        println!("\ngate ns/request on the {ROUTES}-route config (target ≤ 1000 ns):");
        for c in &cases {
            let n = 200_000u32;
            let t = Instant::now();
            for _ in 0..n {
                black_box(g.run(black_box(c)));
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
            println!("gate ns/request {:<16} {ns:>8.0}", c.name);
        }
        println!(
            "\ngate ns/request on GitHub's imported description (config with validate: request compiled: {} ms; target ≤ 2000 ns):",
            import.as_millis()
        );
        for c in &gh_cases {
            let n = 200_000u32;
            let t = Instant::now();
            for _ in 0..n {
                black_box(gh.run(black_box(c)));
            }
            let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
            println!("gate ns/request {:<20} {ns:>8.0}", c.name);
        }
        let n = 20_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(validate_issue_create(&gh, black_box(body)));
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("validate ns/request {:<16} {ns:>8.0}", "issue_create");
        let n = 200_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(portcullis::rationale::parse(black_box(said)).ok());
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("rationale ns/request {:<16} {ns:>8.0}", "120_bytes");
        let t = Instant::now();
        for _ in 0..n {
            black_box(portcullis::rationale::parse(black_box(said_max.as_bytes())).ok());
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("rationale ns/request {:<16} {ns:>8.0}", "996_bytes");
        let n = 20_000u32;
        let t = Instant::now();
        for _ in 0..n {
            black_box(portcullis::approval::diff::diff(
                "PATCH",
                black_box(doc.as_bytes()),
                black_box(patch),
            ));
        }
        let ns = t.elapsed().as_nanos() as f64 / f64::from(n);
        println!("diff ns/page {:<16} {ns:>8.0}", "patch_40_fields");
        println!("\ngate ns/request with and without the conditions step (the conditions step costs nothing when no condition applies):");
        let time = |f: &dyn Fn() -> Decision| {
            let n = 200_000u32;
            let t = Instant::now();
            for _ in 0..n {
                black_box(f());
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        };
        for c in &cases[..2] {
            let with = time(&|| g.run(black_box(c)));
            let bare = time(&|| g.run_bare(black_box(c)));
            println!(
                "gate ns/request {:<16} {with:>8.0} (classify + decide alone: {bare:.0})",
                c.name
            );
        }
        println!(
            "\nconditions ns/request, 1 KiB JSON body (target: cond_body ≤ cond_none + 5000):"
        );
        let mut got = Vec::new();
        for c in &c_cases {
            let ns = time(&|| cg.run(black_box(c)));
            println!("conditions ns/request {:<12} {ns:>8.0}", c.name);
            got.push(ns);
        }
        println!(
            "conditions ns/request {:<12} {:>8.0}",
            "difference",
            got[1] - got[0]
        );
        // Its parts: the strict parse of the body (building only `amount`, or all of it).
        let raw = refund_body();
        let parse = |keys: Option<&[&str]>| {
            time(&|| {
                black_box(
                    portcullis::conditions::body::parse_object(black_box(&raw), keys).is_ok(),
                );
                Decision::Park { condition: None }
            })
        };
        let (some, all) = (parse(Some(&["amount"])), parse(None));
        println!(
            "conditions ns/request {:<12} {some:>8.0} (every member built: {all:.0})",
            "parse_1k"
        );
    }
}
