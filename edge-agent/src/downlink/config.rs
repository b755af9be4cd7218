//! `[[downlinks]]`: where the gateway takes events from the mesh for its devices.

use serde::Deserialize;

/// One `[[downlinks]]` table. `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind")]
pub enum DownlinkConfig {
    /// `kind = "amqp"`: a RabbitMQ queue bound to a pattern on an exchange.
    #[serde(rename = "amqp")]
    Amqp(AmqpDownlinkConfig),
}

impl DownlinkConfig {
    /// The downlink's name (logs, metrics, the origin mark).
    pub fn name(&self) -> &str {
        match self {
            DownlinkConfig::Amqp(c) => &c.name,
        }
    }

    /// Checks the values beyond their types; the error names the key (relative to the table) and the problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            DownlinkConfig::Amqp(c) => {
                if c.prefetch == 0 {
                    return Err(("prefetch".into(), "must be at least 1".into()));
                }
                if c.topic.is_empty() || meshgate_protocols::mqtt::topic::has_wildcard(&c.topic) {
                    return Err(("topic".into(), "must be a topic name template without wildcards".into()));
                }
                Ok(())
            }
        }
    }
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
