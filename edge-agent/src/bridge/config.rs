//! `[[bridges]]`: the brokers `edge-agent` subscribes to, and the whole `edge-agent` configuration file.

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::{UplinkConfig, validate_mesh};
use crate::forwarder::ForwarderConfig;
use crate::normalize::RuleConfig;
use crate::spool::SpoolConfig;

/// The MQTT protocol level spoken to a source broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
pub enum MqttVersion {
    /// MQTT 3.1.1 (`clean session = false` keeps the session).
    #[serde(rename = "3.1.1")]
    #[default]
    V311,
    /// MQTT 5 (`clean start = false` and a session expiry keep the session).
    #[serde(rename = "5")]
    V5,
}

/// `tls` of a bridge: the broker's CA (the web roots when unset) and an optional client certificate.
pub use crate::client_tls::ClientTls as BridgeTls;

/// One `[[bridges]]` table: a broker, the topics taken from it, and the session kept there.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgeConfig {
    /// Names the bridge in logs, in the events' `bridge` extension, and (by default) in their `source`.
    pub name: String,
    /// The broker's host name or address.
    pub host: String,
    /// The broker's port (1883, or 8883 with `tls`, by default).
    #[serde(default)]
    pub port: Option<u16>,
    /// The protocol level: `"3.1.1"` (default) or `"5"`.
    #[serde(default)]
    pub version: MqttVersion,
    /// The client id of the persistent session on the broker; `meshgate-bridge-{name}` by default. It must stay
    /// the same across restarts, or the broker's queued messages are not drained.
    #[serde(default)]
    pub client_id: Option<String>,
    /// User name at the broker.
    #[serde(default)]
    pub username: Option<String>,
    /// Password at the broker.
    #[serde(default)]
    pub password: Option<String>,
    /// Topic filters subscribed at QoS 1.
    pub topics: Vec<String>,
    /// Keep-alive in seconds.
    #[serde(default = "default_keep_alive")]
    pub keep_alive_secs: u16,
    /// MQTT 5: how long the broker keeps the session (and queues messages) while the bridge is away, in seconds.
    #[serde(default = "default_session_expiry")]
    pub session_expiry_secs: u32,
    /// Messages received and not yet acknowledged to the broker at most (they wait for the spool's fsync).
    #[serde(default = "default_max_inflight")]
    pub max_inflight: u16,
    /// The longest wait between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Connect over TLS.
    #[serde(default)]
    pub tls: Option<BridgeTls>,
}

fn default_keep_alive() -> u16 {
    30
}

fn default_session_expiry() -> u32 {
    7 * 24 * 3600
}

fn default_max_inflight() -> u16 {
    100
}

fn default_reconnect_max() -> u64 {
    10_000
}

impl BridgeConfig {
    /// The port to connect to.
    pub fn port(&self) -> u16 {
        self.port.unwrap_or(if self.tls.is_some() { 8883 } else { 1883 })
    }

    /// `host:port` of the broker, for logs.
    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.port())
    }

    /// The client id of the bridge's session.
    pub fn client_id(&self) -> String {
        self.client_id.clone().unwrap_or_else(|| format!("meshgate-bridge-{}", self.name))
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        if self.name.is_empty() {
            return err("name", "must not be empty".into());
        }
        if self.topics.is_empty() {
            return err("topics", "needs at least one topic filter".into());
        }
        for (i, filter) in self.topics.iter().enumerate() {
            if let Err(e) = meshgate_protocols::mqtt::topic::validate_filter(filter) {
                return err(&format!("topics[{i}]"), format!("`{filter}` is not a topic filter: {e}"));
            }
        }
        if self.max_inflight == 0 {
            return err("max_inflight", "must be at least 1".into());
        }
        if self.password.is_some() && self.username.is_none() {
            return err("password", "needs a username".into());
        }
        if let Some(tls) = &self.tls
            && tls.cert_file.is_some() != tls.key_file.is_some()
        {
            return err("tls.key_file", "cert_file and key_file go together".into());
        }
        Ok(())
    }
}

/// `[gateway]` as `edge-agent` reads it: the edge host's id and where its data lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentSection {
    /// Goes into every event's `source` and the `gatewayid` extension.
    pub id: String,
    /// The spool and the file uplink's output live here.
    pub data_dir: PathBuf,
    /// Seconds to let the pipeline drain at shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for AgentSection {
    fn default() -> Self {
        AgentSection { id: "edge-1".into(), data_dir: PathBuf::from("./meshgate-data"), shutdown_grace_secs: 10 }
    }
}

/// The `edge-agent` configuration file: the same `[gateway]`, `[[rules]]`, `[[uplinks]]`, `[spool]` and
/// `[forwarder]` tables as `meshgate`'s, plus `[[bridges]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: AgentSection,
    /// `[[bridges]]`: the brokers to take topics from.
    #[serde(default)]
    pub bridges: Vec<BridgeConfig>,
    /// `[[rules]]`: mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// `[[uplinks]]`: where events go; none configured means the default file uplink.
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    /// `[spool]`.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[forwarder]`.
    #[serde(default)]
    pub forwarder: ForwarderConfig,
    /// `[admin]`: `/healthz`, `/readyz`, `/metrics` and the uplink API; off when the table is missing.
    #[serde(default)]
    pub admin: Option<crate::admin::AgentAdminConfig>,
    /// `[tracing]`: trace context and OTLP export (see [`crate::trace`]).
    #[serde(default)]
    pub tracing: crate::trace::TracingConfig,
}

impl AgentConfig {
    /// Checks what types cannot: at least one bridge, unique names, valid filters, known uplinks in rules.
    pub fn validate(&self) -> Result<(), (String, String)> {
        if self.bridges.is_empty() {
            return Err(("bridges".into(), "at least one [[bridges]] table is needed".into()));
        }
        if self.gateway.id.is_empty() {
            return Err(("gateway.id".into(), "must not be empty".into()));
        }
        self.tracing.validate().map_err(|(k, p)| (format!("tracing.{k}"), p))?;
        let mut names = std::collections::HashSet::new();
        for (i, b) in self.bridges.iter().enumerate() {
            if !names.insert(&b.name) {
                return Err((format!("bridges[{i}].name"), format!("`{}` is used by two bridges", b.name)));
            }
            b.validate().map_err(|(k, p)| (format!("bridges[{i}].{k}"), p))?;
        }
        if let Some(hash) = self.admin.as_ref().and_then(|a| a.token_hash.as_deref()) {
            crate::admin::validate_token_hash(hash).map_err(|p| ("admin.token_hash".to_string(), p))?;
        }
        validate_mesh(&self.spool, &self.uplinks, &self.rules)
    }

    /// The uplinks to start: the configured ones, or the default file uplink.
    pub fn uplinks(&self) -> Vec<UplinkConfig> {
        crate::config::uplinks_or_default(&self.uplinks)
    }
}
