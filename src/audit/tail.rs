//! `portcullis audit tail`: a readable table of records, filtered, optionally following.

use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::path::Path;
use std::time::Duration;

pub struct Filter {
    pub agent: Option<String>,
    pub decision: Option<String>,
}

fn field<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("-")
}

fn row(line: &str, f: &Filter) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    if f.agent.as_deref().is_some_and(|a| field(&v, "agent") != a)
        || f.decision
            .as_deref()
            .is_some_and(|d| field(&v, "decision") != d)
    {
        return None;
    }
    let status = v
        .get("status")
        .and_then(|s| s.as_u64())
        .map_or("-".to_string(), |s| s.to_string());
    let request = format!("{} {}", field(&v, "method"), field(&v, "path"));
    Some(format!(
        "{:<27} {:>6} {:<14} {:<16} {:<40} {:<28} {:<8} {:<6} {:<18} {}",
        field(&v, "ts"),
        v.get("seq").and_then(|s| s.as_u64()).unwrap_or(0),
        field(&v, "event"),
        field(&v, "agent"),
        request.chars().take(40).collect::<String>(),
        field(&v, "tool"),
        field(&v, "risk"),
        field(&v, "decision"),
        field(&v, "reason"),
        status
    ))
}

pub fn header() -> String {
    format!(
        "{:<27} {:>6} {:<14} {:<16} {:<40} {:<28} {:<8} {:<6} {:<18} STATUS",
        "TS", "SEQ", "EVENT", "AGENT", "REQUEST", "TOOL", "RISK", "DEC", "REASON"
    )
}

pub fn tail(path: &Path, f: &Filter, follow: bool) -> std::io::Result<()> {
    let mut file = std::fs::File::open(path)?;
    println!("{}", header());
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
            if let Some(s) = row(line.trim_end(), f) {
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
