//! The gateway's configuration: one TOML file, `MESHGATE_...` environment overrides, defaults for every key.
//!
//! Loading reports problems with the file, the key and what is wrong (`meshgate.toml: listeners.mqtt.bind:
//! invalid socket address syntax`). Environment variables name a key path with `__` between levels:
//! `MESHGATE_GATEWAY__ID=edge-7`, `MESHGATE_LISTENERS__MQTT__BIND=0.0.0.0:1883`. Values are read as TOML
//! (numbers, booleans, arrays) and fall back to plain strings.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use meshgate_edge_agent::config::UplinkConfig;
pub use meshgate_edge_agent::config_file::{self, ConfigError};
use meshgate_edge_agent::downlink::config::DownlinkConfig;
use meshgate_edge_agent::forwarder::ForwarderConfig;
use meshgate_edge_agent::spool::SpoolConfig;
use serde::Deserialize;

use crate::auth::PasswordHash;
use crate::normalize::RuleConfig;

/// What `meshgate` runs on without a file: every other key keeps its default.
pub const EMBEDDED_DEFAULTS: &str = r#"
[listeners.mqtt]
[listeners.amqp]
[listeners.ws]
[admin]
[auth]
allow_anonymous = true
"#;

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `[gateway]`.
    #[serde(default)]
    pub gateway: GatewayConfig,
    /// `[listeners]`: an omitted listener is off.
    #[serde(default)]
    pub listeners: ListenersConfig,
    /// `[admin]`: the health and metrics endpoint; omitted means off.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// `[auth]`.
    #[serde(default)]
    pub auth: AuthConfig,
    /// `[[rules]]`: mapping rules, first match wins.
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
    /// `[[uplinks]]`: where events go; none configured means the default file uplink.
    #[serde(default)]
    pub uplinks: Vec<UplinkConfig>,
    /// `[[downlinks]]`: events from the mesh for the devices; none by default.
    #[serde(default)]
    pub downlinks: Vec<DownlinkConfig>,
    /// `[spool]`: where and how much the edge stores.
    #[serde(default)]
    pub spool: SpoolConfig,
    /// `[forwarder]`: batching and retries towards the uplinks.
    #[serde(default)]
    pub forwarder: ForwarderConfig,
    /// `[broker]`: the local MQTT broker.
    #[serde(default)]
    pub broker: BrokerSection,
    /// `[tls]`: the server certificate the TLS listeners present.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// `[limits]`: depth, count, byte and rate budgets against hostile or careless devices.
    #[serde(default)]
    pub limits: crate::limits::LimitsConfig,
    /// `[tracing]`: W3C trace context and OTLP export (see `meshgate_edge_agent::trace`).
    #[serde(default)]
    pub tracing: meshgate_edge_agent::trace::TracingConfig,
}

/// `[tls]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain, PEM, leaf first (relative paths from the working directory).
    pub cert_file: PathBuf,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// CA certificates (PEM) that client certificates are verified against; mTLS is off without it.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// With `client_ca_file`: whether a client must present a certificate (else it may, and one that does is
    /// verified). A verified certificate's subject common name is the device's identity for ACLs, and an MQTT
    /// CONNECT without a user name is that device.
    #[serde(default = "yes")]
    pub require_client_cert: bool,
    /// Seconds between looks at `cert_file` and `key_file`: changed files replace the certificate without a
    /// restart (0: never).
    #[serde(default = "ten")]
    pub reload_interval_secs: u64,
}

fn ten() -> u64 {
    10
}

fn yes() -> bool {
    true
}

/// `[broker]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// Messages queued per session (beyond those in flight) while its client is slow or offline; when full, QoS 0
    /// messages are dropped first, then the oldest.
    pub max_queued_messages: usize,
    /// Bytes of messages (payload and topic) queued per session, beside the count; the same drop order applies.
    pub max_queued_bytes: u64,
    /// Seconds between `$SYS/broker/...` updates (0: none are published).
    pub sys_interval_secs: u64,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection { max_queued_messages: 1000, max_queued_bytes: 16 * 1024 * 1024, sys_interval_secs: 10 }
    }
}

