//! `[[downlinks]]`: where the gateway takes events from the mesh for its devices.

use meshgate_protocols::eventmesh::Identity;
use serde::Deserialize;

use crate::uplink::eventmesh::config::{
    default_connect_timeout_ms, default_env, default_heartbeat_ms, default_idc, default_ip, default_password,
    default_sys, default_username, validate_endpoints, validate_not_blank,
};

/// One `[[downlinks]]` table. `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind")]
pub enum DownlinkConfig {
    /// `kind = "amqp"`: a RabbitMQ queue bound to a pattern on an exchange.
    #[serde(rename = "amqp")]
    Amqp(AmqpDownlinkConfig),
    /// `kind = "eventmesh-tcp"`: an EventMesh runtime's topics, over its TCP protocol (SUBSCRIBE, LISTEN, acks).
    #[serde(rename = "eventmesh-tcp")]
    EventMeshTcp(EventMeshTcpDownlinkConfig),
}

impl DownlinkConfig {
    /// The downlink's name (logs, metrics, the origin mark).
    pub fn name(&self) -> &str {
        match self {
            DownlinkConfig::Amqp(c) => &c.name,
            DownlinkConfig::EventMeshTcp(c) => &c.name,
        }
    }

    /// Where it consumes from, for logs (passwords hidden).
    pub fn endpoint(&self) -> String {
        match self {
            DownlinkConfig::Amqp(c) => crate::config::without_password(&c.uri),
            DownlinkConfig::EventMeshTcp(c) => {
                c.endpoints.iter().map(|e| crate::config::without_password(e)).collect::<Vec<_>>().join(", ")
            }
        }
    }

    /// Checks the values beyond their types; the error names the key (relative to the table) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            DownlinkConfig::Amqp(c) => {
                if c.prefetch == 0 {
                    return Err(("prefetch".into(), "must be at least 1".into()));
                }
                validate_topic(&c.topic)
            }
            DownlinkConfig::EventMeshTcp(c) => {
                validate_endpoints(&c.endpoints)?;
                if c.topics.is_empty() {
                    return Err(("topics".into(), "needs at least one EventMesh topic".into()));
                }
                if c.max_unacked == 0 {
                    return Err(("max_unacked".into(), "must be at least 1".into()));
                }
                let group = c.consumer_group();
                validate_not_blank(&[
                    ("env", &c.env),
                    ("idc", &c.idc),
                    ("sys", &c.sys),
                    ("ip", &c.ip),
                    ("username", &c.username),
                    ("password", &c.password),
                    ("consumer_group", &group),
                ])?;
                validate_topic(&c.topic)
            }
        }
    }

    /// The longest wait between reconnection attempts, in milliseconds.
    pub fn reconnect_max_ms(&self) -> u64 {
        match self {
            DownlinkConfig::Amqp(c) => c.reconnect_max_ms,
            DownlinkConfig::EventMeshTcp(c) => c.reconnect_max_ms,
        }
    }
}

fn validate_topic(topic: &str) -> Result<(), (String, String)> {
    if topic.is_empty() || meshgate_protocols::mqtt::topic::has_wildcard(topic) {
        return Err(("topic".into(), "must be a topic name template without wildcards".into()));
    }
    Ok(())
}

/// Settings of a RabbitMQ downlink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpDownlinkConfig {
    /// Names the downlink in logs, metrics and the events' `meshgateorigin` extension.
    pub name: String,
    /// `amqp://user:pass@host:port/vhost` or `amqps://...`.
    #[serde(default = "default_uri")]
    pub uri: String,
    /// The exchange commands are published to in the mesh.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Its type when declared.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Whether to declare the exchange (durable); `false` requires it to exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// The durable queue this gateway consumes; `meshgate.{name}` by default. One queue per gateway: two
    /// gateways sharing it would split the commands between them.
    #[serde(default)]
    pub queue: Option<String>,
    /// The binding key (a pattern for topic exchanges) that selects this gateway's events.
    #[serde(default = "default_binding")]
    pub binding: String,
    /// Deliveries in flight from RabbitMQ at most (basic.qos); also the most acknowledged at once.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// The local topic, rendered from the event: `{subject}`, `{type}`, `{source}`, `{id}`, extensions by name.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The longest wait between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
}

impl AmqpDownlinkConfig {
    /// The queue consumed.
    pub fn queue(&self) -> String {
        self.queue.clone().unwrap_or_else(|| format!("meshgate.{}", self.name))
    }
}

