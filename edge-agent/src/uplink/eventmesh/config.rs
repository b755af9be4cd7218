//! `[[uplinks]] kind = "eventmesh-grpc" | "eventmesh-http" | "eventmesh-tcp"`: one set of keys for the three.

use std::path::PathBuf;

use meshgate_protocols::eventmesh::Identity;
use serde::Deserialize;

/// Which EventMesh protocol an uplink speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// gRPC `PublisherService` (runtime port 10205).
    Grpc,
    /// The HTTP request-code API (runtime port 10105).
    Http,
    /// The framed TCP protocol (runtime port 10000).
    Tcp,
}

impl Protocol {
    /// The `kind` value.
    pub fn kind(self) -> &'static str {
        match self {
            Protocol::Grpc => "eventmesh-grpc",
            Protocol::Http => "eventmesh-http",
            Protocol::Tcp => "eventmesh-tcp",
        }
    }
}

/// How an uplink spreads events over its endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// Each endpoint in turn.
    #[default]
    RoundRobin,
    /// In proportion to `weights` (smooth weighted round-robin, as nginx does it).
    Weighted,
    /// The endpoint with the fewest requests in flight.
    LeastInFlight,
}

/// Settings of an EventMesh uplink (any of the three protocols).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventMeshUplinkConfig {
    /// The name routes refer to.
    pub name: String,
    /// Runtime addresses, `host:port`; one or more.
    pub endpoints: Vec<String>,
    /// How events are spread over the endpoints.
    #[serde(default)]
    pub policy: Policy,
    /// Relative weights for `policy = "weighted"`, one per endpoint (default: all 1).
    #[serde(default)]
    pub weights: Vec<u32>,
    /// Requests in flight per endpoint, at most.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// How long one publish may take before the endpoint counts as failing and the event goes elsewhere.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long connecting to an endpoint may take.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Consecutive failures (connection errors, timeouts, failed health checks) that eject an endpoint.
    #[serde(default = "default_eject_after")]
    pub eject_after_failures: u32,
    /// How long an ejected endpoint sits out at least, times its number of ejections so far (capped at ten).
    #[serde(default = "default_ejection_ms")]
    pub ejection_ms: u64,
    /// How often every endpoint is probed; an ejected endpoint that answers after its ejection time is re-admitted.
    #[serde(default = "default_health_interval_ms")]
    pub health_check_interval_ms: u64,
    /// The topic template (`{subject}`, `{type}`, `{source}`, `{id}`, extensions by name); the runtime routes by
    /// topic and carries it as the event's `subject`.
    #[serde(default = "default_topic")]
    pub topic: String,
    /// The topic when the template renders empty (an event without a subject).
    #[serde(default = "default_fallback_topic")]
    pub default_topic: String,
    /// The `ttl` extension, in milliseconds, for events that carry none.
    #[serde(default = "default_ttl_ms")]
    pub ttl_ms: u64,
    /// Where poison events go, relative to the data directory (default `{name}-dead-letter.jsonl`).
    #[serde(default)]
    pub dead_letter_path: Option<PathBuf>,
    /// gRPC only: send with `batchPublish`. The runtime answers a batch after submitting it to storage, before
    /// storing it, so a batch acknowledgement is weaker than a `publish` one; off by default.
    #[serde(default)]
    pub batch_publish: bool,
    /// gRPC only: the most events per `batchPublish`.
    #[serde(default = "default_batch_max")]
    pub batch_max_events: usize,
    /// TCP only: heartbeat interval (the runtime drops sessions idle for 120 s).
    #[serde(default = "default_heartbeat_ms")]
    pub heartbeat_interval_ms: u64,
    /// Client identity: environment.
    #[serde(default = "default_env")]
    pub env: String,
    /// Client identity: data-centre id.
    #[serde(default = "default_idc")]
    pub idc: String,
    /// Client identity: subsystem id.
    #[serde(default = "default_sys")]
    pub sys: String,
    /// Client identity: the address reported as `ip` (the runtime's client id).
    #[serde(default = "default_ip")]
    pub ip: String,
    /// Client identity: the process id reported as `pid` (default: this process's).
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
    /// The producer group.
    #[serde(default = "default_producer_group")]
    pub producer_group: String,
}

fn default_max_in_flight() -> usize {
    64
}
fn default_timeout_ms() -> u64 {
    10_000
}
pub(crate) fn default_connect_timeout_ms() -> u64 {
    3_000
}
fn default_eject_after() -> u32 {
    2
}
fn default_ejection_ms() -> u64 {
    5_000
}
fn default_health_interval_ms() -> u64 {
    2_000
}
fn default_topic() -> String {
    "{subject}".into()
}
fn default_fallback_topic() -> String {
    "meshgate".into()
}
fn default_ttl_ms() -> u64 {
    // The runtime's own default for HTTP publishes: 4 hours.
    14_400_000
}
fn default_batch_max() -> usize {
    100
}
pub(crate) fn default_heartbeat_ms() -> u64 {
    30_000
}
pub(crate) fn default_env() -> String {
    "PRD".into()
}
pub(crate) fn default_idc() -> String {
    "DEFAULT".into()
}
pub(crate) fn default_sys() -> String {
    "0000".into()
}
pub(crate) fn default_ip() -> String {
    "127.0.0.1".into()
}
pub(crate) fn default_username() -> String {
    "eventmesh".into()
}
pub(crate) fn default_password() -> String {
    "pass".into()
}
fn default_producer_group() -> String {
    "meshgate".into()
}

