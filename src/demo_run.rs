//! `portcullis demo`: binds its two ports before it prints or creates anything, writes
//! the bundled config into a temp dir, issues an agent token, prints a walkthrough whose
//! every command runs as printed, serves, and deletes the temp dir on exit unless `--keep`.

use crate::app::App;
use crate::config::{self, Snapshot};
use crate::error::Error;
use crate::{demo, identity, server, tooltable};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The listeners the bundled routes.yaml names (the demo's defaults).
const CONFIG_LISTEN: &str = "listen: 127.0.0.1:8080\n";
const CONFIG_ADMIN_LISTEN: &str = "admin_listen: 127.0.0.1:9090\n";

#[derive(clap::Args, Debug, Clone)]
pub struct DemoOpts {
    /// Agent-facing address (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Operator-facing address (admin API and operator page).
    #[arg(long, default_value = "127.0.0.1:9090")]
    pub admin_listen: SocketAddr,
    /// Keep the temp dir (config, store, audit trail) when the demo exits.
    #[arg(long)]
    pub keep: bool,
}

/// The demo's temp dir: removed when dropped, unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("demo: kept {}", self.path.display());
        } else if std::fs::remove_dir_all(&self.path).is_ok() {
            eprintln!("demo: removed {}", self.path.display());
        }
    }
}

/// A word for a POSIX shell: as it is when it needs no quoting, else single-quoted.
fn shell_word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+:=@%,".contains(&b));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// How to run this binary in a printed command: the path of the running executable, so
/// the lines work without `portcullis` on PATH.
fn exe_word() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.to_str().map(shell_word))
        .unwrap_or_else(|| "portcullis".into())
}

pub async fn run(opts: DemoOpts) -> Result<(), Error> {
    // The ports first: a taken port fails here, before a line is printed or a file made.
    let bound = server::bind_addrs(opts.listen, opts.admin_listen)
        .await
        .map_err(|e| {
            Error::Internal(format!(
                "{e}\n(another demo or `serve` may hold it; choose free ports with \
                 `--listen 127.0.0.1:18080 --admin-listen 127.0.0.1:19090`, or port 0 for any)"
            ))
        })?;
    let (listen, admin) = (bound.proxy_addr()?, bound.admin_addr()?);
    // Before the walkthrough is printed: a Ctrl-C right after it stops the demo cleanly.
    let shutdown = server::shutdown_signal();
    let api = demo::start_api()
        .await
        .map_err(|e| Error::Internal(format!("demo API: {e}")))?;
    let dir = TempDir {
        path: std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id())),
        keep: opts.keep,
    };
    std::fs::create_dir_all(&dir.path)
        .map_err(|e| Error::Internal(format!("{}: {e}", dir.path.display())))?;
    let file = dir.path.join("routes.yaml");
    let operator = format!("{}{}", identity::OPERATOR_PREFIX, identity::random_hex(32));
    let operator2 = format!("{}{}", identity::OPERATOR_PREFIX, identity::random_hex(32));
    let text = demo::ROUTES_YAML
        .replace(CONFIG_LISTEN, &format!("listen: {listen}\n"))
        .replace(CONFIG_ADMIN_LISTEN, &format!("admin_listen: {admin}\n"))
        .replace("http://127.0.0.1:7000/v2", &format!("http://{api}/v2"))
        .replace(demo::DEMO_OPERATOR_HASH, &identity::sha256_hex(&operator))
        .replace(demo::DEMO_OPERATOR2_HASH, &identity::sha256_hex(&operator2));
    std::fs::write(&file, &text)
        .map_err(|e| Error::Internal(format!("{}: {e}", file.display())))?;
    let env = |name: &str| match name {
        "TICKETS_API_KEY" => Some(demo::DEMO_UPSTREAM_KEY.to_string()),
        other => config::process_env(other),
    };
    let snap = Snapshot::load_with(&file, &env)?;
    let audit_path = snap.audit.path.clone();
    let app = App::start(snap, file.clone()).await?;
    let issued = identity::issue(
        None,
        identity::IssueRequest {
            agent: "support-bot".into(),
            ttl_ms: 86_400_000,
            tools: None,
            max_risk: None,
            max_calls: None,
            issued_by: "demo".into(),
        },
    );
    app.store.put_token(&issued.record).await?;
    print_walkthrough(&Walkthrough {
        api,
        listen,
        admin,
        file: &file,
        audit: &audit_path,
        dir: &dir.path,
        keep: opts.keep,
        token: &issued.token,
        alice: &operator,
        bob: &operator2,
        table: &tooltable::render(&app.live.load().snap),
    });
    let r = server::serve_until(app, bound, None, shutdown).await;
    drop(dir);
    r
}

