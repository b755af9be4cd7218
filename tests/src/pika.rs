//! Python's pika as an independent AMQP device over TLS (`tests/python/pika_tls_publish.py`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{Result, ensure};

/// How the pika device identifies itself.
pub enum PikaLogin<'a> {
    /// guest/guest, named by the `connection_name` client property.
    Named(&'a str),
    /// SASL EXTERNAL with this client certificate and key.
    Certificate(&'a Path, &'a Path),
}

/// Publishes `body` to `amq.topic` with `routing_key` over amqps at `addr`, trusting `ca_file`, and waits for the
/// confirm; an error carries pika's output.
pub async fn publish_over_tls(
    addr: SocketAddr,
    ca_file: &Path,
    login: PikaLogin<'_>,
    routing_key: &str,
    body: &str,
) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/python/pika_tls_publish.py");
    let mut cmd = tokio::process::Command::new("python3");
    cmd.arg(script).arg(addr.port().to_string()).arg(ca_file).arg(routing_key).arg(body);
    match login {
        PikaLogin::Named(name) => cmd.arg("--name").arg(name),
        PikaLogin::Certificate(cert, key) => cmd.arg("--cert").arg(cert).arg("--key").arg(key),
    };
    let out = cmd.output().await?;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(
        out.status.success() && stdout.contains("confirmed"),
        "pika over TLS failed (needs python3 with pika; .ci/setup installs it):\n{stdout}\n{stderr}"
    );
    Ok(())
}
