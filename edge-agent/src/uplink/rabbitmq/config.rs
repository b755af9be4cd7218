//! `[[uplinks]] kind = "amqp"`.

use std::path::PathBuf;

use serde::Deserialize;

/// How events are laid out on AMQP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AmqpMode {
    /// Attributes as `cloudEvents_` headers, the data as the body.
    #[default]
    Binary,
    /// `application/cloudevents+json` bodies.
    Structured,
}

/// What to do with a message the broker returns as unroutable (mandatory publishing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnReturn {
    /// Keep retrying the batch (with backoff) until a binding makes it routable.
    #[default]
    Retry,
    /// Append the event to the dead-letter file and carry on.
    DeadLetter,
}

/// Settings of an AMQP (RabbitMQ) uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// `amqp://user:pass@host:port/vhost` or `amqps://...`.
    #[serde(default = "default_uri")]
    pub uri: String,
    /// The exchange events are published to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Its type when declared.
    #[serde(default = "default_exchange_type")]
    pub exchange_type: String,
    /// Whether to declare the exchange (durable); `false` requires it to exist.
    #[serde(default = "yes")]
    pub declare: bool,
    /// Routing-key template: `{subject}` (`/` becomes `.`), `{type}`, `{source}`, `{id}`, extensions by name.
    #[serde(default = "default_routing_key")]
    pub routing_key: String,
    /// Binary (default) or structured mode.
    #[serde(default)]
    pub mode: AmqpMode,
    /// Publish with `mandatory`, so unroutable events come back instead of vanishing.
    #[serde(default = "yes")]
    pub mandatory: bool,
    /// What to do with returned events.
    #[serde(default)]
    pub on_return: OnReturn,
    /// The dead-letter file for `on_return = "dead-letter"`, relative to the data directory.
    #[serde(default = "default_dead_letter")]
    pub dead_letter_path: PathBuf,
    /// How long connecting, or waiting for a batch's confirms, may take before the link is dropped and retried
    /// (a broker behind a black hole never answers).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_uri() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}

fn default_exchange() -> String {
    "meshgate".into()
}

fn default_exchange_type() -> String {
    "topic".into()
}

fn default_routing_key() -> String {
    "{subject}".into()
}

fn default_dead_letter() -> PathBuf {
    PathBuf::from("amqp-returned.jsonl")
}

fn default_timeout_ms() -> u64 {
    30_000
}

fn yes() -> bool {
    true
}

impl AmqpUplinkConfig {
    /// Defaults with the name `amqp`, for tests.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        AmqpUplinkConfig {
            name: "amqp".into(),
            uri: default_uri(),
            exchange: default_exchange(),
            exchange_type: default_exchange_type(),
            declare: true,
            routing_key: default_routing_key(),
            mode: AmqpMode::Binary,
            mandatory: true,
            on_return: OnReturn::Retry,
            dead_letter_path: default_dead_letter(),
            timeout_ms: default_timeout_ms(),
        }
    }
}
