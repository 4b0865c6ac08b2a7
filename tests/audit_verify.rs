//! `portcullis audit verify` and `audit tail` on logs the real proxy wrote: verify passes
//! on a real log and names `file:line` of the first broken link for an edited field, a
//! re-sealed edited line, a deleted line, swapped lines, a cut-out middle and a file from
//! another chain spliced in; rotation keeps the chain across files; signed checkpoints
//! catch a chain rewritten without the key; `tail` filters by decision and agent and
//! follows new records.

#[path = "support/admin.rs"]
mod admin_support;
#[path = "support/audit.rs"]
mod audit_support;
mod common;

use admin_support::{call, issue};
use audit_support::{chain_files, lines_of, out_text, portcullis, records_of, verify};
use common::{Behaviour, Proxy, Upstream};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const AUDIT: &str = "audit/audit.jsonl";
const HMAC_KEY: &str = "audit-hmac-test-key-51c0e7";

fn config(url: &str, audit_extra: &str) -> String {
    format!(
        r#"listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
node: verify-node
store: {{ embedded: data/p.redb }}
audit: {{ path: {AUDIT}{audit_extra} }}
operators:
  - {{ name: tester, token_sha256: "{op}", roles: [viewer, approver, admin] }}
upstreams:
  api: {{ url: "{url}" }}
routes:
  - prefix: /tickets
    upstream: api
    tool_prefix: tickets
    paths: ["/tickets/{{id}}"]
profiles:
  drafter:
    tools: ["tickets.*"]
    max_risk: medium
    deny: ["*.delete"]
agents:
  bot: {{ profile: drafter, tenant: acme }}
  other: {{ profile: drafter, tenant: globex }}
"#,
        op = common::operator_hash(),
    )
}

/// A proxy (kept for its temp dir) that wrote a real log, stopped so the file is final.
struct Log {
    p: Proxy,
    _up: Upstream,
}

impl Log {
    fn live(&self) -> PathBuf {
        self.p.path(AUDIT)
    }
}

/// Runs `n` rounds of (allow by bot, deny by bot, allow by other, deny by other) through a
/// fresh proxy with `audit_extra` in its `audit:` map, waits until every request's record
/// is on disk, then stops the proxy.
async fn write_log(n: usize, audit_extra: &str, env: &[(&str, &str)]) -> Log {
    let up = Upstream::start(Behaviour::Fixed).await;
    let mut p = Proxy::start(&config(&up.url(), audit_extra), env);
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    let other = issue(&p, json!({"agent": "other", "ttl": "1h"}))
        .await
        .token;
    let mut ids = Vec::new();
    for i in 0..n {
        for (method, token, want) in [
            ("GET", &bot, 200),
            ("DELETE", &bot, 403),
            ("GET", &other, 200),
            ("DELETE", &other, 403),
        ] {
            let r = call(p.addr, method, &format!("/tickets/{i}"), token).await;
            assert_eq!(r.status, want, "{method} /tickets/{i}: {}", r.text());
            ids.push(r.header("x-request-id").unwrap().to_string());
        }
    }
    let live = p.path(AUDIT);
    let all_written = |files: &[PathBuf]| {
        let recs: Vec<Value> = files.iter().flat_map(|f| records_of(f)).collect();
        ids.iter()
            .all(|id| recs.iter().any(|r| r["request_id"].as_str() == Some(id)))
    };
    assert!(
        common::poll_until_async(audit_support::RECORD_BOUND, || all_written(&chain_files(
            &live
        )))
        .await,
        "not every request was recorded"
    );
    assert!(
        p.terminate(Duration::from_secs(20)).await.is_some(),
        "the proxy did not exit on SIGTERM"
    );
    Log { p, _up: up }
}

