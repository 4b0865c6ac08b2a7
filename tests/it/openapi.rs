//! OpenAPI import (issue 15) end to end: GitHub's whole REST description (3.0.3 as
//! shipped, and its 3.1 variant) imports operation by operation — names unique, every
//! template in the classifier, every `$ref` resolved, every input schema a valid JSON
//! Schema 2020-12 — and a sample of requests through the real binary classify as the
//! spec says; the Swagger Petstore drives `check`, `explain`, the tool listings, request
//! validation, reload, the webhook and the approval page.

use crate::common::{self, Behaviour, Proxy, Upstream, OPERATOR_SECRET};
use crate::support::admin::{op, op_ok, policy_version};
use crate::support::approvals::{agent_call, Hook, ReplayUpstream};
use portcullis::canon::Method;
use portcullis::config::Snapshot;
use portcullis::openapi::Operation;
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Operations in GitHub's REST description as shipped by @octokit/openapi 23.0.2.
const GITHUB_OPERATIONS: usize = 1223;
/// Operations in the Swagger Petstore (3.0 and 3.1).
const PETSTORE_OPERATIONS: usize = 20;

fn data(rel: &str) -> PathBuf {
    common::crate_path(&format!("tests/data/openapi/{rel}"))
}

/// GitHub's description, decompressed (`version`: "3.0" or "3.1").
fn github_bytes(version: &str) -> Vec<u8> {
    let f = std::fs::File::open(data(&format!("github/api.github.com-{version}.json.gz")))
        .expect("tests/data/openapi/github");
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(f)
        .read_to_end(&mut out)
        .expect("gunzip");
    out
}

fn config_with(route: &str, upstream_url: &str, extra: &str) -> String {
    common::config(&format!(
        "upstreams:\n  api: {{ url: \"{upstream_url}\" }}\nroutes:\n{route}{extra}"
    ))
}

/// A loaded GitHub config (one per variant for the whole suite) and its temp dir.
struct Loaded {
    snap: Snapshot,
    _dir: tempfile::TempDir,
    spec: PathBuf,
}

fn github(version: &'static str) -> &'static Loaded {
    static V30: OnceLock<Loaded> = OnceLock::new();
    static V31: OnceLock<Loaded> = OnceLock::new();
    let cell = if version == "3.0" { &V30 } else { &V31 };
    cell.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let spec = dir.path().join("specs/github.json");
        std::fs::create_dir_all(spec.parent().unwrap()).unwrap();
        std::fs::write(&spec, github_bytes(version)).unwrap();
        let yaml = config_with(
            "  - { prefix: /github, upstream: api, tool_prefix: github, strip_prefix: true, openapi: specs/github.json }\n",
            "http://127.0.0.1:9",
            "",
        );
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let snap = Snapshot::parse(&file, &yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Loaded {
            snap,
            _dir: dir,
            spec,
        }
    })
}

/// (method, path, operationId) of every operation in a spec document.
fn spec_operations(doc: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in ["get", "put", "post", "delete", "options", "head", "patch"] {
            if let Some(op) = item.get(m) {
                out.push((
                    m.to_ascii_uppercase(),
                    path.clone(),
                    op["operationId"].as_str().unwrap_or_default().to_string(),
                ));
            }
        }
    }
    out
}

/// The tool name the issue's rule gives a GitHub operationId (they are lower-case
/// kebab-case with one `/`), written out independently of the importer.
fn github_name(operation_id: &str) -> String {
    format!(
        "github.{}",
        operation_id.replace('/', ".").replace('-', "_")
    )
}

