//! Whether anything on the audit file's path may have changed since it was last looked
//! at, without a path lookup per request: an inotify watch on every directory the path
//! passes through, asked with one `FIONREAD` (the kernel queues the event inside the
//! `unlink`/`rename` that caused it, so a request that arrives after the change sees it).
//! Where the watch cannot be set up (not Linux, a symbolic link or `..` on the path, no
//! inotify instance left) every look is a `stat`, as before.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often lost watches are set up again (each attempt walks the path).
const REARM_EVERY: Duration = Duration::from_secs(1);

/// The request path's view: `quiet()` says nothing changed since the last confirmed
/// look; otherwise `confirm` looks (a `stat` the caller supplies) under a lock.
pub(crate) struct PathWatch {
    path: std::path::PathBuf,
    /// The inotify instance in use; replaced after its watches were lost.
    inner: arc_swap::ArcSwapOption<imp::Watch>,
    /// Set before a confirmation drains the events it is about to verify, cleared only
    /// once a `stat` verified the path: a request that finds the queue empty because
    /// another thread drained it still takes the slow path until the look is done.
    suspect: AtomicBool,
    /// Serialises confirmations (drain, re-arm, look, clear); holds when the watches
    /// were last set up, so a path that cannot be watched is not retried per request.
    lock: Mutex<Instant>,
}

impl PathWatch {
    /// None when the path cannot be watched (the caller then `stat`s every time, with no
    /// lock). Starts suspect: the file was opened before the watches existed, so the
    /// first check verifies.
    pub fn new(path: &Path) -> Option<PathWatch> {
        let w = imp::Watch::new(path)?;
        Some(PathWatch {
            path: path.to_path_buf(),
            inner: arc_swap::ArcSwapOption::from_pointee(w),
            suspect: AtomicBool::new(true),
            lock: Mutex::new(Instant::now()),
        })
    }

    /// Nothing on the path changed since the last verified look (one `ioctl`).
    pub fn quiet(&self) -> bool {
        let w = self.inner.load();
        // The queue is read before the flag: a queue another thread just drained is
        // seen together with that thread's `suspect` (set before it drained).
        w.as_ref().is_some_and(|w| w.quiet()) && !self.suspect.load(Ordering::SeqCst)
    }

