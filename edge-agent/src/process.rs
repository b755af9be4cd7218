//! What both binaries do the same way as processes: logging to stderr (`MESHGATE_LOG` filters, human or JSON
//! lines) and waiting for the signal to shut down (Ctrl-C or SIGTERM).

use std::future::Future;
use std::process::ExitCode;

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// The rustls module that warns of an IP address sent as the SNI name.
const SNI_WARNING_TARGET: &str = "rustls::msgs::handshake";

/// How log lines are written (`--log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

/// Installs the global log subscriber: `MESHGATE_LOG` as the filter (default `info`), in `format`.
///
/// Colour codes only when stderr is a terminal (and `NO_COLOR` is unset): a log file or journald gets plain text.
/// rustls' warning about a client that sent an IP address as its SNI name (OpenSSL-based clients such as
/// mosquitto_pub connecting by address do) is left out unless the filter names rustls' handshake module: the
/// gateway does not use SNI, and the line only alarms.
pub fn init_logging(format: LogFormat) {
    let configured = std::env::var("MESHGATE_LOG").ok();
    let mut filter = configured
        .as_deref()
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new("info,lapin::returned_messages=error"));
    if !configured.as_deref().is_some_and(|f| f.contains(SNI_WARNING_TARGET))
        && let Ok(directive) = format!("{SNI_WARNING_TARGET}=error").parse()
    {
        filter = filter.add_directive(directive);
    }
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(std::io::stderr);
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

/// A budget of log lines per second for what an attacker can make happen at will (failed logins, failed TLS
/// handshakes): past it lines are counted, not written, and the next line written says how many were left out.
#[derive(Debug)]
pub struct LogBudget {
    per_second: u32,
    state: std::sync::Mutex<(std::time::Instant, u32, u64)>,
}

impl LogBudget {
    /// A budget of `per_second` lines.
    pub fn new(per_second: u32) -> LogBudget {
        LogBudget { per_second, state: std::sync::Mutex::new((std::time::Instant::now(), 0, 0)) }
    }

    /// Whether a line may be written at `now`; if so, how many were suppressed since the last one written.
    pub fn may_log(&self, now: std::time::Instant) -> Option<u64> {
        let Ok(mut state) = self.state.lock() else { return None };
        let (second, written, suppressed) = &mut *state;
        if now.saturating_duration_since(*second) >= std::time::Duration::from_secs(1) {
            *second = now;
            *written = 0;
        }
        if *written >= self.per_second {
            *suppressed += 1;
            return None;
        }
        *written += 1;
        Some(std::mem::take(suppressed))
    }
}