/// `[gateway]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewayConfig {
    /// Goes into every event's `source` and the `gatewayid` extension.
    pub id: String,
    /// Spool, retained messages, sessions and the file uplink's output live here.
    pub data_dir: PathBuf,
    /// Seconds to let connections finish their acknowledgements at shutdown.
    pub shutdown_grace_secs: u64,
    /// Whether device connects and disconnects become CloudEvents for the mesh
    /// (`io.meshgate.device.connected` / `io.meshgate.device.disconnected`).
    pub lifecycle_events: bool,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            id: "edge-1".into(),
            data_dir: PathBuf::from("./meshgate-data"),
            shutdown_grace_secs: 10,
            lifecycle_events: false,
        }
    }
}

/// `[listeners]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenersConfig {
    /// `[listeners.mqtt]`: MQTT 3.1.1 and 5 over TCP.
    pub mqtt: Option<MqttListenerConfig>,
    /// `[listeners.amqp]`: AMQP 0-9-1 over TCP.
    pub amqp: Option<AmqpListenerConfig>,
    /// `[listeners.ws]`: WebSocket (`cloudevents.json` and `mqtt` subprotocols).
    pub ws: Option<WsListenerConfig>,
}

/// `[listeners.mqtt]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttListenerConfig {
    /// The address to listen on; port 0 picks a free port (printed at start).
    #[serde(deserialize_with = "meshgate_edge_agent::config_file::bind_addr")]
    pub bind: SocketAddr,
    /// Where to listen for MQTT over TLS (mqtts, conventionally port 8883), with the certificate of `[tls]`;
    /// off unless set.
    #[serde(default, deserialize_with = "meshgate_edge_agent::config_file::optional_bind_addr")]
    pub tls_bind: Option<SocketAddr>,
    /// The largest packet accepted, fixed header included (advertised as Maximum Packet Size in MQTT 5).
    pub max_packet_size: u32,
    /// How many QoS 1/2 publishes a client may have unacknowledged (MQTT 5 Receive Maximum); MQTT 3.1.1 clients
    /// are slowed to the same bound by not reading their socket.
    pub receive_maximum: u16,
    /// The highest inbound topic alias accepted (MQTT 5 Topic Alias Maximum; 0 turns aliases off).
    pub topic_alias_maximum: u16,
    /// Seconds a new connection has to send CONNECT.
    pub connect_timeout_secs: u64,
    /// The most connections served at once; further ones are closed at accept.
    pub max_connections: usize,
    /// Whether a QoS 0 publish is made durable before the next packet of its connection is read. Off by default:
    /// QoS 0 promises nothing, so it is appended without waiting. On, a device's QoS 0 stream is paced by the
    /// spool's fsyncs and a storage failure ends its connection (MQTT 5: DISCONNECT 0x80).
    pub qos0_wait_durable: bool,
    /// The longest keep-alive accepted, in seconds (0: any); `max_keepalive` as in Mosquitto. An MQTT 5 client
    /// asking for more, or for none, is told this one in CONNACK (Server Keep Alive); an MQTT 3.1.1 client, which
    /// cannot be told, is refused with return code 2 (as Mosquitto does).
    #[serde(alias = "max_keepalive")]
    pub max_keep_alive_secs: u16,
}

impl Default for MqttListenerConfig {
    fn default() -> Self {
        MqttListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 1883)),
            tls_bind: None,
            max_packet_size: 1024 * 1024,
            receive_maximum: 128,
            topic_alias_maximum: 32,
            connect_timeout_secs: 10,
            max_connections: 100_000,
            qos0_wait_durable: false,
            max_keep_alive_secs: 0,
        }
    }
}

/// `[listeners.amqp]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AmqpListenerConfig {
    /// The address to listen on; port 0 picks a free port (printed at start).
    #[serde(deserialize_with = "meshgate_edge_agent::config_file::bind_addr")]
    pub bind: SocketAddr,
    /// Where to listen for AMQP over TLS (amqps, conventionally port 5671), with the certificate of `[tls]`;
    /// off unless set.
    #[serde(default, deserialize_with = "meshgate_edge_agent::config_file::optional_bind_addr")]
    pub tls_bind: Option<SocketAddr>,
    /// The largest frame offered in connection.tune, in bytes (at least 4096).
    pub frame_max: u32,
    /// The highest channel number offered in connection.tune.
    pub channel_max: u16,
    /// The heartbeat interval offered in connection.tune, in seconds (0: none); the client's choice wins.
    pub heartbeat_secs: u16,
    /// The largest message body accepted (a larger one closes its channel with 311 content-too-large).
    pub max_message_size: u64,
    /// Confirm-mode publishes a connection may have waiting for the spool before its socket is no longer read.
    pub max_unconfirmed: usize,
    /// Seconds a new connection has to finish the handshake (header to connection.open).
    pub connect_timeout_secs: u64,
    /// The most connections served at once; further ones are closed at accept.
    pub max_connections: usize,
}

