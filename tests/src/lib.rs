//! Support for the end-to-end tests: start the real `meshgate` binary on ephemeral ports with a scratch data
//! directory, read back the addresses it bound, read the CloudEvents its file uplink wrote, and stop it with a
//! signal like an operator would.

pub mod amqp_raw;
pub mod clients;
pub mod cloudevents_receiver;
pub mod edge_agent;
pub mod embassy_link;
pub mod eventmesh;
pub mod firmware;
pub mod load;
pub mod nats;
pub mod otlp;
pub mod pika;
pub mod pki;
pub mod proxy;
pub mod raw;
pub mod ws;

pub use raw::publish_numbered;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The `meshgate` binary, built on first use if the test run did not build it already.
pub fn meshgate_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("meshgate-gateway", "meshgate"))
}

/// The `edge-agent` binary, built on first use if the test run did not build it already.
pub fn edge_agent_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| workspace_bin("meshgate-edge-agent", "edge-agent"))
}

/// Builds (a no-op when current) and returns binary `bin` of workspace package `package`, in the test run's
/// profile.
fn workspace_bin(package: &str, bin: &str) -> PathBuf {
    // target/<profile>/deps/<test> (tests) or target/<profile>/<bin> (the bench) → target/<profile>/<bin>
    let exe = std::env::current_exe().expect("test executable path");
    let dir = exe.parent().expect("target/<profile>");
    let profile_dir = if dir.ends_with("deps") { dir.parent().unwrap_or(dir) } else { dir }.to_path_buf();
    let path = profile_dir.join(bin);
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = Command::new(cargo);
    build.args(["build", "-p", package, "--bin", bin]);
    // `cargo test` sets this for the test process; ring's build script reruns when it changes, so a nested build
    // that inherited it would rebuild ring and everything above it after every outer build.
    build.env_remove("CARGO_MANIFEST_DIR");
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        build.arg("--release");
    }
    // Always ask cargo: it is a no-op when the binary is current, and never runs a stale one.
    let status = build.status().unwrap_or_else(|e| panic!("run cargo build for {bin}: {e}"));
    assert!(status.success(), "building {bin} failed");
    assert!(path.exists(), "{} missing after build", path.display());
    path
}

/// A running gateway.
pub struct Gateway {
    child: Option<Child>,
    /// The MQTT listener's address.
    pub mqtt: SocketAddr,
    /// The AMQP listener's address (the base configuration has one).
    pub amqp: Option<SocketAddr>,
    /// Every announced listener by name (`mqtt`, `mqtts`, `amqp`, `amqps`, `ws`, `wss`, `admin`).
    pub listeners: std::collections::HashMap<String, SocketAddr>,
    /// The admin endpoint's address.
    pub admin: SocketAddr,
    /// The data directory.
    pub data_dir: PathBuf,
    /// Every line the gateway wrote on stderr so far (also echoed to the test's own stderr).
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    /// Removes a scratch data directory on drop.
    _scratch: Option<tempfile::TempDir>,
}

/// The base configuration every test starts from: ephemeral ports, the scratch data dir, anonymous allowed.
/// `[listeners.mqtt]` comes right before `[admin]`, so tests add MQTT keys by inserting them before `[admin]`.
pub fn base_config(data_dir: &Path) -> String {
    format!(
        "[gateway]\nid = \"edge-test\"\ndata_dir = \"{}\"\n\n[listeners.amqp]\nbind = \"127.0.0.1:0\"\n\n[listeners.ws]\nbind = \"127.0.0.1:0\"\n\n[listeners.mqtt]\nbind = \"127.0.0.1:0\"\n\n[admin]\nbind = \"127.0.0.1:0\"\n\n[auth]\nallow_anonymous = true\n",
        data_dir.display()
    )
}

impl Gateway {
    /// Starts a gateway on the base configuration.
    pub fn start() -> Result<Gateway> {
        Gateway::start_with(|base| base)
    }

    /// Starts a gateway on the configuration `edit` makes of the base one.
    pub fn start_with(edit: impl FnOnce(String) -> String) -> Result<Gateway> {
        let scratch = tempfile::tempdir()?;
        let mut gw = Gateway::start_in(scratch.path(), edit)?;
        gw._scratch = Some(scratch);
        Ok(gw)
    }

    /// Starts a gateway whose data directory is `data_dir` (kept after the gateway is gone, so a test can
    /// restart on the same spool).
    pub fn start_in(data_dir: &Path, edit: impl FnOnce(String) -> String) -> Result<Gateway> {
        let filter = std::env::var("MESHGATE_TEST_LOG").unwrap_or_else(|_| "warn,lapin=error".into());
        Gateway::start_logging(data_dir, &filter, edit)
    }

