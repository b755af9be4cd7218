//! Configuration of the mesh-facing side: the `[[uplinks]]` tables. (`[spool]` and `[forwarder]` live with
//! their rooms: [`crate::spool::SpoolConfig`], [`crate::forwarder::ForwarderConfig`].)

use std::path::PathBuf;

use serde::Deserialize;

pub use crate::uplink::eventmesh::config::{EventMeshUplinkConfig, Policy, Protocol};
pub use crate::uplink::http::config::HttpUplinkConfig;
pub use crate::uplink::mqtt::config::MqttUplinkConfig;
pub use crate::uplink::nats::config::NatsUplinkConfig;
pub use crate::uplink::rabbitmq::config::AmqpUplinkConfig;

/// One `[[uplinks]]` table. `kind` selects the variant.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind")]
pub enum UplinkConfig {
    /// `kind = "file"`: a JSON-lines file of structured CloudEvents, one per line.
    #[serde(rename = "file")]
    File(FileUplinkConfig),
    /// `kind = "amqp"`: a RabbitMQ exchange, with publisher confirms.
    #[serde(rename = "amqp")]
    Amqp(AmqpUplinkConfig),
    /// `kind = "eventmesh-grpc"`: Apache EventMesh over gRPC (`PublisherService/publish`).
    #[serde(rename = "eventmesh-grpc")]
    EventMeshGrpc(EventMeshUplinkConfig),
    /// `kind = "eventmesh-http"`: Apache EventMesh's HTTP request-code API.
    #[serde(rename = "eventmesh-http")]
    EventMeshHttp(EventMeshUplinkConfig),
    /// `kind = "eventmesh-tcp"`: Apache EventMesh's framed TCP protocol.
    #[serde(rename = "eventmesh-tcp")]
    EventMeshTcp(EventMeshUplinkConfig),
    /// `kind = "mqtt"`: an upstream MQTT broker (3.1.1 or 5), confirmed by PUBACK or PUBCOMP.
    #[serde(rename = "mqtt")]
    Mqtt(MqttUplinkConfig),
    /// `kind = "http"`: the CloudEvents HTTP binding to any receiver (binary, structured or batch mode).
    #[serde(rename = "http")]
    Http(HttpUplinkConfig),
    /// `kind = "nats"`: a NATS JetStream stream, each event acknowledged by its PubAck and deduplicated by id.
    #[serde(rename = "nats")]
    Nats(NatsUplinkConfig),
}

impl UplinkConfig {
    /// The uplink's name, as routes refer to it.
    pub fn name(&self) -> &str {
        match self {
            UplinkConfig::File(c) => &c.name,
            UplinkConfig::Amqp(c) => &c.name,
            UplinkConfig::EventMeshGrpc(c) | UplinkConfig::EventMeshHttp(c) | UplinkConfig::EventMeshTcp(c) => &c.name,
            UplinkConfig::Mqtt(c) => &c.name,
            UplinkConfig::Http(c) => &c.name,
            UplinkConfig::Nats(c) => &c.name,
        }
    }

    /// The uplink's kind, as `kind =` spells it.
    pub fn kind(&self) -> &'static str {
        match self {
            UplinkConfig::File(_) => "file",
            UplinkConfig::Amqp(_) => "amqp",
            UplinkConfig::EventMeshGrpc(_) => "eventmesh-grpc",
            UplinkConfig::EventMeshHttp(_) => "eventmesh-http",
            UplinkConfig::EventMeshTcp(_) => "eventmesh-tcp",
            UplinkConfig::Mqtt(_) => "mqtt",
            UplinkConfig::Http(_) => "http",
            UplinkConfig::Nats(_) => "nats",
        }
    }

    /// The client certificate settings of an uplink that has them (`tls` of mqtt, http and nats).
    pub fn client_tls(&self) -> Option<&crate::client_tls::ClientTls> {
        match self {
            UplinkConfig::Mqtt(c) => c.tls.as_ref(),
            UplinkConfig::Http(c) => c.tls.as_ref(),
            UplinkConfig::Nats(c) => c.tls.as_ref(),
            _ => None,
        }
    }

    /// Where it sends, for the admin API and the dashboard: the file, or the address with any password taken
    /// out of it.
    pub fn endpoint(&self) -> String {
        match self {
            UplinkConfig::File(c) => c.path.display().to_string(),
            UplinkConfig::Amqp(c) => without_password(&c.uri),
            UplinkConfig::EventMeshGrpc(c) | UplinkConfig::EventMeshHttp(c) | UplinkConfig::EventMeshTcp(c) => {
                c.endpoints.iter().map(|e| without_password(e)).collect::<Vec<_>>().join(", ")
            }
            UplinkConfig::Mqtt(c) => without_password(&c.uri),
            UplinkConfig::Http(c) => without_password(&c.url),
            UplinkConfig::Nats(c) => without_password(&c.url),
        }
    }

    /// Checks the table's values beyond their types; the error names the key (relative to the table) and the
    /// problem.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            UplinkConfig::File(_) | UplinkConfig::Amqp(_) => Ok(()),
            UplinkConfig::EventMeshGrpc(c) => c.validate(Protocol::Grpc),
            UplinkConfig::EventMeshHttp(c) => c.validate(Protocol::Http),
            UplinkConfig::EventMeshTcp(c) => c.validate(Protocol::Tcp),
            UplinkConfig::Mqtt(c) => c.validate(),
            UplinkConfig::Http(c) => c.validate(),
            UplinkConfig::Nats(c) => c.validate(),
        }
    }
}

