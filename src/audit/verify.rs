//! `portcullis audit verify`: walk the chain across files from a known start (seq 1 after
//! the genesis hash, or a point the caller trusts), report the first broken link with its
//! file and line, and check signed checkpoints when a key is given.

use super::chain::{self, GENESIS};
use super::writer::checkpoint_mac;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;

/// Where the given files must start. A chain written from scratch starts at seq 1 with
/// `prev` = [`GENESIS`]; a later start (old rotated files deleted) is named by the caller
/// from a record or checkpoint they trust, never taken from the files themselves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Start {
    /// The seq the first line must carry.
    pub seq: u64,
    /// The `prev` the first line must carry: the `hash` of the record at `seq - 1`.
    pub prev: String,
}

impl Default for Start {
    fn default() -> Start {
        Start {
            seq: 1,
            prev: GENESIS.to_string(),
        }
    }
}

impl Start {
    fn is_genesis(&self) -> bool {
        *self == Start::default()
    }
}

/// `--from-hash`: a record's `hash` as printed in the file (64 hex digits).
pub fn parse_hash(s: &str) -> Result<String, String> {
    if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(s.to_ascii_lowercase())
    } else {
        Err("must be 64 hex digits: the `hash` of the record before --from-seq".into())
    }
}

#[derive(Debug, Clone, Default)]
pub struct Options<'a> {
    /// The checkpoint HMAC key; without it signatures are not checked.
    pub key: Option<&'a [u8]>,
    pub start: Start,
    /// Files holding no line at all verify (else an emptied trail is a break).
    pub allow_empty: bool,
}

#[derive(Debug, Default)]
pub struct Summary {
    pub records: u64,
    pub checkpoints: u64,
    pub last_seq: u64,
    pub head: String,
    /// Records after the last signed checkpoint (a cut there cannot be detected).
    pub unsigned_tail: u64,
    /// `gap` records (the writer lost records past `audit.max_pending_bytes`), and how
    /// many records they say were lost.
    pub gaps: u64,
    pub lost: u64,
}

impl Summary {
    /// What `audit verify` prints on success.
    pub fn report(&self, keyed: bool) -> String {
        let mut out = format!(
            "ok: {} records, {} checkpoints{}, last seq {}, head {}\n",
            self.records,
            self.checkpoints,
            if keyed {
                " (signatures checked)"
            } else {
                " (signatures not checked: no key)"
            },
            self.last_seq,
            self.head
        );
        if self.unsigned_tail > 0 && self.checkpoints > 0 {
            out.push_str(&format!(
                "note: {} records after the last checkpoint are not covered by a signature\n",
                self.unsigned_tail
            ));
        } else if self.unsigned_tail > 0 && keyed {
            out.push_str(&format!(
                "note: no checkpoint: none of the {} records is covered by a signature\n",
                self.unsigned_tail
            ));
        }
        if self.gaps > 0 {
            out.push_str(&format!(
                "note: {} gap record(s): {} records were lost while the trail could not be written (see the `gap` records)\n",
                self.gaps, self.lost
            ));
        }
        out.push_str(&format!(
            "next: files continuing this chain verify with --from-seq {} --from-hash {}\n",
            self.last_seq.saturating_add(1),
            self.head
        ));
        out
    }
}

#[derive(Debug)]
pub struct Broken {
    pub file: String,
    /// 0 when the break is not on a line (the file cannot be read, or holds nothing).
    pub line: u64,
    pub why: String,
}

impl std::fmt::Display for Broken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            0 => write!(f, "{}: {}", self.file, self.why),
            n => write!(f, "{}:{n}: {}", self.file, self.why),
        }
    }
}

/// Why the first line is not where the chain must start.
fn bad_start(start: &Start, seq: u64, prev: &str) -> String {
    if start.is_genesis() {
        format!(
            "cut head: a chain starts at seq 1 with prev {GENESIS} (genesis), found seq {seq} \
             with prev {prev}; lines were deleted from the start, or earlier files are missing \
             (list rotated files first, oldest first); to verify a chain that starts later, pass \
             --from-seq {seq} --from-hash <the hash of record {}> taken from a record or \
             checkpoint you trust, not from this file",
            seq.saturating_sub(1)
        )
    } else {
        format!(
            "the chain does not start where --from-seq/--from-hash say: expected seq {} with \
             prev {} (the hash of record {}), found seq {seq} with prev {prev}",
            start.seq,
            start.prev,
            start.seq.saturating_sub(1)
        )
    }
}

/// Verifies files in order (rotated ones first, as the writer names them).
pub fn verify(files: &[PathBuf], o: &Options) -> Result<Summary, Broken> {
    let mut s = Summary {
        last_seq: o.start.seq.saturating_sub(1),
        ..Summary::default()
    };
    let mut prev = o.start.prev.clone();
    let mut first = true;
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
            if first && (seq != o.start.seq || p != prev) {
                return Err(broken(bad_start(&o.start, seq, p)));
            }
            if p != prev {
                return Err(broken(format!("chain broken: prev does not match the record before (seq {seq}); a record was deleted, reordered or spliced in")));
            }
            if Some(seq) != s.last_seq.checked_add(1) {
                return Err(broken(format!(
                    "sequence gap: expected seq {}, found {seq}",
                    s.last_seq.saturating_add(1)
                )));
            }
            first = false;
            if v.get("event").and_then(|e| e.as_str()) == Some("checkpoint") {
                let head = v.get("head").and_then(|x| x.as_str()).unwrap_or_default();
                if head != prev {
                    return Err(broken("checkpoint head does not match the chain".into()));
                }
                if let Some(k) = o.key {
                    // The MAC binds the head to the seq of the record it is the hash of.
                    let mac = v.get("hmac").and_then(|x| x.as_str()).unwrap_or_default();
                    if !crate::identity::digest_eq(mac, &checkpoint_mac(k, seq - 1, head)) {
                        return Err(broken(format!(
                            "checkpoint signature invalid for head {head} at seq {}: the chain \
                             was rewritten or the checkpoint moved (or the key is not the writer's)",
                            seq - 1
                        )));
                    }
                }
                s.checkpoints += 1;
                s.unsigned_tail = 0;
            } else {
                if v.get("event").and_then(|e| e.as_str()) == Some("gap") {
                    s.gaps += 1;
                    s.lost += v.get("count").and_then(|c| c.as_u64()).unwrap_or(0);
                }
                s.records += 1;
                s.unsigned_tail += 1;
            }
            s.last_seq = seq;
            prev = claimed.to_string();
        }
    }
    if first && !o.allow_empty {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        return Err(Broken {
            file: names.join(", "),
            line: 0,
            why: "no audit records: an emptied trail does not verify (pass --allow-empty if \
                  an empty trail is expected)"
                .into(),
        });
    }
    s.head = prev;
    Ok(s)
}
