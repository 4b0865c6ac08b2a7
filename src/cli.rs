//! Command-line verbs (clap). `serve`, `check` and `demo` run locally; runtime verbs
//! talk to the admin API.

use crate::app::App;
use crate::config::{self, Snapshot};
use crate::error::Error;
use crate::{demo, server, tooltable};
use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

#[derive(Parser, Debug)]
#[command(name = "portcullis", version, about = "Put AI agents on real APIs without handing them the keys")]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Pretty)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the proxy and admin listeners.
    Serve {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
    },
    /// Validate the config and print the tool table; exit 1 on error.
    Check {
        #[arg(long, default_value = "routes.yaml")]
        config: PathBuf,
    },
    /// Run the proxy with the bundled config in front of a bundled demo API.
    Demo,
}

/// Runs a verb; the returned code is the process exit code.
pub async fn run(cli: Cli) -> i32 {
    let r = match cli.cmd {
        Cmd::Serve { config } => serve(config).await,
        Cmd::Check { config } => check(config),
        Cmd::Demo => demo().await,
    };
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e}");
            1
        }
    }
}

async fn serve(path: PathBuf) -> Result<(), Error> {
    let snap = Snapshot::load(&path)?;
    let app = App::start(snap, path).await?;
    server::serve(app).await
}

fn check(path: PathBuf) -> Result<(), Error> {
    let snap = Snapshot::load(&path)?;
    print!("{}", tooltable::render(&snap));
    Ok(())
}

async fn demo() -> Result<(), Error> {
    let api = demo::start_api().await.map_err(|e| Error::Internal(format!("demo API: {e}")))?;
    let dir = std::env::temp_dir().join(format!("portcullis-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| Error::Internal(format!("{}: {e}", dir.display())))?;
    let file = dir.join("routes.yaml");
    let text = demo::ROUTES_YAML.replace("http://127.0.0.1:7000/v2", &format!("http://{api}/v2"));
    std::fs::write(&file, &text).map_err(|e| Error::Internal(format!("{}: {e}", file.display())))?;
    let env = |name: &str| match name {
        "TICKETS_API_KEY" => Some(demo::DEMO_UPSTREAM_KEY.to_string()),
        other => config::process_env(other),
    };
    let snap = Snapshot::load_with(&file, &env)?;
    let (listen, admin) = (snap.listen, snap.admin_listen);
    println!("portcullis demo: tickets API on {api}, proxy on http://{listen}, admin on http://{admin}");
    println!("config: {} (a copy of the bundled routes.yaml)\n", file.display());
    print!("{}", tooltable::render(&snap));
    println!("\ntry:");
    println!("  curl -s http://{listen}/tickets/42");
    println!("  curl -s -X POST http://{listen}/tickets/42/comments -d '{{\"body\":\"hi\"}}'");
    println!("  curl -s -X POST http://{listen}/tickets/42/refund");
    println!("  curl -s http://{listen}/nowhere            # no_route: never forwarded");
    println!("  curl -s --path-as-is http://{listen}/tickets/../admin/users   # refused: dot segment\n");
    let app = App::start(snap, file).await?;
    server::serve(app).await
}