    /// [`Gateway::start_in`] with `filter` as its log filter (`MESHGATE_LOG`), for tests that read its log.
    pub fn start_logging(data_dir: &Path, filter: &str, edit: impl FnOnce(String) -> String) -> Result<Gateway> {
        let config_path = data_dir.join("meshgate.toml");
        std::fs::write(&config_path, edit(base_config(data_dir)))?;
        let mut child = Command::new(meshgate_bin())
            .arg("--config")
            .arg(&config_path)
            .env("MESHGATE_LOG", filter)
            // Not a configuration key: every other MESHGATE_ variable overrides one.
            .env_remove("MESHGATE_TEST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("spawn meshgate")?;
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().context("meshgate stderr")?;
        let lines = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                eprintln!("{line}");
                lines.lock().unwrap_or_else(|p| p.into_inner()).push(line);
            }
        });
        let stdout = child.stdout.take().context("meshgate stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut mqtt = None;
        let mut listeners = std::collections::HashMap::new();
        let mut admin = None;
        let deadline = Instant::now() + Duration::from_secs(20);
        while mqtt.is_none() || admin.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    bail!("meshgate did not announce its listeners (exit: {:?})", child.try_wait());
                }
            };
            let addr = |l: &str| l.rsplit(' ').next().and_then(|a| a.parse::<SocketAddr>().ok());
            // `meshgate: NAME listening on ADDR`; admin is announced last.
            if let Some(name) =
                line.strip_prefix("meshgate: ").and_then(|l| l.split_once(" listening on ")).map(|(n, _)| n)
                && let Some(a) = addr(&line)
            {
                listeners.insert(name.to_string(), a);
                match name {
                    "mqtt" => mqtt = Some(a),
                    "admin" => admin = Some(a),
                    _ => {}
                }
            }
        }
        let (Some(mqtt), Some(admin)) = (mqtt, admin) else { bail!("unparseable announcement") };
        let amqp = listeners.get("amqp").copied();
        Ok(Gateway {
            child: Some(child),
            mqtt,
            amqp,
            listeners,
            admin,
            data_dir: data_dir.to_path_buf(),
            log,
            _scratch: None,
        })
    }

    /// The AMQP listener's address; an error when the configuration has none.
    pub fn amqp(&self) -> Result<SocketAddr> {
        self.amqp.context("this gateway has no AMQP listener")
    }

    /// The address of the listener announced as `name` (`ws`, `wss`, `mqtts`, `amqps`, ...).
    pub fn listener(&self, name: &str) -> Result<SocketAddr> {
        self.listeners.get(name).copied().with_context(|| format!("this gateway announced no `{name}` listener"))
    }

    /// The CloudEvents the default file uplink has written, in order.
    pub fn events(&self) -> Result<Vec<Value>> {
        read_events(&self.data_dir.join("events.jsonl"))
    }

    /// Waits until at least `n` events are written (QoS 0 has no acknowledgement to wait for).
    pub fn wait_for_events(&self, n: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events()?;
            if events.len() >= n || Instant::now() > deadline {
                return Ok(events);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// GET on the admin endpoint; returns the status code and body.
    pub fn admin_get(&self, path: &str) -> Result<(u16, String)> {
        admin_call(self.admin, "GET", path, None, None)
    }

    /// A request to the admin API with the admin `token` and a JSON `body`; returns the status code and the
    /// body read as JSON (`null` when it is not JSON).
    pub fn admin_api(&self, method: &str, path: &str, token: &str, body: Option<&Value>) -> Result<(u16, Value)> {
        let body = body.map(Value::to_string);
        let (status, text) = admin_call(self.admin, method, path, Some(token), body.as_deref())?;
        Ok((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// A figure from `/metrics`, by its full series name (`meshgate_connections{protocol="ws"}`).
    pub fn metric(&self, series: &str) -> Result<f64> {
        let (_, text) = self.admin_get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.strip_prefix(' ')).and_then(|v| v.parse().ok()))
            .with_context(|| format!("no series {series} in /metrics:\n{text}"))
    }

    /// Polls a figure until it equals `want` or `timeout` passes; returns the last value.
    pub async fn wait_metric(&self, series: &str, want: f64, timeout: Duration) -> Result<f64> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let v = self.metric(series)?;
            if v == want || tokio::time::Instant::now() > deadline {
                return Ok(v);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until a line of the gateway's log contains every one of `parts`; the line.
    pub fn wait_for_log(&self, parts: &[&str], timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let found = self.log_lines().into_iter().find(|l| parts.iter().all(|p| l.contains(p)));
            if let Some(line) = found {
                return Ok(line);
            }
            if Instant::now() > deadline {
                bail!("no log line with {parts:?}; the log:\n{}", self.log_lines().join("\n"));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line logged so far.
    pub fn log_lines(&self) -> Vec<String> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(std::process::Child::id)
    }

    /// Kills the process with SIGKILL, as a power cut or the OOM killer would, and waits for it.
    pub fn kill(&mut self) -> Result<()> {
        let mut child = self.child.take().context("already stopped")?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }

    /// Polls `/readyz` until it answers `status` (readiness follows background work such as a forwarder's first
    /// attempt); returns the last body.
    pub fn wait_for_readyz(&self, status: u16, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let (got, body) = self.admin_get("/readyz")?;
            if got == status {
                return Ok(body);
            }
            if Instant::now() > deadline {
                bail!("/readyz stayed {got} ({}), expected {status}", body.trim());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        let mut child = self.child.take().context("already stopped")?;
        let status = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                bail!("meshgate did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// One HTTP/1.1 request to an admin endpoint at `addr` (with `Authorization: Bearer TOKEN` and a JSON body when
/// given); returns the status code and the body.
pub fn admin_call(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    let body = body.unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    write!(s, "{head}\r\n{body}")?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).context("HTTP status")?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}

/// Reads a JSON-lines file of events; a missing file is no events.
pub fn read_events(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    // A last line without its newline is being written right now: it is read on the next call.
    let whole = text.rfind('\n').map_or("", |end| &text[..=end]);
    whole.lines().map(|l| serde_json::from_str(l).with_context(|| format!("bad line: {l}"))).collect()
}

/// Runs a command-line tool that the tests need, failing loudly (never skipping) when it is missing.
pub fn require_tool(name: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    match found {
        Some(p) => p,
        None => panic!("`{name}` is required by this test but is not installed (.ci/setup installs it)"),
    }
}
