//! The mesh side of a process (the spool, the uplinks, the downlinks) as Prometheus text and as the JSON of the
//! admin API's `/api/uplinks` and `/api/spool`: one description both binaries serve.

use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{Value, json};

use crate::downlink::DownlinkStats;
use crate::spool::record::now_ms;
use crate::spool::{Spool, SpoolConfig};
use crate::uplink::eventmesh::EndpointState;
use crate::uplink::{LATENCY_BUCKETS_MS, UplinkStats};

/// Reads one counter of an uplink.
type StatReader = fn(&UplinkStats) -> u64;

/// Reads one figure of an uplink endpoint.
type EndpointReader = fn(&EndpointState) -> u64;

/// Confirmed events per uplink at the last look, to tell a rate.
#[derive(Debug)]
struct Sample {
    at: Instant,
    confirmed: Vec<u64>,
    per_second: Vec<f64>,
}

/// What a process's admin endpoint tells of its spool, uplinks and downlinks.
#[derive(Debug)]
pub struct MeshStatus {
    spool: Spool,
    limits: SpoolConfig,
    uplinks: Vec<(Arc<str>, Arc<UplinkStats>)>,
    downlinks: Vec<(Arc<str>, Arc<DownlinkStats>)>,
    sample: Mutex<Sample>,
}

/// Writes a metric's `# HELP` and `# TYPE` lines.
pub fn metric_header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

impl MeshStatus {
    /// The status of `spool` (configured with `limits`), its uplinks and the downlinks.
    pub fn new(
        spool: Spool,
        limits: SpoolConfig,
        uplinks: Vec<(Arc<str>, Arc<UplinkStats>)>,
        downlinks: Vec<(Arc<str>, Arc<DownlinkStats>)>,
    ) -> MeshStatus {
        let confirmed = uplinks.iter().map(|(_, s)| s.events.load(Ordering::Relaxed)).collect();
        let per_second = vec![0.0; uplinks.len()];
        let sample = Mutex::new(Sample { at: Instant::now(), confirmed, per_second });
        MeshStatus { spool, limits, uplinks, downlinks, sample }
    }

    /// The spool.
    pub fn spool(&self) -> &Spool {
        &self.spool
    }

    /// The uplinks, by name.
    pub fn uplinks(&self) -> &[(Arc<str>, Arc<UplinkStats>)] {
        &self.uplinks
    }

    /// Whether the spool's last commit succeeded.
    pub fn spool_healthy(&self) -> bool {
        self.spool.is_healthy()
    }

    /// Whether at least one uplink's last batch succeeded.
    pub fn uplinks_healthy(&self) -> bool {
        self.uplinks.iter().any(|(_, s)| s.is_healthy())
    }

    /// Events each uplink confirmed per second, averaged since the previous look (at least a second ago).
    fn confirmed_per_second(&self) -> Vec<f64> {
        let mut sample = self.sample.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let elapsed = sample.at.elapsed().as_secs_f64();
        if elapsed >= 1.0 {
            let now: Vec<u64> = self.uplinks.iter().map(|(_, s)| s.events.load(Ordering::Relaxed)).collect();
            sample.per_second =
                now.iter().zip(&sample.confirmed).map(|(n, then)| n.saturating_sub(*then) as f64 / elapsed).collect();
            sample.confirmed = now;
            sample.at = Instant::now();
        }
        sample.per_second.clone()
    }

    /// `GET /api/uplinks`: each uplink's state, endpoint, backlog, oldest unconfirmed age, last error and rate.
    pub fn uplinks_json(&self) -> Value {
        let rates = self.confirmed_per_second();
        let (now, durable) = (now_ms(), self.spool.last_durable());
        let list: Vec<Value> = self
            .uplinks
            .iter()
            .zip(rates)
            .map(|((name, s), rate)| {
                let oldest = s.oldest_pending_ms.load(Ordering::Relaxed);
                let (kind, endpoint) = s.describe();
                let state = match (s.is_healthy(), oldest) {
                    (false, _) => "retrying",
                    (true, 0) => "caught-up",
                    (true, _) => "forwarding",
                };
                let last_error = s.last_error().map(|(at, message)| {
                    let at = chrono::DateTime::from_timestamp_millis(at as i64).map(|t| t.to_rfc3339());
                    json!({ "at": at, "message": message })
                });
                json!({
                    "name": name.as_ref(),
                    "kind": kind,
                    "endpoint": endpoint,
                    "state": state,
                    "healthy": s.is_healthy(),
                    "backlog_records": durable.saturating_sub(self.spool.cursor(name)),
                    "oldest_unconfirmed_secs": if oldest == 0 { 0.0 } else { now.saturating_sub(oldest) as f64 / 1000.0 },
                    "confirmed_total": s.events.load(Ordering::Relaxed),
                    "confirmed_per_second": (rate * 10.0).round() / 10.0,
                    "failures_total": s.failures.load(Ordering::Relaxed),
                    "dead_lettered_total": s.dead_lettered.load(Ordering::Relaxed),
                    "last_error": last_error,
                })
            })
            .collect();
        Value::Array(list)
    }

