//! The client's firmware (`no_std-client/firmware`) on QEMU's `mps2-an386`: build a binary for
//! `thumbv7em-none-eabihf`, and run it with its UART connected to a TCP server (the gateway) and semihosting
//! printing to a pipe and setting the exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, ensure};

/// The firmware crate's directory.
pub fn crate_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../no_std-client/firmware")
}

/// Builds firmware binary `bin` (release: opt-level z, LTO) with `features`; returns the ELF's path.
pub fn build(bin: &str, features: &[&str]) -> Result<PathBuf> {
    let dir = crate_dir();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = std::process::Command::new(cargo);
    cmd.current_dir(&dir).args(["build", "--release", "--locked", "--bin", bin]);
    if !features.is_empty() {
        cmd.arg("--features").arg(features.join(","));
    }
    // The outer test build's settings are not the firmware's.
    for var in ["RUSTFLAGS", "CARGO_BUILD_TARGET", "CARGO_TARGET_DIR", "CARGO_ENCODED_RUSTFLAGS"] {
        cmd.env_remove(var);
    }
    let out = cmd.output().context("run cargo for the firmware")?;
    ensure!(
        out.status.success(),
        "building firmware `{bin}` failed (rustup target add thumbv7em-none-eabihf; .ci/setup does):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(dir.join("target/thumbv7em-none-eabihf/release").join(bin))
}

/// What the board is wired to.
pub enum Wiring<'a> {
    /// Nothing: the UART goes nowhere, no network card is plugged in.
    Alone,
    /// The UART, as a TCP connection to this peer (`-serial tcp:`).
    Uart(SocketAddr),
    /// The LAN9118 on QEMU's user network (the host is 10.0.2.2 to the firmware), with these `name=value`
    /// arguments on the semihosting command line.
    Ethernet(&'a [String]),
}

/// Starts QEMU's `mps2-an386` on `elf`, wired as asked; stdout carries what the firmware prints through
/// semihosting, the exit code its verdict.
pub fn run(elf: &Path, wiring: Wiring<'_>) -> Result<tokio::process::Child> {
    let qemu = crate::require_tool("qemu-system-arm");
    let mut semihosting = String::from("enable=on,target=native,arg=fw");
    let (serial, nic) = match wiring {
        Wiring::Alone => ("null".to_string(), "none"),
        Wiring::Uart(peer) => (format!("tcp:{peer}"), "none"),
        Wiring::Ethernet(args) => {
            for arg in args {
                semihosting += &format!(",arg={arg}");
            }
            ("none".to_string(), "user")
        }
    };
    tokio::process::Command::new(qemu)
        .args(["-cpu", "cortex-m4", "-machine", "mps2-an386", "-nographic", "-monitor", "none"])
        .args(["-serial", &serial, "-nic", nic, "-semihosting-config", &semihosting, "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start qemu-system-arm")
}

/// Waits at most `limit` for the firmware to end; returns its exit status and what it printed (stdout, then
/// QEMU's stderr).
pub async fn finished(qemu: tokio::process::Child, limit: Duration) -> Result<(ExitStatus, String)> {
    let out = tokio::time::timeout(limit, qemu.wait_with_output()).await.context("the firmware hung")??;
    let printed = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status, printed))
}

/// [`finished`], failing unless the firmware exited with 0; returns what it printed.
pub async fn passed(qemu: tokio::process::Child, limit: Duration) -> Result<String> {
    let (status, printed) = finished(qemu, limit).await?;
    ensure!(status.success(), "the firmware failed ({status:?}):\n{printed}");
    Ok(printed)
}
