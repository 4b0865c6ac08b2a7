//! The audit file on disk: finding where an existing chain ends (cutting a torn last
//! line a crash left), naming rotated files, opening for append.

use super::chain;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tracing::warn;

/// The last complete line of a file, after cutting off a torn (unterminated) tail.
pub fn last_line(path: &Path, repair: bool) -> std::io::Result<Option<String>> {
    let mut f = match OpenOptions::new().read(true).write(repair).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(1 << 20);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let end = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => i,
        None => {
            if repair && len > 0 && start == 0 {
                warn!(file = %path.display(), "audit log holds only a torn line; truncating it");
                f.set_len(0)?;
            }
            return Ok(None);
        }
    };
    if repair && (end as u64 + 1 + start) < len {
        warn!(file = %path.display(), "audit log ends in a torn line (crash mid-write); truncating it");
        f.set_len(start + end as u64 + 1)?;
    }
    let body = &buf[..end];
    let from = body.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    Ok(Some(String::from_utf8_lossy(&body[from..]).into_owned()))
}

/// Rotated files: `<name>.<seq, 12 digits>`, oldest first.
pub fn rotated(path: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return vec![];
    };
    let mut v: Vec<PathBuf> = std::fs::read_dir(if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    })
    .into_iter()
    .flatten()
    .flatten()
    .map(|e| e.path())
    .filter(|p| {
        p.file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(name))
            .and_then(|r| r.strip_prefix('.'))
            .is_some_and(|r| r.len() == 12 && r.bytes().all(|b| b.is_ascii_digit()))
    })
    .collect();
    v.sort();
    v
}

pub fn head_of(line: &str) -> Option<(u64, String)> {
    let (_, hash) = chain::unseal(line)?;
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    Some((v.get("seq")?.as_u64()?, hash.to_string()))
}

pub fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).open(path)
}
