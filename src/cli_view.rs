//! What the CLI prints for approvals: `approvals list` as an aligned table and
//! `approvals show` as the operator page reads (heading, rationale, votes needed,
//! context, change, body, votes, outcome), from the admin API's JSON. Agent text is
//! printed with hidden characters spelled `<U+XXXX>`.

use crate::approval::controls;
use serde_json::Value;

pub(crate) fn spelled(s: &str) -> String {
    controls::visible(s).into_iter().map(|p| p.text).collect()
}

fn s(v: &Value, k: &str) -> String {
    match v.get(k) {
        Some(Value::String(x)) => spelled(x),
        Some(Value::Null) | None => "-".into(),
        Some(x) => x.to_string(),
    }
}

/// Seconds as `45s`, `12m`, `3h`, `2d`.
pub fn short_duration(secs: u64) -> String {
    match secs {
        0..=99 => format!("{secs}s"),
        100..=5999 => format!("{}m", secs / 60),
        6000..=172_799 => format!("{}h", secs / 3600),
        _ => format!("{}d", secs / 86_400),
    }
}

/// Rows under a header, each column as wide as its widest cell; the last column
/// is not padded.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut w: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut out = String::new();
        for (i, c) in cells.into_iter().enumerate() {
            if i + 1 == n {
                out.push_str(c);
            } else {
                out.push_str(c);
                out.push_str(&" ".repeat(w[i] - c.chars().count() + 2));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.to_vec());
    out.push('\n');
    for r in rows {
        out.push_str(&line(r.iter().map(String::as_str).collect()));
        out.push('\n');
    }
    out
}

/// `approvals list`: id, tool, risk, agent, age, time left, votes (and state, request).
pub fn approvals_table(list: &[Value]) -> String {
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|a| {
            let u = |k: &str| a.get(k).and_then(Value::as_u64).unwrap_or(0);
            let left = if s(a, "state") == "pending" {
                short_duration(u("expires_in_s"))
            } else {
                "-".into()
            };
            let votes = format!(
                "{}/{}",
                a.get("approvals")
                    .and_then(Value::as_array)
                    .map_or(0, Vec::len),
                u("required_approvals")
            );
            vec![
                s(a, "id"),
                s(a, "tool"),
                s(a, "risk"),
                s(a, "agent"),
                short_duration(u("age_s")),
                left,
                votes,
                s(a, "state"),
                format!("{} {}", s(a, "method"), s(a, "path")),
            ]
        })
        .collect();
    table(
        &[
            "ID", "TOOL", "RISK", "AGENT", "AGE", "LEFT", "VOTES", "STATE", "REQUEST",
        ],
        &rows,
    )
}

