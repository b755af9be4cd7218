//! The forwarder: one task per uplink that drains the spool in order into the uplink (from the spool's in-memory
//! tail while it keeps up, from the segment files when it fell behind or after a restart), advancing the uplink's
//! cursor only when the uplink confirmed a batch, and retrying failures with capped exponential backoff and
//! jitter. A batch is retried as a whole until it succeeds, so per-device order holds and nothing confirmed to a
//! device is skipped; a restart resends what was not confirmed (at least once, each event keeping its `id`).

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::Deserialize;
use tokio::sync::watch;

use crate::CloudEvent;
use crate::spool::{Reader, Spool, StoredRecord};
use crate::trace::{TraceSpan, Tracing};
use crate::uplink::{NamedUplink, UplinkError};

/// `[forwarder]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwarderConfig {
    /// The most events handed to an uplink at once.
    pub max_batch: usize,
    /// The most bytes of events read back from the segment files at once (an uplink that fell behind the memory
    /// tail; at least one event): large events do not come into memory a thousand at a time.
    pub max_batch_bytes: usize,
    /// The first retry delay after a failed batch, in milliseconds.
    pub backoff_initial_ms: u64,
    /// The cap on the retry delay, in milliseconds.
    pub backoff_max_ms: u64,
    /// How often, at most, an uplink's cursor is written while it forwards (each write is a file replaced and
    /// fsynced); it is written at once whenever the uplink has caught up. A cursor that lags only means events
    /// sent again after a crash (at least once), never one skipped.
    pub cursor_interval_ms: u64,
}

impl Default for ForwarderConfig {
    fn default() -> Self {
        ForwarderConfig {
            max_batch: 1024,
            max_batch_bytes: 8 << 20,
            backoff_initial_ms: 100,
            backoff_max_ms: 30_000,
            cursor_interval_ms: 200,
        }
    }
}

impl ForwarderConfig {
    /// The delay before retry number `attempt` (0-based): exponential, capped, with "full jitter" between half the
    /// delay and the delay, so a fleet of gateways does not retry in step.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self.backoff_initial_ms.saturating_mul(1u64 << attempt.min(20));
        let capped = exp.min(self.backoff_max_ms).max(1);
        let jittered = rand::thread_rng().gen_range(capped / 2..=capped);
        Duration::from_millis(jittered)
    }
}

/// Reads a batch: from the spool's in-memory tail when the reader keeps up with it, else from the files on the
/// blocking pool, handing the reader back (a fresh one from the cursor if the blocking task was lost).
async fn read_batch(
    spool: &Spool,
    name: &str,
    mut reader: Reader,
    max: usize,
    max_bytes: usize,
) -> (Reader, std::io::Result<Vec<(u64, Arc<StoredRecord>)>>) {
    if let Some(batch) = reader.read_from_tail(max) {
        return (reader, Ok(batch));
    }
    let task = tokio::task::spawn_blocking(move || {
        let batch =
            reader.read_batch_bounded(max, max_bytes).map(|b| b.into_iter().map(|(id, r)| (id, Arc::new(r))).collect());
        (reader, batch)
    });
    match task.await {
        Ok(done) => done,
        Err(e) => (spool.reader(name), Err(std::io::Error::other(e))),
    }
}

/// Resolves once `stop` turns true; holds no watch guard after it returns.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

