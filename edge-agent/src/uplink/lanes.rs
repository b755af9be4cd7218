//! Per-device lanes: a batch split by device, so uplinks that send concurrently keep each device's order (a lane
//! sends its next event only after the previous one is confirmed) while different devices' events overlap.

use std::collections::HashMap;

use futures::StreamExt as _;
use meshgate_protocols::cloudevents::ExtensionValue;

use crate::CloudEvent;

/// The device an event belongs to: its `deviceid` extension, else its `source`.
pub fn device_of(event: &CloudEvent) -> &str {
    match event.extensions.get("deviceid") {
        Some(ExtensionValue::String(d)) => d.as_str(),
        _ => event.source.as_str(),
    }
}

/// Splits the events at `pending` (indices into `batch`, in order) into one lane per device, each in order; the
/// lanes come in the order of their first event.
pub fn by_device(batch: &[&CloudEvent], pending: &[usize]) -> Vec<Vec<usize>> {
    let mut lanes: Vec<Vec<usize>> = Vec::new();
    let mut lane_of: HashMap<&str, usize> = HashMap::new();
    for &i in pending {
        let Some(event) = batch.get(i) else { continue };
        let lane = *lane_of.entry(device_of(event)).or_insert_with(|| {
            lanes.push(Vec::new());
            lanes.len() - 1
        });
        if let Some(l) = lanes.get_mut(lane) {
            l.push(i);
        }
    }
    lanes
}

/// Which events of the batch in flight an uplink has delivered, so that the forwarder's retry of the same batch
/// (it retries a failed batch as a whole) sends only the rest.
#[derive(Debug, Default)]
pub struct Progress {
    fingerprint: (usize, String, String),
    delivered: Vec<bool>,
}

impl Progress {
    /// The delivered flags for `batch`: the ones kept from an earlier attempt at the same batch, else all false.
    pub fn for_batch(&mut self, batch: &[&CloudEvent]) -> &mut [bool] {
        let id = |e: Option<&&CloudEvent>| e.map(|e| e.id.clone()).unwrap_or_default();
        let fingerprint = (batch.len(), id(batch.first()), id(batch.last()));
        if self.fingerprint != fingerprint || self.delivered.len() != batch.len() {
            *self = Progress { fingerprint, delivered: vec![false; batch.len()] };
        }
        &mut self.delivered
    }
}

/// Delivers the events of `batch` not yet `delivered`, one lane per device with at most `concurrency` lanes at
/// once, each lane in order and stopping at its first failure; marks what was delivered and returns the first
/// failure, if any.
pub async fn deliver<'a, F, Fut, E>(
    batch: &'a [&'a CloudEvent],
    delivered: &mut [bool],
    concurrency: usize,
    send: F,
) -> Result<(), E>
where
    F: Fn(&'a CloudEvent) -> Fut,
    Fut: Future<Output = Result<(), E>>,
{
    let pending: Vec<usize> = (0..batch.len()).filter(|&i| !delivered.get(i).copied().unwrap_or(true)).collect();
    let send = &send;
    let outcomes: Vec<(Vec<usize>, Option<E>)> = futures::stream::iter(by_device(batch, &pending))
        .map(|lane| async move {
            let mut done = Vec::with_capacity(lane.len());
            for i in lane {
                let Some(event) = batch.get(i) else { continue };
                if let Err(e) = send(event).await {
                    return (done, Some(e));
                }
                done.push(i);
            }
            (done, None)
        })
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut first_error = None;
    for (done, error) in outcomes {
        for i in done {
            if let Some(d) = delivered.get_mut(i) {
                *d = true;
            }
        }
        if first_error.is_none() {
            first_error = error;
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanes_keep_each_devices_order() {
        let event = |source: &str, device: Option<&str>| {
            let mut e = CloudEvent { id: "1".into(), source: source.into(), ty: "t".into(), ..CloudEvent::default() };
            if let Some(d) = device {
                e.extensions.insert("deviceid".into(), d.into());
            }
            e
        };
        let events = [event("/a", None), event("/b", Some("d1")), event("/a", None), event("/c", Some("d1"))];
        let batch: Vec<&CloudEvent> = events.iter().collect();
        assert_eq!(by_device(&batch, &[0, 1, 2, 3]), vec![vec![0, 2], vec![1, 3]]);
        assert_eq!(by_device(&batch, &[2, 3]), vec![vec![2], vec![3]]);
    }

    #[tokio::test]
    async fn a_failed_lane_stops_and_a_retry_of_the_batch_sends_only_the_rest() {
        let events: Vec<CloudEvent> = (0..4)
            .map(|i| CloudEvent {
                id: i.to_string(),
                source: format!("/{}", i % 2),
                ty: "t".into(),
                ..CloudEvent::default()
            })
            .collect();
        let batch: Vec<&CloudEvent> = events.iter().collect();
        let mut progress = Progress::default();
        let sent = std::sync::Mutex::new(Vec::new());
        let first = deliver(&batch, progress.for_batch(&batch), 4, |e| {
            sent.lock().unwrap().push(e.id.clone());
            let fail = e.id == "1";
            async move { if fail { Err("refused") } else { Ok(()) } }
        })
        .await;
        assert_eq!(first, Err("refused"));
        assert_eq!(progress.for_batch(&batch), &[true, false, true, false], "lane /1 stopped at its first event");
        sent.lock().unwrap().clear();
        deliver(&batch, progress.for_batch(&batch), 4, |e| {
            sent.lock().unwrap().push(e.id.clone());
            async { Ok::<(), ()>(()) }
        })
        .await
        .unwrap();
        assert_eq!(*sent.lock().unwrap(), ["1", "3"]);
    }
}
