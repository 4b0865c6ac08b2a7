//! `portcullis audit tail`: a readable table of records, filtered, optionally following.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

pub struct Filter {
    pub agent: Option<String>,
    pub decision: Option<String>,
}

/// How rows are printed: `wide` keeps whole paths; `json` prints records as they are.
#[derive(Debug, Clone, Copy, Default)]
pub struct Layout {
    pub wide: bool,
    pub json: bool,
}

/// Column widths: every column but the last (REQUEST) is cut to its width, so columns
/// never shift whatever the event type or the length of a value.
const COLS: [(&str, usize); 10] = [
    ("TS", 24),
    ("SEQ", 7),
    ("EVENT", 18),
    ("AGENT", 16),
    ("OPERATOR", 12),
    ("TOOL", 24),
    ("RISK", 8),
    ("DEC", 8),
    ("REASON", 20),
    ("STATUS", 6),
];
const REQUEST_WIDTH: usize = 60;

/// `s` in exactly `w` columns: padded, or cut with a trailing `…`.
fn fit(s: &str, w: usize) -> String {
    let n = s.chars().count();
    if n <= w {
        format!("{s}{}", " ".repeat(w - n))
    } else {
        let mut t: String = s.chars().take(w - 1).collect();
        t.push('…');
        t
    }
}

fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("-")
}

fn row(line: &str, f: &Filter, layout: Layout) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if f.agent.as_deref().is_some_and(|a| field(&v, "agent") != a)
        || f.decision
            .as_deref()
            .is_some_and(|d| field(&v, "decision") != d)
    {
        return None;
    }
    if layout.json {
        return Some(crate::approval::controls::escape_json_text(line));
    }
    let status = v
        .get("status")
        .and_then(|s| s.as_u64())
        .or_else(|| v.get("upstream_status").and_then(|s| s.as_u64()))
        .map_or("-".to_string(), |s| s.to_string());
    let seq = v
        .get("seq")
        .and_then(|s| s.as_u64())
        .map_or("-".into(), |s| s.to_string());
    // A terminal would obey a bidirectional control in a recorded path: spell it out.
    let request: String = crate::approval::controls::visible(&format!(
        "{} {}",
        field(&v, "method"),
        field(&v, "path")
    ))
    .into_iter()
    .map(|p| p.text)
    .collect();
    let ts = field(&v, "ts");
    let cells = [
        ts.get(..ts.len().min(19)).unwrap_or(ts),
        &seq,
        field(&v, "event"),
        field(&v, "agent"),
        field(&v, "operator"),
        field(&v, "tool"),
        field(&v, "risk"),
        field(&v, "decision"),
        field(&v, "reason"),
        &status,
    ];
    let mut out = String::new();
    for (c, (_, w)) in cells.iter().zip(COLS) {
        out.push_str(&fit(c, w));
        out.push(' ');
    }
    if layout.wide {
        out.push_str(&request);
    } else {
        out.push_str(fit(&request, REQUEST_WIDTH).trim_end());
    }
    Some(out)
}

pub fn header() -> String {
    let mut out = String::new();
    for (h, w) in COLS {
        out.push_str(&fit(h, w));
        out.push(' ');
    }
    out.push_str("REQUEST");
    out
}

pub fn tail(path: &Path, f: &Filter, layout: Layout, follow: bool) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    if !layout.json {
        println!("{}", header());
    }
    let mut pos = 0u64;
    loop {
        file.seek(SeekFrom::Start(pos))?;
        let mut r = BufReader::new(&file);
        let mut line = String::new();
        loop {
            line.clear();
            let n = r.read_line(&mut line)?;
            if n == 0 || !line.ends_with('\n') {
                break;
            }
            pos += n as u64;
            if let Some(s) = row(line.trim_end(), f, layout) {
                println!("{s}");
            }
        }
        if !follow {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
        // Follow across rotation: a shorter file at the path is a new one.
        if let Ok(m) = std::fs::metadata(path) {
            if m.len() < pos {
                file = std::fs::File::open(path)?;
                pos = 0;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_do_not_shift_by_event_type_or_value_length() {
        let f = Filter {
            agent: None,
            decision: None,
        };
        let lay = Layout::default();
        let a = row(r#"{"ts":"2026-01-01T00:00:00.123Z","seq":1,"event":"request","agent":"bot","method":"GET","path":"/a","tool":"t","risk":"low","decision":"allow","reason":"granted","status":200}"#, &f, lay).unwrap();
        let b = row(r#"{"ts":"2026-01-01T00:00:01.123Z","seq":123456,"event":"approval_approved_with_a_long_name","agent":"an-agent-with-a-very-long-name","operator":"alice","method":"PATCH","path":"/tickets/1","tool":"tickets.update.something.long","risk":"critical","decision":"approved","reason":null,"upstream_status":null}"#, &f, lay).unwrap();
        let h = header();
        for col in ["EVENT", "OPERATOR", "TOOL", "REASON", "REQUEST"] {
            let i = h[..h.find(col).unwrap()].chars().count();
            // The character before each column start is a separator in every row.
            assert_eq!(a.chars().nth(i - 1), Some(' '), "{col}\n{h}\n{a}");
            assert_eq!(b.chars().nth(i - 1), Some(' '), "{col}\n{h}\n{b}");
        }
        assert!(b.contains("alice") && b.contains("PATCH /tickets/1"), "{b}");
        let long = format!(
            r#"{{"event":"request","method":"GET","path":"/{}"}}"#,
            "x".repeat(200)
        );
        assert!(!row(&long, &f, lay).unwrap().contains(&"x".repeat(100)));
        let wide = Layout {
            wide: true,
            json: false,
        };
        assert!(row(&long, &f, wide).unwrap().contains(&"x".repeat(200)));
    }
}
