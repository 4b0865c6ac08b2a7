//! Helpers for the audit-trail, metrics and secrets tests: reading the audit file,
//! waiting (bounded) for the record of one request, running `portcullis audit ...`, a
//! small upstream that answers with the status named in its path, and a Prometheus text
//! exposition parser.
//!
#![allow(dead_code)]

use crate::common::{self, Proxy};
use http::Request;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

/// How long an audit record may take to appear (allow records are group-committed).
pub const RECORD_BOUND: Duration = Duration::from_secs(10);

/// Every field DESIGN.md's "Audit trail" names, plus the chain fields.
pub const FIELDS: &[&str] = &[
    "seq",
    "ts",
    "node",
    "event",
    "request_id",
    "agent",
    "credential",
    "tenant",
    "remote_addr",
    "method",
    "path",
    "tool",
    "risk",
    "decision",
    "reason",
    "policy_version",
    "body_sha256",
    "approval_id",
    "operator",
    "status",
    "upstream_status",
    "duration_us",
    "prev",
    "hash",
];

/// The complete (newline-terminated) lines of an audit file; empty if it does not exist.
pub fn lines_of(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut v: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    if v.last().is_some_and(|l| !l.ends_with('\n')) {
        v.pop();
    }
    v.into_iter()
        .map(|l| l.trim_end_matches('\n').to_string())
        .collect()
}

/// Every complete line parsed as JSON (panics on a line that is not JSON).
pub fn records_of(path: &Path) -> Vec<Value> {
    lines_of(path)
        .iter()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("{}:{}: not JSON ({e}): {l}", path.display(), i + 1))
        })
        .collect()
}

/// Records whose `request_id` is `id`.
pub fn with_request_id(path: &Path, id: &str) -> Vec<Value> {
    records_of(path)
        .into_iter()
        .filter(|r| r["request_id"].as_str() == Some(id))
        .collect()
}

/// Waits (bounded) until the record of request `id` is in the file; returns it. Panics
/// if none appears, or if more than one does.
pub async fn wait_request_record(path: &Path, id: &str) -> Value {
    let p = path.to_path_buf();
    let idc = id.to_string();
    common::poll_until_async(RECORD_BOUND, || !with_request_id(&p, &idc).is_empty()).await;
    let found = with_request_id(path, id);
    match found.len() {
        1 => found.into_iter().next().unwrap(),
        0 => panic!(
            "no audit record with request_id {id} within {RECORD_BOUND:?}; the file holds:\n{}",
            std::fs::read_to_string(path).unwrap_or_default()
        ),
        n => panic!("{n} audit records with request_id {id} (want exactly one): {found:#?}"),
    }
}

/// Waits (bounded) for the first record matching `pred`; returns it.
pub async fn wait_record(path: &Path, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let p = path.to_path_buf();
    common::poll_until_async(RECORD_BOUND, || records_of(&p).iter().any(&pred)).await;
    records_of(path)
        .into_iter()
        .find(|r| pred(r))
        .unwrap_or_else(|| {
            panic!(
                "no audit record {what} within {RECORD_BOUND:?}; the file holds:\n{}",
                std::fs::read_to_string(path).unwrap_or_default()
            )
        })
}

/// Checks that every field of the audit schema is present in `r` (null when unknown).
pub fn assert_schema(what: &str, r: &Value) {
    let o = r
        .as_object()
        .unwrap_or_else(|| panic!("{what}: not an object: {r}"));
    for f in FIELDS {
        assert!(o.contains_key(*f), "{what}: field `{f}` missing in {r}");
    }
    assert!(r["seq"].as_u64().is_some(), "{what}: seq in {r}");
    assert!(
        r["ts"].as_str().is_some_and(|t| !t.is_empty()),
        "{what}: ts in {r}"
    );
    for k in ["prev", "hash"] {
        let h = r[k].as_str().unwrap_or_default();
        assert!(
            h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()),
            "{what}: `{k}` is not 64 hex chars in {r}"
        );
    }
}

