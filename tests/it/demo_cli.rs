//! `portcullis demo` as a new user runs it: its ports are checked before anything is
//! printed, the printed operator commands run verbatim (the binary by its path), the
//! operator page and the audit file it names exist, and its temp dir is removed on
//! exit unless `--keep`.

use crate::common::{admin_call, get, CLI_BOUND};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The last line the walkthrough prints.
const LAST_LINE: &str = "Ctrl-C stops the demo.";

struct Demo {
    child: Child,
    out: Vec<String>,
}

impl Demo {
    /// Starts `portcullis demo ARGS` and reads its walkthrough (bounded).
    fn start(args: &[&str]) -> Demo {
        let mut child = Command::new(env!("CARGO_BIN_EXE_portcullis"))
            .arg("demo")
            .args(args)
            .env_remove("PORTCULLIS_OPERATOR_TOKEN")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn portcullis demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let last = line == LAST_LINE;
                let _ = tx.send(line);
                if last {
                    return;
                }
            }
        });
        let mut out = Vec::new();
        loop {
            match rx.recv_timeout(CLI_BOUND) {
                Ok(l) => {
                    let last = l == LAST_LINE;
                    out.push(l);
                    if last {
                        break;
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    panic!(
                        "the demo did not print its walkthrough; got:\n{}",
                        out.join("\n")
                    );
                }
            }
        }
        Demo { child, out }
    }

    fn text(&self) -> String {
        self.out.join("\n")
    }

    /// The rest of the line that starts (after indentation) with `lead`.
    fn after(&self, lead: &str) -> String {
        self.out
            .iter()
            .find_map(|l| l.trim_start().strip_prefix(lead))
            .unwrap_or_else(|| panic!("no line starting `{lead}`:\n{}", self.text()))
            .trim()
            .to_string()
    }

    fn line_with(&self, needle: &str) -> String {
        self.out
            .iter()
            .find(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no line with `{needle}`:\n{}", self.text()))
            .trim()
            .to_string()
    }

    /// SIGTERM and the exit status (bounded).
    fn stop(&mut self) -> std::process::ExitStatus {
        // SAFETY: `kill` on the pid of a child we spawned and have not reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let end = std::time::Instant::now() + CLI_BOUND;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return s;
            }
            assert!(
                std::time::Instant::now() < end,
                "the demo did not exit on SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `http://ADDR` → ADDR.
fn addr_of(url: &str) -> SocketAddr {
    url.trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|e| panic!("`{url}`: {e}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn the_printed_commands_run_verbatim_and_the_temp_dir_goes_on_exit() {
    let mut demo = Demo::start(&["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"]);
    let text = demo.text();
    let exe = env!("CARGO_BIN_EXE_portcullis");

    // Operator commands name the running binary by its path: they work without PATH.
    let list = demo.line_with("approvals list");
    assert!(
        list.contains(&format!("{exe} approvals list --admin http://")),
        "the command does not run this binary by its path: {list}"
    );
    assert!(text.contains("cargo install --path ."), "{text}");

    // The operator page and which token signs in.
    let page = demo.after("operator page:");
    let page_url = page.split_whitespace().next().unwrap();
    assert!(page_url.ends_with("/ui"), "{page}");
    assert!(page.contains("ALICE"), "which token signs in: {page}");
    let admin = addr_of(page_url);
    let r = admin_call(admin, "GET", "/ui", "", None).await;
    assert_eq!(r.status, 200, "the operator page: {}", r.text());
    let r = admin_call(admin, "GET", "/", "", None).await;
    assert_eq!(r.status, 303, "GET / on the admin port");
    assert_eq!(r.header("location"), Some("/ui"));

    // An agent request through the printed proxy address, with the printed token.
    let token = demo.after("agent token for support-bot (profile support-drafter):");
    let proxy = addr_of(
        &demo
            .after("portcullis demo:")
            .split(", ")
            .nth(1)
            .unwrap()
            .replace("proxy on ", ""),
    );
    let r = get(proxy, "/tickets/42", &token).await;
    assert_eq!(r.status, 200, "{}", r.text());

    // The audit file it names exists and holds that request.
    let audit = PathBuf::from(
        demo.after("audit trail:")
            .split_whitespace()
            .next()
            .unwrap(),
    );
    crate::common::eventually(
        "the audit record of the request",
        Duration::from_secs(10),
        || {
            let audit = audit.clone();
            async move {
                let t = std::fs::read_to_string(&audit).map_err(|e| e.to_string())?;
                t.contains("/tickets/42").then_some(()).ok_or(t)
            }
        },
    )
    .await;

    // The printed lines, pasted into a shell as they are: the ALICE= line, then the
    // operator's `approvals list` command.
    let alice = demo.line_with("ALICE=pco_");
    let script = format!("{alice}\n{list}\n");
    let out = tokio::task::spawn_blocking(move || {
        // Bounded like every CLI run of the suite: a hung command fails (exit 124).
        Command::new("timeout")
            .args(["--kill-after=5", "60", "sh", "-c"])
            .arg(&script)
            .env_remove("PORTCULLIS_OPERATOR_TOKEN")
            .env_remove("PORTCULLIS_ADMIN")
            .env("PATH", "/usr/bin:/bin")
            .output()
            .expect("sh")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("STATE"),
        "the printed command failed: {}\nstdout:\n{stdout}\nstderr:\n{}",
        demo.line_with("approvals list"),
        String::from_utf8_lossy(&out.stderr)
    );

    // The temp dir is deleted on exit.
    let dir = audit
        .ancestors()
        .find(|p| {
            p.file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("portcullis-demo-"))
        })
        .expect("the audit file lies in the demo's temp dir")
        .to_path_buf();
    assert!(dir.exists());
    let status = demo.stop();
    assert!(status.success(), "demo exit: {status:?}");
    assert!(!dir.exists(), "{} is still there after exit", dir.display());
}

#[tokio::test(flavor = "multi_thread")]
async fn keep_keeps_the_temp_dir() {
    let mut demo = Demo::start(&[
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--keep",
    ]);
    let dir = PathBuf::from(demo.after("temp dir:").split_whitespace().next().unwrap());
    assert!(demo.stop().success());
    assert!(
        dir.join("routes.yaml").exists(),
        "--keep removed {}",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_taken_port_fails_before_anything_is_printed() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = crate::common::run_bin(
        &["demo", "--listen", &addr, "--admin-listen", "127.0.0.1:0"],
        &[],
        CLI_BOUND,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr:\n{stderr}");
    assert!(
        out.stdout.is_empty(),
        "printed before the ports were checked:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.contains(&addr) && stderr.contains("--listen"),
        "names the port and how to choose another:\n{stderr}"
    );
}
