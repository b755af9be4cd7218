//! The brokers a benchmark runs beside meshgate: a Mosquitto and a rumqttd of its own on a free port (neither
//! stores anything), and what `/proc` says of any process: its resident set size, its CPU time, and pinning it to
//! cores.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A Mosquitto of our own on a free port, persistence off.
pub struct Mosquitto {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Mosquitto {
    /// Starts one; `unlimited_queue` sets `max_queued_messages 0` (no limit) instead of its default of 1000.
    pub fn start(unlimited_queue: bool) -> Result<Mosquitto> {
        Mosquitto::start_with(if unlimited_queue { "max_queued_messages 0\n" } else { "" })
    }

    /// Starts one with `extra` lines of configuration.
    pub fn start_with(extra: &str) -> Result<Mosquitto> {
        let bin = crate::require_tool("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n{extra}"),
        )?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let addr = wait_for_listener(port, "mosquitto")?;
        Ok(Mosquitto { child, addr, _dir: dir })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The first line of `mosquitto -h` (its version).
    pub fn version() -> String {
        Command::new("mosquitto")
            .arg("-h")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).lines().next().map(str::to_string))
            .unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// rumqttd (bytebeam's broker in Rust), version 0.20.0, on a free port: MQTT 3.1.1 only (its `v4` server), no
/// persistence (messages live in its in-memory commit log), no console or metrics listener.
pub struct Rumqttd {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

/// Where `benches/suite` installs rumqttd (`cargo install rumqttd --version 0.20.0 --root target/bench-tools`).
pub const RUMQTTD: &str = "target/bench-tools/bin/rumqttd";

impl Rumqttd {
    /// Starts the binary at `bin`.
    pub fn start(bin: &Path) -> Result<Rumqttd> {
        if !bin.is_file() {
            bail!("rumqttd is not installed at {} (benches/suite installs it)", bin.display());
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("rumqttd.toml");
        // Its own defaults but for the port, 20,000 connections (idle runs), and no delay between accepts (its
        // default of 1 ms would make 10,000 connections take 10 s).
        std::fs::write(
            &conf,
            format!(
                "id = 0\n\n[router]\nid = 0\nmax_connections = 20010\nmax_outgoing_packet_count = 200\n\
                 max_segment_size = 104857600\nmax_segment_count = 10\n\n[v4.1]\nname = \"v4-1\"\n\
                 listen = \"127.0.0.1:{port}\"\nnext_connection_delay_ms = 0\n\n[v4.1.connections]\n\
                 connection_timeout_ms = 60000\nmax_payload_size = 20480\nmax_inflight_count = 100\n\
                 dynamic_filters = true\n"
            ),
        )?;
        let child = Command::new(bin)
            .arg("-q")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let addr = wait_for_listener(port, "rumqttd")?;
        Ok(Rumqttd { child, addr, _dir: dir })
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `rumqttd --version` of the binary at `bin`.
    pub fn version(bin: &Path) -> String {
        Command::new(bin)
            .arg("--version")
            .output()
            .ok()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default()
    }
}

impl Drop for Rumqttd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits up to 10 s for a server on 127.0.0.1:`port`.
fn wait_for_listener(port: u16, name: &str) -> Result<SocketAddr> {
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(addr).is_err() {
        if Instant::now() > deadline {
            bail!("{name} did not start on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(addr)
}

/// Pins every thread of process `pid` to the CPUs in `cpus` (a `taskset` list such as `0` or `1`); threads it
/// starts later inherit it.
pub fn pin(pid: u32, cpus: &str) -> Result<()> {
    let taskset = crate::require_tool("taskset");
    let status = Command::new(taskset)
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .context("taskset")?;
    if !status.success() {
        bail!("taskset could not pin process {pid} to CPU {cpus}");
    }
    Ok(())
}

/// The resident set size of process `pid`, in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).with_context(|| format!("process {pid}"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

/// CPU time process `pid` has used, user and system, in seconds (`utime` + `stime` of `/proc/PID/stat`, counted in
/// USER_HZ, which Linux fixes at 100).
pub fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("process {pid}"))?;
    // The command name may hold spaces and parentheses: the fields counted here start after its last `)`.
    let after_name = stat.rsplit_once(')').map(|(_, rest)| rest).context("no command name in /proc/PID/stat")?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3 (state).
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok()).context("no utime/stime");
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}
