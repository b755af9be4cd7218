//! Gateway counters, rendered in the Prometheus text format for `/metrics`.
//!
//! Plain atomics indexed by small enums: recording a message is one relaxed add, and nothing allocates per event.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use meshgate_edge_agent::admin::MeshStatus;
use meshgate_edge_agent::admin::mesh::metric_header;

pub use meshgate_edge_agent::normalize::Protocol;

/// Why a connection or a message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Wrong user name or password.
    BadCredentials,
    /// No credentials where they are required.
    NotAuthorized,
    /// A packet that breaks the protocol.
    Malformed,
    /// A packet above the maximum size.
    TooLarge,
    /// A message claiming to be a CloudEvent that is not a valid one.
    InvalidCloudEvent,
    /// A payload flagged UTF-8 that is not.
    InvalidPayloadFormat,
    /// The event could not be stored.
    StorageFailed,
    /// A client that let its keep-alive lapse.
    KeepAliveTimeout,
    /// A client over its Receive Maximum or otherwise out of protocol.
    ProtocolViolation,
    /// An unsupported protocol version.
    UnsupportedVersion,
    /// A named limit of `[limits]` (topic levels, table depth, subscriptions, sessions) refused it.
    LimitExceeded,
}

impl RejectReason {
    const ALL: [RejectReason; 11] = [
        RejectReason::BadCredentials,
        RejectReason::NotAuthorized,
        RejectReason::Malformed,
        RejectReason::TooLarge,
        RejectReason::InvalidCloudEvent,
        RejectReason::InvalidPayloadFormat,
        RejectReason::StorageFailed,
        RejectReason::KeepAliveTimeout,
        RejectReason::ProtocolViolation,
        RejectReason::UnsupportedVersion,
        RejectReason::LimitExceeded,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectReason::BadCredentials => "bad_credentials",
            RejectReason::NotAuthorized => "not_authorized",
            RejectReason::Malformed => "malformed",
            RejectReason::TooLarge => "too_large",
            RejectReason::InvalidCloudEvent => "invalid_cloudevent",
            RejectReason::InvalidPayloadFormat => "invalid_payload_format",
            RejectReason::StorageFailed => "storage_failed",
            RejectReason::KeepAliveTimeout => "keepalive_timeout",
            RejectReason::ProtocolViolation => "protocol_violation",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::LimitExceeded => "limit_exceeded",
        }
    }
}

const PROTOCOLS: usize = Protocol::ALL.len();
const REASONS: usize = RejectReason::ALL.len();

/// Every counter the gateway keeps.
#[derive(Debug, Default)]
pub struct Metrics {
    connections: [AtomicI64; PROTOCOLS],
    connections_total: [AtomicU64; PROTOCOLS],
    messages_in: [AtomicU64; PROTOCOLS],
    acknowledged: [AtomicU64; PROTOCOLS],
    flow_paused: [AtomicU64; PROTOCOLS],
    auth_failures: [AtomicU64; PROTOCOLS],
    rejects: [[AtomicU64; REASONS]; PROTOCOLS],
    /// Configuration reloads: applied, refused.
    reloads: [AtomicU64; 2],
    mesh: std::sync::OnceLock<Arc<MeshStatus>>,
    broker: std::sync::OnceLock<Arc<crate::broker::LocalBroker>>,
}

