//! Endpoint selection: the policies (round-robin, weighted, least-in-flight), bounded concurrency per endpoint,
//! and the health state that ejects a failing runtime and re-admits it when it answers again.
//!
//! No lock here is held across an await: the few `Mutex`es guard plain counters and are released before the
//! caller awaits anything.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::Policy;

/// One runtime endpoint's live state, shared with the metrics.
#[derive(Debug)]
pub struct EndpointState {
    /// `host:port` as configured.
    pub address: String,
    /// Its weight for the weighted policy.
    pub weight: u32,
    /// Whether it takes traffic (false: ejected).
    pub up: AtomicBool,
    /// Requests in flight.
    pub in_flight: AtomicUsize,
    /// Times it was ejected.
    pub ejections: AtomicU64,
    /// Consecutive failures since the last success.
    failures: AtomicU32,
    /// While ejected: the earliest moment (ms since the Unix epoch) a passing health check may re-admit it.
    ejected_until_ms: AtomicU64,
    /// Bounds the requests in flight.
    permits: Arc<Semaphore>,
}

/// A slot on an endpoint: holds one unit of its concurrency and counts as in flight until dropped.
#[derive(Debug)]
pub struct Slot {
    endpoint: Arc<EndpointState>,
    _permit: OwnedSemaphorePermit,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.endpoint.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The endpoints of one uplink and how to choose among them.
#[derive(Debug)]
pub struct Balancer {
    endpoints: Vec<Arc<EndpointState>>,
    policy: Policy,
    eject_after: u32,
    ejection_ms: u64,
    next: AtomicUsize,
    /// Smooth weighted round-robin: each endpoint's current weight.
    current_weights: Mutex<Vec<i64>>,
}

impl Balancer {
    /// A balancer over `(address, weight)` pairs, all up. An endpoint is ejected after `eject_after` failures in a
    /// row, for at least `ejection_ms` times the number of its ejections so far (capped at ten), as Envoy's outlier
    /// detection does, so a runtime that answers probes but not publishes does not flap back in at once.
    pub fn new(
        endpoints: &[(String, u32)],
        policy: Policy,
        max_in_flight: usize,
        eject_after: u32,
        ejection_ms: u64,
    ) -> Balancer {
        let endpoints: Vec<_> = endpoints
            .iter()
            .map(|(address, weight)| {
                Arc::new(EndpointState {
                    address: address.clone(),
                    weight: (*weight).max(1),
                    up: AtomicBool::new(true),
                    in_flight: AtomicUsize::new(0),
                    ejections: AtomicU64::new(0),
                    failures: AtomicU32::new(0),
                    ejected_until_ms: AtomicU64::new(0),
                    permits: Arc::new(Semaphore::new(max_in_flight.max(1))),
                })
            })
            .collect();
        let current_weights = Mutex::new(vec![0; endpoints.len()]);
        Balancer {
            endpoints,
            policy,
            eject_after: eject_after.max(1),
            ejection_ms,
            next: AtomicUsize::new(0),
            current_weights,
        }
    }

    /// Every endpoint's state, in configuration order.
    pub fn endpoints(&self) -> &[Arc<EndpointState>] {
        &self.endpoints
    }

    /// Chooses an endpoint that is up and not in `tried`, by the policy. `None` when there is none.
    pub fn pick(&self, tried: &[usize]) -> Option<usize> {
        // Called per event: the candidates are walked, never collected.
        let candidates =
            || self.endpoints.iter().enumerate().filter(|(i, e)| !tried.contains(i) && e.up.load(Ordering::Relaxed));
        let n = candidates().count();
        if n == 0 {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed);
        match self.policy {
            Policy::RoundRobin => candidates().nth(turn % n).map(|(i, _)| i),
            Policy::LeastInFlight => {
                // Fewest in flight; ties go round-robin (starting at this turn's candidate) so idle endpoints
                // share the load.
                let start = turn % n;
                candidates()
                    .enumerate()
                    .min_by_key(|&(k, (_, e))| (e.in_flight.load(Ordering::Relaxed), (k + n - start) % n))
                    .map(|(_, (i, _))| i)
            }
            Policy::Weighted => {
                let mut current = self.current_weights.lock().unwrap_or_else(|p| p.into_inner());
                let total: i64 = candidates().map(|(_, e)| i64::from(e.weight)).sum();
                let mut best: Option<(usize, i64)> = None;
                for (i, e) in candidates() {
                    let Some(w) = current.get_mut(i) else { continue };
                    *w += i64::from(e.weight);
                    if best.is_none_or(|(_, bw)| *w > bw) {
                        best = Some((i, *w));
                    }
                }
                let best = best.map(|(i, _)| i);
                if let Some(w) = best.and_then(|b| current.get_mut(b)) {
                    *w -= total;
                }
                best
            }
        }
    }