/// `r[k]` as a string (panics with the record if absent or not a string).
pub fn s<'a>(what: &str, r: &'a Value, k: &str) -> &'a str {
    r[k].as_str()
        .unwrap_or_else(|| panic!("{what}: `{k}` is not a string in {r}"))
}

// ---------------------------------------------------------------------------------------
// The CLI
// ---------------------------------------------------------------------------------------

/// Runs `portcullis ARGS` with `env` (bounded: the verbs used here exit by themselves).
pub fn portcullis(args: &[&str], env: &[(&str, &str)]) -> Output {
    common::run_bin(args, env, common::CLI_BOUND)
}

/// Runs `portcullis audit verify FILES..` (+ `extra` args).
pub fn verify(files: &[PathBuf], extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut args: Vec<String> = vec!["audit".into(), "verify".into()];
    args.extend(files.iter().map(|f| f.display().to_string()));
    args.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    portcullis(&refs, env)
}

/// `--from-seq N --from-hash H` for files that continue the chain after the last record
/// of `path` (its seq + 1 and its `hash`).
pub fn continue_from(path: &Path) -> Vec<String> {
    let last = records_of(path)
        .pop()
        .unwrap_or_else(|| panic!("{}: no record to continue from", path.display()));
    vec![
        "--from-seq".into(),
        (last["seq"].as_u64().expect("seq") + 1).to_string(),
        "--from-hash".into(),
        last["hash"].as_str().expect("hash").to_string(),
    ]
}

/// The `--from-seq/--from-hash` that verify a file written after an outage, given the
/// records the old file held: the new file starts right after the last record that was
/// durable before the outage — the last old record, or an earlier one when the writer
/// kept records it had written but not yet fsynced and wrote them again.
pub fn continue_after_outage(old: &[Value], new_file: &Path) -> Vec<String> {
    let first = records_of(new_file)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{}: no record after the outage", new_file.display()));
    let seq = first["seq"].as_u64().expect("seq");
    let last_old = old.last().and_then(|r| r["seq"].as_u64()).unwrap_or(0);
    assert!(
        seq >= 1 && seq <= last_old + 1,
        "the new file starts at seq {seq}, past the old file's last record {last_old}"
    );
    let before = old
        .iter()
        .find(|r| r["seq"].as_u64() == Some(seq - 1))
        .unwrap_or_else(|| panic!("no old record with seq {}", seq - 1));
    vec![
        "--from-seq".into(),
        seq.to_string(),
        "--from-hash".into(),
        before["hash"].as_str().expect("hash").to_string(),
    ]
}

pub fn out_text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Rotated files of `live` (`<live>.<12 digits>`), sorted, then `live` itself.
pub fn chain_files(live: &Path) -> Vec<PathBuf> {
    let dir = live.parent().expect("parent");
    let name = live.file_name().unwrap().to_str().unwrap().to_string();
    let mut rotated: Vec<PathBuf> = std::fs::read_dir(dir)
        .expect("read audit dir")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix(name.as_str()))
                .and_then(|r| r.strip_prefix('.'))
                .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect();
    rotated.sort();
    rotated.push(live.to_path_buf());
    rotated
}

// ---------------------------------------------------------------------------------------
// An upstream that answers with a chosen status
// ---------------------------------------------------------------------------------------

/// The harness upstream answering the status its last path segment names (`/x/503` →
/// 503, otherwise 200) with a small JSON body.
pub struct StatusUpstream(common::Upstream);

impl std::ops::Deref for StatusUpstream {
    type Target = common::Upstream;
    fn deref(&self) -> &common::Upstream {
        &self.0
    }
}

impl StatusUpstream {
    pub async fn start() -> StatusUpstream {
        StatusUpstream(common::Upstream::start(common::Behaviour::StatusFromPath).await)
    }
}

// ---------------------------------------------------------------------------------------
// Prometheus text exposition (version 0.0.4)
// ---------------------------------------------------------------------------------------

