//! `portcullis audit verify` and `audit tail` on logs the real proxy wrote: verify passes
//! on a real log and names `file:line` of the first broken link for an edited field, a
//! re-sealed edited line, a deleted line, swapped lines, a cut-out middle and a file from
//! another chain spliced in; rotation keeps the chain across files; signed checkpoints
//! catch a chain rewritten without the key; a cut head, an emptied trail and a moved
//! checkpoint are refused (`--from-seq/--from-hash` and `--allow-empty` as the way out);
//! the chain continues across a restart and after a crash that tore the last line (cut
//! at start; verify fails on the torn file and passes after); `tail` filters by decision
//! and agent and follows new records.

use crate::common;
use crate::support::audit as audit_support;

use crate::common::{Behaviour, Head, Proxy, Upstream};
use crate::support::admin::{call, issue};
use crate::support::audit::{chain_files, lines_of, out_text, portcullis, records_of, verify};
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
        r#"{head}upstreams:
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
{no_signals}"#,
        no_signals = crate::common::NO_SIGNALS,
        head = Head::new()
            .node("verify-node")
            .audit(&format!("{{ path: {AUDIT}{audit_extra} }}")),
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
/// someone rewriting the chain without the HMAC key would. The first line keeps its `prev`.
fn reseal_from(lines: &mut [String], from: usize) {
    for i in from..lines.len() {
        let prev = if i == 0 {
            json_of(&lines[0])["prev"].as_str().unwrap().to_string()
        } else {
            hash_of_line(&lines[i - 1])
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

/// The `hash` a sealed line ends with.
fn hash_of_line(l: &str) -> String {
    l[l.len() - 66..l.len() - 2].to_string()
}

fn json_of(l: &str) -> Value {
    serde_json::from_str(l).unwrap()
}

fn seq_of_line(l: &str) -> u64 {
    json_of(l)["seq"].as_u64().unwrap()
}

/// Gives the lines from `from` on consecutive seqs starting at `first` (every line starts
/// `{"seq":N,`); they still need re-sealing.
fn renumber_from(lines: &mut [String], from: usize, first: u64) {
    for (n, i) in (from..lines.len()).enumerate() {
        let rest = &lines[i][lines[i].find(',').unwrap()..];
        lines[i] = format!("{{\"seq\":{}{rest}", first + n as u64);
    }
}

/// The combined stdout and stderr of a verify run.
fn said(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
    // Out of order, the chain breaks at the first line: it does not start at seq 1.
    let mut wrong = files.clone();
    wrong.swap(0, 1);
    assert_broken_at("rotated files out of order", &wrong, &[], &[], &wrong[0], 1);
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
    // The oldest file deleted (retention): a cut head, unless the caller names where the
    // rest starts, from the deleted file's last record.
    let rest = &files[1..];
    assert_broken_at("the oldest file deleted", rest, &[], &[], &rest[0], 1);
    let oldest = lines_of(&files[0]);
    let from = audit_support::continue_from(&files[0]);
    let from: Vec<&str> = from.iter().map(String::as_str).collect();
    let out = assert_verifies(
        "the oldest file deleted, started from its last record",
        rest,
        &from,
        &[],
    );
    assert!(
        out.contains(&format!("{} records", total - oldest.len())),
        "{out}"
    );
}

// ---------------------------------------------------------------------------------------
// Restarts and a torn last line
// ---------------------------------------------------------------------------------------

/// One proxy on the trail at `trail` (outside its own temp dir, so restarts share it).
fn on_trail(url: &str, trail: &Path) -> Proxy {
    let own = format!("audit: {{ path: {AUDIT} }}");
    let cfg = config(url, "");
    assert!(cfg.contains(&own), "the config changed shape");
    Proxy::start(
        &cfg.replace(&own, &format!("audit: {{ path: \"{}\" }}", trail.display())),
        &[],
    )
}

/// An allowed and a denied request with a fresh credential; waits until both records
/// (and the token's) are in `trail`; returns their request ids.
async fn traffic(p: &Proxy, trail: &Path, n: usize) -> Vec<String> {
    let bot = issue(p, json!({"agent": "bot", "ttl": "1h"})).await.token;
    let mut ids = Vec::new();
    for i in 0..n {
        for (method, want) in [("GET", 200), ("DELETE", 403)] {
            let r = call(p.addr, method, &format!("/tickets/{i}"), &bot).await;
            assert_eq!(r.status, want, "{method} /tickets/{i}: {}", r.text());
            ids.push(r.header("x-request-id").unwrap().to_string());
        }
    }
    let all = || {
        let recs = records_of(trail);
        ids.iter()
            .all(|id| recs.iter().any(|r| r["request_id"].as_str() == Some(id)))
    };
    assert!(
        common::poll_until_async(audit_support::RECORD_BOUND, all).await,
        "not every request was recorded in {}",
        trail.display()
    );
    ids
}

/// The record of request `id` in `recs` (exactly one).
fn record_of<'a>(recs: &'a [Value], id: &str) -> &'a Value {
    let found: Vec<&Value> = recs
        .iter()
        .filter(|r| r["request_id"].as_str() == Some(id))
        .collect();
    assert_eq!(found.len(), 1, "records of request {id}: {found:#?}");
    found[0]
}

/// The chain goes on across a graceful restart and across a crash that tore the last
/// line: the restarted writer cuts the torn tail, continues with the next seq and links
/// to the last whole record, and `audit verify` passes on the file — while on the torn
/// file it fails, naming the torn line.
#[tokio::test(flavor = "multi_thread")]
async fn the_chain_continues_across_a_restart_and_a_torn_last_line() {
    let up = Upstream::start(Behaviour::Fixed).await;
    let shared = tempfile::tempdir().expect("tempdir");
    let trail = shared.path().join("audit.jsonl");

    // First process, stopped gracefully.
    let mut p = on_trail(&up.url(), &trail);
    traffic(&p, &trail, 3).await;
    assert!(
        p.terminate(Duration::from_secs(20)).await.is_some(),
        "the first proxy did not stop"
    );
    let before = records_of(&trail);
    let last = before.last().expect("records").clone();
    assert_verifies(
        "after the first process",
        std::slice::from_ref(&trail),
        &[],
        &[],
    );

    // Second process: same chain, next seq, linked to the last record.
    let mut p = on_trail(&up.url(), &trail);
    let ids = traffic(&p, &trail, 3).await;
    let after = records_of(&trail);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "the restart changed what was already written"
    );
    let first_new = &after[before.len()];
    assert_eq!(
        first_new["seq"].as_u64(),
        last["seq"].as_u64().map(|n| n + 1),
        "seq after the restart: {first_new}"
    );
    assert_eq!(
        first_new["prev"], last["hash"],
        "the first record after the restart links to the last one before it"
    );
    let out = assert_verifies(
        "across a graceful restart",
        std::slice::from_ref(&trail),
        &[],
        &[],
    );
    assert!(
        out.contains(&format!("{} records", after.len())),
        "verify counts every record ({}): {out}",
        after.len()
    );
    // Every record of the second process's requests is durable: kill it, then tear its
    // last line as a crash in the middle of a write would.
    let _ = record_of(&after, ids.last().unwrap());
    common_kill(&mut p).await;
    let bytes = std::fs::read(&trail).unwrap();
    assert!(bytes.ends_with(b"\n"));
    let last_start = bytes[..bytes.len() - 1]
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let torn_len = last_start + (bytes.len() - last_start) / 2;
    std::fs::write(&trail, &bytes[..torn_len]).unwrap();
    let whole = lines_of(&trail);
    assert_eq!(whole.len(), after.len() - 1, "the torn line is not whole");
    let kept = records_of(&trail);
    let last_whole = kept.last().unwrap().clone();

    // On the torn file, verify fails at the torn line.
    assert_broken_at(
        "a torn last line",
        std::slice::from_ref(&trail),
        &[],
        &[],
        &trail,
        after.len(),
    );

    // Third process: cuts the torn tail and goes on from the last whole record.
    let mut p = on_trail(&up.url(), &trail);
    assert!(
        p.wait_for_log("torn line", Duration::from_secs(5)).await,
        "the restart did not report the torn line; log:\n{}",
        p.logs()
    );
    let ids = traffic(&p, &trail, 2).await;
    assert!(
        p.terminate(Duration::from_secs(20)).await.is_some(),
        "the third proxy did not stop"
    );
    let now = std::fs::read(&trail).unwrap();
    assert_eq!(
        &now[..last_start],
        &bytes[..last_start],
        "the whole records before the torn line changed"
    );
    let recs = records_of(&trail);
    assert_eq!(
        lines_of(&trail).len(),
        now.iter().filter(|&&b| b == b'\n').count(),
        "a line that is not whole is left in the file"
    );
    let resumed = &recs[kept.len()];
    assert_eq!(
        resumed["seq"].as_u64(),
        last_whole["seq"].as_u64().map(|n| n + 1),
        "the torn record's seq is taken by the next whole record: {resumed}"
    );
    assert_eq!(
        resumed["prev"], last_whole["hash"],
        "the first record after the torn line links to the last whole record"
    );
    let _ = record_of(&recs, ids.last().unwrap());
    let out = assert_verifies(
        "after the torn line was cut",
        std::slice::from_ref(&trail),
        &[],
        &[],
    );
    let last_seq = recs.last().unwrap()["seq"].as_u64().unwrap();
    assert!(
        out.contains(&format!("{} records", recs.len()))
            && out.contains(&format!("last seq {last_seq}")),
        "verify covers the whole chain ({} records, last seq {last_seq}): {out}",
        recs.len()
    );
}