#[test]
fn github_every_operation_imports_with_a_unique_name() {
    let doc: Value = serde_json::from_slice(&github_bytes("3.0")).unwrap();
    let listed = spec_operations(&doc);
    assert_eq!(
        listed.len(),
        GITHUB_OPERATIONS,
        "operations in the spec itself"
    );
    let g = github("3.0");
    let ops: Vec<&Arc<Operation>> = g.snap.openapi.operations().collect();
    assert_eq!(ops.len(), GITHUB_OPERATIONS, "operations imported");
    let names: HashSet<&str> = ops.iter().map(|o| &*o.name).collect();
    assert_eq!(names.len(), ops.len(), "tool names are unique");
    for o in &ops {
        assert!(o.name.len() <= 64, "{} is longer than 64", o.name);
        assert!(
            o.name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-'),
            "{}",
            o.name
        );
        let id = o.source.operation_id.as_deref().unwrap();
        let want = github_name(id);
        if want.len() <= 64 {
            assert_eq!(&*o.name, want, "{id}");
        } else {
            assert!(o.name.starts_with(&want[..40]), "{} for {id}", o.name);
        }
    }
    // Every (method, path, operationId) of the spec is one imported operation.
    let imported: HashSet<(String, String, String)> = ops
        .iter()
        .map(|o| {
            (
                o.source.method.as_str().to_string(),
                o.source.spec_path.clone(),
                o.source.operation_id.clone().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(imported, listed.into_iter().collect::<HashSet<_>>());
}

#[test]
fn github_every_template_inserts_and_classifies_to_its_operation() {
    let g = github("3.0");
    let imp = &g.snap.openapi.routes[0];
    // The one conflict in the spec: `compare/{base}...{head}` is matched whole and so
    // answers the same requests as `compare/{basehead}`.
    let conflicts: Vec<(String, String)> = imp
        .conflicts
        .iter()
        .map(|c| {
            let with = match &c.with {
                portcullis::classify::ConflictWith::Operation(w) => w.name.to_string(),
                portcullis::classify::ConflictWith::Template { template, .. } => template.clone(),
            };
            (c.op.name.to_string(), with)
        })
        .collect();
    assert_eq!(
        conflicts,
        vec![(
            "github.repos.compare_commits".to_string(),
            "github.repos.compare_commits_with_basehead".to_string()
        )]
    );
    let losers: HashSet<&str> = imp.conflicts.iter().map(|c| &*c.op.name).collect();
    let mut checked = 0;
    for op in g.snap.openapi.operations() {
        if losers.contains(&*op.name) {
            continue;
        }
        let path = portcullis::tooltable::sample_path(&op.template);
        let t = g
            .snap
            .classifier
            .classify(op.method, &path)
            .unwrap_or_else(|e| panic!("{} {path}: {e:?}", op.name));
        assert!(
            t.op.as_ref().is_some_and(|o| Arc::ptr_eq(o, op)),
            "{} {path} classified as {} ({:?})",
            op.name,
            t.name,
            t.source
        );
        assert_eq!(t.name, op.name);
        checked += 1;
    }
    assert_eq!(checked, GITHUB_OPERATIONS - 1);
}

#[test]
fn github_every_ref_resolves() {
    let g = github("3.0");
    let doc: Value = serde_json::from_slice(&std::fs::read(&g.spec).unwrap()).unwrap();
    let mut refs = HashSet::new();
    fn walk<'a>(v: &'a Value, out: &mut HashSet<&'a str>) {
        match v {
            Value::Object(m) => {
                if let Some(Value::String(r)) = m.get("$ref") {
                    out.insert(r);
                }
                m.values().for_each(|x| walk(x, out));
            }
            Value::Array(a) => a.iter().for_each(|x| walk(x, out)),
            _ => {}
        }
    }
    walk(&doc, &mut refs);
    assert!(refs.len() > 1500, "only {} distinct $refs", refs.len());
    let mut docs = portcullis::openapi::refs::Docs::open(&g.spec, "github.json").unwrap();
    for r in refs {
        docs.resolve(0, r).unwrap_or_else(|e| panic!("{r}: {e}"));
    }
}

#[test]
fn github_input_schemas_are_valid_2020_12_and_compile() {
    let g = github("3.0");
    let mut with_body = 0;
    for op in g.snap.openapi.operations() {
        let input = op.input.to_value();
        if let Err(e) = jsonschema::draft202012::meta::validate(&input) {
            panic!(
                "{}: input schema is not valid 2020-12: {e}\n{input}",
                op.name
            );
        }
        // Self-contained: every `$ref` in it resolves inside it.
        jsonschema::draft202012::new(&input)
            .unwrap_or_else(|e| panic!("{}: input schema does not compile: {e}", op.name));
        if let Some(out) = &op.output {
            let out = out.to_value();
            if let Err(e) = jsonschema::draft202012::meta::validate(&out) {
                panic!("{}: output schema is not valid 2020-12: {e}", op.name);
            }
        }
        with_body += usize::from(input["properties"].get("body").is_some());
    }
    assert!(with_body > 300, "{with_body} operations with a body");
    // Spot checks against the spec: required body fields, readOnly dropped, nullable.
    let create = g.snap.openapi.by_name("github.issues.create").unwrap();
    let input = create.input.to_value();
    assert_eq!(input["required"], json!(["path", "body"]));
    assert_eq!(input["properties"]["body"]["required"], json!(["title"]));
    assert_eq!(
        input["properties"]["path"]["required"],
        json!(["owner", "repo"])
    );
    assert_eq!(
        input["properties"]["body"]["properties"]["assignee"]["type"],
        json!(["string", "null"])
    );
    let v = jsonschema::draft202012::new(&input).unwrap();
    assert!(v.is_valid(
        &json!({"path": {"owner": "o", "repo": "r"}, "body": {"title": "t", "assignee": null}})
    ));
    assert!(
        !v.is_valid(&json!({"path": {"owner": "o", "repo": "r"}, "body": {"body": "no title"}}))
    );
    let out = create.output.as_ref().unwrap().to_value();
    assert_eq!(out["$ref"], "#/$defs/issue");
    assert!(out["$defs"]["issue"]["properties"].get("id").is_some());
}

#[test]
fn github_3_1_variant_imports_the_same_tools_and_schemas() {
    let a = github("3.0");
    let b = github("3.1");
    let by_name = |l: &'static Loaded| -> BTreeMap<String, &'static Arc<Operation>> {
        l.snap
            .openapi
            .operations()
            .map(|o| (o.name.to_string(), o))
            .collect()
    };
    let (a, b) = (by_name(a), by_name(b));
    assert_eq!(b.len(), GITHUB_OPERATIONS);
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in &a {
        let y = b[name];
        assert_eq!(
            (&x.template, x.method, x.risk),
            (&y.template, y.method, y.risk),
            "{name}"
        );
        assert_eq!(
            x.input.to_value(),
            y.input.to_value(),
            "{name}: input schemas differ"
        );
    }
}

/// A concrete path for a spec path (every parameter `p1`).
fn concrete(spec_path: &str) -> String {
    spec_path
        .split('/')
        .map(|s| if s.starts_with('{') { "p1" } else { s })
        .collect::<Vec<_>>()
        .join("/")
}

/// The audit record of `request_id` (polls: allowed records are group-committed).
async fn audit_record(p: &Proxy, request_id: &str) -> Value {
    let mut found = None;
    common::poll_until_async(Duration::from_secs(10), || {
        found = p
            .audit_text()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["request_id"] == request_id);
        found.is_some()
    })
    .await;
    found.unwrap_or_else(|| panic!("no audit record for {request_id}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn github_requests_through_the_binary_classify_as_the_spec_says() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let spec = github_bytes("3.0");
    let doc: Value = serde_json::from_slice(&spec).unwrap();
    let p = Proxy::start_with_files(
        &config_with(
            "  - { prefix: /github, upstream: api, tool_prefix: github, strip_prefix: true, openapi: specs/github.json }\n",
            &up.url(),
            "",
        ),
        &[],
        &[("specs/github.json", &spec)],
    );
    let token = p.agent_token("bot").await;
    // Every 40th operation (31 of them), in the spec's order; not the one that
    // conflicts, nor paths with several parameters in a segment.
    let sample: Vec<_> = spec_operations(&doc)
        .into_iter()
        .filter(|(_, path, _)| !path.contains("}..."))
        .step_by(40)
        .collect();
    assert!(sample.len() > 25);
    for (method, path, id) in &sample {
        let target = format!("/github{}", concrete(path));
        let body: &[u8] = if matches!(method.as_str(), "POST" | "PUT" | "PATCH") {
            b"{}"
        } else {
            b""
        };
        let hdr: &[(&str, &str)] = if body.is_empty() {
            &[]
        } else {
            &[("content-type", "application/json")]
        };
        let r = agent_call(p.addr, &token, method, &target, hdr, body).await;
        assert_eq!(r.status, 200, "{method} {target}: {}", r.text());
        let rid = r.header("x-request-id").unwrap().to_string();
        let rec = audit_record(&p, &rid).await;
        let want = github_name(id);
        let got = rec["tool"].as_str().unwrap_or_default();
        if want.len() <= 64 {
            assert_eq!(got, want, "{method} {target} ({id})");
        } else {
            assert!(
                got.starts_with(&want[..40]),
                "{method} {target}: {got} ({id})"
            );
        }
        // Forwarded with the prefix stripped: the spec's own path.
        assert_eq!(up.last().target, concrete(path), "{method} {target}");
    }
    assert_eq!(up.hits(), sample.len());
}

// ---------------------------------------------------------------------------------------
// The Petstore
// ---------------------------------------------------------------------------------------

fn petstore(version: &str) -> Vec<u8> {
    std::fs::read(data(&format!("petstore/petstore-{version}.json"))).unwrap()
}

/// The Petstore on `/petstore` (its servers' base path `/v2` is the upstream's too).
fn petstore_route(extra: &str) -> String {
    format!(
        "  - prefix: /petstore\n    upstream: api\n    tool_prefix: petstore\n    strip_prefix: true\n    openapi: specs/petstore.json\n{extra}"
    )
}

const PETSTORE_PROFILES: &str = "profiles:\n  all: { admin: true }\n  clerk:\n    tools: [\"petstore.get_*\", \"petstore.find_*\"]\n    approval: [\"petstore.add_pet\"]\nagents:\n  bot: { profile: all, tenant: acme }\n  clerk: { profile: clerk, tenant: acme }\n";

/// `portcullis check` on `yaml` written next to `files`.
fn check(yaml: &str, files: &[(&str, &[u8])]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        let p = dir.path().join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
    let file = dir.path().join("routes.yaml");
    std::fs::write(&file, yaml).unwrap();
    let out = common::run_bin_in(
        Some(dir.path()),
        &["check", "--config", file.to_str().unwrap()],
        &[],
        common::CLI_BOUND,
    );
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A whole config: the harness's listeners, store, audit and operator, the Petstore
/// route (`extra_route` appended to it) on an upstream at 127.0.0.1:9 (tests replace
/// the URL), and the Petstore's profiles.
fn petstore_yaml(extra_route: &str) -> String {
    format!(
        "{}upstreams:\n  api: {{ url: \"http://127.0.0.1:9/v2\" }}\nroutes:\n{}{PETSTORE_PROFILES}",
        common::Head::new(),
        petstore_route(extra_route)
    )
}

#[test]
fn check_prints_spec_tools_with_source_description_and_notes() {
    for version in ["3.0", "3.1"] {
        let (code, out, err) = check(
            &petstore_yaml("    tools:\n      - { match: \"DELETE /petstore/pet/{petId}\", name: petstore.remove, risk: critical }\n"),
            &[("specs/petstore.json", &petstore(version))],
        );
        assert_eq!(code, 0, "{version}: {out}\n{err}");
        let header = out.lines().next().unwrap();
        assert!(
            header.contains(" SOURCE ") && header.ends_with("DESCRIPTION"),
            "{header}"
        );
        let row = |tool: &str, method: &str| -> Vec<String> {
            out.lines()
                .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
                .find(|c| c.len() > 9 && c[0] == tool && c[1] == method)
                .unwrap_or_else(|| panic!("{version}: no {tool} {method} row in\n{out}"))
        };
        let get = row("petstore.get_pet_by_id", "GET");
        assert_eq!(
            &get[2..6],
            ["/petstore/pet/{petId}", "low", "/petstore", "api"]
        );
        assert_eq!(get[6], "all,clerk");
        assert_eq!(get[7], "-");
        assert_eq!(get[9], "spec");
        assert_eq!(get[10..].join(" "), "Find pet by ID");
        let add = row("petstore.add_pet", "POST");
        assert_eq!(
            (add[3].as_str(), add[7].as_str(), add[9].as_str()),
            ("medium", "clerk", "spec")
        );
        // The override wins and says so; the operation it shadows is listed.
        let remove = row("petstore.remove", "DELETE");
        assert_eq!(
            (remove[3].as_str(), remove[9].as_str()),
            ("critical", "override")
        );
        assert!(
            out.contains(
                "note: spec operation DELETE /pet/{petId} (deletePet) at specs/petstore.json:"
            ),
            "{out}"
        );
        assert!(
            out.contains("is shadowed by routes[0].tools[0] `/petstore/pet/{petId}`"),
            "{out}"
        );
        assert!(
            out.contains(&format!("note: spec specs/petstore.json (OpenAPI {version}.0, Swagger Petstore 1.0.0) on route /petstore: {PETSTORE_OPERATIONS} operations; server base path /v2, upstream `api` base path /v2; templates = /petstore + <spec path> (strip_prefix: true)")),
            "{out}"
        );
        assert!(out.contains("security schemes api_key, petstore_auth are shown in tool listings, never used as grants"), "{out}");
        // `petstore.add_pet` (clerk's approval entry) names a spec operation: no warning.
        assert!(!out.contains("matches no known tool"), "{out}");
        assert_eq!(
            out.lines().filter(|l| l.starts_with("petstore.")).count(),
            PETSTORE_OPERATIONS
        );
    }
    // strip_prefix off and a prefix the spec's paths are not under: every operation is
    // outside the route and listed.
    let yaml = config_with(
        "  - { prefix: /shop, upstream: api, openapi: specs/petstore.json }\n",
        "http://127.0.0.1:9",
        "",
    );
    let (code, out, err) = check(&yaml, &[("specs/petstore.json", &petstore("3.0"))]);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("templates = /v2 + <spec path> (strip_prefix: false)"),
        "{out}"
    );
    assert_eq!(
        out.matches("is outside route prefix /shop: not imported")
            .count(),
        PETSTORE_OPERATIONS,
        "{out}"
    );
    assert!(
        out.contains("note: spec operation GET /pet/{petId} (getPetById) at specs/petstore.json:"),
        "{out}"
    );
}

#[test]
fn check_refuses_remote_refs_and_collisions_with_their_places() {
    let remote = String::from_utf8(petstore("3.0")).unwrap().replace(
        "\"#/components/schemas/Category\"",
        "\"https://example.com/schemas.json#/Category\"",
    );
    let (code, out, err) = check(
        &petstore_yaml(""),
        &[("specs/petstore.json", remote.as_bytes())],
    );
    assert_eq!(code, 1, "{out}");
    assert!(
        err.contains("routes.yaml:") && err.contains("routes[0].openapi: "),
        "{err}"
    );
    assert!(
        err.contains("remote $ref `https://example.com/schemas.json#/Category` is not supported"),
        "{err}"
    );
    assert!(
        err.contains("specs/petstore.json#/components/schemas/Pet"),
        "{err}"
    );

    let collide = String::from_utf8(petstore("3.0")).unwrap().replace(
        "\"operationId\": \"deletePet\"",
        "\"operationId\": \"getPetById\"",
    );
    let (code, _, err) = check(
        &petstore_yaml(""),
        &[("specs/petstore.json", collide.as_bytes())],
    );
    assert_eq!(code, 1);
    assert!(
        err.contains("tool name `petstore.get_pet_by_id` is produced by two operations"),
        "{err}"
    );
    assert!(
        err.contains("GET /pet/{petId} (getPetById) at specs/petstore.json:"),
        "{err}"
    );
    assert!(
        err.contains("DELETE /pet/{petId} (getPetById) at specs/petstore.json:"),
        "{err}"
    );
    // The config's own place and key come first.
    let first = err
        .lines()
        .find(|l| l.contains("routes[0].openapi"))
        .unwrap();
    assert!(
        first.contains("routes.yaml:") && first.matches(':').count() >= 4,
        "{first}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_listings_and_explain_carry_descriptions_and_schemas() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let yaml = petstore_yaml("").replace("http://127.0.0.1:9/v2", &format!("{}/v2", up.url()));
    let p = Proxy::start_with_files(&yaml, &[], &[("specs/petstore.json", &petstore("3.0"))]);
    let token = p.agent_token("clerk").await;
    let r = common::get(p.addr, "/_portcullis/tools", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());
    let tools = r.json()["tools"].as_array().unwrap().clone();
    let names: Vec<&str> = tools.iter().map(|t| t["tool"].as_str().unwrap()).collect();
    assert_eq!(
        names.iter().copied().collect::<HashSet<_>>(),
        HashSet::from([
            "petstore.get_pet_by_id",
            "petstore.get_inventory",
            "petstore.get_order_by_id",
            "petstore.get_user_by_name",
            "petstore.find_pets_by_status",
            "petstore.find_pets_by_tags",
            "petstore.add_pet",
        ])
    );
    let get = tools
        .iter()
        .find(|t| t["tool"] == "petstore.get_pet_by_id")
        .unwrap();
    assert_eq!(get["description"], "Find pet by ID\n\nReturns a single pet");
    assert_eq!(
        (
            get["risk"].as_str(),
            get["posture"].as_str(),
            get["source"].as_str()
        ),
        (Some("low"), Some("allow"), Some("spec"))
    );
    assert_eq!(
        get["input_schema"]["properties"]["path"]["properties"]["petId"]["type"],
        "integer"
    );
    assert_eq!(get["output_schema"]["$ref"], "#/$defs/Pet");
    assert_eq!(
        get["annotations"],
        json!({"readOnlyHint": true, "destructiveHint": false, "idempotentHint": true})
    );
    assert_eq!(get["operation"]["operation_id"], "getPetById");
    assert_eq!(get["operation"]["security"], json!(["api_key"]));
    let add = tools
        .iter()
        .find(|t| t["tool"] == "petstore.add_pet")
        .unwrap();
    assert_eq!(add["posture"], "approval");
    assert_eq!(add["input_schema"]["required"], json!(["body"]));
    // readOnly `id` is not an argument.
    assert!(add["input_schema"]["$defs"]["Pet"]["properties"]
        .get("id")
        .is_none());
    assert!(jsonschema::draft202012::meta::is_valid(
        &add["input_schema"]
    ));

    // The admin API's per-agent list is the same.
    let v = op_ok(&p, "GET", "/tools?agent=clerk", None).await;
    assert_eq!(v["tools"].as_array().unwrap().len(), tools.len());
    let all = op_ok(&p, "GET", "/tools", None).await;
    let row = all["tools"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tool"] == "petstore.delete_pet")
        .unwrap();
    assert_eq!(
        (row["source"].as_str(), row["description"].as_str()),
        (Some("spec"), Some("Deletes a pet"))
    );

    // explain prints the operation it matched.
    let out = common::run_bin(
        &[
            "explain",
            "--config",
            p.config_path.to_str().unwrap(),
            "--agent",
            "clerk",
            "GET",
            "/petstore/pet/7",
        ],
        &[],
        common::CLI_BOUND,
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("tool:     petstore.get_pet_by_id (risk low, template /petstore/pet/{petId}, source spec)"), "{text}");
    assert!(text.contains("operation: getPetById: GET /pet/{petId} in specs/petstore.json; security (shown, never a grant): api_key"), "{text}");
    assert!(text.contains("about:    Find pet by ID"), "{text}");
    let v = op_ok(
        &p,
        "GET",
        "/explain?agent=clerk&method=GET&path=/petstore/pet/7",
        None,
    )
    .await;
    assert_eq!(
        v["operation"].as_str().unwrap().split(';').next(),
        Some("getPetById: GET /pet/{petId} in specs/petstore.json")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn validate_request_refuses_violations_and_forwards_valid_bodies_byte_for_byte() {
    let up = ReplayUpstream::start().await;
    let yaml = petstore_yaml("    validate: request\n")
        .replace("http://127.0.0.1:9/v2", &format!("{}/v2", up.url()));
    let p = Proxy::start_with_files(&yaml, &[], &[("specs/petstore.json", &petstore("3.0"))]);
    let token = p.agent_token("bot").await;
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let refused = |r: &common::Resp, pointer: &str, rule: &str| {
        assert_eq!(r.status, 400, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"], "bad_request", "{v}");
        assert_eq!(v["reason"], "schema_violation", "{v}");
        assert_eq!(v["pointer"], pointer, "{v}");
        assert_eq!(v["rule"], rule, "{v}");
        assert!(
            v["detail"]
                .as_str()
                .unwrap()
                .starts_with(&format!("{pointer}: ")),
            "{v}"
        );
    };
    // A required field missing, a wrong type deep in the body, an enum in the query.
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        json_ct,
        br#"{"photoUrls": []}"#,
    )
    .await;
    refused(&r, "/body/name", "required");
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        json_ct,
        br#"{"name": "rex", "photoUrls": [7]}"#,
    )
    .await;
    refused(&r, "/body/photoUrls/0", "type");
    let r = agent_call(
        p.addr,
        &token,
        "GET",
        "/petstore/pet/findByStatus?status=sold&status=lost",
        &[],
        b"",
    )
    .await;
    refused(&r, "/query/status/1", "enum");
    let r = agent_call(
        p.addr,
        &token,
        "GET",
        "/petstore/pet/findByStatus",
        &[],
        b"",
    )
    .await;
    refused(&r, "/query/status", "required");
    let r = agent_call(
        p.addr,
        &token,
        "GET",
        "/petstore/user/login?username=a&password=b",
        &[],
        b"",
    )
    .await;
    assert_eq!(r.status, 201, "a valid query passes: {}", r.text());
    // Not JSON, or JSON with a key twice: refused, nothing sent.
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        &[("content-type", "text/plain")],
        b"name=rex",
    )
    .await;
    refused(&r, "/body", "contentMediaType");
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        json_ct,
        br#"{"name": "a", "photoUrls": [], "name": 5}"#,
    )
    .await;
    refused(&r, "/body", "json");
    assert_eq!(up.hits(), 1, "only the valid login reached the upstream");
    // A valid body reaches the upstream exactly as sent (spacing, order, escapes).
    let body =
        "{ \"photoUrls\" : [\"u\"],\n  \"name\":\"r\\u00e9x\", \"status\": \"sold\" }".as_bytes();
    let r = agent_call(p.addr, &token, "POST", "/petstore/pet", json_ct, body).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let got = up.got().pop().unwrap();
    assert_eq!(got.target, "/v2/pet");
    assert_eq!(got.body, body);
    // The refusals are audited with the tool and the reason.
    let audit = p.audit_text();
    let refusals = audit
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "schema_violation")
        .count();
    assert_eq!(refusals, 6, "{audit}");
}

#[tokio::test(flavor = "multi_thread")]
async fn validation_comes_before_parking_and_the_webhook_and_page_carry_the_description() {
    let up = ReplayUpstream::start().await;
    let hook = Hook::start().await;
    let yaml = petstore_yaml("    validate: request\n")
        .replace("http://127.0.0.1:9/v2", &format!("{}/v2", up.url()))
        + "notify: { webhook: { url_env: PC_OPENAPI_HOOK } }\n";
    let p = Proxy::start_with_files(
        &yaml,
        &[("PC_OPENAPI_HOOK", &hook.url())],
        &[("specs/petstore.json", &petstore("3.0"))],
    );
    let token = p.agent_token("clerk").await;
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        json_ct,
        br#"{"name": 1, "photoUrls": []}"#,
    )
    .await;
    assert_eq!(
        (r.status, r.json()["reason"].as_str()),
        (400, Some("schema_violation")),
        "{}",
        r.text()
    );
    let pending = op_ok(&p, "GET", "/approvals?state=pending", None).await;
    assert_eq!(
        pending["approvals"].as_array().map_or(0, Vec::len),
        0,
        "nothing parked: {pending}"
    );
    let r = agent_call(
        p.addr,
        &token,
        "POST",
        "/petstore/pet",
        json_ct,
        br#"{"name": "rex", "photoUrls": []}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_id"].as_str().unwrap().to_string();
    assert!(
        hook.wait_about(&id, 1, Duration::from_secs(15)).await,
        "no webhook post"
    );
    let posted = hook.about(&id)[0].json();
    assert_eq!(
        posted["description"], "Add a new pet to the store",
        "{posted}"
    );
    assert_eq!(posted["tool"], "petstore.add_pet");

    // The operator page shows it.
    let login = common::send(
        p.admin,
        http::Request::post("/ui/login")
            .header("host", p.admin.to_string())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(common::full(format!("token={OPERATOR_SECRET}")))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(login.status, 303, "{}", login.text());
    let cookie = login
        .header("set-cookie")
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let page = common::send(
        p.admin,
        http::Request::get(format!("/ui/approvals/{id}"))
            .header("host", p.admin.to_string())
            .header("cookie", cookie)
            .body(common::empty())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(page.status, 200);
    assert!(
        page.text().contains("<code>petstore.add_pet</code><div style=\"white-space: pre-wrap\">Add a new pet to the store</div>"),
        "{}",
        page.text()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn reload_with_a_broken_spec_is_refused_and_a_changed_spec_is_a_new_policy() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let yaml = petstore_yaml("").replace("http://127.0.0.1:9/v2", &format!("{}/v2", up.url()));
    let p = Proxy::start_with_files(&yaml, &[], &[("specs/petstore.json", &petstore("3.0"))]);
    let token = p.agent_token("bot").await;
    let before = policy_version(&p).await;
    let spec_path = p.path("specs/petstore.json");
    let classify = |p: &Proxy, rid: &str| {
        let rid = rid.to_string();
        let p_audit = p.path("data/audit.jsonl");
        async move {
            let mut tool = None;
            common::poll_until_async(Duration::from_secs(10), || {
                tool = std::fs::read_to_string(&p_audit)
                    .unwrap_or_default()
                    .lines()
                    .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                    .find(|v| v["request_id"] == rid.as_str())
                    .map(|v| v["tool"].as_str().unwrap_or_default().to_string());
                tool.is_some()
            })
            .await;
            tool.unwrap_or_default()
        }
    };
    // Broken: not JSON any more. The reload is refused with the spec's place; the old
    // config stays in force.
    let good = petstore("3.0");
    common::write_atomically(&spec_path, &good[..good.len() / 2]);
    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["reason"], "invalid_config", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(
        detail.contains("routes[0].openapi: specs/petstore.json:")
            && detail.contains("not valid JSON"),
        "{detail}"
    );
    assert_eq!(policy_version(&p).await, before);
    let r = agent_call(p.addr, &token, "GET", "/petstore/pet/3", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        classify(&p, r.header("x-request-id").unwrap()).await,
        "petstore.get_pet_by_id"
    );
    // Changed: an operationId renamed. The spec file is watched like the config file:
    // the change alone reloads, as a new policy version with the new name.
    let renamed = String::from_utf8(good)
        .unwrap()
        .replace("\"getPetById\"", "\"fetchPet\"");
    common::write_atomically(&spec_path, renamed.as_bytes());
    let after = common::eventually(
        "the spec change picked up",
        Duration::from_secs(10),
        || async {
            let v = policy_version(&p).await;
            if v != before {
                Ok(v)
            } else {
                Err(format!("still {v}"))
            }
        },
    )
    .await;
    assert!(
        p.wait_for_log("configuration reloaded", Duration::from_secs(10))
            .await,
        "{}",
        p.logs()
    );
    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(policy_version(&p).await, after);
    let r = agent_call(p.addr, &token, "GET", "/petstore/pet/3", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        classify(&p, r.header("x-request-id").unwrap()).await,
        "petstore.fetch_pet"
    );
}

#[test]
fn petstore_3_1_imports_like_3_0() {
    let load = |version: &str| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("specs")).unwrap();
        std::fs::write(dir.path().join("specs/petstore.json"), petstore(version)).unwrap();
        let yaml = petstore_yaml("");
        let file = dir.path().join("routes.yaml");
        std::fs::write(&file, &yaml).unwrap();
        let s =
            Snapshot::parse(&file, &yaml, &|_| None).unwrap_or_else(|e| panic!("{version}: {e}"));
        s.openapi
            .operations()
            .map(|o| (o.name.to_string(), o.template.to_string(), o.method))
            .collect::<Vec<_>>()
    };
    let a = load("3.0");
    assert_eq!(a.len(), PETSTORE_OPERATIONS);
    assert_eq!(a, load("3.1"));
    assert!(a.contains(&(
        "petstore.get_pet_by_id".into(),
        "/petstore/pet/{petId}".into(),
        Method::Get
    )));
}

// ---------------------------------------------------------------------------------------
// A list of specs, one of them YAML (3.1), with `validate: request` set per tool
// ---------------------------------------------------------------------------------------

/// A YAML 3.1 spec beside the Petstore on one route: a file upload (a required body that
/// is not JSON) and a JSON note.
const FILES_YAML: &str = r#"openapi: 3.1.0
info: { title: Files, version: "1" }
servers: [{ url: "https://files.example/v2" }]
paths:
  /files/{name}:
    put:
      operationId: putFile
      summary: Store a file
      requestBody:
        required: true
        content:
          application/octet-stream: { schema: { type: string, contentMediaType: application/octet-stream } }
      responses: { "204": { description: stored } }
  /notes/{id}:
    put:
      operationId: putNote
      summary: Write a note
      requestBody:
        required: true
        content:
          application/json:
            schema: { type: object, required: [text], properties: { text: { type: string } } }
      responses: { "204": { description: written } }
"#;

/// The route `/shop` with `openapi: [specs/files.yaml, specs/petstore.json]` on
/// `upstream_url`; the route does not validate, two `tools[]` entries do.
fn shop_yaml(upstream_url: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nstore: {{ embedded: data/p.redb }}\naudit: {{ path: data/audit.jsonl }}\n\
         operators:\n  - {{ name: tester, token_sha256: \"{}\", roles: [viewer, approver, admin] }}\n\
         upstreams:\n  api: {{ url: \"{upstream_url}\" }}\nroutes:\n\
         \x20 - prefix: /shop\n    upstream: api\n    tool_prefix: shop\n    strip_prefix: true\n\
         \x20   openapi: [specs/files.yaml, specs/petstore.json]\n    tools:\n\
         \x20     - {{ match: \"PUT /shop/files/{{name}}\", name: shop.store_file, validate: request }}\n\
         \x20     - {{ match: \"PUT /shop/notes/{{id}}\", name: shop.write_note, validate: request }}\n\
         profiles:\n  all: {{ admin: true }}\nagents:\n  bot: {{ profile: all, tenant: acme }}\n",
        common::operator_hash(),
    )
}

#[test]
fn check_reads_a_list_of_specs_yaml_and_json() {
    let files: &[(&str, &[u8])] = &[
        ("specs/files.yaml", FILES_YAML.as_bytes()),
        ("specs/petstore.json", &petstore("3.0")),
    ];
    let (code, out, err) = check(&shop_yaml("http://127.0.0.1:9/v2"), files);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(
        out.contains("note: spec specs/files.yaml (OpenAPI 3.1.0, Files 1) on route /shop: 2 operations; server base path /v2, upstream `api` base path /v2; templates = /shop + <spec path> (strip_prefix: true)"),
        "{out}"
    );
    assert!(
        out.contains(&format!("note: spec specs/petstore.json (OpenAPI 3.0.0, Swagger Petstore 1.0.0) on route /shop: {PETSTORE_OPERATIONS} operations")),
        "{out}"
    );
    let rows: Vec<Vec<&str>> = out
        .lines()
        .filter(|l| l.starts_with("shop."))
        .map(|l| l.split_whitespace().collect())
        .collect();
    // Both specs' operations are tools of the one route; the overrides name theirs.
    assert_eq!(rows.len(), PETSTORE_OPERATIONS + 2, "{out}");
    for (tool, method, template, source) in [
        ("shop.store_file", "PUT", "/shop/files/{name}", "override"),
        ("shop.write_note", "PUT", "/shop/notes/{id}", "override"),
        ("shop.get_pet_by_id", "GET", "/shop/pet/{petId}", "spec"),
    ] {
        assert!(
            rows.iter()
                .any(|r| r[0] == tool && r[1] == method && r[2] == template && r[9] == source),
            "{tool}: {out}"
        );
    }
    assert!(
        out.contains("note: spec operation PUT /files/{name} (putFile) at specs/files.yaml:6:5 (tool shop.put_file) is shadowed by routes[0].tools[0]"),
        "{out}"
    );

    // Two specs of the list naming one tool: both operations, each in its own file.
    let colliding = FILES_YAML.replace("operationId: putNote", "operationId: uploadFile");
    let (code, _, err) = check(
        &shop_yaml("http://127.0.0.1:9/v2"),
        &[
            ("specs/files.yaml", colliding.as_bytes()),
            ("specs/petstore.json", &petstore("3.0")),
        ],
    );
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("routes[0].openapi[1]: tool name `shop.upload_file` is produced by two operations: PUT /notes/{id} (uploadFile) at specs/files.yaml:15:5 and POST /pet/{petId}/uploadImage (uploadFile) at specs/petstore.json:"), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_level_validation_checks_json_bodies_and_forwards_other_bodies_untouched() {
    let up = ReplayUpstream::start().await;
    let p = Proxy::start_with_files(
        &shop_yaml(&format!("{}/v2", up.url())),
        &[],
        &[
            ("specs/files.yaml", FILES_YAML.as_bytes()),
            ("specs/petstore.json", &petstore("3.0")),
        ],
    );
    let token = p.agent_token("bot").await;
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    // The upload's required body is not JSON: validation reads the query only, and the
    // bytes reach the upstream as sent.
    let file: &[u8] = b"\x00\x01{not json}\xff";
    let r = agent_call(
        p.addr,
        &token,
        "PUT",
        "/shop/files/a.bin",
        &[("content-type", "application/octet-stream")],
        file,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    let got = up.got().pop().unwrap();
    assert_eq!(
        (got.target.as_str(), got.body.as_slice()),
        ("/v2/files/a.bin", file)
    );
    // The note's tool validates its JSON body.
    let r = agent_call(
        p.addr,
        &token,
        "PUT",
        "/shop/notes/1",
        json_ct,
        br#"{"text": 5}"#,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (
            v["reason"].as_str(),
            v["pointer"].as_str(),
            v["rule"].as_str()
        ),
        (Some("schema_violation"), Some("/body/text"), Some("type")),
        "{v}"
    );
    let r = agent_call(p.addr, &token, "PUT", "/shop/notes/1", json_ct, br#"{}"#).await;
    assert_eq!(
        (r.status, r.json()["pointer"].as_str()),
        (400, Some("/body/text")),
        "{}",
        r.text()
    );
    assert_eq!(up.hits(), 1, "refused requests reached the upstream");
    let r = agent_call(
        p.addr,
        &token,
        "PUT",
        "/shop/notes/1",
        json_ct,
        br#"{"text": "hi"}"#,
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    // The route itself does not validate: a Petstore body the spec would refuse passes.
    let bad_pet = br#"{"name": "rex", "photoUrls": [7]}"#;
    let r = agent_call(p.addr, &token, "POST", "/shop/pet", json_ct, bad_pet).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(up.got().pop().unwrap().body, bad_pet);
    assert_eq!(up.hits(), 3);
    // The refusals are audited under the override's tool name.
    let refused: Vec<String> = p
        .audit_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "schema_violation")
        .map(|v| v["tool"].as_str().unwrap_or_default().to_string())
        .collect();
    assert_eq!(refused, ["shop.write_note", "shop.write_note"]);
}

// ---------------------------------------------------------------------------------------
// The README's worked example
// ---------------------------------------------------------------------------------------

/// The lines of the README code block that starts with the command `cmd`.
fn readme_block(readme: &str, cmd: &str) -> Vec<String> {
    let start = readme
        .find(cmd)
        .unwrap_or_else(|| panic!("README has no `{cmd}`"));
    readme[start + cmd.len()..]
        .lines()
        .skip(1)
        .take_while(|l| *l != "```")
        .map(str::to_string)
        .collect()
}

#[test]
fn the_readme_worked_example_is_what_the_binary_prints() {
    let readme = std::fs::read_to_string(common::crate_path("README.md")).unwrap();
    let root = common::crate_path("");
    let run = |args: &[&str]| {
        let out = common::run_bin_in(
            Some(&root),
            args,
            &[("TICKETS_API_KEY", "x")],
            Duration::from_secs(60),
        );
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    // `check`: the whole table and its notes, as printed (the policy version elided).
    let printed: Vec<String> = run(&["check", "--config", "examples/openapi/routes.yaml"])
        .lines()
        .map(|l| match l.strip_prefix("policy_version: sha256:") {
            Some(_) => "policy_version: sha256:…".to_string(),
            None => l.to_string(),
        })
        .collect();
    assert_eq!(
        readme_block(
            &readme,
            "$ TICKETS_API_KEY=x portcullis check --config examples/openapi/routes.yaml"
        ),
        printed
    );
    // `explain`: the README shows every line but the last (`policy:`).
    let printed = run(&[
        "explain",
        "--config",
        "examples/openapi/routes.yaml",
        "--agent",
        "support-bot",
        "GET",
        "/tickets-api/tickets/42",
    ]);
    let printed: Vec<&str> = printed.lines().collect();
    let shown = readme_block(&readme, "$ portcullis explain --config examples/openapi/routes.yaml --agent support-bot GET /tickets-api/tickets/42");
    assert_eq!(shown, printed[..printed.len() - 1], "{printed:#?}");
    assert!(printed[printed.len() - 1].starts_with("policy:   sha256:"));
}

// ---------------------------------------------------------------------------------------
// A spec whose schema lives in another file
// ---------------------------------------------------------------------------------------

const NOTES_YAML: &str = r#"openapi: 3.1.0
info: { title: Notes, version: "1" }
paths:
  /notes:
    post:
      operationId: addNote
      requestBody:
        required: true
        content:
          application/json:
            schema: { $ref: "common/schemas.yaml#/Note" }
      responses: { "201": { description: added } }
"#;

fn note_schema(max: usize) -> String {
    format!("Note:\n  type: object\n  required: [text]\n  properties:\n    text: {{ type: string, maxLength: {max} }}\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_schema_in_a_referenced_file_validates_and_its_change_is_a_new_policy() {
    let up = ReplayUpstream::start().await;
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin_listen: 127.0.0.1:0\nstore: {{ embedded: data/p.redb }}\naudit: {{ path: data/audit.jsonl }}\n\
         operators:\n  - {{ name: tester, token_sha256: \"{}\", roles: [viewer, approver, admin] }}\n\
         limits: {{ max_parked_body_bytes: 64 }}\n\
         upstreams:\n  api: {{ url: \"{}\" }}\nroutes:\n\
         \x20 - {{ prefix: /n, upstream: api, tool_prefix: notes, strip_prefix: true, openapi: specs/notes.yaml, validate: request }}\n\
         profiles:\n  all: {{ admin: true }}\nagents:\n  bot: {{ profile: all }}\n",
        common::operator_hash(),
        up.url()
    );
    let p = Proxy::start_with_files(
        &yaml,
        &[],
        &[
            ("specs/notes.yaml", NOTES_YAML.as_bytes()),
            ("specs/common/schemas.yaml", note_schema(10).as_bytes()),
        ],
    );
    let token = p.agent_token("bot").await;
    let json_ct: &[(&str, &str)] = &[("content-type", "application/json")];
    let post = |body: &'static [u8]| {
        let token = token.clone();
        let addr = p.addr;
        async move { agent_call(addr, &token, "POST", "/n/notes", json_ct, body).await }
    };
    let r = post(br#"{"text": "hello"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = post(br#"{"text": "far too long a note"}"#).await;
    assert_eq!(
        (
            r.status,
            r.json()["pointer"].as_str(),
            r.json()["rule"].as_str()
        ),
        (400, Some("/body/text"), Some("maxLength")),
        "{}",
        r.text()
    );
    // The referenced file is watched and part of the policy: changing it alone reloads.
    let before = policy_version(&p).await;
    common::write_atomically(
        &p.path("specs/common/schemas.yaml"),
        note_schema(3).as_bytes(),
    );
    let after = common::eventually(
        "the referenced file's change picked up",
        Duration::from_secs(10),
        || async {
            let v = policy_version(&p).await;
            if v == before {
                Err(format!("still {v}"))
            } else {
                Ok(v)
            }
        },
    )
    .await;
    let r = post(br#"{"text": "hello"}"#).await;
    assert_eq!(
        (r.status, r.json()["rule"].as_str()),
        (400, Some("maxLength")),
        "{}",
        r.text()
    );
    // Broken, it refuses the reload with its own place; the last good policy serves.
    common::write_atomically(&p.path("specs/common/schemas.yaml"), b"Note: [\n");
    let r = op(&p, "POST", "/reload", None).await;
    assert_eq!(r.status, 422, "{}", r.text());
    let detail = r.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(
        detail.contains("routes[0].openapi: ") && detail.contains("specs/common/schemas.yaml:"),
        "{detail}"
    );
    assert_eq!(policy_version(&p).await, after);
    let r = post(br#"{"text": "abc"}"#).await;
    assert_eq!(r.status, 201, "{}", r.text());
    // A JSON body over `max_parked_body_bytes` cannot be validated: 413, nothing sent.
    let r = post(
        br#"{"text": "abc", "padding": "......................................................"}"#,
    )
    .await;
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(up.hits(), 2);
}
