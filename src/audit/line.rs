//! An audit record's JSON line, written by hand: byte for byte what serde_json writes
//! for `{seq, ts, node, <the record's fields>, prev}` (same order, nulls, skipped
//! fields, escapes), without serde's flattened-map path, and with strings that need no
//! escape (nearly all: ids, names, paths) copied whole after one branch-free scan.
//! A string that does need an escape, and the rare nested `signal`, are handed to
//! serde_json itself. The tests compare the two writers on hostile strings.

use super::Record;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The record's time as humantime's `format_rfc3339_micros` writes it
/// (`2026-12-01T04:05:06.123456Z`), with the date and time of day worked out once per
/// second instead of once per record.
pub(crate) struct Stamp {
    sec: u64,
    text: [u8; 27],
    /// Where the fixed layout does not hold (before 1970, after 9999): humantime's own
    /// text, which fails there as it did before this cache.
    other: String,
}

impl Stamp {
    pub(crate) fn new() -> Stamp {
        Stamp {
            sec: u64::MAX,
            text: *b"1970-01-01T00:00:00.000000Z",
            other: String::new(),
        }
    }

    pub(crate) fn at(&mut self, t: SystemTime) -> &str {
        let Ok(d) = t.duration_since(UNIX_EPOCH) else {
            self.other = humantime::format_rfc3339_micros(t).to_string();
            return &self.other;
        };
        if d.as_secs() != self.sec {
            let whole =
                humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(d.as_secs()))
                    .to_string();
            if whole.len() != 20 {
                self.other = humantime::format_rfc3339_micros(t).to_string();
                return &self.other;
            }
            self.text[..19].copy_from_slice(&whole.as_bytes()[..19]);
            self.sec = d.as_secs();
        }
        let mut us = d.subsec_micros();
        for digit in self.text[20..26].iter_mut().rev() {
            *digit = b'0' + (us % 10) as u8;
            us /= 10;
        }
        std::str::from_utf8(&self.text).expect("the stamp is ASCII")
    }
}

