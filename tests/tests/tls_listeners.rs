//! TLS on the device listeners, with certificates made in the test (rcgen): `mosquitto_pub --cafile` over mqtts,
//! client certificates (mTLS) accepted when the gateway's CA signed them and refused when another CA did or when
//! they expired, the certificate's common name as the device identity for ACLs, and CloudEvents over wss.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use meshgate_tests::pika::{PikaLogin, publish_over_tls};
use meshgate_tests::pki::Pki;
use meshgate_tests::{Gateway, require_tool};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// The base configuration with `tls_bind` on every listener and `[tls]` from `pki`.
fn tls_config(base: String, pki: &Pki, mtls: bool, extra: &str) -> String {
    let base = base
        .replace("[listeners.mqtt]\n", "[listeners.mqtt]\ntls_bind = \"127.0.0.1:0\"\n")
        .replace("[listeners.ws]\n", "[listeners.ws]\ntls_bind = \"127.0.0.1:0\"\n")
        .replace("[admin]\n", "[admin]\ntls_bind = \"127.0.0.1:0\"\n");
    format!("{base}{}{extra}", pki.tls_table(mtls))
}

/// A TLS connector trusting the CA in `ca_file`.
fn connector(ca_file: &Path) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let mut roots = rustls::RootCertStore::empty();
    let ca = std::fs::read(ca_file)?;
    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&ca) {
        roots.add(cert?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

/// GET `path` over https, trusting `ca_file`; the whole reply.
async fn https_get(addr: std::net::SocketAddr, ca_file: &Path, path: &str) -> anyhow::Result<String> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut https = connector(ca_file)?.connect(server_name, tcp).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut https, request.as_bytes()).await?;
    let mut reply = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut https, &mut reply).await;
    Ok(reply)
}