/// One sample line: `name{labels} value`.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

#[derive(Debug, Default)]
pub struct Exposition {
    pub samples: Vec<Sample>,
    /// Family name → type (`counter`, `gauge`, `histogram`, `summary`, `untyped`).
    pub types: BTreeMap<String, String>,
    pub helps: BTreeMap<String, String>,
}

fn is_metric_name(s: &str) -> bool {
    let mut it = s.chars();
    matches!(it.next(), Some(c) if c.is_ascii_alphabetic() || c == '_' || c == ':')
        && it.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(s: &str) -> bool {
    let mut it = s.chars();
    matches!(it.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && it.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn parse_value(s: &str) -> Option<f64> {
    match s {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => s.parse().ok(),
    }
}

/// Parses `{a="x",b="y\"z"}` starting after `{`; returns labels and the rest after `}`.
fn parse_labels(mut s: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    loop {
        s = s.trim_start();
        if let Some(rest) = s.strip_prefix('}') {
            return Ok((labels, rest));
        }
        let eq = s.find('=').ok_or("label without `=`")?;
        let name = s[..eq].trim();
        if !is_label_name(name) {
            return Err(format!("bad label name `{name}`"));
        }
        let mut rest = s[eq + 1..]
            .strip_prefix('"')
            .ok_or("label value not quoted")?
            .chars();
        let mut value = String::new();
        loop {
            match rest.next().ok_or("unterminated label value")? {
                '"' => break,
                '\\' => match rest.next().ok_or("dangling escape")? {
                    '\\' => value.push('\\'),
                    '"' => value.push('"'),
                    'n' => value.push('\n'),
                    c => return Err(format!("bad escape `\\{c}`")),
                },
                '\n' => return Err("raw newline in a label value".into()),
                c => value.push(c),
            }
        }
        if labels.insert(name.to_string(), value).is_some() {
            return Err(format!("duplicate label `{name}`"));
        }
        s = rest.as_str().trim_start();
        if let Some(r) = s.strip_prefix(',') {
            s = r;
        } else if !s.starts_with('}') {
            return Err("expected `,` or `}` after a label".into());
        }
    }
}

/// The family a sample belongs to (histogram/summary suffixes removed when typed so).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suf in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suf) {
            if matches!(
                types.get(base).map(String::as_str),
                Some("histogram" | "summary")
            ) {
                return base;
            }
        }
    }
    name
}

/// Parses and checks a text exposition: every non-comment line is `name{labels} value
/// [timestamp]`; `# HELP name text` and `# TYPE name type` are well-formed, at most one
/// of each per family, TYPE before the family's samples; histogram buckets are cumulative
/// with a `+Inf` bucket equal to `_count`.
pub fn parse_exposition(text: &str) -> Result<Exposition, String> {
    let mut e = Exposition::default();
    let mut sampled: BTreeMap<String, ()> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        let err = |m: String| format!("line {n} `{line}`: {m}");
        if line.trim().is_empty() {
            continue;
        }
        if let Some(c) = line.strip_prefix('#') {
            let c = c.trim_start();
            if let Some(rest) = c.strip_prefix("HELP ") {
                let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
                if !is_metric_name(name) {
                    return Err(err(format!("bad metric name `{name}` in HELP")));
                }
                if e.helps.insert(name.into(), help.into()).is_some() {
                    return Err(err(format!("second HELP for `{name}`")));
                }
            } else if let Some(rest) = c.strip_prefix("TYPE ") {
                let mut it = rest.split_whitespace();
                let (Some(name), Some(ty), None) = (it.next(), it.next(), it.next()) else {
                    return Err(err("TYPE needs a name and a type".into()));
                };
                if !is_metric_name(name) {
                    return Err(err(format!("bad metric name `{name}` in TYPE")));
                }
                if !matches!(
                    ty,
                    "counter" | "gauge" | "histogram" | "summary" | "untyped"
                ) {
                    return Err(err(format!("unknown type `{ty}`")));
                }
                if sampled.contains_key(name) {
                    return Err(err(format!("TYPE for `{name}` after its samples")));
                }
                if e.types.insert(name.into(), ty.into()).is_some() {
                    return Err(err(format!("second TYPE for `{name}`")));
                }
            }
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| err("no value".into()))?;
        let name = &line[..name_end];
        if !is_metric_name(name) {
            return Err(err(format!("bad metric name `{name}`")));
        }
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..]).map_err(err)?
        } else {
            (BTreeMap::new(), &line[name_end..])
        };
        if !rest.starts_with(' ') {
            return Err(err("no space before the value".into()));
        }
        let mut it = rest.split_whitespace();
        let value = it
            .next()
            .and_then(parse_value)
            .ok_or_else(|| err("value is not a number".into()))?;
        if let Some(ts) = it.next() {
            ts.parse::<i64>()
                .map_err(|_| err(format!("bad timestamp `{ts}`")))?;
        }
        if it.next().is_some() {
            return Err(err("trailing text after the value".into()));
        }
        sampled.insert(family_of(name, &e.types).to_string(), ());
        e.samples.push(Sample {
            name: name.to_string(),
            labels,
            value,
        });
    }
    check_histograms(&e)?;
    Ok(e)
}