/// Drains the spool into `uplink` until `stop` turns true and everything durable has been forwarded (or the
/// uplink is failing, in which case the rest waits in the spool for the next start).
pub async fn run(
    spool: Spool,
    mut uplink: NamedUplink,
    config: ForwarderConfig,
    traces: Tracing,
    mut stop: watch::Receiver<bool>,
) {
    let name = uplink.name.clone();
    let endpoint = uplink.stats.describe().1.to_string();
    let mut reader = Some(spool.reader(&name));
    let mut durable = spool.durable();
    let mut cursor = Cursor::new();
    loop {
        durable.borrow_and_update();
        let Some(r) = reader.take() else { return };
        let (r, batch) = read_batch(&spool, &name, r, config.max_batch.max(1), config.max_batch_bytes.max(1)).await;
        reader = Some(r);
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(uplink = %name, error = %e, "reading the spool failed");
                if wait_or_stop(&mut stop, config.backoff(3)).await {
                    return;
                }
                continue;
            }
        };
        let Some(&(last_id, _)) = batch.last() else {
            uplink.stats.oldest_pending_ms.store(0, std::sync::atomic::Ordering::Relaxed);
            // Caught up: the cursor is written now, so the spool can free what was forwarded.
            cursor.write(&spool, &name).await;
            if *stop.borrow() {
                return;
            }
            tokio::select! {
                _ = durable.changed() => {}
                _ = stopped(&mut stop) => {}
            }
            continue;
        };
        let oldest = batch.first().map_or(0, |(_, r)| r.accepted_at_ms);
        let accepted: Vec<u64> =
            batch.iter().filter(|(_, r)| r.routed_to(&name)).map(|(_, r)| r.accepted_at_ms).collect();
        uplink.stats.oldest_pending_ms.store(oldest, std::sync::atomic::Ordering::Relaxed);
        // The tail's records are shared with the other uplinks' readers: each takes its own copy of the event.
        let mut events: Vec<CloudEvent> = batch
            .into_iter()
            .filter(|(_, r)| r.routed_to(&name))
            .map(|(_, r)| Arc::unwrap_or_clone(r).into_event())
            .collect();
        // Each event this uplink sends carries its `forward` span as the parent (tracing off: nothing at all).
        let mut spans: Vec<TraceSpan> = if traces.is_on() {
            events.iter_mut().filter_map(|e| traces.forward(e, &name, &endpoint)).collect()
        } else {
            Vec::new()
        };
        if !events.is_empty() {
            let refs: Vec<&CloudEvent> = events.iter().collect();
            let mut attempt = 0;
            loop {
                match uplink.uplink.send(&refs).await {
                    Ok(()) => {
                        uplink.stats.record(refs.len(), true);
                        let now = crate::spool::record::now_ms();
                        for at in &accepted {
                            uplink.stats.latency.observe(now.saturating_sub(*at), 1);
                        }
                        for span in spans.drain(..) {
                            span.end_with(vec![opentelemetry::KeyValue::new("meshgate.retries", i64::from(attempt))]);
                        }
                        break;
                    }
                    Err(e) => {
                        uplink.stats.record(0, false);
                        uplink.stats.failed_with(&e);
                        let delay = match &e {
                            // The destination said how long to wait: that, rather than our guess.
                            UplinkError::Busy { retry_after: Some(wait), .. } => (*wait).max(Duration::from_millis(1)),
                            _ => config.backoff(attempt),
                        };
                        tracing::warn!(
                            uplink = %name, endpoint = %endpoint, error = %e, retry_in = ?delay,
                            "uplink failed a batch; retrying"
                        );
                        attempt = attempt.saturating_add(1);
                        let error = e.to_string();
                        for span in &mut spans {
                            span.retried(attempt, &error);
                        }
                        if *stop.borrow() || wait_or_stop(&mut stop, delay).await {
                            cursor.write(&spool, &name).await;
                            return;
                        }
                    }
                }
            }
        }
        cursor.forwarded(last_id);
        if cursor.due(config.cursor_interval_ms) {
            cursor.write(&spool, &name).await;
        }
    }
}

/// An uplink's cursor as the forwarder moves it: what was forwarded, and what the ledger holds.
#[derive(Debug)]
struct Cursor {
    /// The highest id forwarded and not written yet.
    unwritten: Option<u64>,
    last_write: std::time::Instant,
}

impl Cursor {
    fn new() -> Cursor {
        Cursor { unwritten: None, last_write: std::time::Instant::now() }
    }

    fn forwarded(&mut self, id: u64) {
        self.unwritten = Some(id);
    }

    /// Whether the interval since the last write is over.
    fn due(&self, interval_ms: u64) -> bool {
        self.last_write.elapsed() >= Duration::from_millis(interval_ms)
    }

    /// Writes what was forwarded to the ledger (on the blocking pool: it fsyncs).
    async fn write(&mut self, spool: &Spool, name: &Arc<str>) {
        let Some(id) = self.unwritten.take() else { return };
        self.last_write = std::time::Instant::now();
        let (acking, uplink_name) = (spool.clone(), Arc::clone(name));
        match tokio::task::spawn_blocking(move || acking.ack(&uplink_name, id)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(uplink = %name, error = %e, "could not record the uplink's cursor");
                // Tried again with the next write; the events stay in the spool meanwhile.
                self.unwritten = Some(id);
            }
            Err(e) => tracing::error!(uplink = %name, error = %e, "cursor task failed"),
        }
    }
}

/// Sleeps for `delay`; returns `true` if `stop` turned true first.
async fn wait_or_stop(stop: &mut watch::Receiver<bool>, delay: Duration) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(delay) => false,
        _ = stopped(stop) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let c = ForwarderConfig { max_batch: 1, backoff_initial_ms: 100, backoff_max_ms: 1000, ..Default::default() };
        for _ in 0..50 {
            let d0 = c.backoff(0).as_millis();
            assert!((50..=100).contains(&d0), "{d0}");
            let d3 = c.backoff(3).as_millis();
            assert!((400..=800).contains(&d3), "{d3}");
            let d9 = c.backoff(30).as_millis();
            assert!((500..=1000).contains(&d9), "{d9}");
        }
    }
}
