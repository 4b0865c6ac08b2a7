//! `deploy/` checked against the binary itself: the Kubernetes manifests and the systemd
//! unit run flags the real CLI parser accepts, the ConfigMap's routes.yaml compiles with
//! exactly the environment the Deployment wires from the Secret, ports and probes name
//! the listeners and endpoints the binary serves, the shutdown budgets cover its drain,
//! and the Prometheus rules use metric names it exports.

use crate::common::{admin_call, base_config, crate_path, Proxy, OPERATOR_SECRET};
use clap::Parser;
use portcullis::cli::{Cli, Cmd};
use portcullis::config::{Snapshot, StoreKind};
use serde::Deserialize;
use serde_yaml::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn docs(rel: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(crate_path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            let mut v = Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: {e}"));
            v.apply_merge().unwrap_or_else(|e| panic!("{rel}: {e}"));
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// Every object of the kustomization, by kind (several Services).
fn manifests() -> BTreeMap<String, Vec<Value>> {
    let k = &docs("deploy/kubernetes/kustomization.yaml")[0];
    let mut out: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for r in k["resources"].as_sequence().expect("resources") {
        let rel = format!("deploy/kubernetes/{}", r.as_str().unwrap());
        for d in docs(&rel) {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{rel}: no kind"))
                .to_string();
            out.entry(kind).or_default().push(d);
        }
    }
    out
}

fn one<'a>(m: &'a BTreeMap<String, Vec<Value>>, kind: &str) -> &'a Value {
    let v = m
        .get(kind)
        .unwrap_or_else(|| panic!("no {kind} in the manifests"));
    assert_eq!(v.len(), 1, "one {kind}");
    &v[0]
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or_else(|| panic!("not a string: {v:?}"))
}

/// The `serve` command a list of arguments means to the real CLI: its `--config`.
fn serve_config(args: &[&str]) -> PathBuf {
    let cli = Cli::try_parse_from(std::iter::once("portcullis").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("the binary refuses {args:?}: {e}"));
    match cli.cmd {
        Cmd::Serve { config, .. } => config,
        other => panic!("{args:?} is not `serve`: {other:?}"),
    }
}

fn labels_match(selector: &Value, labels: &Value) -> bool {
    selector
        .as_mapping()
        .expect("selector")
        .iter()
        .all(|(k, v)| labels.get(k) == Some(v))
}