/// Settings of an EventMesh TCP downlink: a consumer session (`purpose` `sub`) subscribed in `CLUSTERING` mode, so
/// the runtime tracks each push until it is acknowledged and redelivers what a lost session left unacknowledged.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMeshTcpDownlinkConfig {
    /// Names the downlink in logs, metrics and the events' `meshgateorigin` extension.
    pub name: String,
    /// Runtime addresses, `host:port` (TCP port 10000 by default); tried in turn when one fails.
    pub endpoints: Vec<String>,
    /// The EventMesh topics subscribed.
    pub topics: Vec<String>,
    /// The consumer group; `meshgate-{name}` by default. One group per gateway: gateways sharing a group split the
    /// events between them.
    #[serde(default)]
    pub consumer_group: Option<String>,
    /// Pushes the runtime may have unacknowledged at once (the HELLO's `unack`); also the most committed at once.
    #[serde(default = "default_max_unacked")]
    pub max_unacked: u32,
    /// The local topic, rendered from the event: `{subject}`, `{type}`, `{source}`, `{id}`, extensions by name.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// Heartbeat interval (the runtime drops sessions idle for 120 s).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// How long connecting, HELLO, SUBSCRIBE and LISTEN may each take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// The longest wait between reconnection attempts, in milliseconds.
    #[serde(default = "default_reconnect_max")]
    pub reconnect_max_ms: u64,
    /// Client identity: environment.
    #[serde(default = "default_env")]
    pub env: String,
    /// Client identity: data-centre id.
    #[serde(default = "default_idc")]
    pub idc: String,
    /// Client identity: subsystem id.
    #[serde(default = "default_sys")]
    pub sys: String,
    /// Client identity: the address reported as the client's host.
    #[serde(default = "default_ip")]
    pub ip: String,
    /// Client identity: the process id reported (default: this process's).
    #[serde(default)]
    pub pid: Option<u32>,
    /// Credentials: user name.
    #[serde(default = "default_username")]
    pub username: String,
    /// Credentials: password.
    #[serde(default = "default_password")]
    pub password: String,
    /// Credentials: a token for the runtime's `auth-token` plugin.
    #[serde(default)]
    pub token: Option<String>,
}

impl EventMeshTcpDownlinkConfig {
    /// The consumer group.
    pub fn consumer_group(&self) -> String {
        self.consumer_group.clone().unwrap_or_else(|| format!("meshgate-{}", self.name))
    }

    /// The identity presented in HELLO (its group is the consumer group).
    pub fn identity(&self) -> Identity {
        Identity {
            env: self.env.clone(),
            idc: self.idc.clone(),
            sys: self.sys.clone(),
            ip: self.ip.clone(),
            pid: self.pid.unwrap_or_else(std::process::id).to_string(),
            username: self.username.clone(),
            password: self.password.clone(),
            token: self.token.clone(),
            language: "RUST".into(),
            producer_group: self.consumer_group(),
        }
    }
}

fn default_max_unacked() -> u32 {
    64
}

fn default_uri() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_exchange() -> String {
    "meshgate.commands".into()
}

fn default_exchange_type() -> String {
    "topic".into()
}

fn default_binding() -> String {
    "#".into()
}

fn default_prefetch() -> u16 {
    64
}

fn default_topic() -> String {
    "devices/{deviceid}/commands/{subject}".into()
}

fn default_reconnect_max() -> u64 {
    10_000
}

fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> DownlinkConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn eventmesh_defaults_and_bad_keys_are_named() {
        let c = parse("kind = \"eventmesh-tcp\"\nname = \"cmd\"\nendpoints = [\"10.0.0.1:10000\"]\ntopics = [\"t\"]\n");
        assert_eq!(c.validate(), Ok(()));
        let DownlinkConfig::EventMeshTcp(tcp) = &c else { panic!("{c:?}") };
        assert_eq!(tcp.identity().producer_group, "meshgate-cmd");
        assert_eq!(tcp.topic, "devices/{deviceid}/commands/{subject}");
        let bad = parse("kind = \"eventmesh-tcp\"\nname = \"c\"\nendpoints = [\"nope\"]\ntopics = [\"t\"]\n");
        assert_eq!(bad.validate().unwrap_err().0, "endpoints[0]");
        let bad = parse("kind = \"eventmesh-tcp\"\nname = \"c\"\nendpoints = [\"a:1\"]\ntopics = []\n");
        assert_eq!(bad.validate().unwrap_err().0, "topics");
        let bad =
            parse("kind = \"eventmesh-tcp\"\nname = \"c\"\nendpoints = [\"a:1\"]\ntopics = [\"t\"]\nenv = \" \"\n");
        assert_eq!(bad.validate().unwrap_err().0, "env");
        let bad = parse("kind = \"amqp\"\nname = \"c\"\ntopic = \"devices/+\"\n");
        assert_eq!(bad.validate().unwrap_err().0, "topic");
    }
}