/// `scheme://user:secret@host/...` as `scheme://user:***@host/...` (and `scheme://token@host` as
/// `scheme://***@host`); anything else as it is.
pub fn without_password(address: &str) -> String {
    let Some((scheme, rest)) = address.split_once("://") else { return address.to_string() };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        // `user:password@`, or a lone token (`nats://TOKEN@host`): only a user name is shown.
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{tail}"),
            None => format!("{scheme}://***@{host}{tail}"),
        },
        None => address.to_string(),
    }
}

/// Settings of a file uplink.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// The output file; relative paths are under the data directory.
    #[serde(default = "default_file_path")]
    pub path: PathBuf,
}

fn default_file_path() -> PathBuf {
    PathBuf::from("events.jsonl")
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig::File(FileUplinkConfig { name: "local".into(), path: default_file_path() })
    }
}

/// The uplinks to start: `configured`, or the default file uplink when there are none.
pub fn uplinks_or_default(configured: &[UplinkConfig]) -> Vec<UplinkConfig> {
    if configured.is_empty() { vec![UplinkConfig::default()] } else { configured.to_vec() }
}

/// Checks the mesh-facing tables both binaries share: the spool's sizes, unique uplink names and each uplink's
/// values, and that every rule routes to a known uplink. The error names the key and the problem.
pub fn validate_mesh(
    spool: &crate::spool::SpoolConfig,
    uplinks: &[UplinkConfig],
    rules: &[crate::normalize::RuleConfig],
) -> Result<(), (String, String)> {
    if spool.segment_bytes == 0 || spool.segment_bytes > spool.max_bytes / 2 {
        return Err(("spool.segment_bytes".into(), "must be non-zero and at most half of spool.max_bytes".into()));
    }
    let mut names = std::collections::HashSet::new();
    for (i, u) in uplinks.iter().enumerate() {
        if !names.insert(u.name()) {
            return Err((format!("uplinks[{i}].name"), format!("`{}` is used by two uplinks", u.name())));
        }
        if u.name().starts_with('@') {
            let problem =
                format!("`{}`: names starting with `@` are reserved for the gateway's own spool readers", u.name());
            return Err((format!("uplinks[{i}].name"), problem));
        }
        u.validate().map_err(|(k, p)| (format!("uplinks[{i}].{k}"), p))?;
    }
    let started = uplinks_or_default(uplinks);
    let known: Vec<&str> = started.iter().map(|u| u.name()).collect();
    for (i, rule) in rules.iter().enumerate() {
        rule.validate(&known).map_err(|(k, p)| (format!("rules[{i}].{k}"), p))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn an_endpoint_shown_by_the_admin_api_never_carries_its_password(
            scheme in "(amqp|mqtts?|https?|nats)",
            user in "[a-z0-9._-]{0,12}",
            secret in "[A-Za-z0-9!$&'()*+,;=._~-]{4,24}",
            host in "[a-z0-9.-]{1,20}(:[0-9]{1,5})?",
            tail in "(/[a-z0-9/%]{0,10})?",
        ) {
            let shown = super::without_password(&format!("{scheme}://{user}:{secret}@{host}{tail}"));
            prop_assert!(!shown.contains(&format!(":{secret}@")), "{}", shown);
            prop_assert!(shown.ends_with(&format!("@{host}{tail}")), "{}", shown);
        }
    }

    #[test]
    fn addresses_without_a_password_are_shown_as_they_are() {
        assert_eq!(
            super::without_password("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(super::without_password("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(super::without_password("nats://s3cr3t@host/x"), "nats://***@host/x");
        assert_eq!(super::without_password("127.0.0.1:10000"), "127.0.0.1:10000");
    }
}
