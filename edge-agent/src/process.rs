//! What both binaries do the same way as processes: logging to stderr (`MESHGATE_LOG` filters, human or JSON
//! lines) and waiting for the signal to shut down (Ctrl-C or SIGTERM).

use tracing_subscriber::EnvFilter;

/// Installs the global log subscriber: `MESHGATE_LOG` as the filter (default `info`), JSON lines when `json`.
pub fn init_logging(json: bool) {
    let filter = EnvFilter::try_from_env("MESHGATE_LOG")
        .unwrap_or_else(|_| EnvFilter::new("info,lapin::returned_messages=error"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
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
