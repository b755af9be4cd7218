//! The independent CloudEvents HTTP receiver (`python/cloudevents_receiver.py`, the CloudEvents Python SDK)
//! that HTTP uplink tests point meshgate at: started as a child process, its reports read as JSON lines.

use std::io::{BufRead as _, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;

/// The Python receiver, and the events it reports.
pub struct Receiver {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    /// The reports, one per event received (or request that did not parse).
    pub events: mpsc::Receiver<Value>,
}

impl Receiver {
    /// Starts the receiver with the script's `args` (see its usage).
    pub fn start(args: &[&str]) -> anyhow::Result<Receiver> {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/cloudevents_receiver.py");
        let mut child = Command::new("python3")
            .arg(script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .context("python3")?;
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let first = lines.next().context("the receiver printed nothing (cloudevents comes from `.ci/setup`)")??;
        let port = first.strip_prefix("listening ").context("no port line")?.parse()?;
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<Value>(&line) else { continue };
                if tx.send(v).is_err() {
                    break;
                }
            }
        });
        Ok(Receiver { child, port, events })
    }

    /// Collects reported events until `want` were answered 2xx (or `limit` passes); returns all reports.
    pub fn until_delivered(&self, want: usize, limit: Duration) -> anyhow::Result<Vec<Value>> {
        let deadline = Instant::now() + limit;
        let mut all = Vec::new();
        let delivered = |all: &[Value]| all.iter().filter(|e| e["status"].as_u64().is_some_and(|s| s < 300)).count();
        while delivered(&all) < want {
            match self.events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(e) => {
                    if let Some(error) = e.get("error") {
                        bail!("the SDK could not parse a request: {error} ({e})");
                    }
                    all.push(e);
                }
                Err(_) => bail!("only {} of {want} events delivered: {all:?}", delivered(&all)),
            }
        }
        Ok(all)
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