#[tokio::test(flavor = "multi_thread")]
async fn kubernetes_manifests_match_the_binary() {
    let m = manifests();
    let dep = one(&m, "Deployment");
    let spec = &dep["spec"];
    let pod = &spec["template"]["spec"];
    let pod_labels = &spec["template"]["metadata"]["labels"];
    assert!(
        spec["replicas"].as_u64().unwrap() >= 2,
        "at least two replicas"
    );
    assert!(labels_match(&spec["selector"]["matchLabels"], pod_labels));
    let c = &pod["containers"][0];

    // The args are a `serve` the binary accepts; its config is the ConfigMap's key.
    let args: Vec<&str> = c["args"].as_sequence().unwrap().iter().map(s).collect();
    let config_path = serve_config(&args);
    let mounts = c["volumeMounts"].as_sequence().unwrap();
    let mount = |name: &str| {
        mounts
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume mount `{name}`"))
    };
    let cm_mount = mount("config");
    assert_eq!(Path::new(s(&cm_mount["mountPath"])), config_path);
    let cm = one(&m, "ConfigMap");
    let volumes = pod["volumes"].as_sequence().unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v["name"] == name).unwrap();
    assert_eq!(
        volume("config")["configMap"]["name"],
        cm["metadata"]["name"]
    );
    let routes = s(&cm["data"][s(&cm_mount["subPath"])]);

    // Env: every variable comes from a key the Secret has; the config compiles with
    // exactly those (a secret it names and the pod lacks would fail here, as in `serve`).
    let secret = one(&m, "Secret");
    let secret_data = secret["stringData"].as_mapping().unwrap();
    let mut wired = BTreeMap::new();
    for e in c["env"].as_sequence().unwrap() {
        let r = &e["valueFrom"]["secretKeyRef"];
        assert_eq!(r["name"], secret["metadata"]["name"], "{e:?}");
        let key = s(&r["key"]);
        let value = secret_data
            .get(key)
            .unwrap_or_else(|| panic!("the Secret has no key `{key}`"));
        let name = s(&e["name"]).to_string();
        let v = if name.ends_with("_SHA256") {
            "a".repeat(64)
        } else {
            s(value).to_string()
        };
        wired.insert(name, v);
    }
    let used = std::cell::RefCell::new(BTreeSet::new());
    let env = |n: &str| {
        used.borrow_mut().insert(n.to_string());
        wired.get(n).cloned()
    };
    let snap = Snapshot::parse(&config_path, routes, &env)
        .unwrap_or_else(|e| panic!("the ConfigMap's routes.yaml: {e}"));
    let unused: Vec<_> = wired
        .keys()
        .filter(|k| !used.borrow().contains(*k))
        .collect();
    assert!(
        unused.is_empty(),
        "wired but never named by the config: {unused:?}"
    );
    assert!(
        matches!(snap.store.kind, StoreKind::Redis(_)),
        "replicas share one redis"
    );

    // Ports: the containerPorts are the listeners; both on the pod IP.
    let port = |name: &str| {
        c["ports"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no container port `{name}`"))["containerPort"]
            .as_u64()
            .unwrap() as u16
    };
    assert_eq!(snap.listen.port(), port("agent"));
    assert_eq!(snap.admin_listen.port(), port("admin"));
    assert!(snap.listen.ip().is_unspecified() && snap.admin_listen.ip().is_unspecified());

    // Probes: the admin port's endpoints, over TLS because admin_tls is set.
    let tls = snap.admin_tls.as_ref().expect("admin_tls off loopback");
    let tls_mount = s(&mount("admin-tls")["mountPath"]);
    assert!(tls.cert.starts_with(tls_mount) && tls.key.starts_with(tls_mount));
    assert!(volume("admin-tls")["secret"]["secretName"].is_string());
    for (probe, path) in [
        ("readinessProbe", "/readyz"),
        ("livenessProbe", "/healthz"),
        ("startupProbe", "/healthz"),
    ] {
        let g = &c[probe]["httpGet"];
        assert_eq!(s(&g["path"]), path, "{probe}");
        assert_eq!(s(&g["port"]), "admin", "{probe}");
        assert_eq!(s(&g["scheme"]), "HTTPS", "{probe}");
    }

    // Writable places: the root file system is read-only; the audit trail is on a volume.
    let sc = &c["securityContext"];
    assert_eq!(sc["readOnlyRootFilesystem"], Value::Bool(true));
    assert_eq!(sc["allowPrivilegeEscalation"], Value::Bool(false));
    assert_eq!(pod["securityContext"]["runAsNonRoot"], Value::Bool(true));
    assert!(snap.audit.path.starts_with(s(&mount("data")["mountPath"])));
    // The image's user is the pod's.
    let dockerfile = std::fs::read_to_string(crate_path("Dockerfile")).unwrap();
    let uid = pod["securityContext"]["runAsUser"].as_u64().unwrap();
    assert!(
        dockerfile
            .lines()
            .any(|l| l.trim() == format!("USER {uid}")),
        "Dockerfile has no `USER {uid}`"
    );

    // Shutdown: preStop, then SIGTERM and the binary's drain, within the grace period.
    let pre = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .unwrap();
    assert_eq!(s(&pre[0]), "sleep");
    let pre_s: u64 = s(&pre[1]).parse().unwrap();
    let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
    assert!(
        pre_s + portcullis::server::DRAIN.as_secs() < grace,
        "preStop {pre_s} s + drain {} s must end before the {grace} s grace period",
        portcullis::server::DRAIN.as_secs()
    );

    // Services and the PodDisruptionBudget select these pods and name real ports.
    let svcs = &m["Service"];
    assert!(!svcs.is_empty());
    for svc in svcs {
        assert!(labels_match(&svc["spec"]["selector"], pod_labels));
        for p in svc["spec"]["ports"].as_sequence().unwrap() {
            port(s(&p["targetPort"]));
        }
    }
    assert!(svcs
        .iter()
        .any(|svc| svc["spec"]["ports"][0]["targetPort"] == "agent"));
    let pdb = one(&m, "PodDisruptionBudget");
    assert!(labels_match(
        &pdb["spec"]["selector"]["matchLabels"],
        pod_labels
    ));
    assert!(pdb["spec"]["minAvailable"].as_u64().unwrap() < spec["replicas"].as_u64().unwrap());

    // The probe paths answer 200 on a real binary's admin port, without a token.
    let p = Proxy::start(&base_config(), &[]);
    for path in ["/readyz", "/healthz"] {
        let r = admin_call(p.admin, "GET", path, "", None).await;
        assert_eq!(r.status, 200, "{path}: {}", r.text());
    }
}

