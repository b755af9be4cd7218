//! The `edge-agent` binary as tests run it: started on a configuration file in a data directory, ready once every
//! bridge announced its subscription, killed with SIGKILL or dropped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// A running `edge-agent`.
pub struct EdgeAgent {
    child: Option<Child>,
    /// The data directory (spool, `events.jsonl` of the default file uplink).
    pub data_dir: PathBuf,
    /// The admin endpoint's address, when the configuration has `[admin]`.
    pub admin: Option<std::net::SocketAddr>,
}

impl EdgeAgent {
    /// Writes `config` to `data_dir/edge-agent.toml`, starts the agent on it and waits until `bridges` bridges
    /// announced `edge-agent: bridge NAME subscribed at ...`.
    pub fn start_in(data_dir: &Path, config: &str, bridges: usize) -> Result<EdgeAgent> {
        let config_path = data_dir.join("edge-agent.toml");
        std::fs::write(&config_path, config)?;
        let mut child = Command::new(crate::edge_agent_bin())
            .arg("--config")
            .arg(&config_path)
            .env("MESHGATE_LOG", std::env::var("MESHGATE_TEST_LOG").unwrap_or_else(|_| "warn".into()))
            .env_remove("MESHGATE_TEST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("spawn edge-agent")?;
        let stdout = child.stdout.take().context("edge-agent stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready = 0;
        let mut admin = None;
        while ready < bridges {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("edge-agent: bridge ") && line.contains(" subscribed at ") => ready += 1,
                // Announced before the bridges start.
                Ok(line) if line.starts_with("edge-agent: admin listening on ") => {
                    admin = line.rsplit(' ').next().and_then(|a| a.parse().ok());
                }
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    bail!("edge-agent did not announce its bridges (exit: {:?})", child.try_wait());
                }
            }
        }
        Ok(EdgeAgent { child: Some(child), data_dir: data_dir.to_path_buf(), admin })
    }

    /// The events the default file uplink wrote so far.
    pub fn events(&self) -> Result<Vec<Value>> {
        crate::read_events(&self.data_dir.join("events.jsonl"))
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Kills the process with SIGKILL and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for EdgeAgent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