fn reason_index(r: RejectReason) -> usize {
    RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

impl Metrics {
    /// Registers the spool, uplinks and downlinks whose state `/metrics` and `/readyz` report.
    pub fn set_mesh(&self, mesh: Arc<MeshStatus>) {
        let _ = self.mesh.set(mesh);
    }

    /// The spool, uplinks and downlinks, once registered.
    pub fn mesh(&self) -> Option<&Arc<MeshStatus>> {
        self.mesh.get()
    }

    /// A configuration reload was applied (`true`) or refused.
    pub fn reloaded(&self, applied: bool) {
        self.reloads[usize::from(!applied)].fetch_add(1, Ordering::Relaxed);
    }

    /// Open connections of `p`.
    pub fn connections(&self, p: Protocol) -> i64 {
        self.connections[p as usize].load(Ordering::Relaxed)
    }

    /// Connections of `p` accepted since the start.
    pub fn connections_accepted(&self, p: Protocol) -> u64 {
        self.connections_total[p as usize].load(Ordering::Relaxed)
    }

    /// Messages accepted from devices of `p`.
    pub fn messages_in(&self, p: Protocol) -> u64 {
        self.messages_in[p as usize].load(Ordering::Relaxed)
    }

    /// Every refusal reason with its count over all protocols.
    pub fn rejects_by_reason(&self) -> Vec<(&'static str, u64)> {
        RejectReason::ALL
            .iter()
            .map(|r| (r.as_str(), Protocol::ALL.iter().map(|p| self.rejects(*p, *r)).sum()))
            .collect()
    }

    /// Registers the local broker whose figures `/metrics` reports.
    pub fn set_broker(&self, broker: Arc<crate::broker::LocalBroker>) {
        let _ = self.broker.set(broker);
    }

    /// Whether the spool's last commit succeeded.
    pub fn spool_healthy(&self) -> bool {
        self.mesh.get().is_some_and(|m| m.spool_healthy())
    }

    /// A connection was accepted.
    pub fn connection_opened(&self, p: Protocol) {
        self.connections[p as usize].fetch_add(1, Ordering::Relaxed);
        self.connections_total[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection ended.
    pub fn connection_closed(&self, p: Protocol) {
        self.connections[p as usize].fetch_sub(1, Ordering::Relaxed);
    }

    /// A message was accepted into the pipeline.
    pub fn message_in(&self, p: Protocol) {
        self.messages_in[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A message was acknowledged to its device after it became durable.
    pub fn acknowledged(&self, p: Protocol) {
        self.acknowledged[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A connection's publishers were paused because the spool withheld credit (AMQP channel.flow(false)).
    pub fn flow_paused(&self, p: Protocol) {
        self.flow_paused[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// A device's credentials were checked and refused (wrong password, unknown user, anonymous not allowed).
    pub fn auth_failed(&self, p: Protocol) {
        self.auth_failures[p as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Something was refused.
    pub fn reject(&self, p: Protocol, r: RejectReason) {
        self.rejects[p as usize][reason_index(r)].fetch_add(1, Ordering::Relaxed);
    }

    /// The current number of refusals for a reason (for tests and readiness).
    pub fn rejects(&self, p: Protocol, r: RejectReason) -> u64 {
        self.rejects[p as usize][reason_index(r)].load(Ordering::Relaxed)
    }

    /// The Prometheus text exposition of every counter.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(4096);
        let header = metric_header;
        header(&mut out, "meshgate_connections", "gauge", "Open device connections.");
        for p in Protocol::ALL {
            let v = self.connections[p as usize].load(Ordering::Relaxed);
            let _ = writeln!(out, "meshgate_connections{{protocol=\"{}\"}} {v}", p.as_str());
        }
        let per_protocol: [(&str, &str, &[AtomicU64; PROTOCOLS]); 5] = [
            ("meshgate_connections_accepted_total", "Device connections accepted.", &self.connections_total),
            ("meshgate_messages_in_total", "Messages accepted from devices into the pipeline.", &self.messages_in),
            (
                "meshgate_messages_acknowledged_total",
                "Messages acknowledged to devices after they were durable.",
                &self.acknowledged,
            ),
            (
                "meshgate_flow_paused_total",
                "Times a connection's publishers were paused because the spool withheld credit.",
                &self.flow_paused,
            ),
            (
                "meshgate_auth_failures_total",
                "Device logins refused (credentials wrong or missing).",
                &self.auth_failures,
            ),
        ];
        for (name, help, counters) in per_protocol {
            header(&mut out, name, "counter", help);
            for p in Protocol::ALL {
                let v = counters[p as usize].load(Ordering::Relaxed);
                let _ = writeln!(out, "{name}{{protocol=\"{}\"}} {v}", p.as_str());
            }
        }
        header(&mut out, "meshgate_rejects_total", "counter", "Connections and messages refused, by reason.");
        for p in Protocol::ALL {
            for r in RejectReason::ALL {
                let v = self.rejects(p, r);
                let _ = writeln!(
                    out,
                    "meshgate_rejects_total{{protocol=\"{}\",reason=\"{}\"}} {v}",
                    p.as_str(),
                    r.as_str()
                );
            }
        }
        if let Some(broker) = self.broker.get() {
            let b = broker.read(|b| b.stats());
            let figures: [(&str, &str, &str, u64); 8] = [
                ("meshgate_broker_sessions", "gauge", "Broker sessions, connected or not.", b.sessions as u64),
                ("meshgate_broker_subscriptions", "gauge", "Subscriptions.", b.subscriptions as u64),
                ("meshgate_broker_retained", "gauge", "Retained messages.", b.retained as u64),
                ("meshgate_broker_queued", "gauge", "Messages queued for subscribers.", b.queued as u64),
                (
                    "meshgate_broker_queued_bytes",
                    "gauge",
                    "Bytes queued for subscribers (against limits.max_memory_bytes).",
                    b.queued_bytes,
                ),
                (
                    "meshgate_broker_in_flight",
                    "gauge",
                    "Deliveries awaiting the subscriber's acknowledgement.",
                    b.in_flight as u64,
                ),
                ("meshgate_broker_delivered_total", "counter", "Messages sent to subscribers.", b.delivered),
                ("meshgate_broker_dropped_total", "counter", "Messages dropped from full session queues.", b.dropped),
            ];
            for (name, kind, help, v) in figures {
                header(&mut out, name, kind, help);
                let _ = writeln!(out, "{name} {v}");
            }
        }
        let name = "meshgate_config_reloads_total";
        header(&mut out, name, "counter", "Configuration reloads (SIGHUP, POST /api/reload) by result.");
        for (result, n) in ["applied", "refused"].iter().zip(&self.reloads) {
            let _ = writeln!(out, "{name}{{result=\"{result}\"}} {}", n.load(Ordering::Relaxed));
        }
        if let Some(mesh) = self.mesh.get() {
            mesh.render_metrics(&mut out);
        }
        out
    }

    /// The registered uplinks' health, for `/readyz`.
    pub fn uplinks_healthy(&self) -> bool {
        self.mesh.get().is_some_and(|m| m.uplinks_healthy())
    }
}