impl EventMeshUplinkConfig {
    /// Checks the keys for `protocol`; the error names the key (relative to the uplink's table) and the problem.
    pub fn validate(&self, protocol: Protocol) -> Result<(), (String, String)> {
        let err = |k: &str, p: String| Err((k.to_string(), p));
        validate_endpoints(&self.endpoints)?;
        if !self.weights.is_empty() && self.weights.len() != self.endpoints.len() {
            return err(
                "weights",
                format!("has {} entries for {} endpoints", self.weights.len(), self.endpoints.len()),
            );
        }
        if self.weights.contains(&0) {
            return err("weights", "must be at least 1 each".into());
        }
        if self.max_in_flight == 0 {
            return err("max_in_flight", "must be at least 1".into());
        }
        if self.eject_after_failures == 0 {
            return err("eject_after_failures", "must be at least 1".into());
        }
        if self.batch_publish && protocol != Protocol::Grpc {
            return err("batch_publish", format!("is for eventmesh-grpc only, not {}", protocol.kind()));
        }
        validate_not_blank(&[
            ("env", &self.env),
            ("idc", &self.idc),
            ("sys", &self.sys),
            ("ip", &self.ip),
            ("username", &self.username),
            ("password", &self.password),
            ("producer_group", &self.producer_group),
            ("default_topic", &self.default_topic),
        ])
    }

    /// The identity presented to the runtime.
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
            producer_group: self.producer_group.clone(),
        }
    }

    /// The dead-letter file's path relative to the data directory.
    pub fn dead_letter_path(&self) -> PathBuf {
        crate::uplink::dead_letter::path_for(&self.name, self.dead_letter_path.as_deref())
    }

    /// The weight of endpoint `i` (1 without `weights`).
    pub fn weight(&self, i: usize) -> u32 {
        self.weights.get(i).copied().unwrap_or(1)
    }
}

/// Checks a runtime endpoint list: at least one, each `host:port`.
pub(crate) fn validate_endpoints(endpoints: &[String]) -> Result<(), (String, String)> {
    if endpoints.is_empty() {
        return Err(("endpoints".into(), "needs at least one `host:port`".into()));
    }
    for (i, e) in endpoints.iter().enumerate() {
        let port = e.rsplit_once(':').map(|(host, port)| (host, port.parse::<u16>()));
        if !matches!(port, Some((host, Ok(p))) if !host.is_empty() && p != 0) {
            return Err((format!("endpoints[{i}]"), format!("`{e}` is not `host:port`")));
        }
    }
    Ok(())
}

/// Checks that identity keys are not blank (the runtime refuses blank identity fields).
pub(crate) fn validate_not_blank(keys: &[(&str, &String)]) -> Result<(), (String, String)> {
    match keys.iter().find(|(_, value)| value.trim().is_empty()) {
        Some((key, _)) => {
            Err((key.to_string(), "must not be blank (the runtime refuses blank identity fields)".into()))
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(toml_text: &str) -> EventMeshUplinkConfig {
        toml::from_str(toml_text).unwrap()
    }

    #[test]
    fn defaults_follow_the_runtime_and_bad_keys_are_named() {
        let c = parse("name = \"m\"\nendpoints = [\"10.0.0.1:10205\"]\n");
        assert_eq!(c.validate(Protocol::Grpc), Ok(()));
        assert_eq!(c.identity().pid, std::process::id().to_string());
        assert_eq!(c.dead_letter_path(), PathBuf::from("m-dead-letter.jsonl"));
        let bad = parse("name = \"m\"\nendpoints = [\"a:1\", \"nope\"]\n");
        assert_eq!(bad.validate(Protocol::Http).unwrap_err().0, "endpoints[1]");
        let bad = parse("name = \"m\"\nendpoints = [\"a:1\"]\nbatch_publish = true\n");
        assert_eq!(bad.validate(Protocol::Tcp).unwrap_err().0, "batch_publish");
        let bad = parse("name = \"m\"\nendpoints = [\"a:1\", \"b:2\"]\nweights = [1]\n");
        assert_eq!(bad.validate(Protocol::Grpc).unwrap_err().0, "weights");
        assert!(toml::from_str::<EventMeshUplinkConfig>("name = \"m\"\nendpoints = []\nbogus = 1\n").is_err());
    }
}
