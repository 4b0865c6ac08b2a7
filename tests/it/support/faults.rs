//! Helpers for the fault tests (`tests/faults_*.rs`): a small tmpfs mounted for one test
//! (root only: without it the test prints why and passes as skipped; unmounted on drop),
//! filled to the last byte or the last inode and freed again, and a tally of answers by
//! status for the closing report of each scenario.
//!
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted on a fresh temp dir; unmounted (lazily if still busy) on drop.
pub struct Tmpfs {
    dir: tempfile::TempDir,
    inode_fillers: Vec<PathBuf>,
}

/// Whether this process may mount filesystems (CI runs the suite as root).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

impl Tmpfs {
    /// Mounts `tmpfs -o opts` (e.g. `size=1m`), or prints why `test` is skipped and
    /// answers `None` (not root, or mounting is not allowed here).
    pub fn mount(test: &str, opts: &str) -> Option<Tmpfs> {
        if !is_root() {
            eprintln!("SKIPPED {test}: mounting a tmpfs needs root (CI runs as root)");
            return None;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", opts, "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(Tmpfs {
                dir,
                inode_fillers: Vec::new(),
            }),
            Ok(o) => {
                eprintln!(
                    "SKIPPED {test}: mount -t tmpfs failed: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                None
            }
            Err(e) => {
                eprintln!("SKIPPED {test}: cannot run mount: {e}");
                None
            }
        }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    fn filler(&self) -> PathBuf {
        self.path().join("filler")
    }

    /// Creates the (empty) filler file now, so that filling later needs no inode.
    pub fn prepare_filler(&self) {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("create the filler file");
    }

    /// Writes into the filler file until the filesystem refuses even one more byte;
    /// answers how many bytes it took.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.filler())
            .expect("open the filler file");
        let mut total = 0u64;
        let mut chunk = 1usize << 16;
        let buf = vec![0xa5u8; chunk];
        while chunk > 0 {
            match f.write(&buf[..chunk]) {
                Ok(0) | Err(_) => chunk /= 2,
                Ok(n) => total += n as u64,
            }
        }
        let _ = f.sync_all();
        total
    }

    /// Removes the filler's contents (keeps the file, so no inode is needed later).
    pub fn free(&self) {
        std::fs::OpenOptions::new()
            .write(true)
            .open(self.filler())
            .and_then(|f| f.set_len(0))
            .expect("empty the filler file");
    }

    /// Creates empty files until no inode is left; answers how many.
    pub fn exhaust_inodes(&mut self) -> usize {
        for n in 0.. {
            let p = self.path().join(format!("inode-{n}"));
            if std::fs::File::create(&p).is_err() {
                break;
            }
            self.inode_fillers.push(p);
        }
        self.inode_fillers.len()
    }

    /// Gives back the inodes `exhaust_inodes` took.
    pub fn free_inodes(&mut self) {
        for p in self.inode_fillers.drain(..) {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(self.dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Something still holds a file open there: detach it now, freed when closed.
            let _ = Command::new("umount")
                .arg("-l")
                .arg(self.dir.path())
                .status();
        }
    }
}

/// Answers by status, for a scenario's report line.
#[derive(Default, Debug, Clone)]
pub struct Tally(pub BTreeMap<u16, usize>);

impl Tally {
    pub fn add(&mut self, status: u16) {
        *self.0.entry(status).or_default() += 1;
    }
    pub fn get(&self, status: u16) -> usize {
        self.0.get(&status).copied().unwrap_or(0)
    }
    pub fn sent(&self) -> usize {
        self.0.values().sum()
    }
    pub fn merge(&mut self, other: &Tally) {
        for (k, v) in &other.0 {
            *self.0.entry(*k).or_default() += v;
        }
    }
}

impl std::fmt::Display for Tally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        write!(f, "{{{}}}", parts.join(", "))
    }
}

/// One line every fault test prints (run with `--nocapture` to see it).
pub fn report(scenario: &str, sent: usize, answers: &Tally, upstream: usize, records: usize) {
    eprintln!(
        "SCENARIO {scenario}: requests sent {sent}, answers {answers}, upstream calls {upstream}, records in the trail {records}"
    );
}