/// SIGKILL to the proxy; waits (bounded) until it is gone.
async fn common_kill(p: &mut Proxy) {
    // SAFETY: `kill` on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(p.pid() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill(SIGKILL) failed");
    assert!(
        p.wait_exit(Duration::from_secs(20)).await.is_some(),
        "the proxy survived SIGKILL"
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
// Cut head, empty trail, moved checkpoint (issue 11, class 10)
// ---------------------------------------------------------------------------------------

const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

fn checkpoint_log_env() -> [(&'static str, &'static str); 1] {
    [("AUDIT_HMAC_KEY", HMAC_KEY)]
}

async fn checkpoint_log() -> (Log, Vec<String>, Vec<usize>) {
    let log = write_log(
        5,
        ", checkpoint: { every: 5, key_env: AUDIT_HMAC_KEY }",
        &checkpoint_log_env(),
    )
    .await;
    let lines = lines_of(&log.live());
    let cps: Vec<usize> = (0..lines.len())
        .filter(|&i| lines[i].contains("\"event\":\"checkpoint\""))
        .collect();
    assert!(cps.len() >= 3, "several checkpoints: {cps:?}");
    (log, lines, cps)
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_refuses_cut_head() {
    let (_log, lines, cps) = checkpoint_log().await;
    let key = checkpoint_log_env();
    let work = tempfile::tempdir().unwrap();
    let case = |name: &str, lines: &[String]| -> PathBuf {
        let p = work.path().join(name);
        write_lines(&p, lines);
        p
    };
    let full = case("full.jsonl", &lines);
    assert_verifies("the whole log", std::slice::from_ref(&full), &[], &[]);
    assert_verifies(
        "the whole log, keyed",
        std::slice::from_ref(&full),
        &[],
        &key,
    );

    // The first N lines deleted, with and without the key: broken at line 1, and the
    // message says where a chain must start and what it found.
    for n in [1, 3, cps[0], cps[0] + 1] {
        let f = case(&format!("cut-{n}.jsonl"), &lines[n..]);
        for env in [&[][..], &key[..]] {
            let what = format!("first {n} lines deleted (key: {})", !env.is_empty());
            assert_broken_at(&what, std::slice::from_ref(&f), &[], env, &f, 1);
            let msg = said(&verify(std::slice::from_ref(&f), &[], env));
            assert!(
                msg.contains("cut head")
                    && msg.contains(&format!("seq 1 with prev {GENESIS}"))
                    && msg.contains(&format!("found seq {}", n + 1)),
                "{what}: {msg}"
            );
        }
    }

    // The right start, from the record before the cut (or a checkpoint): verifies.
    let n = 3;
    let cut = case("cut.jsonl", &lines[n..]);
    let (seq, hash) = ((n + 1).to_string(), hash_of_line(&lines[n - 1]));
    let out = assert_verifies(
        "cut head with the right --from-seq/--from-hash",
        std::slice::from_ref(&cut),
        &["--from-seq", &seq, "--from-hash", &hash],
        &key,
    );
    let last = lines.last().unwrap();
    assert!(
        out.contains(&format!("last seq {}", seq_of_line(last)))
            && out.contains(&format!(
                "--from-seq {} --from-hash {}",
                seq_of_line(last) + 1,
                hash_of_line(last)
            )),
        "verify prints where a continuation starts: {out}"
    );
    // Upper-case hex is the same hash.
    assert_verifies(
        "--from-hash in upper case",
        std::slice::from_ref(&cut),
        &["--from-seq", &seq, "--from-hash", &hash.to_uppercase()],
        &[],
    );
    // Starting at a trusted checkpoint: its seq and its head.
    let cp = json_of(&lines[cps[0]]);
    let at_cp = case("at-checkpoint.jsonl", &lines[cps[0]..]);
    assert_verifies(
        "starting at a checkpoint, --from-hash its head",
        std::slice::from_ref(&at_cp),
        &[
            "--from-seq",
            &cp["seq"].to_string(),
            "--from-hash",
            cp["head"].as_str().unwrap(),
        ],
        &key,
    );
    // Starting right after it: the next seq and the checkpoint's own hash.
    let after_cp = case("after-checkpoint.jsonl", &lines[cps[0] + 1..]);
    assert_verifies(
        "starting after a checkpoint, --from-hash its hash",
        std::slice::from_ref(&after_cp),
        &[
            "--from-seq",
            &(cp["seq"].as_u64().unwrap() + 1).to_string(),
            "--from-hash",
            &hash_of_line(&lines[cps[0]]),
        ],
        &key,
    );

    // A wrong hash, a wrong seq, or a claimed start the whole file does not begin at.
    let wrong_hash = hash_of_line(&lines[n - 2]);
    let o = verify(
        std::slice::from_ref(&cut),
        &["--from-seq", &seq, "--from-hash", &wrong_hash],
        &[],
    );
    assert_broken_at(
        "--from-hash of the wrong record",
        std::slice::from_ref(&cut),
        &["--from-seq", &seq, "--from-hash", &wrong_hash],
        &[],
        &cut,
        1,
    );
    let msg = said(&o);
    assert!(
        msg.contains(&format!("expected seq {seq} with prev {wrong_hash}"))
            && msg.contains(&format!("found seq {seq} with prev {hash}")),
        "the message says what was expected and found: {msg}"
    );
    assert_broken_at(
        "--from-seq off by one",
        std::slice::from_ref(&cut),
        &["--from-seq", &(n + 2).to_string(), "--from-hash", &hash],
        &[],
        &cut,
        1,
    );
    assert_broken_at(
        "a whole log given a later start",
        std::slice::from_ref(&full),
        &["--from-seq", "2", "--from-hash", &hash_of_line(&lines[0])],
        &[],
        &full,
        1,
    );
    // A later break is still found after a named start.
    let mut cut_gap = lines[n..].to_vec();
    cut_gap.remove(4);
    let f = case("cut-gap.jsonl", &cut_gap);
    assert_broken_at(
        "a deleted line after a named start",
        std::slice::from_ref(&f),
        &["--from-seq", &seq, "--from-hash", &hash],
        &[],
        &f,
        5,
    );

    // A cut head re-sealed as a fresh chain from genesis passes without the key (nothing
    // to compare against) and fails with it at the first checkpoint.
    let mut fresh = lines[n..].to_vec();
    renumber_from(&mut fresh, 0, 1);
    fresh[0] = fresh[0].replacen(&hash_of_line(&lines[n - 1]), GENESIS, 1);
    reseal_from(&mut fresh, 0);
    let f = case("fresh.jsonl", &fresh);
    assert_verifies(
        "a cut head re-sealed from genesis, no key",
        std::slice::from_ref(&f),
        &[],
        &[],
    );
    assert_broken_at(
        "a cut head re-sealed from genesis, keyed",
        std::slice::from_ref(&f),
        &[],
        &key,
        &f,
        cps[0] - n + 1,
    );

    // Usage: both flags or neither, a seq of at least 1, a 64-hex hash (exit 2).
    for args in [
        &["--from-seq", "4"][..],
        &["--from-hash", &hash][..],
        &["--from-seq", "0", "--from-hash", &hash][..],
        &["--from-seq", "4", "--from-hash", "abc"][..],
    ] {
        let o = verify(std::slice::from_ref(&cut), args, &[]);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", out_text(&o));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_refuses_empty_trail() {
    let work = tempfile::tempdir().unwrap();
    let empty = work.path().join("audit.jsonl");
    std::fs::write(&empty, "").unwrap();
    let o = verify(std::slice::from_ref(&empty), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "an empty file: {}", out_text(&o));
    let msg = said(&o);
    assert!(
        msg.contains(&empty.display().to_string())
            && msg.contains("no audit records")
            && msg.contains("--allow-empty"),
        "the message names the file and the way out: {msg}"
    );
    // With the key too: nothing to check is not a pass.
    let o = verify(std::slice::from_ref(&empty), &[], &checkpoint_log_env());
    assert_eq!(o.status.code(), Some(1), "keyed: {}", out_text(&o));
    // Several files, none with a record.
    let empty2 = work.path().join("audit.jsonl.000000000009");
    std::fs::write(&empty2, "").unwrap();
    let o = verify(&[empty2.clone(), empty.clone()], &[], &[]);
    assert_eq!(
        o.status.code(),
        Some(1),
        "two empty files: {}",
        out_text(&o)
    );

    let out = assert_verifies(
        "--allow-empty",
        std::slice::from_ref(&empty),
        &["--allow-empty"],
        &[],
    );
    assert!(out.contains("ok: 0 records"), "{out}");
    let h = "ab".repeat(32);
    let out = assert_verifies(
        "--allow-empty after a named start",
        &[empty2, empty.clone()],
        &["--allow-empty", "--from-seq", "42", "--from-hash", &h],
        &[],
    );
    assert!(
        out.contains(&format!("last seq 41, head {h}")),
        "nothing read: the start is the head: {out}"
    );

    // A real log emptied, and a real log followed by an empty live file (just rotated).
    let log = write_log(1, "", &[]).await;
    let live = log.live();
    let lines = lines_of(&live);
    assert!(!lines.is_empty());
    let full = work.path().join("full.jsonl");
    write_lines(&full, &lines);
    assert_verifies(
        "a log followed by an empty file",
        &[full, empty.clone()],
        &[],
        &[],
    );
    std::fs::write(&live, "").unwrap();
    let o = verify(std::slice::from_ref(&live), &[], &[]);
    assert_eq!(o.status.code(), Some(1), "emptied log: {}", out_text(&o));
}

#[tokio::test(flavor = "multi_thread")]
async fn audit_verify_refuses_moved_checkpoint() {
    let (_log, lines, cps) = checkpoint_log().await;
    let key = checkpoint_log_env();
    let work = tempfile::tempdir().unwrap();
    let case = |name: &str, lines: &[String]| -> PathBuf {
        let p = work.path().join(name);
        write_lines(&p, lines);
        p
    };

    // The first checkpoint moved two records later, the chain renumbered and re-sealed
    // without the key: consistent as a chain, refused with the key where it now sits.
    let c = cps[0];
    let mut moved = lines.clone();
    let cp = moved.remove(c);
    moved.insert(c + 2, cp);
    renumber_from(&mut moved, c, c as u64 + 1);
    reseal_from(&mut moved, c);
    let f = case("moved.jsonl", &moved);
    assert_verifies(
        "a moved checkpoint, no key",
        std::slice::from_ref(&f),
        &[],
        &[],
    );
    assert_broken_at(
        "a moved checkpoint, keyed",
        std::slice::from_ref(&f),
        &[],
        &key,
        &f,
        c + 3,
    );
    let msg = said(&verify(std::slice::from_ref(&f), &[], &key));
    assert!(msg.contains("checkpoint signature invalid"), "{msg}");

    // Only the seq changed: a file starting at the second checkpoint, renumbered 3 later,
    // its head (a hash the caller trusts) kept. The head alone would still match; the
    // signed seq does not.
    let c = cps[1];
    let cp = json_of(&lines[c]);
    let (seq, head) = (cp["seq"].as_u64().unwrap(), cp["head"].as_str().unwrap());
    let from_here = case("from-checkpoint.jsonl", &lines[c..]);
    assert_verifies(
        "from the checkpoint at its own seq",
        std::slice::from_ref(&from_here),
        &["--from-seq", &seq.to_string(), "--from-hash", head],
        &key,
    );
    // Up to the next checkpoint only, so no later signature is what catches it.
    let mut shifted = lines[c..cps[2]].to_vec();
    renumber_from(&mut shifted, 0, seq + 3);
    reseal_from(&mut shifted, 0);
    assert_eq!(json_of(&shifted[0])["head"], head, "head kept");
    assert_eq!(json_of(&shifted[0])["hmac"], cp["hmac"], "signature kept");
    let f = case("shifted.jsonl", &shifted);
    let args = ["--from-seq", &(seq + 3).to_string(), "--from-hash", head];
    assert_verifies(
        "a checkpoint at another seq, no key",
        std::slice::from_ref(&f),
        &args,
        &[],
    );
    assert_broken_at(
        "a checkpoint at another seq, keyed",
        std::slice::from_ref(&f),
        &args,
        &key,
        &f,
        1,
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
        // TS SEQ EVENT AGENT OPERATOR TOOL RISK DEC REASON STATUS, then METHOD PATH.
        assert_eq!(r.len(), 12, "tail row shape: {r:?}");
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
        assert_eq!(r[7], "deny", "--decision deny printed {r:?}");
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
        assert_eq!((r[3].as_str(), r[7].as_str()), ("bot", "allow"), "{r:?}");
        assert!(r[11].starts_with("/tickets/"), "{r:?}");
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