impl Default for AmqpListenerConfig {
    fn default() -> Self {
        AmqpListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 5672)),
            tls_bind: None,
            frame_max: 131_072,
            channel_max: 2047,
            heartbeat_secs: 60,
            max_message_size: 16 * 1024 * 1024,
            max_unconfirmed: 1024,
            connect_timeout_secs: 10,
            max_connections: 100_000,
        }
    }
}

/// `[listeners.ws]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WsListenerConfig {
    /// The address to listen on; port 0 picks a free port (printed at start).
    #[serde(deserialize_with = "meshgate_edge_agent::config_file::bind_addr")]
    pub bind: SocketAddr,
    /// Where to listen for WebSocket over TLS (wss), with the certificate of `[tls]`; off unless set.
    #[serde(default, deserialize_with = "meshgate_edge_agent::config_file::optional_bind_addr")]
    pub tls_bind: Option<SocketAddr>,
    /// Upgrades are accepted on this path only (any path when unset).
    pub path: Option<String>,
    /// Browser origins allowed to connect (an upgrade without `Origin` is always allowed); empty: any.
    pub allowed_origins: Vec<String>,
    /// The largest message, in bytes (larger: close 1009).
    pub max_message_size: usize,
    /// The largest frame, in bytes.
    pub max_frame_size: usize,
    /// Seconds between the gateway's pings on an idle `cloudevents.json` connection.
    pub ping_interval_secs: u64,
    /// Seconds without any message from the client after which a `cloudevents.json` connection is closed.
    pub idle_timeout_secs: u64,
    /// Events a `cloudevents.json` connection may have waiting for the spool before it is no longer read.
    pub max_unacked: usize,
    /// Invalid events in a row after which a `cloudevents.json` connection is closed with 1007.
    pub max_invalid: u32,
    /// Seconds for the TLS and HTTP upgrade handshakes.
    pub handshake_timeout_secs: u64,
    /// The most connections served at once; further ones are closed at accept.
    pub max_connections: usize,
}

impl Default for WsListenerConfig {
    fn default() -> Self {
        WsListenerConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_bind: None,
            path: None,
            allowed_origins: Vec::new(),
            max_message_size: 1024 * 1024,
            max_frame_size: 1024 * 1024,
            ping_interval_secs: 30,
            idle_timeout_secs: 90,
            max_unacked: 128,
            max_invalid: 10,
            handshake_timeout_secs: 10,
            max_connections: 100_000,
        }
    }
}

/// `[admin]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// The address of `/healthz`, `/readyz`, `/metrics`, the admin API (`/api/`) and the dashboard (`/`).
    #[serde(deserialize_with = "meshgate_edge_agent::config_file::bind_addr")]
    pub bind: SocketAddr,
    /// The same endpoint over TLS (https), with the certificate of `[tls]` (and its client certificate check);
    /// off unless set.
    #[serde(default, deserialize_with = "meshgate_edge_agent::config_file::optional_bind_addr")]
    pub tls_bind: Option<SocketAddr>,
    /// The Argon2 hash of the admin token (`meshgate hash-password`), sent as `Authorization: Bearer TOKEN`.
    /// Without it (or `cert_names`) the admin API is locked.
    pub token_hash: Option<String>,
    /// Common names of client certificates that are the administrator on `tls_bind` (verified against
    /// `tls.client_ca_file`).
    pub cert_names: Vec<String>,
    /// Whether `/metrics` needs the admin token too (the health endpoints stay open).
    pub protect_metrics: bool,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            bind: SocketAddr::from(([127, 0, 0, 1], 9100)),
            tls_bind: None,
            token_hash: None,
            cert_names: Vec::new(),
            protect_metrics: false,
        }
    }
}

