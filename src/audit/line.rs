//! An audit record's JSON line, written by hand: byte for byte what serde_json writes
//! for `{seq, ts, node, <the record's fields>, prev}` (same order, nulls, skipped
//! fields, escapes), without serde's flattened-map path, and with strings that need no
//! escape (nearly all: ids, names, paths) copied whole after one branch-free scan.
//! A string that does need an escape, and the rare nested `signal`, are handed to
//! serde_json itself. The tests compare the two writers on hostile strings.

use super::Record;
use std::io::Write;

/// Appends the line (without the chain's `hash` and without the newline) to `out`.
pub(crate) fn write(
    out: &mut Vec<u8>,
    seq: u64,
    ts: &impl std::fmt::Display,
    node: &str,
    rec: &Record,
    prev: &str,
) {
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
    let _ = write!(out, "{ts}");
    out.extend_from_slice(b"\",\"node\":");
    string(out, node);
    out.extend_from_slice(b",\"event\":");
    string(out, event);
    opt_str(out, "request_id", request_id.as_deref());
    opt_str(out, "agent", agent.as_deref());
    opt_str(out, "credential", credential.as_deref());
    opt_str(out, "tenant", tenant.as_deref());
    opt_str(out, "remote_addr", remote_addr.as_deref());
    opt_str(out, "method", method.as_deref());
    opt_str(out, "path", path.as_deref());
    opt_str(out, "tool", tool.as_deref());
    opt_str(out, "risk", risk.as_deref());
    opt_str(out, "decision", decision.as_deref());
    opt_str(out, "reason", reason.as_deref());
    opt_str(out, "policy_version", policy_version.as_deref());
    opt_str(out, "body_sha256", body_sha256.as_deref());
    opt_str(out, "approval_id", approval_id.as_deref());
    opt_str(out, "operator", operator.as_deref());
    opt_num(out, "status", status.map(u64::from));
    opt_num(out, "upstream_status", upstream_status.map(u64::from));
    opt_num(out, "duration_us", *duration_us);
    opt_str(out, "comment", comment.as_deref());
    opt_str(out, "old_policy_version", old_policy_version.as_deref());
    // From here on a field is left out when it is absent.
    if let Some(t) = truncated {
        key(out, "truncated");
        out.extend_from_slice(if *t { b"true" } else { b"false" });
    }
    if let Some(v) = via {
        key(out, "via");
        string(out, v);
    }
    some_str(out, "jsonrpc_id", jsonrpc_id.as_deref());
    some_str(out, "condition", condition.as_deref());
    if let Some(n) = count {
        key(out, "count");
        num(out, *n);
    }
    some_str(out, "first_request_id", first_request_id.as_deref());
    some_str(out, "last_request_id", last_request_id.as_deref());
    some_str(out, "rationale", rationale.as_deref());
    if let Some(s) = signal {
        key(out, "signal");
        serde_json::to_writer(&mut *out, s).expect("signal evidence serialises");
    }
    out.extend_from_slice(b",\"prev\":");
    string(out, prev);
    out.push(b'}');
}

/// `,"name":` — every key is a fixed identifier with nothing to escape.
fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A field serde writes as `null` when absent.
fn opt_str(out: &mut Vec<u8>, name: &str, v: Option<&str>) {
    key(out, name);
    match v {
        Some(s) => string(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

fn opt_num(out: &mut Vec<u8>, name: &str, v: Option<u64>) {
    key(out, name);
    match v {
        Some(n) => num(out, n),
        None => out.extend_from_slice(b"null"),
    }
}

/// A field serde leaves out when absent.
fn some_str(out: &mut Vec<u8>, name: &str, v: Option<&str>) {
    if let Some(s) = v {
        key(out, name);
        string(out, s);
    }
}

/// A JSON string. serde_json escapes exactly `"`, `\` and the bytes below 0x20; a
/// string without them is copied as it is (UTF-8 is written unescaped either way).
fn string(out: &mut Vec<u8>, s: &str) {
    // No early exit: the fold compiles to a vector loop.
    let escape = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        serde_json::to_writer(&mut *out, s).expect("strings serialise");
    } else {
        out.reserve(s.len() + 2);
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    }
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
        write(&mut ours, 18_446_744_073_709_551_615, &ts, node, rec, prev);
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
        v
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