/// Appends the line (without the chain's `hash` and without the newline) to `out`.
pub(crate) fn write(out: &mut Vec<u8>, seq: u64, ts: &str, node: &str, rec: &Record, prev: &str) {
    // Exhaustive on purpose: a field added to `Record` does not compile here until it
    // is written (the order below is the struct's, which is serde's).
    let Record {
        event,
        request_id,
        agent,
        credential,
        tenant,
        remote_addr,
        method,
        path,
        tool,
        risk,
        decision,
        reason,
        policy_version,
        body_sha256,
        approval_id,
        operator,
        status,
        upstream_status,
        duration_us,
        comment,
        old_policy_version,
        truncated,
        via,
        jsonrpc_id,
        condition,
        count,
        first_request_id,
        last_request_id,
        rationale,
        signal,
    } = rec;
    out.extend_from_slice(b"{\"seq\":");
    num(out, seq);
    // An RFC 3339 timestamp has nothing to escape.
    out.extend_from_slice(b",\"ts\":\"");
    out.extend_from_slice(ts.as_bytes());
    out.extend_from_slice(b"\",\"node\":");
    string(out, node);
    out.extend_from_slice(b",\"event\":");
    string(out, event);
    opt_str(out, b",\"request_id\":", request_id.as_deref());
    opt_str(out, b",\"agent\":", agent.as_deref());
    opt_str(out, b",\"credential\":", credential.as_deref());
    opt_str(out, b",\"tenant\":", tenant.as_deref());
    opt_str(out, b",\"remote_addr\":", remote_addr.as_deref());
    opt_str(out, b",\"method\":", method.as_deref());
    opt_str(out, b",\"path\":", path.as_deref());
    opt_str(out, b",\"tool\":", tool.as_deref());
    opt_str(out, b",\"risk\":", risk.as_deref());
    opt_str(out, b",\"decision\":", decision.as_deref());
    opt_str(out, b",\"reason\":", reason.as_deref());
    opt_str(out, b",\"policy_version\":", policy_version.as_deref());
    opt_str(out, b",\"body_sha256\":", body_sha256.as_deref());
    opt_str(out, b",\"approval_id\":", approval_id.as_deref());
    opt_str(out, b",\"operator\":", operator.as_deref());
    opt_num(out, b",\"status\":", status.map(u64::from));
    opt_num(
        out,
        b",\"upstream_status\":",
        upstream_status.map(u64::from),
    );
    opt_num(out, b",\"duration_us\":", *duration_us);
    opt_str(out, b",\"comment\":", comment.as_deref());
    opt_str(
        out,
        b",\"old_policy_version\":",
        old_policy_version.as_deref(),
    );
    // From here on a field is left out when it is absent.
    if let Some(t) = truncated {
        out.extend_from_slice(b",\"truncated\":");
        out.extend_from_slice(if *t { b"true" } else { b"false" });
    }
    if let Some(v) = via {
        out.extend_from_slice(b",\"via\":");
        string(out, v);
    }
    some_str(out, b",\"jsonrpc_id\":", jsonrpc_id.as_deref());
    some_str(out, b",\"condition\":", condition.as_deref());
    if let Some(n) = count {
        out.extend_from_slice(b",\"count\":");
        num(out, *n);
    }
    some_str(out, b",\"first_request_id\":", first_request_id.as_deref());
    some_str(out, b",\"last_request_id\":", last_request_id.as_deref());
    some_str(out, b",\"rationale\":", rationale.as_deref());
    if let Some(s) = signal {
        out.extend_from_slice(b",\"signal\":");
        serde_json::to_writer(&mut *out, s).expect("signal evidence serialises");
    }
    out.extend_from_slice(b",\"prev\":");
    string(out, prev);
    out.push(b'}');
}

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A field serde writes as `null` when absent. `key` is the whole `,"name":` (a fixed
/// identifier, nothing to escape).
fn opt_str(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    out.extend_from_slice(key);
    match v {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_num(out: &mut Vec<u8>, key: &[u8], v: Option<u64>) {
    out.extend_from_slice(key);
    match v {
        Some(n) => num(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A field serde leaves out when absent.
fn some_str(out: &mut Vec<u8>, key: &[u8], v: Option<&str>) {
    if let Some(s) = v {
        out.extend_from_slice(key);
        string(out, s);
    }
}

/// A JSON string. serde_json escapes exactly `"`, `\` and the bytes below 0x20; a
/// string without them is copied as it is (UTF-8 is written unescaped either way).
fn string(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(&mut *out, s).expect("strings serialise");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
}

/// Whether any byte is one serde_json escapes. Whole 16-byte blocks without an early
/// exit, so the compiler turns each into a few vector compares.
fn needs_escape(b: &[u8]) -> bool {
    let hit = |x: u8| (x < 0x20) | (x == b'"') | (x == b'\\');
    let mut blocks = b.chunks_exact(16);
    let mut any = false;
    for block in &mut blocks {
        any |= block.iter().fold(false, |e, &x| e | hit(x));
    }
    any | blocks.remainder().iter().fold(false, |e, &x| e | hit(x))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::SignalEvidence;
    use serde::Serialize;
    use std::borrow::Cow;

    /// The line as serde writes it: the reference the hand-written one must equal.
    #[derive(Serialize)]
    struct Reference<'a> {
        seq: u64,
        ts: &'a str,
        node: &'a str,
        #[serde(flatten)]
        rec: &'a Record,
        prev: &'a str,
    }

    fn both(rec: &Record, node: &str, prev: &str) -> (String, String) {
        let ts = "2026-12-01T04:05:06.123456Z";
        let mut ours = Vec::new();
        write(&mut ours, 18_446_744_073_709_551_615, ts, node, rec, prev);
        let theirs = serde_json::to_vec(&Reference {
            seq: u64::MAX,
            ts,
            node,
            rec,
            prev,
        })
        .unwrap();
        (
            String::from_utf8(ours).unwrap(),
            String::from_utf8(theirs).unwrap(),
        )
    }

    fn full(s: &str) -> Record {
        let o = || Some(s.to_string());
        Record {
            event: "request",
            request_id: o(),
            agent: o(),
            credential: o(),
            tenant: o(),
            remote_addr: o(),
            method: Some(Cow::Owned(s.to_string())),
            path: o(),
            tool: o(),
            risk: Some(Cow::Borrowed("high")),
            decision: Some(Cow::Owned(s.to_string())),
            reason: Some(Cow::Owned(s.to_string())),
            policy_version: o(),
            body_sha256: o(),
            approval_id: o(),
            operator: o(),
            status: Some(0),
            upstream_status: Some(u16::MAX),
            duration_us: Some(u64::MAX),
            comment: o(),
            old_policy_version: o(),
            truncated: Some(false),
            via: Some("mcp"),
            jsonrpc_id: o(),
            condition: o(),
            count: Some(0),
            first_request_id: o(),
            last_request_id: o(),
            rationale: o(),
            signal: Some(SignalEvidence {
                id: s.to_string(),
                kind: "refusal_burst".into(),
                window: None,
                observed: 0.1 + 0.2,
                threshold: f64::NAN,
                baseline: Some(-1e300),
                action: s.to_string(),
                brake: "pause".into(),
            }),
        }
    }

    /// Every byte serde escapes, the ones it does not (DEL, non-ASCII, U+2028), and a
    /// string long enough for the vector loop's tail to matter.
    fn hostile() -> Vec<String> {
        let mut v: Vec<String> = (0u8..0x20).map(|b| format!("a{}b", b as char)).collect();
        v.extend(
            [
                "",
                "\"",
                "\\",
                "\\\"",
                "</script>",
                "\u{7f}",
                "é∂😀",
                "\u{2028}\u{2029}",
                "/api/items/1?q=\"x\"&y=\\n",
                "{\"hash\":\"forged\"}\n{\"seq\":1}",
            ]
            .map(String::from),
        );
        v.push("x".repeat(1000) + "\n" + &"y".repeat(33));
        v.push("z".repeat(1031));
        // An escape in the last whole block, and one in the bytes after the blocks.
        v.push("q".repeat(15) + "\"" + &"q".repeat(16));
        v.push("q".repeat(16) + "\\");
        v
    }

    #[test]
    fn the_stamp_is_humantimes_text_across_seconds_days_and_leap_years() {
        let mut stamp = Stamp::new();
        let at = |s: u64, us: u32| UNIX_EPOCH + Duration::new(s, us * 1000);
        let mut times = vec![
            at(0, 0),
            at(0, 999_999),
            at(951_782_400, 1),           // 2000-02-29, a leap day
            at(1_709_164_799, 5),         // 2024-02-28T23:59:59
            at(1_709_164_800, 0),         // 2024-02-29
            at(4_107_542_399, 10),        // 2100-02-28T23:59:59 (2100 is no leap year)
            at(4_107_542_400, 0),         // 2100-03-01
            at(253_402_300_799, 999_999), // 9999-12-31T23:59:59, humantime's last
        ];
        // Many records in one second (the cached date), then the next second.
        let base = 1_764_561_906;
        times.extend((0..50).map(|i| at(base, i * 20_011)));
        times.extend((0..3).map(|i| at(base + 1, i)));
        times.push(at(base, 7)); // back in time (a clock step): recomputed
        for t in times {
            assert_eq!(
                stamp.at(t),
                humantime::format_rfc3339_micros(t).to_string(),
                "{t:?}"
            );
        }
    }

    #[test]
    fn an_empty_record_is_written_as_serde_writes_it() {
        let (ours, theirs) = both(&Record::default(), "node-a", "0".repeat(64).as_str());
        assert_eq!(ours, theirs);
        assert!(ours.contains("\"request_id\":null"), "{ours}");
        assert!(!ours.contains("\"truncated\""), "{ours}");
    }

    #[test]
    fn every_field_set_to_hostile_text_is_written_as_serde_writes_it() {
        for s in hostile() {
            let (ours, theirs) = both(&full(&s), &s, &s);
            assert_eq!(ours, theirs, "for {s:?}");
            // Still one JSON object on one line whatever the agent sent.
            assert!(!ours.contains('\n'), "{ours}");
            let v: serde_json::Value = serde_json::from_str(&ours).unwrap();
            assert_eq!(v["path"], serde_json::Value::String(s.clone()));
        }
    }

    #[test]
    fn optional_fields_are_left_out_one_at_a_time_as_serde_does() {
        let mut r = full("v");
        r.truncated = Some(true);
        let steps: Vec<fn(&mut Record)> = vec![
            |r| r.truncated = None,
            |r| r.via = None,
            |r| r.jsonrpc_id = None,
            |r| r.condition = None,
            |r| r.count = None,
            |r| r.first_request_id = None,
            |r| r.last_request_id = None,
            |r| r.rationale = None,
            |r| r.signal = None,
            |r| r.status = None,
            |r| r.method = None,
        ];
        for step in steps {
            step(&mut r);
            let (ours, theirs) = both(&r, "n", "p");
            assert_eq!(ours, theirs);
        }
    }
}