struct Walkthrough<'a> {
    api: SocketAddr,
    listen: SocketAddr,
    admin: SocketAddr,
    file: &'a Path,
    audit: &'a Path,
    dir: &'a Path,
    keep: bool,
    token: &'a str,
    alice: &'a str,
    bob: &'a str,
    table: &'a str,
}

fn print_walkthrough(w: &Walkthrough) {
    let (t, listen, exe) = (w.token, w.listen, exe_word());
    let a = format!("http://{}", w.admin);
    let audit = shell_word(&w.audit.display().to_string());
    println!(
        "portcullis demo: tickets API on {}, proxy on http://{listen}, admin on {a}",
        w.api
    );
    println!("config: {} (the bundled routes.yaml)\n", w.file.display());
    print!("{}", w.table);
    println!("\nagent token for support-bot (profile support-drafter): {t}");
    println!("operators: alice (viewer, approver, admin) and bob (viewer, approver); paste these two lines into your shell:");
    println!("  ALICE={}\n  BOB={}\n", w.alice, w.bob);
    println!("operator page: {a}/ui  (sign in with alice's token, the value of ALICE above; bob's for the second approval)");
    println!(
        "audit trail:   {}  (read it: {exe} audit tail {audit}; check it: {exe} audit verify {audit})",
        w.audit.display()
    );
    if w.keep {
        println!(
            "temp dir:      {} (kept on exit: --keep)\n",
            w.dir.display()
        );
    } else {
        println!(
            "temp dir:      {} (deleted when the demo exits; --keep keeps it)\n",
            w.dir.display()
        );
    }
    println!("try, as the agent:");
    println!("  curl -s -H 'Authorization: Bearer {t}' http://{listen}/tickets/42                 # allow (low)");
    println!("  curl -s -H 'Authorization: Bearer {t}' -X POST http://{listen}/tickets/42/comments -d '{{\"body\":\"hi\"}}'   # allow (medium)");
    println!("  curl -s -H 'Authorization: Bearer {t}' -X DELETE http://{listen}/tickets/42       # deny: profile_deny");
    println!("  curl -s -H 'Authorization: Bearer {t}' http://{listen}/admin/users                 # deny: out_of_scope");
    println!("  curl -s http://{listen}/tickets/42                                                  # 401: no credential");
    println!(
        "a refund parks (202) until two operators approve; the agent then fetches the result:"
    );
    println!("  curl -s -H 'Authorization: Bearer {t}' -X POST http://{listen}/tickets/42/refund -d '{{\"amount\":10}}'");
    println!("  PORTCULLIS_OPERATOR_TOKEN=$ALICE {exe} approvals list --admin {a}");
    println!("  PORTCULLIS_OPERATOR_TOKEN=$ALICE {exe} approvals show ID --admin {a}");
    println!("  PORTCULLIS_OPERATOR_TOKEN=$ALICE {exe} approvals approve ID --comment 'checked the order' --admin {a}");
    println!("  PORTCULLIS_OPERATOR_TOKEN=$BOB {exe} approvals approve ID --admin {a}");
    println!("  curl -s -H 'Authorization: Bearer {t}' 'http://{listen}/_portcullis/approvals/ID?wait=30'");
    println!(
        "  curl -s -H 'Authorization: Bearer {t}' http://{listen}/_portcullis/approvals/ID/result"
    );
    println!("switches: PORTCULLIS_OPERATOR_TOKEN=$ALICE {exe} mode draft-only on --admin {a}");
    println!(
        "(the commands above run this binary by its path; `cargo install --path .` puts \
         `portcullis` on PATH as ~/.cargo/bin/portcullis)"
    );
    println!("Ctrl-C stops the demo.\n");
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_word("/usr/bin/portcullis"), "/usr/bin/portcullis");
        assert_eq!(shell_word("/a b/portcullis"), "'/a b/portcullis'");
        assert_eq!(shell_word("/it's/x"), r"'/it'\''s/x'");
        assert_eq!(shell_word(""), "''");
    }

    #[test]
    fn the_bundled_config_names_the_listeners_the_demo_replaces() {
        assert!(crate::demo::ROUTES_YAML.contains(super::CONFIG_LISTEN));
        assert!(crate::demo::ROUTES_YAML.contains(super::CONFIG_ADMIN_LISTEN));
    }
}
