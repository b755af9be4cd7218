//! NATS JetStream for the tests: the machine's server on 127.0.0.1:4222 (`.ci/setup` starts it), a private
//! server of the same binary that a test may kill and restart, and the independent reader in
//! `python/nats_stream_events.py` (nats-py and the CloudEvents Python SDK).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use serde_json::Value;

/// The machine's NATS server.
pub const SHARED_URL: &str = "nats://127.0.0.1:4222";

/// The NATS server binary (Debian's `nats-server` package).
pub const SERVER_BIN: &str = "/usr/sbin/nats-server";

/// A private `nats-server -js` on its own port and store directory.
pub struct NatsServer {
    /// `nats://127.0.0.1:PORT`.
    pub url: String,
    port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

fn wait_for_port(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            bail!("nats-server did not listen on {port} within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

impl NatsServer {
    /// Starts one on a free port.
    pub fn start() -> Result<NatsServer> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let mut server =
            NatsServer { url: format!("nats://127.0.0.1:{port}"), port, store: tempfile::tempdir()?, child: None };
        server.restart()?;
        Ok(server)
    }

    /// (Re)starts the server on the same port and store.
    pub fn restart(&mut self) -> Result<()> {
        let store: PathBuf = self.store.path().to_path_buf();
        let child = Command::new(SERVER_BIN)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("{SERVER_BIN} (Debian's nats-server) must be installed for this test"))?;
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(10))
    }

    /// Kills it with SIGKILL and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("not running")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A JetStream context on `url`; a clear error when no server answers.
pub async fn jetstream(url: &str) -> Result<async_nats::jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .map_err(|e| anyhow::anyhow!("NATS with JetStream must run on {url} for this test: {e}"))?;
    Ok(async_nats::jetstream::new(client))
}

/// How many messages `stream` holds (0 while it does not exist).
pub async fn stream_messages(js: &async_nats::jetstream::Context, stream: &str) -> u64 {
    match js.get_stream(stream).await {
        Ok(mut s) => s.info().await.map_or(0, |i| i.state.messages),
        Err(_) => 0,
    }
}

/// Polls until `stream` holds at least `want` messages; returns the last count.
pub async fn wait_for_messages(js: &async_nats::jetstream::Context, stream: &str, want: u64, limit: Duration) -> u64 {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let n = stream_messages(js, stream).await;
        if n >= want || tokio::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every message of `stream`, read and parsed by the Python reader: `{id, type, deviceid, data, seq}` each.
pub async fn read_with_python(stream: &str, url: &str) -> Result<Vec<Value>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/nats_stream_events.py");
    let out = tokio::process::Command::new("python3").arg(script).arg(stream).arg(url).output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    anyhow::ensure!(
        out.status.success(),
        "the Python reader failed (nats-py and cloudevents come from `.ci/setup`): {stderr}"
    );
    Ok(String::from_utf8(out.stdout)?.lines().map(serde_json::from_str).collect::<Result<_, _>>()?)
}