/// `mosquitto_pub` over TLS at QoS 1; returns whether it succeeded, and its stderr.
fn mosquitto_pub(port: u16, ca: &Path, client: Option<(&Path, &Path)>, id: &str, topic: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new(require_tool("mosquitto_pub"));
    cmd.args(["-h", "localhost", "-p", &port.to_string(), "-V", "mqttv311", "-q", "1", "-i", id, "-t", topic])
        .args(["-m", "over tls", "--cafile"])
        .arg(ca);
    if let Some((cert, key)) = client {
        cmd.arg("--cert").arg(cert).arg("--key").arg(key);
    }
    match cmd.output() {
        Ok(out) => (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned()),
        Err(e) => (false, e.to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_publishes_over_mqtts_and_clients_reach_wss_and_the_admin_endpoint_over_tls() -> anyhow::Result<()>
{
    let pki = Pki::new()?;
    let gw = Gateway::start_with(|b| tls_config(b, &pki, false, ""))?;
    let (ok, stderr) = mosquitto_pub(gw.listener("mqtts")?.port(), &pki.ca_file, None, "tls-pub", "plant/tls");
    assert!(ok, "mosquitto_pub --cafile over mqtts failed: {stderr}");
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    let data = events[0]["data_base64"].as_str().unwrap_or_default();
    assert_eq!((events[0]["subject"].as_str(), data), (Some("plant/tls"), "b3ZlciB0bHM="), "{}", events[0]);

    // wss and https: tokio-rustls trusting the test CA.
    let connector = connector(&pki.ca_file)?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let reply = https_get(gw.listener("admins")?, &pki.ca_file, "/healthz").await?;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.ends_with("ok\n"), "{reply}");

    let wss = gw.listener("wss")?;
    let tcp = tokio::net::TcpStream::connect(wss).await?;
    let tls = connector.connect(server_name, tcp).await?;
    let mut request = format!("wss://localhost:{}/", wss.port()).into_client_request()?;
    request.headers_mut().insert("sec-websocket-protocol", "cloudevents.json".parse()?);
    let (mut ws, _) = tokio_tungstenite::client_async(request, tls).await?;
    let event = json!({"specversion": "1.0", "id": "wss-1", "source": "/app", "type": "t"});
    ws.send(Message::text(event.to_string())).await?;
    let answer = tokio::time::timeout(Duration::from_secs(10), ws.next()).await?;
    let Some(Ok(Message::Text(text))) = answer else { anyhow::bail!("no answer over wss: {answer:?}") };
    assert_eq!(serde_json::from_str::<Value>(text.as_str())?, json!({"ack": "wss-1"}));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_are_verified_and_name_the_device() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    // Only the device named by its certificate may publish to its own topics; nobody gets in without one.
    let acl = "\n[[auth.acl]]\nuser = \"sensor-9\"\nallow_publish = [\"sensors/sensor-9/#\"]\n";
    let gw = Gateway::start_with(|b| {
        let b = b.replace("allow_anonymous = true", "allow_anonymous = false\nacl_default = \"deny\"");
        tls_config(b, &pki, true, acl)
    })?;
    let port = gw.listener("mqtts")?.port();
    let good = pki.client("sensor-9", false, false)?;
    let foreign = pki.client("sensor-9", false, true)?;
    let expired = pki.client("sensor-9", true, false)?;

    let (ok, stderr) = mosquitto_pub(port, &pki.ca_file, None, "no-cert", "sensors/sensor-9/t");
    assert!(!ok, "no client certificate: refused ({stderr})");
    let (ok, _) = mosquitto_pub(port, &pki.ca_file, Some((&foreign.0, &foreign.1)), "foreign", "sensors/sensor-9/t");
    assert!(!ok, "a certificate from an unknown CA is refused");
    let (ok, _) = mosquitto_pub(port, &pki.ca_file, Some((&expired.0, &expired.1)), "expired", "sensors/sensor-9/t");
    assert!(!ok, "an expired certificate is refused");

    let (ok, stderr) = mosquitto_pub(port, &pki.ca_file, Some((&good.0, &good.1)), "s9", "sensors/sensor-9/temp");
    assert!(ok, "the CA's certificate is accepted without a user name: {stderr}");
    // Allowed only to its own topics: MQTT 3.1.1 acknowledges a refused publish and drops it.
    let (ok, _) = mosquitto_pub(port, &pki.ca_file, Some((&good.0, &good.1)), "s9", "sensors/other/temp");
    assert!(ok);
    let (ok, _) = mosquitto_pub(port, &pki.ca_file, Some((&good.0, &good.1)), "s9", "sensors/sensor-9/hum");
    assert!(ok);
    let events = gw.wait_for_events(2, Duration::from_secs(10))?;
    let subjects: Vec<&str> = events.iter().filter_map(|e| e["subject"].as_str()).collect();
    assert_eq!(subjects, ["sensors/sensor-9/temp", "sensors/sensor-9/hum"], "the ACL saw the certificate's name");
    let (_, metrics) = gw.admin_get("/metrics")?;
    assert!(metrics.contains("meshgate_rejects_total{protocol=\"mqtt\",reason=\"not_authorized\"} 1"), "{metrics}");
    Ok(())
}

/// `auth.clientid_from_certificate`: the certificate's name is the device's client id too; mosquitto_pub with
/// another id is refused (3.1.1 return code 2), with the certificate's name it gets in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_can_name_the_client_id_too() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let gw = Gateway::start_with(|b| {
        let b = b.replace(
            "allow_anonymous = true",
            "allow_anonymous = false
clientid_from_certificate = true",
        );
        tls_config(b, &pki, true, "")
    })?;
    let port = gw.listener("mqtts")?.port();
    let good = pki.client("sensor-9", false, false)?;
    let (ok, stderr) = mosquitto_pub(port, &pki.ca_file, Some((&good.0, &good.1)), "sensor-8", "sensors/a");
    assert!(!ok, "another client id than the certificate's name is refused");
    assert!(stderr.contains("identifier rejected"), "{stderr}");
    let (ok, stderr) = mosquitto_pub(port, &pki.ca_file, Some((&good.0, &good.1)), "sensor-9", "sensors/b");
    assert!(ok, "the certificate's own name: {stderr}");
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(events[0]["subject"], "sensors/b");
    assert!(events[0]["source"].as_str().is_some_and(|s| s.ends_with("/sensor-9")), "{}", events[0]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_served_without_a_restart() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let gw = Gateway::start_with(|b| {
        tls_config(b, &pki, false, "").replace("[tls]\n", "[tls]\nreload_interval_secs = 1\n")
    })?;
    let admins = gw.listener("admins")?;
    assert!(https_get(admins, &pki.ca_file, "/healthz").await?.starts_with("HTTP/1.1 200"));
    // The operator drops in a certificate from another CA, over the same files.
    let renewed = Pki::new()?;
    std::fs::copy(&renewed.server_key, &pki.server_key)?;
    std::fs::copy(&renewed.server_cert, &pki.server_cert)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while https_get(admins, &renewed.ca_file, "/healthz").await.is_err() {
        anyhow::ensure!(std::time::Instant::now() < deadline, "the renewed certificate was never served");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(https_get(admins, &pki.ca_file, "/healthz").await.is_err(), "the old certificate is gone");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_device_logs_in_with_its_certificate_through_sasl_external() -> anyhow::Result<()> {
    let pki = Pki::new()?;
    let acl = "\n[[auth.acl]]\nuser = \"sensor-9\"\nallow_publish = [\"devices/sensor-9/#\"]\n";
    let gw = Gateway::start_with(|b| {
        let b = b
            .replace("allow_anonymous = true", "allow_anonymous = false\nacl_default = \"deny\"")
            .replace("[listeners.amqp]\n", "[listeners.amqp]\ntls_bind = \"127.0.0.1:0\"\n");
        tls_config(b, &pki, true, acl)
    })?;
    let (cert, key) = pki.client("sensor-9", false, false)?;
    let login = PikaLogin::Certificate(&cert, &key);
    publish_over_tls(gw.listener("amqps")?, &pki.ca_file, login, "devices.sensor-9.temp", "21.5").await?;
    let events = gw.wait_for_events(1, Duration::from_secs(10))?;
    assert_eq!(events[0]["source"], "/meshgate/edge-test/amqp/sensor-9", "the certificate named the device");
    assert_eq!(events[0]["subject"], "devices.sensor-9.temp");
    Ok(())
}

/// `METHOD path` over https with a client certificate and no token; the whole reply.
async fn https_as(
    addr: std::net::SocketAddr,
    ca_file: &Path,
    client: (&Path, &Path),
    method: &str,
    path: &str,
) -> anyhow::Result<String> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca_file)? {
        roots.add(cert?)?;
    }
    let certs = rustls::pki_types::CertificateDer::pem_file_iter(client.0)?.collect::<Result<Vec<_>, _>>()?;
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(client.1)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let server_name = rustls::pki_types::ServerName::try_from("localhost")?;
    let mut https = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(server_name, tcp).await?;
    let request =
        format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    tokio::io::AsyncWriteExt::write_all(&mut https, request.as_bytes()).await?;
    let mut reply = String::new();
    let _ = tokio::io::AsyncReadExt::read_to_string(&mut https, &mut reply).await;
    Ok(reply)
}

