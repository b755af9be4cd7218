//! Gateway counters, rendered in the Prometheus text format for `/metrics`.
//!
//! Plain atomics indexed by small enums: recording a message is one relaxed add, and nothing allocates per event.

use std::fmt::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use meshgate_edge_agent::downlink::DownlinkStats;
use meshgate_edge_agent::spool::Spool;
use meshgate_edge_agent::uplink::{LATENCY_BUCKETS_MS, UplinkStats};

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

/// Reads one counter of an uplink.
type StatReader = fn(&UplinkStats) -> u64;

/// Reads one figure of an uplink endpoint.
type EndpointReader = fn(&meshgate_edge_agent::uplink::eventmesh::EndpointState) -> u64;

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
    uplinks: std::sync::OnceLock<Vec<(Arc<str>, Arc<UplinkStats>)>>,
    downlinks: std::sync::OnceLock<Vec<(Arc<str>, Arc<DownlinkStats>)>>,
    spool: std::sync::OnceLock<Spool>,
    broker: std::sync::OnceLock<Arc<crate::broker::LocalBroker>>,
}

fn reason_index(r: RejectReason) -> usize {
    RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}

impl Metrics {
    /// Registers the uplinks whose counters `/metrics` reports.
    pub fn set_uplinks(&self, uplinks: Vec<(Arc<str>, Arc<UplinkStats>)>) {
        let _ = self.uplinks.set(uplinks);
    }

    /// Registers the downlinks whose counters `/metrics` reports.
    pub fn set_downlinks(&self, downlinks: Vec<(Arc<str>, Arc<DownlinkStats>)>) {
        let _ = self.downlinks.set(downlinks);
    }

    /// Registers the spool whose state `/metrics` and `/readyz` report.
    pub fn set_spool(&self, spool: Spool) {
        let _ = self.spool.set(spool);
    }

    /// Registers the local broker whose figures `/metrics` reports.
    pub fn set_broker(&self, broker: Arc<crate::broker::LocalBroker>) {
        let _ = self.broker.set(broker);
    }