/// `[auth]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Whether devices may connect without credentials.
    pub allow_anonymous: bool,
    /// `[[auth.users]]`.
    pub users: Vec<UserConfig>,
    /// `[[auth.acl]]`: publish and subscribe rules per user.
    pub acl: Vec<crate::acl::AclRule>,
    /// What a publish or subscription no rule allows gets: `allow` (default) or `deny`.
    pub acl_default: crate::acl::AclDefault,
    /// Password verifications (Argon2, memory-hard) run at once; further logins wait their turn.
    pub max_concurrent_verifications: usize,
    /// The first delay, in milliseconds, before answering a login from a source address or for a user name that
    /// failed recently; it doubles with each further failure.
    pub backoff_base_ms: u64,
    /// The longest such delay, in milliseconds. Below every listener's connect timeout: the delay counts per user
    /// name too, so at the timeout a device whose name an attacker keeps failing could never log in.
    pub backoff_max_ms: u64,
    /// Seconds after its last failure that a source address or user name is forgiven.
    pub failure_window_secs: u64,
    /// A pattern MQTT client ids and `cloudevents.json` client names must fit: `{username}` for the device's
    /// user name, a trailing `*` for any rest (e.g. `"{username}"`, `"{username}-*"`). Unset: any id.
    pub clientid_must_match: Option<String>,
    /// Whether a device with a client certificate is its certificate name as client id too.
    pub clientid_from_certificate: bool,
}

impl AuthConfig {
    /// The client-id rules.
    pub fn client_ids(&self) -> crate::auth::client_id::ClientIdRules {
        crate::auth::client_id::ClientIdRules {
            must_match: self.clientid_must_match.clone(),
            from_certificate: self.clientid_from_certificate,
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            allow_anonymous: false,
            users: Vec::new(),
            acl: Vec::new(),
            acl_default: crate::acl::AclDefault::default(),
            max_concurrent_verifications: 2,
            backoff_base_ms: 250,
            backoff_max_ms: 5_000,
            failure_window_secs: 300,
            clientid_must_match: None,
            clientid_from_certificate: false,
        }
    }
}

/// `[[auth.users]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user name devices present.
    pub username: String,
    /// An Argon2 PHC string from `meshgate hash-password`.
    pub password_hash: PasswordHash,
}

impl Config {
    /// The configuration used when no file is given: MQTT and admin on loopback, anonymous devices allowed
    /// (only local processes can reach a loopback listener), the default file uplink.
    pub fn embedded_defaults() -> Config {
        Config::load(None, std::iter::empty()).unwrap_or_else(|e| unreachable!("embedded defaults are valid: {e}"))
    }

