//! The brokers a benchmark runs: a Mosquitto of its own on a free port (persistence off), and the resident set
//! size of any process, from `/proc`.

use std::net::SocketAddr;
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
        let bin = crate::require_tool("mosquitto");
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let dir = tempfile::tempdir()?;
        let conf = dir.path().join("mosquitto.conf");
        let queue = if unlimited_queue { "max_queued_messages 0\n" } else { "" };
        std::fs::write(
            &conf,
            format!("listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_connections -1\n{queue}"),
        )?;
        let child = Command::new(bin).arg("-c").arg(&conf).stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if Instant::now() > deadline {
                bail!("mosquitto did not start on {addr}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
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