    /// Waits for a free slot on endpoint `i` (its `max_in_flight` bound).
    pub async fn slot(&self, i: usize) -> Option<Slot> {
        let endpoint = Arc::clone(self.endpoints.get(i)?);
        let permit = Arc::clone(&endpoint.permits).acquire_owned().await.ok()?;
        endpoint.in_flight.fetch_add(1, Ordering::Relaxed);
        Some(Slot { endpoint, _permit: permit })
    }

    /// Records an answer from endpoint `i` at `now_ms`: it is alive. An ejected endpoint is re-admitted once its
    /// ejection time is over.
    pub fn succeeded(&self, i: usize, now_ms: u64) {
        if let Some(e) = self.endpoints.get(i) {
            e.failures.store(0, Ordering::Relaxed);
            if !e.up.load(Ordering::Relaxed)
                && now_ms >= e.ejected_until_ms.load(Ordering::Relaxed)
                && !e.up.swap(true, Ordering::Relaxed)
            {
                tracing::info!(endpoint = %e.address, "EventMesh endpoint re-admitted");
            }
        }
    }

    /// Records a connection failure or timeout on endpoint `i`; ejects it after `eject_after` in a row. Returns
    /// whether this failure ejected it.
    pub fn failed(&self, i: usize, why: &str, now_ms: u64) -> bool {
        let Some(e) = self.endpoints.get(i) else { return false };
        let failures = e.failures.fetch_add(1, Ordering::Relaxed).saturating_add(1);
        if failures >= self.eject_after && e.up.swap(false, Ordering::Relaxed) {
            let ejections = e.ejections.fetch_add(1, Ordering::Relaxed).saturating_add(1);
            let ejected_for = self.ejection_ms.saturating_mul(ejections.min(10));
            e.ejected_until_ms.store(now_ms.saturating_add(ejected_for), Ordering::Relaxed);
            tracing::warn!(endpoint = %e.address, failures, ejected_for_ms = ejected_for, error = why, "EventMesh endpoint ejected");
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn balancer(policy: Policy, weights: &[u32]) -> Balancer {
        let eps: Vec<(String, u32)> = weights.iter().enumerate().map(|(i, w)| (format!("h{i}:1"), *w)).collect();
        Balancer::new(&eps, policy, 4, 2, 1000)
    }

    #[test]
    fn round_robin_takes_turns_and_skips_ejected_and_tried_endpoints() {
        let b = balancer(Policy::RoundRobin, &[1, 1, 1]);
        let picks: Vec<_> = (0..6).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
        assert!(!b.failed(1, "x", 0));
        assert!(b.failed(1, "x", 0), "ejected at the second failure in a row");
        assert!((0..10).all(|_| b.pick(&[]) != Some(1)));
        assert_eq!(b.pick(&[0, 2]), None);
        b.succeeded(1, 999);
        assert_eq!(b.pick(&[0, 2]), None, "not before the ejection time is over");
        b.succeeded(1, 1000);
        assert_eq!(b.pick(&[0, 2]), Some(1));
        assert_eq!(b.endpoints()[1].ejections.load(Ordering::Relaxed), 1);
        b.failed(1, "x", 5000);
        assert!(b.failed(1, "x", 5000));
        b.succeeded(1, 6999);
        assert_eq!(b.pick(&[0, 2]), None, "the second ejection lasts twice as long");
        b.succeeded(1, 7000);
        assert_eq!(b.pick(&[0, 2]), Some(1));
    }

    #[test]
    fn weighted_follows_the_weights_smoothly() {
        let b = balancer(Policy::Weighted, &[5, 1, 1]);
        let picks: Vec<_> = (0..7).map(|_| b.pick(&[]).unwrap()).collect();
        assert_eq!(picks.iter().filter(|&&i| i == 0).count(), 5);
        assert_eq!(picks, [0, 0, 1, 0, 2, 0, 0], "nginx's smooth sequence for 5:1:1");
    }

    #[tokio::test]
    async fn least_in_flight_prefers_the_idle_endpoint_and_slots_are_bounded() {
        let b = balancer(Policy::LeastInFlight, &[1, 1]);
        let first = b.pick(&[]).unwrap();
        let _busy = b.slot(first).await.unwrap();
        for _ in 0..5 {
            assert_eq!(b.pick(&[]), Some(1 - first));
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(b.slot(first).await.unwrap());
        }
        let fifth = tokio::time::timeout(std::time::Duration::from_millis(50), b.slot(first)).await;
        assert!(fifth.is_err(), "max_in_flight = 4 bounds the slots");
        drop(held);
        assert_eq!(b.endpoints()[first].in_flight.load(Ordering::Relaxed), 1);
    }
}