    /// Loads `path` (or the embedded defaults when `None`), applies `MESHGATE_...` overrides from `env`, and
    /// validates the result.
    pub fn load(path: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
        config_file::load(path, EMBEDDED_DEFAULTS, env, Config::validate)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let err = |k: &str, p: &str| Err((k.to_string(), p.to_string()));
        if self.gateway.id.is_empty() {
            return err("gateway.id", "must not be empty");
        }
        if self.broker.max_queued_messages == 0 {
            return err("broker.max_queued_messages", "must be at least 1");
        }
        if self.broker.max_queued_bytes == 0 {
            return err("broker.max_queued_bytes", "must be at least 1");
        }
        if self.auth.max_concurrent_verifications == 0 {
            return err("auth.max_concurrent_verifications", "must be at least 1");
        }
        self.limits.validate()?;
        self.tracing.validate().map_err(|(k, p)| (format!("tracing.{k}"), p))?;
        let timeouts = [
            ("listeners.mqtt.connect_timeout_secs", self.listeners.mqtt.as_ref().map(|l| l.connect_timeout_secs)),
            ("listeners.amqp.connect_timeout_secs", self.listeners.amqp.as_ref().map(|l| l.connect_timeout_secs)),
        ];
        for (key, secs) in timeouts {
            if let Some(secs) = secs
                && self.auth.backoff_max_ms >= secs.saturating_mul(1000)
            {
                let problem = format!(
                    "must be below {key} ({secs} s): a device whose user name an attacker keeps failing would time out before its own login is checked"
                );
                return err("auth.backoff_max_ms", &problem);
            }
        }
        if let Some(amqp) = &self.listeners.amqp {
            if amqp.frame_max < 4096 {
                return err("listeners.amqp.frame_max", "must be at least 4096 bytes (AMQP 0-9-1's minimum)");
            }
            if amqp.channel_max == 0 {
                return err("listeners.amqp.channel_max", "must be at least 1");
            }
            if amqp.max_unconfirmed == 0 {
                return err("listeners.amqp.max_unconfirmed", "must be at least 1");
            }
            if amqp.tls_bind.is_some() && self.tls.is_none() {
                return err("listeners.amqp.tls_bind", "needs a [tls] table with cert_file and key_file");
            }
        }
        if self.admin.as_ref().is_some_and(|a| a.tls_bind.is_some()) && self.tls.is_none() {
            return err("admin.tls_bind", "needs a [tls] table with cert_file and key_file");
        }
        if let Some(hash) = self.admin.as_ref().and_then(|a| a.token_hash.as_deref()) {
            meshgate_edge_agent::admin::validate_token_hash(hash).or_else(|p| err("admin.token_hash", &p))?;
        }
        if let Some(ws) = &self.listeners.ws {
            if ws.max_unacked == 0 {
                return err("listeners.ws.max_unacked", "must be at least 1");
            }
            if ws.tls_bind.is_some() && self.tls.is_none() {
                return err("listeners.ws.tls_bind", "needs a [tls] table with cert_file and key_file");
            }
        }
        if let Some(mqtt) = &self.listeners.mqtt {
            if mqtt.receive_maximum == 0 {
                return err("listeners.mqtt.receive_maximum", "must be at least 1");
            }
            if mqtt.max_packet_size < 64 {
                return err("listeners.mqtt.max_packet_size", "must be at least 64 bytes");
            }
            if mqtt.tls_bind.is_some() && self.tls.is_none() {
                return err("listeners.mqtt.tls_bind", "needs a [tls] table with cert_file and key_file");
            }
        }
        meshgate_edge_agent::config::validate_mesh(&self.spool, &self.uplinks, &self.rules)?;
        let mut downlinks = std::collections::HashSet::new();
        for (i, d) in self.downlinks.iter().enumerate() {
            if !downlinks.insert(d.name()) {
                return err(&format!("downlinks[{i}].name"), &format!("`{}` is used by two downlinks", d.name()));
            }
            d.validate().map_err(|(k, p)| (format!("downlinks[{i}].{k}"), p))?;
        }
        if let Some(pattern) = &self.auth.clientid_must_match {
            crate::auth::client_id::ClientIdRules::validate_pattern(pattern)
                .or_else(|p| err("auth.clientid_must_match", &p))?;
        }
        for (i, rule) in self.auth.acl.iter().enumerate() {
            for (list, filter) in rule.filters() {
                let probe = filter.replace("{username}", "u").replace("{clientid}", "c");
                if let Err(e) = meshgate_protocols::mqtt::topic::validate_filter(&probe) {
                    return err(&format!("auth.acl[{i}].{list}"), &format!("`{filter}` is not a topic filter: {e}"));
                }
            }
        }
        let mut users = std::collections::HashSet::new();
        for (i, u) in self.auth.users.iter().enumerate() {
            if !users.insert(&u.username) {
                return err(&format!("auth.users[{i}].username"), &format!("`{}` is listed twice", u.username));
            }
        }
        Ok(())
    }

    /// What opens the admin API: the token hash and certificate names of `[admin]`.
    pub fn admin_secrets(&self) -> meshgate_edge_agent::admin::AdminSecrets {
        self.admin.as_ref().map_or_else(Default::default, |a| meshgate_edge_agent::admin::AdminSecrets {
            token_hash: a.token_hash.clone(),
            cert_names: a.cert_names.clone(),
        })
    }

