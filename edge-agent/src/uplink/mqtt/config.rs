//! `[[uplinks]] kind = "mqtt"`.

use std::path::PathBuf;

use serde::Deserialize;

use crate::bridge::config::MqttVersion;
use crate::client_tls::ClientTls;

/// How events are laid out on the upstream broker (the CloudEvents MQTT binding).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MqttMode {
    /// MQTT 5 only: attributes as User Properties, `datacontenttype` as Content Type, the data as the payload.
    Binary,
    /// A JSON-format event as the payload (MQTT 5 marks it with Content Type `application/cloudevents+json`).
    Structured,
}

/// Settings of an upstream MQTT uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// The broker: `mqtt://host[:1883]` or `mqtts://host[:8883]`.
    pub uri: String,
    /// The client id of the session kept at the broker; `meshgate-uplink-{name}` by default.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name at the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the broker.
    #[serde(default)]
    pub password: Option<String>,
    /// `"3.1.1"` or `"5"` (default).
    #[serde(default = "default_version")]
    pub version: MqttVersion,
    /// Topic template: `{subject}`, `{type}`, `{source}`, `{id}`, extensions by name.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The topic of an event whose template renders empty (an event without a subject).
    #[serde(default = "default_fallback_topic")]
    pub default_topic: String,
    /// QoS 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// Binary (the default on MQTT 5) or structured (the default, and the only mode, on 3.1.1).
    #[serde(default)]
    pub mode: Option<MqttMode>,
    /// Publishes awaiting their acknowledgement at once (the broker's Receive Maximum may lower it).
    #[serde(default = "default_inflight")]
    pub inflight: u16,
    /// Keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// MQTT 5: how long the broker keeps the session while the uplink is away, in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// How long connecting may take, and how long a batch may wait without any acknowledgement, before the
    /// attempt counts as failed (the forwarder retries; what is in flight stays in the session).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// TLS for `mqtts://`: the broker's CA (the web roots when unset) and an optional client certificate.
    #[serde(default)]
    pub tls: Option<ClientTls>,
    /// Where events the broker refuses for good go, relative to the data directory (default
    /// `{name}-dead-letter.jsonl`).
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
}

fn default_version() -> MqttVersion {
    MqttVersion::V5
}
fn default_topic() -> String {
    "{subject}".into()
}
fn default_fallback_topic() -> String {
    "meshgate".into()
}
fn default_qos() -> u8 {
    1
}
fn default_inflight() -> u16 {
    64
}
fn default_keep_alive() -> u16 {
    30
}
fn default_session_expiry() -> u32 {
    7 * 24 * 3600
}
fn default_timeout_ms() -> u64 {
    10_000
}

/// Where to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Over TLS (`mqtts://`).
    pub tls: bool,
}

impl MqttUplinkConfig {
    /// The broker's address from `uri`.
    pub fn endpoint(&self) -> Result<Endpoint, String> {
        let (tls, rest) = match self.uri.split_once("://") {
            Some(("mqtt", rest)) => (false, rest),
            Some(("mqtts", rest)) => (true, rest),
            _ => return Err(format!("`{}` is not mqtt://host[:port] or mqtts://host[:port]", self.uri)),
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = match rest.rsplit_once(':') {
            Some((host, port)) if !host.ends_with(']') || host.starts_with('[') => {
                (host, port.parse::<u16>().map_err(|_| format!("`{port}` is not a port"))?)
            }
            _ => (rest, if tls { 8883 } else { 1883 }),
        };
        let host = host.trim_start_matches('[').trim_end_matches(']');
        if host.is_empty() || host.contains(['/', '@', '?']) {
            return Err(format!("`{}` has no usable host", self.uri));
        }
        Ok(Endpoint { host: host.to_string(), port, tls })
    }

    /// The mode in force.
    pub fn mode(&self) -> MqttMode {
        self.mode.unwrap_or(if self.version == MqttVersion::V5 { MqttMode::Binary } else { MqttMode::Structured })
    }

    /// The client id of the session.
    pub fn client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("meshgate-uplink-{}", self.name))
    }

    /// Checks the keys; the error names the key (relative to the uplink's table) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        self.endpoint().map_err(|p| ("uri".to_string(), p))?;
        if !(1..=2).contains(&self.qos) {
            return err("qos", "must be 1 or 2 (confirmed delivery)".into());
        }
        if self.mode() == MqttMode::Binary && self.version == MqttVersion::V311 {
            return err("mode", "binary mode needs MQTT 5 (User Properties); use structured with 3.1.1".into());
        }
        if self.inflight == 0 {
            return err("inflight", "must be at least 1".into());
        }
        if self.keep_alive_secs == 0 {
            return err("keep_alive_secs", "must be at least 1: it is how a silent broker is noticed".into());
        }
        if super::topic::sanitize(&self.default_topic) != self.default_topic || self.default_topic.is_empty() {
            return err("default_topic", "must be a topic name (non-empty, no `+`, `#` or NUL)".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return err("username", "is needed with password".into());
        }
        if let Some(tls) = &self.tls {
            tls.validate()?;
        }
        Ok(())
    }

    /// The dead-letter file's path relative to the data directory.
    pub fn dead_letter_path(&self) -> PathBuf {
        crate::uplink::dead_letter::path_for(&self.name, self.dead_letter_path.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> MqttUplinkConfig {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn uris_modes_and_bad_keys() {
        let c = parse("name = \"up\"\nuri = \"mqtts://broker.example\"\n");
        assert_eq!(c.endpoint(), Ok(Endpoint { host: "broker.example".into(), port: 8883, tls: true }));
        assert_eq!(c.mode(), MqttMode::Binary);
        assert_eq!(c.client_id(), "meshgate-uplink-up");
        assert_eq!(c.validate(), Ok(()));
        let c = parse("name = \"up\"\nuri = \"mqtt://10.0.0.1:1884\"\nversion = \"3.1.1\"\n");
        assert_eq!(c.endpoint().map(|e| e.port), Ok(1884));
        assert_eq!(c.mode(), MqttMode::Structured);
        let bad = |text: &str| parse(text).validate().unwrap_err().0;
        assert_eq!(bad("name = \"up\"\nuri = \"http://x\"\n"), "uri");
        assert_eq!(bad("name = \"up\"\nuri = \"mqtt://x\"\nqos = 0\n"), "qos");
        assert_eq!(bad("name = \"up\"\nuri = \"mqtt://x\"\nkeep_alive_secs = 0\n"), "keep_alive_secs");
        assert_eq!(bad("name = \"up\"\nuri = \"mqtt://x\"\nversion = \"3.1.1\"\nmode = \"binary\"\n"), "mode");
        assert_eq!(bad("name = \"up\"\nuri = \"mqtt://x\"\ndefault_topic = \"a/#\"\n"), "default_topic");
        assert!(toml::from_str::<MqttUplinkConfig>("name = \"up\"\nuri = \"mqtt://x\"\nbogus = 1\n").is_err());
    }
}