/// A reload puts a new client CA in force for new handshakes (a bad `[tls]` is refused and the one in force
/// stays), and a client certificate named in `admin.cert_names` opens the admin API over https without a token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_puts_a_new_client_ca_in_force_and_a_listed_certificate_opens_the_admin_api() -> anyhow::Result<()> {
    let (pki, other) = (Pki::new()?, Pki::new()?);
    let token_hash = meshgate_gateway::auth::hash_password("unused-token")?;
    let gw = Gateway::start_with(|b| {
        let b = b
            .replace("[admin]\n", &format!("[admin]\ncert_names = [\"ops-console\"]\ntoken_hash = \"{token_hash}\"\n"));
        tls_config(b, &pki, true, "")
    })?;
    let port = gw.listener("mqtts")?.port();
    let ours = pki.client("dev-a", false, false)?;
    let theirs = other.client("dev-b", false, false)?;
    let ops = pki.client("ops-console", false, false)?;
    let device = pki.client("dev-a", false, false)?;

    let reply = https_as(gw.listener("admins")?, &pki.ca_file, (&ops.0, &ops.1), "GET", "/api/clients").await?;
    assert!(reply.starts_with("HTTP/1.1 200"), "a listed certificate is the administrator: {reply}");
    let reply = https_as(gw.listener("admins")?, &pki.ca_file, (&device.0, &device.1), "GET", "/api/clients").await?;
    assert!(reply.starts_with("HTTP/1.1 401"), "a device's certificate is not: {reply}");

    assert!(mosquitto_pub(port, &pki.ca_file, Some((&ours.0, &ours.1)), "a", "t/a").0);
    assert!(!mosquitto_pub(port, &pki.ca_file, Some((&theirs.0, &theirs.1)), "b", "t/b").0, "unknown CA");

    let config_path = gw.data_dir.join("meshgate.toml");
    let text = std::fs::read_to_string(&config_path)?;
    let ca = |p: &Pki| format!("client_ca_file = \"{}\"", p.ca_file.display());
    // A missing CA file: refused, naming it; the CA in force stays.
    std::fs::write(&config_path, text.replace(&ca(&pki), "client_ca_file = \"/nonexistent/ca.pem\""))?;
    let admins = gw.listener("admins")?;
    let reload = || https_as(admins, &pki.ca_file, (&ops.0, &ops.1), "POST", "/api/reload");
    let reply = reload().await?;
    assert!(reply.starts_with("HTTP/1.1 400") && reply.contains("/nonexistent/ca.pem"), "{reply}");
    assert!(mosquitto_pub(port, &pki.ca_file, Some((&ours.0, &ours.1)), "a", "t/a").0, "the old CA still serves");

    std::fs::write(&config_path, text.replace(&ca(&pki), &ca(&other)))?;
    let reply = reload().await?;
    assert!(reply.starts_with("HTTP/1.1 200") && reply.contains("\"tls\""), "{reply}");
    assert!(mosquitto_pub(port, &pki.ca_file, Some((&theirs.0, &theirs.1)), "b", "t/b").0, "the new CA is in force");
    assert!(!mosquitto_pub(port, &pki.ca_file, Some((&ours.0, &ours.1)), "a", "t/a").0, "the old one is not");
    Ok(())
}