/// `approvals show`: what the operator page shows, as text.
pub fn approval_text(a: &Value) -> String {
    let mut o = String::new();
    let mut put = |k: &str, v: String| o.push_str(&format!("{k:<16}{v}\n"));
    put("", format!("{} {}", s(a, "method"), s(a, "path")));
    if a.get("rationale").is_some_and(|r| !r.is_null()) {
        put("Rationale", format!("\"{}\"", s(a, "rationale")));
    }
    let state = s(a, "state");
    put(
        "State",
        match a.get("votes_line").and_then(Value::as_str) {
            Some(l) => format!("{state} — {l}"),
            None => state,
        },
    );
    put(
        "Tool",
        format!(
            "{} ({} risk: {})",
            s(a, "tool"),
            s(a, "risk"),
            s(a, "risk_why")
        ),
    );
    if a.get("description").is_some_and(|d| !d.is_null()) {
        put("Description", s(a, "description"));
    }
    put(
        "Agent",
        format!(
            "{} (owner {}, tenant {}, credential {} issued by {})",
            s(a, "agent"),
            s(a, "owner"),
            s(a, "tenant"),
            s(a, "credential"),
            s(a, "issued_by")
        ),
    );
    put("Approval", s(a, "id"));
    put("Created", s(a, "created_at"));
    put("Expires", s(a, "expires_at"));
    put("request_sha256", s(a, "request_sha256"));
    if let Some(p) = a.get("preview").filter(|p| !p.is_null()) {
        o.push_str("\nChange (against the resource as read at park time):\n");
        match p.get("changes").and_then(Value::as_array) {
            Some(c) if p.get("deleted") == Some(&Value::Bool(true)) => {
                let _ = c;
                o.push_str("  the resource will be deleted\n");
            }
            Some(c) if c.is_empty() => o.push_str("  no field changes\n"),
            Some(c) => {
                let rows: Vec<Vec<String>> = c
                    .iter()
                    .map(|f| vec![s(f, "field"), s(f, "before"), s(f, "after")])
                    .collect();
                for l in table(&["FIELD", "NOW", "AFTER"], &rows).lines() {
                    o.push_str(&format!("  {l}\n"));
                }
            }
            None => o.push_str(&format!("  {}\n", s(p, "note"))),
        }
    }
    o.push_str("\nHeaders:\n");
    for h in a
        .get("headers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        o.push_str(&format!(
            "  {}: {}\n",
            spelled(h[0].as_str().unwrap_or("")),
            spelled(h[1].as_str().unwrap_or(""))
        ));
    }
    if let Some(b) = a.get("body").and_then(Value::as_str) {
        o.push_str(&format!(
            "\nBody ({} bytes, {}):\n",
            s(a, "body_len"),
            s(a, "body_encoding")
        ));
        let pretty = serde_json::from_str::<Value>(b)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok());
        o.push_str(&controls::escape_json_text(
            &pretty.unwrap_or_else(|| spelled(b)),
        ));
        o.push('\n');
    }
    let votes = a
        .get("votes")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if !votes.is_empty() {
        o.push_str("\nVotes:\n");
        for v in votes {
            o.push_str(&format!(
                "  approved by {}{}\n",
                s(&v, "operator"),
                v.get("comment")
                    .and_then(Value::as_str)
                    .map(|c| format!(": \"{}\"", spelled(c)))
                    .unwrap_or_default()
            ));
        }
    }
    if a.get("upstream_status").is_some_and(|x| !x.is_null()) {
        o.push_str(&format!(
            "\nExecuted: upstream answered {}\n",
            s(a, "upstream_status")
        ));
    } else if a.get("reason").is_some_and(|x| !x.is_null()) {
        o.push_str(&format!(
            "\nOutcome: {} {}\n",
            s(a, "reason"),
            s(a, "detail")
        ));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn table_columns_line_up_whatever_the_widths() {
        let t = approvals_table(&[
            json!({"id": "a1", "tool": "tickets.update", "risk": "high", "agent": "bot", "age_s": 5, "expires_in_s": 3600, "state": "pending", "approvals": ["x"], "required_approvals": 2, "method": "PATCH", "path": "/t/1"}),
            json!({"id": "b22222", "tool": "t", "risk": "low", "agent": "a-much-longer-agent", "age_s": 7200, "state": "denied", "approvals": [], "required_approvals": 1, "method": "GET", "path": "/x\u{202e}"}),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        let col = |l: &str, w: &str| l.find(w).unwrap();
        assert_eq!(col(lines[0], "RISK"), col(lines[1], "high"));
        assert_eq!(col(lines[0], "RISK"), col(lines[2], "low"));
        assert_eq!(col(lines[0], "VOTES"), col(lines[1], "1/2"));
        assert_eq!(col(lines[0], "VOTES"), col(lines[2], "0/1"));
        assert!(
            lines[1].contains(" 60m ") && lines[2].contains(" 2h "),
            "{t}"
        );
        assert!(lines[2].contains("<U+202E>"), "{t}");
    }

    #[test]
    fn show_leads_with_the_request_line_and_the_rationale() {
        let t = approval_text(&json!({
            "method": "PATCH", "path": "/tickets/7", "rationale": "customer asked",
            "state": "pending", "votes_line": "1 of 2 approvals — needs another approver",
            "votes": [{"operator": "alice", "comment": "fine"}],
            "headers": [["content-type", "application/json"], ["x-note", "a\u{202E}b"]],
        }));
        // Each header by its name (it used to print `-` for every name).
        assert!(
            t.contains("\nHeaders:\n  content-type: application/json\n  x-note: a<U+202E>b\n"),
            "{t}"
        );
        let mut l = t.lines();
        assert!(l.next().unwrap().contains("PATCH /tickets/7"));
        assert!(l.next().unwrap().contains("\"customer asked\""));
        assert!(
            t.contains("needs another approver") && t.contains("alice: \"fine\""),
            "{t}"
        );
    }
}