fn write_lines(path: &Path, lines: &[String]) {
    let mut s = lines.join("\n");
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

fn assert_verifies(what: &str, files: &[PathBuf], extra: &[&str], env: &[(&str, &str)]) -> String {
    let o = verify(files, extra, env);
    assert!(
        o.status.success(),
        "{what}: verify should pass: {}",
        out_text(&o)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `audit verify` exits 1 and its message names `file:line` of the first broken link.
fn assert_broken_at(
    what: &str,
    files: &[PathBuf],
    extra: &[&str],
    env: &[(&str, &str)],
    file: &Path,
    line: usize,
) {
    let o = verify(files, extra, env);
    assert_eq!(
        o.status.code(),
        Some(1),
        "{what}: verify should exit 1: {}",
        out_text(&o)
    );
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let want = format!("{}:{line}:", file.display());
    assert!(
        text.contains(&want),
        "{what}: the message should name `{}:{line}`: {}",
        file.display(),
        out_text(&o)
    );
}

/// Recomputes `prev`/`hash` (and a checkpoint's `head`) of every line from `from` on, as
/// someone rewriting the chain without the HMAC key would.
fn reseal_from(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let prev = if i == 0 {
            "0".repeat(64)
        } else {
            let l = &lines[i - 1];
            l[l.len() - 66..l.len() - 2].to_string()
        };
        let l = &lines[i];
        // `...,"prev":"P","hash":"H"}`: cut `,"hash":"H"}` (75 bytes), set P, reseal.
        let mut body = l[..l.len() - 75].to_string();
        let p = body.rfind("\"prev\":\"").expect("prev") + 8;
        body.replace_range(p..p + 64, &prev);
        if body.contains("\"event\":\"checkpoint\"") {
            let h = body.find("\"head\":\"").expect("head") + 8;
            body.replace_range(h..h + 64, &prev);
        }
        body.push('}');
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        lines[i] = format!("{},\"hash\":\"{hash}\"}}", &body[..body.len() - 1]);
    }
}

fn index_where(lines: &[String], from: usize, pred: impl Fn(&Value) -> bool) -> usize {
    (from..lines.len())
        .find(|&i| pred(&serde_json::from_str(&lines[i]).unwrap()))
        .unwrap_or_else(|| panic!("no such line from {from} in {lines:#?}"))
}

// ---------------------------------------------------------------------------------------
// verify
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn verify_passes_on_a_real_log_and_names_the_first_broken_link() {
    let log = write_log(4, "", &[]).await;
    let other = write_log(2, "", &[]).await;
    let live = log.live();
    let lines = lines_of(&live);
    assert!(lines.len() >= 18, "a real log: {} lines", lines.len());
    let out = assert_verifies("the real log", std::slice::from_ref(&live), &[], &[]);
    assert!(
        out.contains(&format!("{} records", lines.len())),
        "verify reports the record count ({}): {out}",
        lines.len()
    );
    assert_verifies("the other real log", &[other.live()], &[], &[]);

    let work = tempfile::tempdir().unwrap();
    let case = |name: &str, lines: &[String]| -> PathBuf {
        let p = work.path().join(name);
        write_lines(&p, lines);
        p
    };
    // A pristine copy still verifies (the tampering below is what breaks it).
    let copy = case("copy.jsonl", &lines);
    assert_verifies("a byte-for-byte copy", &[copy], &[], &[]);

    // Edited field: a deny turned into an allow.
    let k = index_where(&lines, 3, |v| v["decision"] == "deny");
    let mut edited = lines.clone();
    edited[k] = edited[k].replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    assert_ne!(edited[k], lines[k]);
    let f = case("edited.jsonl", &edited);
    assert_broken_at(
        "edited decision",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        k + 1,
    );

    // Edited field on the last line (status), so the end of the file is covered too.
    let mut edited = lines.clone();
    let last = edited.len() - 1;
    let v: Value = serde_json::from_str(&edited[last]).unwrap();
    let status = v["status"].as_u64().expect("status on the last record");
    edited[last] = edited[last].replacen(
        &format!("\"status\":{status}"),
        &format!("\"status\":{}", status + 1),
        1,
    );
    let f = case("edited-last.jsonl", &edited);
    assert_broken_at(
        "edited last line",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        last + 1,
    );

    // An edited line whose own hash was recomputed: the next link breaks.
    let mut resealed = lines.clone();
    resealed[k] = resealed[k].replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    let mut one = resealed[..=k].to_vec();
    reseal_from(&mut one, k);
    resealed[k] = one[k].clone();
    let f = case("resealed-one.jsonl", &resealed);
    assert_broken_at(
        "edited and re-hashed line",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        k + 2,
    );

    // Deleted line.
    let mut deleted = lines.clone();
    deleted.remove(5);
    let f = case("deleted.jsonl", &deleted);
    assert_broken_at("deleted line 6", std::slice::from_ref(&f), &[], &[], &f, 6);

    // Swapped lines.
    let mut swapped = lines.clone();
    swapped.swap(6, 7);
    let f = case("swapped.jsonl", &swapped);
    assert_broken_at(
        "swapped lines 7 and 8",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        7,
    );

    // Truncated middle: lines 9..=12 cut out.
    let mut cut = lines.clone();
    cut.drain(8..12);
    let f = case("cut.jsonl", &cut);
    assert_broken_at(
        "lines 9-12 cut out",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        9,
    );

    // Another chain spliced in: the first 10 lines of this log, then the other log's tail.
    let theirs = lines_of(&other.live());
    let mut spliced = lines[..10].to_vec();
    spliced.extend_from_slice(&theirs[3..]);
    let f = case("spliced.jsonl", &spliced);
    assert_broken_at(
        "another chain spliced in",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        11,
    );

    // Another chain's lines inserted in the middle, this chain continuing after them.
    let mut inserted = lines[..10].to_vec();
    inserted.extend_from_slice(&theirs[4..6]);
    inserted.extend_from_slice(&lines[10..]);
    let f = case("inserted.jsonl", &inserted);
    assert_broken_at(
        "foreign lines inserted",
        std::slice::from_ref(&f),
        &[],
        &[],
        &f,
        11,
    );

    // A whole file from another chain given as the continuation of this one.
    let mine = case("mine.jsonl", &lines);
    let foreign = case("foreign.jsonl", &theirs);
    assert_broken_at(
        "a file from another chain after this one",
        &[mine, foreign.clone()],
        &[],
        &[],
        &foreign,
        1,
    );
}

// ---------------------------------------------------------------------------------------
// Rotation
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn rotation_keeps_the_chain_across_files() {
    // 4096 is the smallest effective rotate_bytes; ~100 records make several files.
    let log = write_log(25, ", rotate_bytes: 4096", &[]).await;
    let files = chain_files(&log.live());
    assert!(
        files.len() >= 4,
        "rotate_bytes 4096 with ~100 records should leave several files: {files:?}"
    );
    let mut total = 0;
    let mut prev_last: Option<Value> = None;
    for (i, f) in files.iter().enumerate() {
        let recs = records_of(f);
        let rotated = i + 1 < files.len();
        if rotated {
            assert!(!recs.is_empty(), "{}: a rotated file is empty", f.display());
            // Named after the seq of its last record.
            let last_seq = recs.last().unwrap()["seq"].as_u64().unwrap();
            let name = f.file_name().unwrap().to_str().unwrap();
            assert!(
                name.ends_with(&format!(".{last_seq:012}")),
                "{name}: its last record is seq {last_seq}"
            );
            let size = std::fs::metadata(f).unwrap().len();
            assert!(size >= 4096, "{name} rotated at {size} bytes (< 4096)");
        }
        if let (Some(first), Some(prev)) = (recs.first(), &prev_last) {
            assert_eq!(
                first["prev"],
                prev["hash"],
                "{}: its first record does not link to the previous file's last",
                f.display()
            );
            assert_eq!(
                first["seq"].as_u64(),
                prev["seq"].as_u64().map(|n| n + 1),
                "{}",
                f.display()
            );
        }
        if let Some(l) = recs.last() {
            prev_last = Some(l.clone());
        }
        total += recs.len();
    }
    let out = assert_verifies("rotated files in order", &files, &[], &[]);
    assert!(
        out.contains(&format!("{total} records")),
        "verify counts every record across the files ({total}): {out}"
    );
    // Out of order, the chain breaks at the first line of the misplaced file.
    let mut wrong = files.clone();
    wrong.swap(0, 1);
    assert_broken_at("rotated files out of order", &wrong, &[], &[], &wrong[1], 1);
    // A rotated file missing from the middle breaks the chain too.
    let mut missing = files.clone();
    missing.remove(1);
    assert_broken_at(
        "a rotated file left out",
        &missing,
        &[],
        &[],
        &missing[1],
        1,
    );
}

// ---------------------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn signed_checkpoints_catch_a_rewritten_chain() {
    let log = write_log(
        5,
        ", checkpoint: { every: 5, key_env: AUDIT_HMAC_KEY }",
        &[("AUDIT_HMAC_KEY", HMAC_KEY)],
    )
    .await;
    let live = log.live();
    let lines = lines_of(&live);
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"event\":\"checkpoint\""))
        .collect();
    assert!(
        cps.len() >= 3,
        "every: 5 over {} lines should leave several checkpoints: {cps:?}",
        lines.len()
    );
    for &i in &cps {
        let v: Value = serde_json::from_str(&lines[i]).unwrap();
        assert_eq!(v["head"], v["prev"], "checkpoint {v}");
        assert!(
            v["hmac"].as_str().is_some_and(|h| h.len() == 64),
            "checkpoint hmac: {v}"
        );
        assert!(!lines[i].contains(HMAC_KEY), "the key is in the log");
    }
    let key_env = [("AUDIT_HMAC_KEY", HMAC_KEY)];
    assert_verifies("with the key", std::slice::from_ref(&live), &[], &key_env);
    assert_verifies(
        "with the key from another variable",
        std::slice::from_ref(&live),
        &["--key-env", "MY_AUDIT_KEY"],
        &[("MY_AUDIT_KEY", HMAC_KEY)],
    );
    assert_broken_at(
        "with the wrong key",
        std::slice::from_ref(&live),
        &[],
        &[("AUDIT_HMAC_KEY", "not-the-key")],
        &live,
        cps[0] + 1,
    );

    // Rewrite: a deny before the first checkpoint becomes an allow, and every later line
    // is re-sealed with a recomputed chain (checkpoint heads included) — without the key.
    let work = tempfile::tempdir().unwrap();
    let k = index_where(&lines, 0, |v| v["decision"] == "deny");
    assert!(k < cps[0], "a deny before the first checkpoint");
    let mut rewritten = lines.clone();
    rewritten[k] = rewritten[k].replacen("\"decision\":\"deny\"", "\"decision\":\"allow\"", 1);
    reseal_from(&mut rewritten, k);
    let f = work.path().join("rewritten.jsonl");
    write_lines(&f, &rewritten);
    // The rewrite is consistent as a plain chain (so only the signatures can catch it)...
    assert_verifies(
        "a rewritten chain without the key",
        std::slice::from_ref(&f),
        &[],
        &[],
    );
    // ...and the key catches it at the first checkpoint after the edit.
    assert_broken_at(
        "a rewritten chain with the key",
        std::slice::from_ref(&f),
        &[],
        &key_env,
        &f,
        cps[0] + 1,
    );
}

