//! What both binaries do the same way as processes: logging to stderr (`MESHGATE_LOG` filters, human or JSON
//! lines) and waiting for the signal to shut down (Ctrl-C or SIGTERM).

use std::future::Future;
use std::process::ExitCode;

use tracing_subscriber::EnvFilter;

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global log subscriber: `MESHGATE_LOG` as the filter (default `info`), in `format`.
pub fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,lapin::returned_messages=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if format == LogFormat::Json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Runs `service` (which ends at [`shutdown_signal`] or on a fatal error) on a multi-threaded tokio runtime; the
/// process's exit code says how it ended, and a fatal error is printed on stderr after `name`.
pub fn run_service<E: std::fmt::Display>(name: &str, service: impl Future<Output = Result<(), E>>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(service);
    // Everything owed was flushed within the grace periods; do not wait on a blocking task that is stuck (a
    // writer waiting for space on a full spool, say).
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM (what a service manager sends).
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