    /// `GET /api/spool`: bytes, segments, limits, health, quarantined and dropped.
    pub fn spool_json(&self) -> Value {
        let s = &self.spool;
        let fill = if self.limits.max_bytes == 0 { 0.0 } else { s.bytes() as f64 / self.limits.max_bytes as f64 };
        json!({
            "bytes": s.bytes(),
            "segments": s.segments(),
            "max_bytes": self.limits.max_bytes,
            "segment_bytes": self.limits.segment_bytes,
            "fill": (fill * 1000.0).round() / 1000.0,
            "healthy": s.is_healthy(),
            "quarantined_total": s.quarantined(),
            "dropped_total": s.dropped(),
            "commits_total": s.commits(),
            "last_durable_record": s.last_durable(),
        })
    }

    /// The Prometheus text of the spool, the uplinks and the downlinks.
    pub fn render_metrics(&self, out: &mut String) {
        let spool = &self.spool;
        let header = metric_header;
        header(out, "meshgate_spool_bytes", "gauge", "Bytes held in spool segment files.");
        let _ = writeln!(out, "meshgate_spool_bytes {}", spool.bytes());
        header(out, "meshgate_spool_healthy", "gauge", "1 when the spool's last commit succeeded.");
        let _ = writeln!(out, "meshgate_spool_healthy {}", u8::from(spool.is_healthy()));
        header(out, "meshgate_spool_quarantined_total", "counter", "Corrupt spool stretches quarantined.");
        let _ = writeln!(out, "meshgate_spool_quarantined_total {}", spool.quarantined());
        header(out, "meshgate_spool_dropped_total", "counter", "drop-oldest telemetry discarded when full.");
        let _ = writeln!(out, "meshgate_spool_dropped_total {}", spool.dropped());
        header(out, "meshgate_spool_commits_total", "counter", "Group commits (one fdatasync each).");
        let _ = writeln!(out, "meshgate_spool_commits_total {}", spool.commits());
        let uplinks = &self.uplinks;
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
            header(out, name, "counter", help);
            for (u, s) in uplinks {
                let _ = writeln!(out, "{name}{{uplink=\"{u}\"}} {}", read(s));
            }
        }
        let name = "meshgate_downlink_events_total";
        header(out, name, "counter", "Events from the mesh by outcome: delivered, expired (ttl), refused.");
        for (d, s) in &self.downlinks {
            for (outcome, n) in [("delivered", &s.delivered), ("expired", &s.expired), ("refused", &s.refused)] {
                let _ = writeln!(out, "{name}{{downlink=\"{d}\",outcome=\"{outcome}\"}} {}", n.load(Ordering::Relaxed));
            }
        }
        let name = "meshgate_downlink_connects_total";
        header(out, name, "counter", "Downlink connections (re)established.");
        for (d, s) in &self.downlinks {
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
            header(out, name, kind, help);
            for (u, s) in uplinks {
                for e in s.endpoints.get().map(Vec::as_slice).unwrap_or_default() {
                    let _ = writeln!(out, "{name}{{uplink=\"{u}\",endpoint=\"{}\"}} {}", e.address, read(e));
                }
            }
        }
        let name = "meshgate_uplink_forward_latency_seconds";
        header(out, name, "histogram", "Acceptance at the gateway to confirmation by the uplink, per event.");
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
        header(out, name, "gauge", "Age of the oldest event an uplink has not confirmed yet (0: caught up).");
        let now = now_ms();
        for (u, s) in uplinks {
            let oldest = s.oldest_pending_ms.load(Ordering::Relaxed);
            let age = if oldest == 0 { 0.0 } else { now.saturating_sub(oldest) as f64 / 1000.0 };
            let _ = writeln!(out, "{name}{{uplink=\"{u}\"}} {age:.3}");
        }
    }
}
