//! `portcullis audit verify` and `audit tail`: walk the chain across files, report the
//! first broken link with its file and line; check signed checkpoints when a key is given.

use super::chain::{self, GENESIS};
use super::writer::checkpoint_mac;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    pub head: String,
    /// Records after the last signed checkpoint (a cut there cannot be detected).
    pub unsigned_tail: u64,
}

#[derive(Debug)]
pub struct Broken {
    pub file: String,
    pub line: u64,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.file, self.line, self.why)
    }
}

/// Verifies files in order (rotated ones first, as the writer names them).
pub fn verify(files: &[PathBuf], key: Option<&[u8]>) -> Result<Summary, Broken> {
    let mut s = Summary::default();
    let mut prev: Option<String> = None;
    for f in files {
        let file = f.display().to_string();
        let fh = std::fs::File::open(f).map_err(|e| Broken {
            file: file.clone(),
            line: 0,
            why: e.to_string(),
        })?;
        for (i, line) in BufReader::new(fh).split(b'\n').enumerate() {
            let n = i as u64 + 1;
            let broken = |why: String| Broken {
                file: file.clone(),
                line: n,
                why,
            };
            let line = line.map_err(|e| broken(e.to_string()))?;
            let line = String::from_utf8(line).map_err(|_| broken("not UTF-8".into()))?;
            let (body, claimed) =
                chain::unseal(&line).ok_or_else(|| broken("not a sealed audit record".into()))?;
            if chain::hash_of(&body) != claimed {
                return Err(broken("hash mismatch: the record was edited".into()));
            }
            let v: serde_json::Value =
                serde_json::from_str(&line).map_err(|e| broken(format!("not JSON: {e}")))?;
            let seq = v
                .get("seq")
                .and_then(|x| x.as_u64())
                .ok_or_else(|| broken("no seq".into()))?;
            let p = v
                .get("prev")
                .and_then(|x| x.as_str())
                .ok_or_else(|| broken("no prev".into()))?;
            match &prev {
                Some(expected) => {
                    if p != expected {
                        return Err(broken(format!("chain broken: prev does not match the record before (seq {seq}); a record was deleted, reordered or spliced in")));
                    }
                    if seq != s.last_seq + 1 {
                        return Err(broken(format!(
                            "sequence gap: expected seq {}, found {seq}",
                            s.last_seq + 1
                        )));
                    }
                }
                None => {
                    if seq == 1 && p != GENESIS {
                        return Err(broken("the first record does not start a chain".into()));
                    }
                }
            }
            if v.get("event").and_then(|e| e.as_str()) == Some("checkpoint") {
                let head = v.get("head").and_then(|x| x.as_str()).unwrap_or_default();
                if Some(head) != prev.as_deref() && prev.is_some() {
                    return Err(broken("checkpoint head does not match the chain".into()));
                }
                if let Some(k) = key {
                    let mac = v.get("hmac").and_then(|x| x.as_str()).unwrap_or_default();
                    if !crate::identity::digest_eq(mac, &checkpoint_mac(k, seq - 1, head)) {
                        return Err(broken(
                            "checkpoint signature invalid: the chain was rewritten".into(),
                        ));
                    }
                }
                s.checkpoints += 1;
                s.unsigned_tail = 0;
            } else {
                s.records += 1;
                s.unsigned_tail += 1;
            }
            s.last_seq = seq;
            prev = Some(claimed.to_string());
        }
    }
    s.head = prev.unwrap_or_default();
    Ok(s)
}
