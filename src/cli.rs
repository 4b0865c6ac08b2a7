//! Command-line verbs (clap). `serve`, `check`, `explain`, `test` and `demo` run
//! locally; runtime verbs talk to the admin API so they work on one node or many.

use crate::admin_client::AdminClient;
use crate::app::App;
use crate::approval::controls;
use crate::config::Snapshot;
use crate::error::Error;
use crate::policy::Switches;
use crate::{demo, explain, identity, server, tooltable};
use clap::{Args, Parser, Subcommand, ValueEnum};
use http::Method;
use serde_json::json;
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(
    name = "portcullis",
    version,
    about = "Put AI agents on real APIs without handing them the keys"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    /// Log lines queued for the writer thread before new ones are dropped (and counted
    /// in `portcullis_log_lines_dropped_total`).
    #[arg(long, global = true, default_value_t = crate::logging::QUEUE_LINES)]
    pub log_queue: usize,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// Where the admin API is and how to authenticate to it.
#[derive(Args, Debug, Clone)]
pub struct AdminOpts {
    /// Admin API base URL.
    #[arg(
        long,
        global = true,
        default_value = "http://127.0.0.1:9090",
        env = "PORTCULLIS_ADMIN"
    )]
    pub admin: String,
    /// File holding the operator token (else PORTCULLIS_OPERATOR_TOKEN).
    #[arg(long, global = true)]
    pub token_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the proxy and admin listeners.
    Serve {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
        /// Threads serving the agent port, each with its own single-threaded runtime
        /// [default: the CPUs this process may run on].
        #[arg(long, env = "PORTCULLIS_WORKERS", value_parser = clap::value_parser!(u16).range(1..=1024))]
        workers: Option<u16>,
    },
    /// Validate the config and print the tool table; exit 1 on error. Secrets that do
    /// not resolve here are noted, not errors (`serve` still refuses to start without them).
    Check {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
        /// Every secret must resolve too (as `serve` requires): exit 1 if one does not.
        #[arg(long)]
        require_secrets: bool,
    },
    /// Dry-run one request for an agent: tool, risk, decision and the rule that decided it.
    Explain {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
        #[arg(long)]
        agent: String,
        /// The request's JSON body (what conditions on `request.body` read).
        #[arg(long, conflicts_with = "body_file")]
        body: Option<String>,
        /// The file holding the request's JSON body.
        #[arg(long)]
        body_file: Option<PathBuf>,
        method: String,
        path: String,
    },
    /// Run policy unit tests (allow/deny/park expectations); exit 1 on any failure.
    Test {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
        file: PathBuf,
    },
    /// Run the proxy with the bundled config in front of a bundled demo API.
    Demo(crate::demo_run::DemoOpts),
    /// Run only the demo tickets API (used by docker-compose.yml).
    #[command(hide = true)]
    DemoApi {
        #[arg(long, default_value = "127.0.0.1:7000")]
        listen: std::net::SocketAddr,
    },
    /// Operator credentials.
    Operators {
        #[command(subcommand)]
        cmd: OperatorsCmd,
    },
    /// Agent credentials.
    Tokens {
        #[command(subcommand)]
        cmd: TokensCmd,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Operator decisions on parked requests.
    Approvals {
        #[command(subcommand)]
        cmd: ApprovalsCmd,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Disable or enable an agent.
    Agents {
        #[command(subcommand)]
        cmd: AgentsCmd,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Pause traffic: all | agent ID | tool PATTERN | tenant ID.
    Pause {
        scope: String,
        target: Option<String>,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Resume traffic paused with `pause`.
    Resume {
        scope: String,
        target: Option<String>,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Draft-only mode: only low-risk tools run.
    Mode {
        /// `draft-only`
        mode: String,
        /// on | off
        state: String,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Signals the proxy raised about agents: list them, acknowledge one.
    Signals {
        #[command(subcommand)]
        cmd: SignalsCmd,
        #[command(flatten)]
        admin: AdminOpts,
    },
    /// Verify or read the audit trail.
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Re-read the config on the node behind --admin.
    Reload {
        #[command(flatten)]
        admin: AdminOpts,
    },
}

#[derive(Subcommand, Debug)]
pub enum OperatorsCmd {
    /// Print a new operator secret and the hash to paste into routes.yaml.
    NewToken { name: String },
}

#[derive(Subcommand, Debug)]
pub enum TokensCmd {
    /// Issue a credential for AGENT (the secret is printed once).
    Issue {
        agent: String,
        #[arg(long, default_value = "24h")]
        ttl: String,
        /// Narrow to these tool patterns (comma-separated).
        #[arg(long, value_delimiter = ',')]
        tools: Option<Vec<String>>,
        #[arg(long)]
        max_risk: Option<String>,
        #[arg(long)]
        max_calls: Option<u64>,
    },
    List {
        /// Print the admin API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    Revoke {
        token_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ApprovalsCmd {
    /// List approvals (default: pending).
    List {
        #[arg(long, default_value = "pending")]
        state: String,
        /// Print the admin API's JSON instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show one request as the operator page does: rationale, votes needed, context,
    /// change, the request as it will be sent, votes, outcome.
    Show {
        id: String,
        /// Print the admin API's JSON instead of the text.
        #[arg(long)]
        json: bool,
    },
    /// Approve (quote --sha256 to make sure you approve what you saw).
    Approve {
        id: String,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        sha256: Option<String>,
    },
    Deny {
        id: String,
        #[arg(long)]
        reason: String,
    },
    /// Record what a human established about an `unknown` outcome.
    Resolve {
        id: String,
        #[arg(long)]
        outcome: String,
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AuditCmd {
    /// Check the hash chain (and signed checkpoints) across FILEs in order; exit 1 on a break.
    Verify {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Environment variable holding the checkpoint HMAC key.
        #[arg(long, default_value = "AUDIT_HMAC_KEY")]
        key_env: String,
        /// The files start at this seq instead of 1 (older files deleted); with --from-hash.
        #[arg(long, requires = "from_hash", value_parser = clap::value_parser!(u64).range(1..))]
        from_seq: Option<u64>,
        /// The `prev` the record at --from-seq must carry, i.e. the `hash` of the record
        /// before it, copied from a record or checkpoint you trust; with --from-seq.
        #[arg(long, requires = "from_seq", value_parser = crate::audit::verify::parse_hash)]
        from_hash: Option<String>,
        /// Files holding no record verify (otherwise an emptied trail is a break).
        #[arg(long)]
        allow_empty: bool,
    },
    /// Print records as a table.
    Tail {
        file: PathBuf,
        #[arg(long)]
        agent: Option<String>,
        #[arg(long)]
        decision: Option<String>,
        #[arg(long)]
        follow: bool,
        /// Full paths (the REQUEST column is otherwise cut at 60 characters).
        #[arg(long)]
        wide: bool,
        /// Print the matching records as they are (JSON lines).
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum SignalsCmd {
    /// List signals, newest first (default: open ones).
    List {
        /// open | acknowledged | all
        #[arg(long, default_value = "open")]
        state: String,
    },
    /// Acknowledge a signal: the same agent and kind may fire again, counted afresh.
    /// A brake it applied stays until lifted (`resume`, `agents enable`, `mode`).
    Ack {
        id: String,
        #[arg(long)]
        note: Option<String>,
    },
}

#[derive(Subcommand, Debug)]
pub enum AgentsCmd {
    Disable { id: String },
    Enable { id: String },
}

/// Runs a verb; the returned code is the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let r = match cli.cmd {
        Cmd::Serve { config, workers } => serve(config, workers).await,
        Cmd::Check {
            config,
            require_secrets,
        } => check(config, require_secrets),
        Cmd::Explain {
            config,
            agent,
            body,
            body_file,
            method,
            path,
        } => {
            let body = match (body, body_file) {
                (Some(b), _) => Ok(Some(b.into_bytes())),
                (None, Some(f)) => std::fs::read(&f)
                    .map(Some)
                    .map_err(|e| Error::Internal(format!("{}: {e}", f.display()))),
                (None, None) => Ok(None),
            };
            body.and_then(|b| explain_cmd(config, &agent, &method, &path, b))
        }
        Cmd::Test { config, file } => policy_test(config, file),
        Cmd::Demo(opts) => crate::demo_run::run(opts).await,
        Cmd::DemoApi { listen } => match demo::start_api_on(listen).await {
            Ok(addr) => {
                println!("demo tickets API on http://{addr}");
                std::future::pending::<()>().await;
                Ok(())
            }
            Err(e) => Err(Error::Internal(format!("demo API: {e}"))),
        },
        Cmd::Operators {
            cmd: OperatorsCmd::NewToken { name },
        } => {
            new_operator(&name);
            Ok(())
        }
        Cmd::Tokens { cmd, admin } => tokens(cmd, admin).await,
        Cmd::Approvals { cmd, admin } => approvals(cmd, admin).await,
        Cmd::Signals { cmd, admin } => signals(cmd, admin).await,
        Cmd::Agents { cmd, admin } => {
            let (id, verb) = match &cmd {
                AgentsCmd::Disable { id } => (id, "disable"),
                AgentsCmd::Enable { id } => (id, "enable"),
            };
            remote(&admin, Method::POST, &format!("/agents/{id}/{verb}"), None).await
        }
        Cmd::Pause {
            scope,
            target,
            admin,
        } => {
            remote(
                &admin,
                Method::POST,
                "/pause",
                Some(json!({"scope": scope, "target": target})),
            )
            .await
        }
        Cmd::Resume {
            scope,
            target,
            admin,
        } => {
            remote(
                &admin,
                Method::POST,
                "/resume",
                Some(json!({"scope": scope, "target": target})),
            )
            .await
        }
        Cmd::Mode { mode, state, admin } => {
            if mode != "draft-only" || !matches!(state.as_str(), "on" | "off") {
                Err(Error::Internal(
                    "usage: portcullis mode draft-only on|off".into(),
                ))
            } else {
                remote(
                    &admin,
                    Method::POST,
                    "/mode",
                    Some(json!({"draft_only": state == "on"})),
                )
                .await
            }
        }
        Cmd::Audit {
            cmd:
                AuditCmd::Verify {
                    files,
                    key_env,
                    from_seq,
                    from_hash,
                    allow_empty,
                },
        } => {
            use crate::audit::verify::{verify, Options, Start};
            let key = std::env::var(&key_env).ok();
            let start = match (from_seq, from_hash) {
                (Some(seq), Some(prev)) => Start { seq, prev },
                _ => Start::default(),
            };
            let opts = Options {
                key: key.as_deref().map(str::as_bytes),
                start,
                allow_empty,
            };
            match verify(&files, &opts) {
                Ok(s) => {
                    print!("{}", s.report(key.is_some()));
                    Ok(())
                }
                Err(b) => Err(Error::Internal(format!("audit chain broken at {b}"))),
            }
        }
        Cmd::Audit {
            cmd:
                AuditCmd::Tail {
                    file,
                    agent,
                    decision,
                    follow,
                    wide,
                    json,
                },
        } => crate::audit::tail::tail(
            &file,
            &crate::audit::tail::Filter { agent, decision },
            crate::audit::tail::Layout { wide, json },
            follow,
        )
        .map_err(|e| Error::Internal(format!("{}: {e}", file.display()))),
        Cmd::Reload { admin } => remote(&admin, Method::POST, "/reload", None).await,
    };
    match r {
        Ok(()) => 0,
        Err(Error::Internal(m)) if m == "policy tests failed" => 1,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn remote(
    admin: &AdminOpts,
    m: Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<(), Error> {
    let v = AdminClient::new(&admin.admin, admin.token_file.as_ref())?
        .call(m, path, body)
        .await?;
    // A terminal would obey a bidirectional control in the agent's text: escape it.
    println!(
        "{}",
        controls::escape_json_text(&serde_json::to_string_pretty(&v).unwrap_or_default())
    );
    Ok(())
}

async fn tokens(cmd: TokensCmd, admin: AdminOpts) -> Result<(), Error> {
    let c = AdminClient::new(&admin.admin, admin.token_file.as_ref())?;
    match cmd {
        TokensCmd::Issue {
            agent,
            ttl,
            tools,
            max_risk,
            max_calls,
        } => {
            let v = c
                .call(Method::POST, "/tokens", Some(json!({"agent": agent, "ttl": ttl, "tools": tools, "max_risk": max_risk, "max_calls": max_calls})))
                .await?;
            let s = |k: &str| {
                v.get(k)
                    .and_then(|x| x.as_str())
                    .unwrap_or_default()
                    .to_string()
            };
            println!("{}", s("secret"));
            for w in v
                .get("warnings")
                .and_then(|w| w.as_array())
                .into_iter()
                .flatten()
            {
                eprintln!("warning: {}", w.as_str().unwrap_or_default());
            }
            eprintln!(
                "id {} for agent {agent}, expires {} — the secret above is shown once",
                s("id"),
                s("expires_at")
            );
            Ok(())
        }
        TokensCmd::List { json } => {
            let v = c.call(Method::GET, "/tokens", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
                return Ok(());
            }
            println!(
                "{:<34} {:<20} {:<8} {:<22} ISSUED_BY",
                "ID", "AGENT", "STATE", "EXPIRES"
            );
            for t in v
                .get("tokens")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
            {
                let s = |k: &str| t.get(k).and_then(|x| x.as_str()).unwrap_or("-").to_string();
                println!(
                    "{:<34} {:<20} {:<8} {:<22} {}",
                    s("id"),
                    s("agent"),
                    s("state"),
                    s("expires_at"),
                    s("issued_by")
                );
            }
            Ok(())
        }
        TokensCmd::Revoke { token_id } => {
            c.call(Method::DELETE, &format!("/tokens/{token_id}"), None)
                .await?;
            println!("revoked {token_id}");
            Ok(())
        }
    }
}

async fn approvals(cmd: ApprovalsCmd, admin: AdminOpts) -> Result<(), Error> {
    let c = AdminClient::new(&admin.admin, admin.token_file.as_ref())?;
    let v = match cmd {
        ApprovalsCmd::List { state, json } => {
            let q = if state == "all" {
                String::new()
            } else {
                format!("?state={state}")
            };
            let v = c.call(Method::GET, &format!("/approvals{q}"), None).await?;
            if !json {
                let list = v.get("approvals").and_then(|t| t.as_array());
                print!(
                    "{}",
                    crate::cli_view::approvals_table(list.map_or(&[][..], Vec::as_slice))
                );
                return Ok(());
            }
            v
        }
        ApprovalsCmd::Show { id, json } => {
            let v = c
                .call(Method::GET, &format!("/approvals/{id}"), None)
                .await?;
            if !json {
                print!("{}", crate::cli_view::approval_text(&v));
                return Ok(());
            }
            v
        }
        ApprovalsCmd::Approve {
            id,
            comment,
            sha256,
        } => {
            c.call(
                Method::POST,
                &format!("/approvals/{id}/approve"),
                Some(json!({"comment": comment, "request_sha256": sha256})),
            )
            .await?
        }
        ApprovalsCmd::Deny { id, reason } => {
            c.call(
                Method::POST,
                &format!("/approvals/{id}/deny"),
                Some(json!({"reason": reason})),
            )
            .await?
        }
        ApprovalsCmd::Resolve {
            id,
            outcome,
            comment,
        } => {
            c.call(
                Method::POST,
                &format!("/approvals/{id}/resolve"),
                Some(json!({"outcome": outcome, "comment": comment})),
            )
            .await?
        }
    };
    println!(
        "{}",
        controls::escape_json_text(&serde_json::to_string_pretty(&v).unwrap_or_default())
    );
    Ok(())
}

async fn signals(cmd: SignalsCmd, admin: AdminOpts) -> Result<(), Error> {
    let c = AdminClient::new(&admin.admin, admin.token_file.as_ref())?;
    match cmd {
        SignalsCmd::List { state } => {
            let v = c
                .call(Method::GET, &format!("/signals?state={state}"), None)
                .await?;
            println!(
                "{:<38} {:<18} {:<16} {:<13} {:<18} {:<21} EVIDENCE",
                "ID", "KIND", "AGENT", "STATE", "ACTION", "AT"
            );
            for s in v
                .get("signals")
                .and_then(|t| t.as_array())
                .into_iter()
                .flatten()
            {
                let g = |k: &str| {
                    s.get(k)
                        .filter(|x| !x.is_null())
                        .map(|x| {
                            x.as_str()
                                .map(str::to_string)
                                .unwrap_or_else(|| x.to_string())
                        })
                        .unwrap_or_else(|| "-".into())
                };
                let evidence = match (g("tool").as_str(), g("window").as_str()) {
                    (t, _) if t != "-" => format!("first call of {t}"),
                    (_, "-") => format!("{} (threshold {})", g("observed"), g("threshold")),
                    (_, w) => format!("{} in {w} (threshold {})", g("observed"), g("threshold")),
                };
                println!(
                    "{:<38} {:<18} {:<16} {:<13} {:<18} {:<21} {} request {}",
                    g("id"),
                    g("kind"),
                    crate::cli_view::spelled(&g("agent")),
                    g("state"),
                    format!("{}:{}", g("action"), g("brake")),
                    g("at"),
                    evidence,
                    g("request_id")
                );
            }
            Ok(())
        }
        SignalsCmd::Ack { id, note } => {
            c.call(
                Method::POST,
                &format!("/signals/{id}/ack"),
                Some(json!({ "note": note })),
            )
            .await?;
            println!("acknowledged {id}");
            Ok(())
        }
    }
}

fn new_operator(name: &str) {
    let secret = format!("{}{}", identity::OPERATOR_PREFIX, identity::random_hex(32));
    let hash = identity::sha256_hex(&secret);
    println!("secret (give to {name}; shown once): {secret}");
    println!("routes.yaml:");
    println!("  operators:");
    println!("    - {{ name: {name}, token_sha256: \"{hash}\", roles: [viewer, approver] }}");
}

async fn serve(path: PathBuf, workers: Option<u16>) -> Result<(), Error> {
    let snap = Snapshot::load(&path)?;
    if !snap.admin_listen.ip().is_loopback() && snap.admin_tls.is_none() {
        tracing::warn!(
            admin = %snap.admin_listen,
            "the admin listener is off loopback without admin_tls (admin_trusted_network: true): \
             operator tokens cross this network in clear text"
        );
    }
    // Both ports first: a taken port fails the start before the store or the audit
    // trail creates anything on disk.
    let bound = server::bind(&snap).await?;
    let app = App::start(snap, path).await?;
    server::serve_bound(app, bound, workers.map(usize::from)).await
}

fn check(path: PathBuf, require_secrets: bool) -> Result<(), Error> {
    if require_secrets {
        let snap = Snapshot::load(&path)?;
        print!("{}", tooltable::render(&snap));
        return Ok(());
    }
    let (snap, unchecked) = Snapshot::load_offline(&path)?;
    print!("{}", tooltable::render(&snap));
    for e in &unchecked {
        println!("note: secret not checked: {e}");
    }
    if !unchecked.is_empty() {
        println!(
            "note: {} secret(s) not checked here; `serve` refuses to start until they resolve \
             (`check --require-secrets` checks them as `serve` does)",
            unchecked.len()
        );
    }
    Ok(())
}

fn explain_cmd(
    path: PathBuf,
    agent: &str,
    method: &str,
    target: &str,
    body: Option<Vec<u8>>,
) -> Result<(), Error> {
    // Deciding needs no secret: explain works offline, without the upstream credentials.
    let (snap, _) = Snapshot::load_offline(&path)?;
    let body = body.map(explain::json_body);
    let e = explain::explain_with(
        &snap,
        &Switches::default(),
        agent,
        method,
        target,
        body.as_ref(),
    )?;
    println!("{e}");
    Ok(())
}

fn policy_test(path: PathBuf, file: PathBuf) -> Result<(), Error> {
    let (snap, _) = Snapshot::load_offline(&path)?;
    let text = std::fs::read_to_string(&file)
        .map_err(|e| Error::Internal(format!("{}: {e}", file.display())))?;
    let cases =
        explain::parse_cases(&file.display().to_string(), &text).map_err(Error::Internal)?;
    let dir = file.parent().unwrap_or(std::path::Path::new("."));
    let (report, passed) = explain::run_cases(&snap, &cases, dir);
    print!("{report}");
    if passed {
        Ok(())
    } else {
        Err(Error::Internal("policy tests failed".into()))
    }
}
