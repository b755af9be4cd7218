//! The client's firmware (`no_std-client/firmware`) on QEMU's `mps2-an386`: build a binary for
//! `thumbv7em-none-eabihf`, and run it with its UART connected to a TCP server (the gateway) and semihosting
//! printing to a pipe and setting the exit code.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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

/// Starts QEMU on `elf` with the board's LAN9118 on QEMU's user network (the host is 10.0.2.2 to the firmware)
/// and `args` on the semihosting command line; stdout carries what the firmware prints, the exit code its
/// verdict.
pub fn run_networked(elf: &Path, args: &[String]) -> Result<tokio::process::Child> {
    let qemu = crate::require_tool("qemu-system-arm");
    let mut semihosting = String::from("enable=on,target=native,arg=fw");
    for arg in args {
        semihosting += &format!(",arg={arg}");
    }
    tokio::process::Command::new(qemu)
        .args(["-cpu", "cortex-m4", "-machine", "mps2-an386", "-nographic", "-monitor", "none", "-serial", "none"])
        .args(["-semihosting-config", &semihosting, "-nic", "user", "-kernel"])
        .arg(elf)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start qemu-system-arm")
}

/// Starts QEMU on `elf` with the board's UART connected to `uart_peer` over TCP; stdout carries what the
/// firmware prints through semihosting, the exit code its verdict.
pub fn run(elf: &Path, uart_peer: SocketAddr) -> Result<tokio::process::Child> {
    let qemu = crate::require_tool("qemu-system-arm");
    tokio::process::Command::new(qemu)
        .args(["-cpu", "cortex-m4", "-machine", "mps2-an386", "-nographic", "-monitor", "none"])
        .args(["-semihosting-config", "enable=on,target=native"])
        .arg("-serial")
        .arg(format!("tcp:{uart_peer}"))
        .arg("-kernel")
        .arg(elf)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .context("start qemu-system-arm")
}