    /// Whether the spool's last commit succeeded.
    pub fn spool_healthy(&self) -> bool {
        self.spool.get().is_some_and(Spool::is_healthy)
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
        let header = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        };
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
        if let Some(spool) = self.spool.get() {
            header(&mut out, "meshgate_spool_bytes", "gauge", "Bytes held in spool segment files.");
            let _ = writeln!(out, "meshgate_spool_bytes {}", spool.bytes());
            header(&mut out, "meshgate_spool_healthy", "gauge", "1 when the spool's last commit succeeded.");
            let _ = writeln!(out, "meshgate_spool_healthy {}", u8::from(spool.is_healthy()));
            header(&mut out, "meshgate_spool_quarantined_total", "counter", "Corrupt spool stretches quarantined.");
            let _ = writeln!(out, "meshgate_spool_quarantined_total {}", spool.quarantined());
            header(&mut out, "meshgate_spool_dropped_total", "counter", "drop-oldest telemetry discarded when full.");
            let _ = writeln!(out, "meshgate_spool_dropped_total {}", spool.dropped());
            header(&mut out, "meshgate_spool_commits_total", "counter", "Group commits (one fdatasync each).");
            let _ = writeln!(out, "meshgate_spool_commits_total {}", spool.commits());
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
        let uplinks = self.uplinks.get().map(Vec::as_slice).unwrap_or_default();
        let per_uplink: [(&str, &str, StatReader); 7] = [
            ("meshgate_uplink_events_total", "Events each uplink confirmed.", |s| s.events.load(Ordering::Relaxed)),
            ("meshgate_uplink_failures_total", "Batches each uplink failed (each is retried).", |s| {
                s.failures.load(Ordering::Relaxed)
            }),
            ("meshgate_uplink_returned_total", "Events the destination returned (e.g. unroutable).", |s| {
                s.returned.load(Ordering::Relaxed)
            }),
            ("meshgate_uplink_connects_total", "Connections (re)established.", |s| s.connects.load(Ordering::Relaxed)),
            ("meshgate_uplink_dead_lettered_total", "Events set aside in the dead-letter file, never retried.", |s| {
                s.dead_lettered.load(Ordering::Relaxed)
            }),
            ("meshgate_uplink_busy_total", "Answers asking to slow down (overload, rate limit).", |s| {
                s.busy.load(Ordering::Relaxed)
            }),
            (
                "meshgate_uplink_duplicates_total",
                "Re-sent events the destination recognised by id and stored no second time.",
                |s| s.duplicates.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, read) in per_uplink {
            header(&mut out, name, "counter", help);
            for (u, s) in uplinks {
                let _ = writeln!(out, "{name}{{uplink=\"{u}\"}} {}", read(s));
            }
        }
        let downlinks = self.downlinks.get().map(Vec::as_slice).unwrap_or_default();
        let name = "meshgate_downlink_events_total";
        header(&mut out, name, "counter", "Events from the mesh by outcome: delivered, expired (ttl), refused.");
        for (d, s) in downlinks {
            for (outcome, n) in [("delivered", &s.delivered), ("expired", &s.expired), ("refused", &s.refused)] {
                let _ = writeln!(out, "{name}{{downlink=\"{d}\",outcome=\"{outcome}\"}} {}", n.load(Ordering::Relaxed));
            }
        }
        let name = "meshgate_downlink_connects_total";
        header(&mut out, name, "counter", "Downlink connections (re)established.");
        for (d, s) in downlinks {
            let _ = writeln!(out, "{name}{{downlink=\"{d}\"}} {}", s.connects.load(Ordering::Relaxed));
        }
        let endpoint_gauges: [(&str, &str, &str, EndpointReader); 3] = [
            ("meshgate_uplink_endpoint_up", "gauge", "1 while an endpoint takes traffic, 0 while ejected.", |e| {
                u64::from(e.up.load(Ordering::Relaxed))
            }),
            ("meshgate_uplink_endpoint_in_flight", "gauge", "Requests in flight to an endpoint.", |e| {
                e.in_flight.load(Ordering::Relaxed) as u64
            }),
            ("meshgate_uplink_endpoint_ejections_total", "counter", "Times an endpoint was ejected.", |e| {
                e.ejections.load(Ordering::Relaxed)
            }),
        ];
        for (name, kind, help, read) in endpoint_gauges {
            header(&mut out, name, kind, help);
            for (u, s) in uplinks {
                for e in s.endpoints.get().map(Vec::as_slice).unwrap_or_default() {
                    let _ = writeln!(out, "{name}{{uplink=\"{u}\",endpoint=\"{}\"}} {}", e.address, read(e));
                }
            }
        }
        let name = "meshgate_uplink_forward_latency_seconds";
        header(&mut out, name, "histogram", "Acceptance at the gateway to confirmation by the uplink, per event.");
        for (u, s) in uplinks {
            let mut cumulative = 0;
            for (i, bucket) in s.latency.buckets.iter().enumerate() {
                cumulative += bucket.load(Ordering::Relaxed);
                let le = LATENCY_BUCKETS_MS.get(i).map_or("+Inf".to_string(), |ms| format!("{}", *ms as f64 / 1000.0));
                let _ = writeln!(out, "{name}_bucket{{uplink=\"{u}\",le=\"{le}\"}} {cumulative}");
            }
            let sum = s.latency.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
            let _ = writeln!(out, "{name}_sum{{uplink=\"{u}\"}} {sum}\n{name}_count{{uplink=\"{u}\"}} {cumulative}");
        }
        let name = "meshgate_uplink_oldest_pending_seconds";
        header(&mut out, name, "gauge", "Age of the oldest event an uplink has not confirmed yet (0: caught up).");
        let now = meshgate_edge_agent::spool::record::now_ms();
        for (u, s) in uplinks {
            let oldest = s.oldest_pending_ms.load(Ordering::Relaxed);
            let age = if oldest == 0 { 0.0 } else { now.saturating_sub(oldest) as f64 / 1000.0 };
            let _ = writeln!(out, "{name}{{uplink=\"{u}\"}} {age:.3}");
        }
        out
    }

    /// The registered uplinks' health, for `/readyz`.
    pub fn uplinks_healthy(&self) -> bool {
        self.uplinks.get().is_some_and(|u| u.iter().any(|(_, s)| s.is_healthy()))
    }
}
