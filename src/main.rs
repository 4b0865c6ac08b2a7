//! The `portcullis` binary: parse the CLI, set up logging and TLS, run, exit.

use clap::Parser;
use portcullis::cli::{self, Cli};

/// mimalloc: glibc malloc's cross-thread frees and consolidation were ~9 % of the
/// proxy's CPU on the allowed path (records are built on a worker and freed by the
/// audit writer); see bench/README.md.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    // Where transparent huge pages are `always` (Debian's default), mimalloc's 2-MiB
    // aligned regions fault in whole huge pages: 1,000 idle agent connections took
    // 75 MiB instead of 44. Best effort: a kernel without the prctl keeps its default.
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let log = portcullis::logging::init(cli.log_format, cli.log_queue);
    // Single-threaded: `serve` starts one more single-threaded runtime per CPU for the
    // agent port when it has more than one CPU (src/server.rs says why).
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            drop(log);
            std::process::exit(1);
        }
    };
    let code = rt.block_on(cli::run(cli));
    // Writes out the queued log lines; `exit` runs no destructors.
    drop(log);
    std::process::exit(code);
}