    /// Takes the queued events, re-arms lost watches, then runs `look`, which answers
    /// (the path may be used, the path was verified by a `stat`). Clears the suspicion
    /// only when the look verified and the watches are whole.
    pub fn confirm(&self, look: impl FnOnce() -> (bool, bool)) -> bool {
        let mut armed = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.suspect.store(true, Ordering::SeqCst);
        let mut whole = match self.inner.load_full() {
            Some(w) => w.drain(),
            None => false,
        };
        if !whole && armed.elapsed() >= REARM_EVERY {
            *armed = Instant::now();
            // Watches set up before the look: a change after them is queued, a change
            // before them is what the look sees.
            let fresh = imp::Watch::new(&self.path).map(std::sync::Arc::new);
            whole = fresh.is_some();
            self.inner.store(fresh);
        }
        let (pass, verified) = look();
        if verified && whole {
            self.suspect.store(false, Ordering::SeqCst);
        }
        pass
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use rustix::fd::OwnedFd;
    use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
    use std::mem::MaybeUninit;
    use std::path::Path;
    use std::sync::atomic::{AtomicBool, Ordering};

    pub struct Watch {
        fd: OwnedFd,
        /// A watched directory itself moved or went away, or events were lost: the
        /// watches no longer cover the path.
        broken: AtomicBool,
    }

    impl Watch {
        /// A watch on every directory of `path`, for entries removed or renamed (a file
        /// created under a new name cannot change what an existing path resolves to),
        /// and for the directory itself moving or going away. None when the path has a
        /// symbolic link or `..` (the directories the lookup walks are then not only
        /// the path's own) or inotify is unavailable.
        pub fn new(path: &Path) -> Option<Watch> {
            let abs = std::path::absolute(path).ok()?;
            if std::fs::canonicalize(&abs).ok()? != abs {
                return None;
            }
            let fd = inotify::init(CreateFlags::NONBLOCK | CreateFlags::CLOEXEC).ok()?;
            let mask = WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::DELETE_SELF
                | WatchFlags::MOVE_SELF
                | WatchFlags::ONLYDIR
                | WatchFlags::DONT_FOLLOW;
            for dir in abs.ancestors().skip(1) {
                inotify::add_watch(&fd, dir, mask).ok()?;
            }
            Some(Watch {
                fd,
                broken: AtomicBool::new(false),
            })
        }

        /// No event queued and the watches are whole.
        pub fn quiet(&self) -> bool {
            !self.broken.load(Ordering::Acquire)
                && rustix::io::ioctl_fionread(&self.fd).is_ok_and(|n| n == 0)
        }

        /// Reads every queued event; false when the watches no longer cover the path.
        pub fn drain(&self) -> bool {
            let lost = ReadFlags::DELETE_SELF
                | ReadFlags::MOVE_SELF
                | ReadFlags::IGNORED
                | ReadFlags::QUEUE_OVERFLOW
                | ReadFlags::UNMOUNT;
            let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
            let mut r = inotify::Reader::new(&self.fd, &mut buf);
            loop {
                match r.next() {
                    Ok(e) if e.events().intersects(lost) => {
                        self.broken.store(true, Ordering::Release)
                    }
                    Ok(_) => {}
                    Err(rustix::io::Errno::AGAIN) => break,
                    Err(_) => {
                        self.broken.store(true, Ordering::Release);
                        break;
                    }
                }
            }
            !self.broken.load(Ordering::Acquire)
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use std::path::Path;

    /// No inotify: never quiet, so every look is a `stat`.
    pub enum Watch {}

    impl Watch {
        pub fn new(_: &Path) -> Option<Watch> {
            None
        }
        pub fn quiet(&self) -> bool {
            match *self {}
        }
        pub fn drain(&self) -> bool {
            match *self {}
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A watched file in a fresh directory, verified once.
    fn watched() -> (tempfile::TempDir, std::path::PathBuf, PathWatch) {
        let dir = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(dir.path()).unwrap().join("audit");
        std::fs::create_dir(&base).unwrap();
        let path = base.join("audit.jsonl");
        std::fs::write(&path, b"").unwrap();
        let w = PathWatch::new(&path).expect("a plain path is watched");
        assert!(
            !w.quiet(),
            "a new watch is suspect until a look verified the file"
        );
        assert!(w.confirm(|| (true, true)));
        assert!(w.quiet(), "verified and nothing changed");
        (dir, path, w)
    }

    #[test]
    fn a_removed_or_replaced_file_is_noticed_before_the_next_look() {
        let (_d, path, w) = watched();
        std::fs::rename(&path, path.with_extension("old")).unwrap();
        assert!(!w.quiet(), "a file renamed away");
        // The look decides, and a failed look keeps the path suspect.
        assert!(!w.confirm(|| (false, false)));
        assert!(
            !w.quiet(),
            "a look that failed does not clear the suspicion"
        );
        std::fs::write(&path, b"").unwrap();
        assert!(w.confirm(|| (true, true)));
        assert!(w.quiet());

        std::fs::write(path.with_extension("new"), b"").unwrap();
        assert!(w.quiet(), "a new name beside the file changes nothing");
        std::fs::rename(path.with_extension("new"), &path).unwrap();
        assert!(!w.quiet(), "a file renamed over the path");
        assert!(w.confirm(|| (true, true)));
        std::fs::remove_file(&path).unwrap();
        assert!(!w.quiet(), "the file removed");
    }

    #[test]
    fn a_moved_directory_on_the_path_is_noticed_and_the_watch_rearms() {
        let (d, path, w) = watched();
        let base = path.parent().unwrap().to_path_buf();
        let elsewhere = std::fs::canonicalize(d.path()).unwrap().join("moved");
        std::fs::rename(&base, &elsewhere).unwrap();
        assert!(!w.quiet(), "the file's directory moved away");
        assert!(!w.confirm(|| (false, false)));
        std::fs::rename(&elsewhere, &base).unwrap();
        // The watches on the moved directory were dropped; they are set up again,
        // at most once a second, and until then every check looks.
        let end = Instant::now() + 10 * REARM_EVERY;
        while !w.quiet() {
            assert!(Instant::now() < end, "the watch never re-armed");
            assert!(w.confirm(|| (true, true)));
            std::thread::sleep(REARM_EVERY / 20);
        }
        std::fs::remove_dir_all(&base).unwrap();
        assert!(!w.quiet(), "the directory removed");
    }

    #[test]
    fn a_path_through_a_symbolic_link_is_looked_at_every_time() {
        let (d, path, _w) = watched();
        let link = std::fs::canonicalize(d.path()).unwrap().join("link");
        std::os::unix::fs::symlink(path.parent().unwrap(), &link).unwrap();
        assert!(
            PathWatch::new(&link.join("audit.jsonl")).is_none(),
            "no watch covers a link's target: every check looks"
        );
    }

    #[test]
    fn a_check_while_another_thread_verifies_is_not_quiet() {
        let (_d, path, w) = watched();
        std::fs::rename(&path, path.with_extension("old")).unwrap();
        let (inside_tx, inside_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let w = &w;
        std::thread::scope(|s| {
            s.spawn(move || {
                w.confirm(move || {
                    inside_tx.send(()).unwrap();
                    go_rx.recv().unwrap();
                    (false, false)
                })
            });
            inside_rx.recv().unwrap();
            // The event is drained, the look not finished: still suspect.
            assert!(!w.quiet());
            go_tx.send(()).unwrap();
        });
        assert!(!w.quiet(), "the look failed");
    }
}