/// Metric names in a PromQL expression.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("portcullis_") {
        let start = i + at;
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        out.insert(expr[start..end].to_string());
        i = end;
    }
    out
}

/// Every `"portcullis_…"` string literal under src/: the names the binary registers.
fn names_in_source() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let t = std::fs::read_to_string(&p).unwrap();
                for part in t.split("\"portcullis_").skip(1) {
                    if let Some(end) = part.find('"') {
                        out.insert(format!("portcullis_{}", &part[..end]));
                    }
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&crate_path("src"), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn prometheus_rules_use_metrics_the_binary_exports() {
    let rules = &docs("deploy/prometheus/alerts.yml")[0];
    let exported = names_in_source();
    let mut alerts = BTreeSet::new();
    for g in rules["groups"].as_sequence().unwrap() {
        for r in g["rules"].as_sequence().unwrap() {
            alerts.insert(s(&r["alert"]).to_string());
            for name in metric_names(s(&r["expr"])) {
                assert!(
                    exported.contains(&name),
                    "alert {} uses `{name}`, which the binary does not export",
                    s(&r["alert"])
                );
            }
        }
    }
    for a in [
        "PortcullisAuditWriteErrors",
        "PortcullisStoreErrors",
        "PortcullisApprovalWaiting",
        "PortcullisNotReady",
    ] {
        assert!(alerts.contains(a), "no alert {a}");
    }
    // The scrape-time gauges really appear on /metrics (the others appear once counted).
    let p = Proxy::start(&base_config(), &[]);
    let r = admin_call(p.admin, "GET", "/metrics", OPERATOR_SECRET, None).await;
    assert_eq!(r.status, 200);
    let text = r.text();
    for (name, value) in [
        ("portcullis_ready", "1"),
        ("portcullis_approvals_pending", "0"),
        ("portcullis_approval_oldest_pending_seconds", "0"),
    ] {
        assert!(
            text.lines().any(|l| l == format!("{name} {value}")),
            "/metrics lacks `{name} {value}`:\n{text}"
        );
    }
    // The scrape config reads the admin port's /metrics with a bearer token.
    let scrape = &docs("deploy/prometheus/scrape.yml")[0]["scrape_configs"][0];
    assert_eq!(s(&scrape["metrics_path"]), "/metrics");
    assert_eq!(s(&scrape["authorization"]["type"]), "Bearer");
    assert!(serde_yaml::to_string(scrape)
        .unwrap()
        .contains("regex: admin"));
}

/// `Key=value` lines of a unit file (the last one wins, as in systemd).
fn unit(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[test]
fn the_systemd_unit_is_hardened_and_runs_a_serve_the_binary_accepts() {
    let path = crate_path("deploy/systemd/portcullis.service");
    let text = std::fs::read_to_string(&path).unwrap();
    let u = unit(&text);
    let exec: Vec<&str> = u["ExecStart"].split_whitespace().collect();
    assert_eq!(exec[0], "/usr/local/bin/portcullis");
    serve_config(&exec[1..]);
    for (k, v) in [
        ("DynamicUser", "yes"),
        ("StateDirectory", "portcullis"),
        ("ProtectSystem", "strict"),
        ("NoNewPrivileges", "yes"),
        ("CapabilityBoundingSet", ""),
        ("PrivateTmp", "yes"),
        ("KillSignal", "SIGTERM"),
    ] {
        assert_eq!(u.get(k).map(String::as_str), Some(v), "{k}");
    }
    assert!(u["ExecReload"].contains("-HUP $MAINPID"));
    let nofile: u64 = u["LimitNOFILE"].parse().unwrap();
    assert!(nofile >= 10_000, "above the default max_connections");
    let stop: u64 = u["TimeoutStopSec"].trim_end_matches('s').parse().unwrap();
    assert!(stop > portcullis::server::DRAIN.as_secs());

    // systemd's own check (.ci/run installs systemd-analyze where it is missing; a
    // missing one fails here rather than passing unchecked).
    assert!(
        std::process::Command::new("systemd-analyze")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success()),
        "systemd-analyze does not run here (Debian package `systemd`; .ci/run installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("portcullis.service");
    std::fs::write(
        &copy,
        text.replace(
            "/usr/local/bin/portcullis",
            env!("CARGO_BIN_EXE_portcullis"),
        ),
    )
    .unwrap();
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The compose file: redis healthy before portcullis starts, restart policies, one image,
/// the admin port on the host's loopback only, and commands the binary accepts.
#[test]
fn docker_compose_file_wires_what_the_binary_needs() {
    let c = &docs("docker-compose.yml")[0];
    let svc = |n: &str| &c["services"][n];
    let (redis, api, pc) = (svc("redis"), svc("demo-api"), svc("portcullis"));
    assert!(redis["healthcheck"]["test"].is_sequence());
    assert_eq!(
        s(&pc["depends_on"]["redis"]["condition"]),
        "service_healthy"
    );
    for v in [redis, api, pc] {
        assert_eq!(s(&v["restart"]), "unless-stopped");
    }
    // One image for both portcullis services, built from this repository, hardened.
    assert_eq!(api["image"], pc["image"]);
    for v in [api, pc] {
        assert_eq!(v["read_only"], Value::Bool(true));
        assert_eq!(s(&v["cap_drop"][0]), "ALL");
    }
    assert_eq!(s(&pc["build"]), ".");
    // The demo API's command and the server's are ones the binary takes.
    let args = |v: &Value| -> Vec<String> {
        v["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|a| s(a).to_string())
            .collect()
    };
    let api_args = args(api);
    let parsed =
        Cli::try_parse_from(std::iter::once("portcullis".to_string()).chain(api_args.clone()))
            .unwrap_or_else(|e| panic!("demo-api command {api_args:?}: {e}"));
    let Cmd::DemoApi { listen } = parsed.cmd else {
        panic!("demo-api runs {api_args:?}")
    };
    let pc_args = args(pc);
    let pc_args: Vec<&str> = pc_args.iter().map(String::as_str).collect();
    let config_path = serve_config(&pc_args);
    // The config mounted there compiles with the environment compose gives it.
    let mount = pc["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(s)
        .find(|v| v.ends_with(&format!(":{}:ro", config_path.display())))
        .expect("the config is mounted read-only at the path serve reads");
    let host_file = mount.split(':').next().unwrap();
    let text = std::fs::read_to_string(crate_path(host_file)).unwrap();
    let env = |n: &str| match n {
        "PORTCULLIS_OPERATOR_TOKEN" => Some(format!("pco_{}", "b".repeat(64))),
        "PORTCULLIS_APPROVER_TOKEN" => Some(format!("pco_{}", "d".repeat(64))),
        other => pc["environment"][other].as_str().map(String::from),
    };
    let snap =
        Snapshot::parse(&config_path, &text, &env).unwrap_or_else(|e| panic!("{host_file}: {e}"));
    assert!(matches!(snap.store.kind, StoreKind::Redis(_)));
    assert_eq!(snap.operators.len(), 2, "the bootstrap operators");
    assert_eq!(snap.upstreams[0].authority.port_u16(), Some(listen.port()));
    // Ports: agents on 8080; the admin port published on the host's loopback only.
    let ports: Vec<&str> = pc["ports"].as_sequence().unwrap().iter().map(s).collect();
    assert!(
        ports.contains(&format!("{0}:{0}", snap.listen.port()).as_str()),
        "{ports:?}"
    );
    assert!(
        ports.contains(&format!("127.0.0.1:{0}:{0}", snap.admin_listen.port()).as_str()),
        "{ports:?}"
    );
    assert!(
        !ports
            .iter()
            .any(|p| p.ends_with(&format!(":{}", snap.admin_listen.port()))
                && !p.starts_with("127.0.0.1:")),
        "the admin port is published beyond the host's loopback: {ports:?}"
    );
    // The bootstrap tokens come from the host's environment, required (`:?`), never a
    // default written in the file.
    for v in ["PORTCULLIS_OPERATOR_TOKEN", "PORTCULLIS_APPROVER_TOKEN"] {
        assert!(
            s(&pc["environment"][v]).starts_with(&format!("${{{v}:?")),
            "{v}"
        );
    }
    // The build context leaves target/ out.
    let ignore = std::fs::read_to_string(crate_path(".dockerignore")).unwrap();
    assert!(ignore.lines().any(|l| l.trim() == "target/"));
}

/// The compose implementation on this machine: the `docker compose` plugin if it
/// answers, else `docker-compose` (Debian's; `.ci/run` installs it). Neither: a failure.
fn compose_cmd() -> Vec<&'static str> {
    let works = |args: &[&str]| {
        std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works(&["docker", "compose", "version"]) {
        vec!["docker", "compose"]
    } else if works(&["docker-compose", "version"]) {
        vec!["docker-compose"]
    } else {
        panic!("neither `docker compose` nor `docker-compose` runs here (.ci/run installs docker-compose)")
    }
}

/// Compose itself accepts the file (schema, interpolation, the mounted paths) with the
/// two operator tokens exported as the README says, and refuses it, naming the variable,
/// without them. No container runtime is needed for `config`.
#[test]
#[ignore = "needs docker compose or docker-compose; .ci/run runs it with --ignored"]
fn docker_compose_config_accepts_the_file() {
    let cmd = compose_cmd();
    let run = |env: &[(&str, &str)]| {
        let mut c = std::process::Command::new(cmd[0]);
        c.args(&cmd[1..])
            .args(["--file", "docker-compose.yml", "config"])
            .current_dir(crate_path(""))
            .env_remove("PORTCULLIS_OPERATOR_TOKEN")
            .env_remove("PORTCULLIS_APPROVER_TOKEN");
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let op = format!("pco_{}", "b".repeat(64));
    let approver = format!("pco_{}", "d".repeat(64));
    let (ok, out, err) = run(&[
        ("PORTCULLIS_OPERATOR_TOKEN", &op),
        ("PORTCULLIS_APPROVER_TOKEN", &approver),
    ]);
    assert!(ok, "{cmd:?} config refuses docker-compose.yml:\n{err}");
    let c: Value = serde_yaml::from_str(&out).unwrap();
    let pc = &c["services"]["portcullis"];
    assert_eq!(s(&pc["environment"]["PORTCULLIS_OPERATOR_TOKEN"]), op);
    assert_eq!(s(&pc["environment"]["PORTCULLIS_APPROVER_TOKEN"]), approver);
    assert_eq!(
        s(&pc["depends_on"]["redis"]["condition"]),
        "service_healthy"
    );
    // The config mount resolves to this repository's file.
    let routes = crate_path("deploy/routes.compose.yaml");
    assert!(
        out.contains(&routes.display().to_string()),
        "the mount is not {}:\n{out}",
        routes.display()
    );
    // The admin port, as compose reads it, is bound on the host's loopback only.
    let admin: Vec<&Value> = pc["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|p| match p {
            Value::String(t) => t.contains(":9090"),
            _ => p["target"].as_u64() == Some(9090),
        })
        .collect();
    assert_eq!(admin.len(), 1, "{out}");
    let on_loopback = match admin[0] {
        Value::String(t) => t.starts_with("127.0.0.1:"),
        p => p["host_ip"].as_str() == Some("127.0.0.1"),
    };
    assert!(
        on_loopback,
        "admin port as compose reads it: {:?}",
        admin[0]
    );

    let (ok, _, err) = run(&[("PORTCULLIS_APPROVER_TOKEN", &approver)]);
    assert!(
        !ok,
        "compose accepted the file without PORTCULLIS_OPERATOR_TOKEN"
    );
    assert!(err.contains("PORTCULLIS_OPERATOR_TOKEN"), "{err}");
}

/// The README's compose walkthrough, run natively (no container runtime here): the
/// compose config with its hosts pointed at a local redis and demo API, a bootstrap
/// operator from the environment, then the three commands — issue a token, park a
/// refund, approve it — and the agent reads the result.
#[tokio::test(flavor = "multi_thread")]
async fn the_compose_walkthrough_reaches_an_approved_refund() {
    use crate::common::{request, run_bin, send, CLI_BOUND};
    let redis = crate::support::redis::RedisServer::start();
    let api = portcullis::demo::start_api().await.unwrap();
    let text = std::fs::read_to_string(crate_path("deploy/routes.compose.yaml"))
        .unwrap()
        .replace("listen: 0.0.0.0:8080", "listen: 127.0.0.1:0")
        .replace("admin_listen: 0.0.0.0:9090", "admin_listen: 127.0.0.1:0")
        .replace("http://demo-api:7000", &format!("http://{api}"))
        .replace("/var/lib/portcullis/audit.jsonl", "data/audit.jsonl");
    let token = format!("pco_{}", "c".repeat(64));
    let approver = format!("pco_{}", "e".repeat(64));
    let p = Proxy::start(
        &text,
        &[
            ("REDIS_URL", &redis.url()),
            ("TICKETS_API_KEY", portcullis::demo::DEMO_UPSTREAM_KEY),
            ("PORTCULLIS_OPERATOR_TOKEN", &token),
            ("PORTCULLIS_APPROVER_TOKEN", &approver),
        ],
    );
    let admin = format!("http://{}", p.admin);
    let op_env = [("PORTCULLIS_OPERATOR_TOKEN", token.as_str())];
    let approver_env = [("PORTCULLIS_OPERATOR_TOKEN", approver.as_str())];
    // 1. an agent token, by the bootstrap operator
    let (a, e) = (admin.clone(), op_env.map(|(k, v)| (k, v.to_string())));
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_bin(
            &["tokens", "issue", "support-bot", "--admin", &a],
            &env,
            CLI_BOUND,
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent = String::from_utf8_lossy(&out.stdout).trim().to_string();
    // 2. the agent asks for a refund: parked
    let r = send(
        p.addr,
        request("POST", p.addr, "/tickets/42/refund", &agent)
            .body(crate::common::full("{\"amount\":10}"))
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["approval_id"].as_str().unwrap().to_string();
    // 3. the second operator approves it (the issuer may not)
    let (a, e, i) = (
        admin.clone(),
        approver_env.map(|(k, v)| (k, v.to_string())),
        id.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = e.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run_bin(
            &["approvals", "approve", &i, "--admin", &a],
            &env,
            CLI_BOUND,
        )
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The agent reads the refund's result.
    let v = crate::common::eventually(
        "the approved refund's result",
        std::time::Duration::from_secs(20),
        || {
            let (agent, id) = (agent.clone(), id.clone());
            let addr = p.addr;
            async move {
                let r = crate::common::get(
                    addr,
                    &format!("/_portcullis/approvals/{id}/result"),
                    &agent,
                )
                .await;
                if r.status == 200 {
                    Ok(r.text())
                } else {
                    Err(format!("{} {}", r.status, r.text()))
                }
            }
        },
    )
    .await;
    assert!(v.contains("\"refunded\":true"), "{v}");
}