// ---------------------------------------------------------------------------------------
// tail
// ---------------------------------------------------------------------------------------

/// The data rows of `audit tail` output (the header dropped), split on whitespace:
/// [ts, seq, event, agent, method, path, tool, risk, decision, reason, status].
fn rows(stdout: &[u8]) -> Vec<Vec<String>> {
    let text = String::from_utf8_lossy(stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    assert!(header.starts_with("TS"), "tail header: {header:?}");
    lines
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}

fn seqs_where(recs: &[Value], pred: impl Fn(&Value) -> bool) -> Vec<String> {
    recs.iter()
        .filter(|r| pred(r))
        .map(|r| r["seq"].as_u64().unwrap().to_string())
        .collect()
}

fn tail(file: &Path, args: &[&str]) -> Vec<Vec<String>> {
    let mut a = vec!["audit", "tail", file.to_str().unwrap()];
    a.extend_from_slice(args);
    let o = portcullis(&a, &[]);
    assert!(o.status.success(), "tail {args:?}: {}", out_text(&o));
    let rows = rows(&o.stdout);
    for r in &rows {
        assert_eq!(r.len(), 11, "tail row shape: {r:?}");
    }
    rows
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_filters_by_decision_and_agent() {
    let log = write_log(3, "", &[]).await;
    let live = log.live();
    let recs = records_of(&live);

    let all = tail(&live, &[]);
    assert_eq!(
        all.len(),
        recs.len(),
        "tail without filters prints every record"
    );

    let deny = tail(&live, &["--decision", "deny"]);
    assert_eq!(deny.len(), 6, "3 rounds × 2 denies: {deny:?}");
    for r in &deny {
        assert_eq!(r[8], "deny", "--decision deny printed {r:?}");
    }
    let got: Vec<String> = deny.iter().map(|r| r[1].clone()).collect();
    assert_eq!(got, seqs_where(&recs, |r| r["decision"] == "deny"));

    let other = tail(&live, &["--agent", "other"]);
    for r in &other {
        assert_eq!(r[3], "other", "--agent other printed {r:?}");
    }
    let got: Vec<String> = other.iter().map(|r| r[1].clone()).collect();
    assert_eq!(got, seqs_where(&recs, |r| r["agent"] == "other"));
    assert!(other.len() >= 6, "{other:?}");

    let both = tail(&live, &["--agent", "bot", "--decision", "allow"]);
    let got: Vec<String> = both.iter().map(|r| r[1].clone()).collect();
    assert_eq!(
        got,
        seqs_where(&recs, |r| r["agent"] == "bot" && r["decision"] == "allow")
    );
    assert_eq!(both.len(), 3, "{both:?}");
    for r in &both {
        assert_eq!((r[3].as_str(), r[8].as_str()), ("bot", "allow"), "{r:?}");
        assert!(r[5].starts_with("/tickets/"), "{r:?}");
    }
}

/// Kills the `tail --follow` child this test started, by its handle.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn tail_follow_prints_new_records() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let p = Proxy::start(&config(&up.url(), ""), &[]);
    let bot = issue(&p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    let first = call(p.addr, "DELETE", "/tickets/1", &bot).await;
    assert_eq!(first.status, 403);
    let live = p.path(AUDIT);

    let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
        .args([
            "audit",
            "tail",
            live.to_str().unwrap(),
            "--decision",
            "deny",
            "--follow",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn tail --follow");
    let stdout = child.stdout.take().unwrap();
    let _guard = KillOnDrop(child);
    let out = Arc::new(Mutex::new(Vec::<String>::new()));
    let o2 = out.clone();
    std::thread::spawn(move || {
        for l in std::io::BufReader::new(stdout).lines() {
            match l {
                Ok(l) => o2.lock().unwrap().push(l),
                Err(_) => return,
            }
        }
    });
    let has_seq = |seq: u64| {
        let out = out.clone();
        move || {
            out.lock().unwrap().iter().any(|l| {
                l.split_whitespace().nth(1) == Some(seq.to_string().as_str()) && l.contains("deny")
            })
        }
    };
    let seq_of = |id: &str| {
        audit_support::with_request_id(&live, id)[0]["seq"]
            .as_u64()
            .unwrap()
    };
    let s1 = seq_of(first.header("x-request-id").unwrap());
    assert!(
        common::poll_until_async(Duration::from_secs(10), has_seq(s1)).await,
        "tail --follow did not print the existing deny: {:?}",
        out.lock().unwrap()
    );
    // A new deny (durable: on disk when the response arrives) and a new allow.
    let second = call(p.addr, "DELETE", "/tickets/2", &bot).await;
    assert_eq!(second.status, 403);
    let allow = call(p.addr, "GET", "/tickets/2", &bot).await;
    assert_eq!(allow.status, 200);
    let s2 = seq_of(second.header("x-request-id").unwrap());
    assert!(
        common::poll_until_async(Duration::from_secs(10), has_seq(s2)).await,
        "tail --follow did not print the new deny (seq {s2}): {:?}",
        out.lock().unwrap()
    );
    let allow_rec =
        audit_support::wait_request_record(&live, allow.header("x-request-id").unwrap()).await;
    let third = call(p.addr, "DELETE", "/tickets/3", &bot).await;
    let s3 = seq_of(third.header("x-request-id").unwrap());
    assert!(
        common::poll_until_async(Duration::from_secs(10), has_seq(s3)).await,
        "tail --follow did not print the third deny: {:?}",
        out.lock().unwrap()
    );
    let allow_seq = allow_rec["seq"].as_u64().unwrap().to_string();
    assert!(
        !out.lock()
            .unwrap()
            .iter()
            .any(|l| l.split_whitespace().nth(1) == Some(allow_seq.as_str())),
        "--decision deny --follow printed the allow: {:?}",
        out.lock().unwrap()
    );
}
