//! `meshgate check`, beyond the file's syntax and values: what start would meet on this host. The TLS
//! certificate, key and CA files are read and parsed as the listeners would, and so are the client certificates
//! of uplinks; `gateway.data_dir` must be a writable directory (or creatable); every bind address must be one of
//! this host's. A port another process holds is only a warning: `check` is usually run beside the gateway it is
//! about to restart.

use std::net::SocketAddr;
use std::path::Path;

use crate::config::Config;

/// One thing `check` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// The dotted key at fault.
    pub key: String,
    /// What is wrong.
    pub problem: String,
    /// Whether start would fail on it (else it is a warning).
    pub fatal: bool,
}

impl Finding {
    fn error(key: impl Into<String>, problem: impl Into<String>) -> Finding {
        Finding { key: key.into(), problem: problem.into(), fatal: true }
    }
}

/// Everything `config` would meet at start on this host, errors and warnings, in the file's order.
pub fn check(config: &Config) -> Vec<Finding> {
    let mut found = Vec::new();
    if let Some(tls) = &config.tls
        && let Err(e) = crate::tls::ServerTls::new(tls)
    {
        // The acceptor's errors start with the key (`tls.cert_file: ...`).
        let text = format!("{e:#}");
        let (key, problem) = text.split_once(": ").unwrap_or(("tls", text.as_str()));
        found.push(Finding::error(key, problem));
    }
    for (i, uplink) in config.uplinks.iter().enumerate() {
        if let Some(tls) = uplink.client_tls()
            && let Err((key, problem)) = meshgate_edge_agent::client_tls::client_config(tls)
        {
            found.push(Finding::error(format!("uplinks[{i}].{key}"), problem));
        }
    }
    if let Err(problem) = writable_dir(&config.gateway.data_dir) {
        found.push(Finding::error("gateway.data_dir", problem));
    }
    for (key, addr) in binds(config) {
        if let Some(f) = bindable(key, addr) {
            found.push(f);
        }
    }
    found
}

/// Every configured bind address with its key.
fn binds(config: &Config) -> Vec<(&'static str, SocketAddr)> {
    let l = &config.listeners;
    let admin = config.admin.as_ref();
    [
        ("listeners.mqtt.bind", l.mqtt.as_ref().map(|c| c.bind)),
        ("listeners.mqtt.tls_bind", l.mqtt.as_ref().and_then(|c| c.tls_bind)),
        ("listeners.amqp.bind", l.amqp.as_ref().map(|c| c.bind)),
        ("listeners.amqp.tls_bind", l.amqp.as_ref().and_then(|c| c.tls_bind)),
        ("listeners.ws.bind", l.ws.as_ref().map(|c| c.bind)),
        ("listeners.ws.tls_bind", l.ws.as_ref().and_then(|c| c.tls_bind)),
        ("admin.bind", admin.map(|a| a.bind)),
        ("admin.tls_bind", admin.and_then(|a| a.tls_bind)),
    ]
    .into_iter()
    .filter_map(|(k, a)| a.map(|a| (k, a)))
    .collect()
}

/// Whether `addr` can be listened on: an address of this host (else an error), its port free (else a warning).
fn bindable(key: &str, addr: SocketAddr) -> Option<Finding> {
    if let Err(e) = std::net::TcpListener::bind(SocketAddr::new(addr.ip(), 0)) {
        return Some(Finding::error(
            key,
            format!("cannot listen on {}: {e} (not an address of this host?)", addr.ip()),
        ));
    }
    if addr.port() == 0 {
        return None;
    }
    match std::net::TcpListener::bind(addr) {
        Ok(_) => None,
        Err(e) => Some(Finding {
            key: key.into(),
            problem: format!("{addr} is taken now ({e}): start will fail unless it is freed (a running gateway?)"),
            fatal: false,
        }),
    }
}

/// Whether `dir` is (or can be made) a directory this process can write in; touches nothing that exists.
fn writable_dir(dir: &Path) -> Result<(), String> {
    if dir.exists() {
        if !dir.is_dir() {
            return Err(format!("{} is not a directory", dir.display()));
        }
        let probe = dir.join(format!(".meshgate-check-{}", std::process::id()));
        std::fs::write(&probe, b"").map_err(|e| format!("cannot write in {}: {e}", dir.display()))?;
        let _ = std::fs::remove_file(&probe);
        return Ok(());
    }
    // Start creates it: the nearest existing ancestor must let us.
    let parent = dir.ancestors().skip(1).find(|a| a.as_os_str().is_empty() || a.exists());
    let parent = parent.filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    writable_dir(parent).map_err(|e| format!("{} does not exist and cannot be created: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str, data_dir: &Path) -> Config {
        let text = format!("[gateway]\ndata_dir = \"{}\"\n{extra}", data_dir.display());
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), std::iter::empty()).unwrap()
    }

    #[test]
    fn a_healthy_configuration_has_nothing_to_say() {
        let dir = tempfile::tempdir().unwrap();
        let found = check(&config("[listeners.mqtt]\nbind = \"localhost:0\"\n", dir.path()));
        assert!(found.iter().all(|f| !f.fatal), "{found:?}");
    }

    #[test]
    fn what_start_would_refuse_is_found_by_key() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("garbage.pem");
        std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n").unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, "").unwrap();
        let extra = format!(
            "[listeners.mqtt]\nbind = \"192.0.2.1:1883\"\n\n[tls]\ncert_file = \"{p}\"\nkey_file = \"{p}\"\n",
            p = pem.display()
        );
        let found = check(&config(&extra, &file));
        let keys: Vec<&str> = found.iter().filter(|f| f.fatal).map(|f| f.key.as_str()).collect();
        assert!(keys.contains(&"tls.cert_file"), "{found:?}");
        assert!(keys.contains(&"gateway.data_dir"), "{found:?}");
        assert!(keys.contains(&"listeners.mqtt.bind"), "{found:?}");
    }

    #[test]
    fn a_port_held_by_another_process_is_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = held.local_addr().unwrap().port();
        let found = check(&config(&format!("[listeners.mqtt]\nbind = \"127.0.0.1:{port}\"\n"), dir.path()));
        let f = found.iter().find(|f| f.key == "listeners.mqtt.bind").expect("found");
        assert!(!f.fatal, "{f:?}");
    }
}