    /// The configured uplinks, or the embedded default (a file uplink named `local`).
    pub fn uplinks(&self) -> Vec<UplinkConfig> {
        meshgate_edge_agent::config::uplinks_or_default(&self.uplinks)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("meshgate.toml");
        std::fs::write(&path, text).unwrap();
        Config::load(Some(&path), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn errors_name_the_key_and_the_problem() {
        let e = load_str("[listeners.mqtt]\nbind = \"nowhere\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "listeners.mqtt.bind");
        assert!(e.problem.contains("is not HOST:PORT or IP:PORT"), "{e}");
        assert!(e.file.ends_with("meshgate.toml"));
        let c = load_str("[listeners.mqtt]\nbind = \"localhost:1884\"\n", &[]).unwrap();
        assert_eq!(c.listeners.mqtt.map(|m| m.bind), Some(SocketAddr::from(([127, 0, 0, 1], 1884))));
        let e = load_str("", &[("MESHGATE_LISTENERS__MQTT__BIND", "nowhere")]).unwrap_err();
        assert_eq!(
            (e.file.as_str(), e.key.as_str()),
            ("environment MESHGATE_LISTENERS__MQTT__BIND", "listeners.mqtt.bind")
        );
        let e = load_str("[gateway]\nidd = \"x\"\n", &[]).unwrap_err();
        assert!(e.problem.contains("unknown field `idd`"), "{e}");
        let e = load_str("[gateway\n", &[]).unwrap_err();
        assert_eq!(e.key, "line 1");
    }

    #[test]
    fn environment_overrides_keys_by_path() {
        let c = load_str(
            "[listeners.mqtt]\n",
            &[("MESHGATE_GATEWAY__ID", "edge-9"), ("MESHGATE_LISTENERS__MQTT__RECEIVE_MAXIMUM", "7")],
        )
        .unwrap();
        assert_eq!(c.gateway.id, "edge-9");
        assert_eq!(c.listeners.mqtt.unwrap().receive_maximum, 7);
        let e = load_str("", &[("MESHGATE_LISTENERS__MQTT__RECEIVE_MAXIMUM", "lots")]).unwrap_err();
        assert_eq!(e.key, "listeners.mqtt.receive_maximum");
    }

    #[test]
    fn an_omitted_listener_is_off_and_no_file_means_defaults() {
        let c = load_str("[gateway]\nid = \"a\"\n", &[]).unwrap();
        assert!(c.listeners.mqtt.is_none());
        assert!(!c.auth.allow_anonymous);
        let d = Config::load(None, std::iter::empty()).unwrap();
        assert_eq!(d.listeners.mqtt.unwrap().bind.port(), 1883);
        assert!(d.auth.allow_anonymous);
    }

    #[test]
    fn unknown_routes_and_listeners_not_built_yet_are_refused() {
        let e = load_str("[[rules]]\ntopic = \"a/#\"\nuplinks = [\"nope\"]\n", &[]).unwrap_err();
        assert_eq!(e.key, "rules[0].uplinks");
        let e = load_str("[listeners.ws]\ntls_bind = \"127.0.0.1:8443\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "listeners.ws.tls_bind");
    }

    #[test]
    fn the_login_backoff_stays_below_the_connect_timeouts() {
        let e =
            load_str("[listeners.mqtt]\nconnect_timeout_secs = 3\n[auth]\nbackoff_max_ms = 3000\n", &[]).unwrap_err();
        assert_eq!(e.key, "auth.backoff_max_ms");
        assert!(load_str("[listeners.mqtt]\nconnect_timeout_secs = 4\n[auth]\nbackoff_max_ms = 3000\n", &[]).is_ok());
        assert_eq!(Config::embedded_defaults().auth.backoff_max_ms, 5_000);
    }

    #[test]
    fn the_amqp_listener_is_on_by_default_and_its_limits_are_checked() {
        let d = Config::load(None, std::iter::empty()).unwrap();
        assert_eq!(d.listeners.amqp.unwrap().bind.port(), 5672);
        let e = load_str("[listeners.amqp]\nframe_max = 512\n", &[]).unwrap_err();
        assert_eq!(e.key, "listeners.amqp.frame_max");
        let c = load_str("[listeners.amqp]\n", &[("MESHGATE_LISTENERS__AMQP__BIND", "127.0.0.1:0")]).unwrap();
        assert_eq!(c.listeners.amqp.unwrap().bind.port(), 0);
        let e = load_str("[listeners.amqp]\ntls_bind = \"127.0.0.1:5671\"\n", &[]).unwrap_err();
        assert_eq!(e.key, "listeners.amqp.tls_bind");
    }
}