/// Labels other than `le`, in order.
type Labels = Vec<(String, String)>;

fn check_histograms(e: &Exposition) -> Result<(), String> {
    for (fam, ty) in &e.types {
        if ty != "histogram" {
            continue;
        }
        // Group buckets by their labels other than `le`.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for s in e
            .samples
            .iter()
            .filter(|s| s.name == format!("{fam}_bucket"))
        {
            let le = s
                .labels
                .get("le")
                .ok_or_else(|| format!("{fam}_bucket without `le`"))?;
            let le = parse_value(le).ok_or_else(|| format!("{fam}_bucket le=`{le}`"))?;
            let key: Vec<(String, String)> = s
                .labels
                .iter()
                .filter(|(k, _)| *k != "le")
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            series.entry(key).or_default().push((le, s.value));
        }
        for (key, mut buckets) in series {
            buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
            if buckets.windows(2).any(|w| w[1].1 < w[0].1) {
                return Err(format!("{fam}{key:?}: buckets are not cumulative"));
            }
            let inf = buckets
                .last()
                .filter(|b| b.0.is_infinite())
                .ok_or_else(|| format!("{fam}{key:?}: no +Inf bucket"))?
                .1;
            let count = e
                .samples
                .iter()
                .find(|s| {
                    s.name == format!("{fam}_count")
                        && s.labels
                            .iter()
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect::<Vec<_>>()
                            == key
                })
                .ok_or_else(|| format!("{fam}{key:?}: no _count"))?
                .value;
            if count != inf {
                return Err(format!("{fam}{key:?}: _count {count} != +Inf bucket {inf}"));
            }
        }
    }
    Ok(())
}

impl Exposition {
    /// The value of the sample `name` whose labels are exactly `labels`.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .iter()
            .find(|s| s.name == name && s.labels == want)
            .map(|s| s.value)
    }

    /// Sum of every sample named `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|s| s.name == name)
            .map(|s| s.value)
            .sum()
    }

    /// Every sample named `name`.
    pub fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// `GET /metrics` as the harness operator, parsed (panics if it does not parse).
pub async fn scrape(p: &Proxy) -> Exposition {
    let r = common::send(
        p.admin,
        Request::get("/metrics")
            .header("host", p.admin.to_string())
            .header(
                "authorization",
                format!("Bearer {}", common::OPERATOR_SECRET),
            )
            .body(common::empty())
            .unwrap(),
    )
    .await
    .expect("GET /metrics");
    assert_eq!(r.status, 200, "GET /metrics: {}", r.text());
    parse_exposition(&r.text())
        .unwrap_or_else(|e| panic!("/metrics is not Prometheus text: {e}\n{}", r.text()))
}
