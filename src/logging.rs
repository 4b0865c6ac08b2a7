//! The process's log sink: tracing lines go through a bounded queue to one writer
//! thread that owns stderr, so no request ever waits on a blocking write of its log
//! line. A full queue drops lines and counts them (`portcullis_log_lines_dropped_total`).

use crate::cli::LogFormat;
use std::sync::OnceLock;
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::EnvFilter;

/// Lines the queue holds by default (`--log-queue`) before new ones are dropped: a
/// burst of this many lines is absorbed while stderr's reader (a terminal, journald, a
/// container runtime) is slow.
pub const QUEUE_LINES: usize = 16_384;

/// Bytes of lines the writer thread gathers before a write when many are queued.
const WRITE_BUFFER: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Keeps the writer thread alive; dropping it writes out what is queued. Hold it for
/// the life of the process and drop it before `exit`.
pub struct Guard(#[allow(dead_code)] WorkerGuard);

/// Installs the global subscriber: `RUST_LOG` (default `info`), pretty or JSON lines.
pub fn init(format: LogFormat, queue_lines: usize) -> Guard {
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(queue_lines.max(1))
        .thread_name("log-writer")
        // The writer thread drains every queued line, then flushes: under load one
        // write(2) carries many lines, and a lone line still goes out at once.
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => fmt.json().flatten_event(true).init(),
        LogFormat::Pretty => fmt.init(),
    }
    Guard(guard)
}

/// Lines dropped because the queue was full, since start.
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
