//! Crash safety of the spool, end to end: the real binary killed with SIGKILL mid-stream, again and again, and
//! segment tails torn behind its back. Whatever a device was told is stored must come out of the uplink.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use meshgate_protocols::mqtt::{Packet, Publish, QoS, ReasonCode, Version};
use meshgate_tests::Gateway;
use meshgate_tests::raw::{RawClient, Reply};

const PUBLISHERS: usize = 4;
const CYCLES: usize = 20;

/// Publishes `{"client": c, "seq": n}` at QoS 1, one in flight, recording each sequence number PUBACKed, until the
/// connection dies. Returns the next sequence number to use.
fn stream(addr: std::net::SocketAddr, client: usize, mut seq: u64, acked: &Mutex<Vec<u64>>) -> u64 {
    let Ok(mut c) = RawClient::connect(addr, Version::V5, &format!("crash-{client}"), 30) else { return seq };
    let mut packet_id: u16 = 1;
    loop {
        let payload = serde_json::json!({"client": client, "seq": seq}).to_string();
        let publish = Publish {
            topic: "crash/test",
            qos: QoS::AtLeastOnce,
            packet_id: Some(packet_id),
            payload: payload.as_bytes(),
            ..Publish::default()
        };
        if c.send(&Packet::Publish(publish)).is_err() {
            return seq + 1;
        }
        match c.recv() {
            Ok(Reply::Ack(4, id, ReasonCode::SUCCESS)) if id == packet_id => {
                acked.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(seq);
            }
            // Killed mid-flight: this sequence number may or may not be stored; never reuse it.
            _ => return seq + 1,
        }
        seq += 1;
        packet_id = packet_id.checked_add(1).unwrap_or(1);
    }
}

#[test]
fn every_acknowledged_message_survives_twenty_sigkills_in_order() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // Small segments so that kills also land around rotations and deletions.
    let config = |base: String| base + "\n[spool]\nsegment_bytes = 65536\n";
    let acked: Vec<Arc<Mutex<Vec<u64>>>> = (0..PUBLISHERS).map(|_| Arc::new(Mutex::new(Vec::new()))).collect();
    let mut next_seq = [0u64; PUBLISHERS];
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    for cycle in 0..CYCLES {
        let mut gw = Gateway::start_in(dir.path(), config)?;
        let addr = gw.mqtt;
        let handles: Vec<_> = (0..PUBLISHERS)
            .map(|c| {
                let acked = Arc::clone(&acked[c]);
                let seq = next_seq[c];
                std::thread::spawn(move || stream(addr, c, seq, &acked))
            })
            .collect();
        // xorshift: a reproducible "random" moment between 50 and 350 ms into the cycle.
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        std::thread::sleep(Duration::from_millis(50 + rng_state % 300));
        gw.kill()?;
        for (c, h) in handles.into_iter().enumerate() {
            next_seq[c] = h.join().map_err(|_| anyhow::anyhow!("publisher {c} panicked in cycle {cycle}"))?;
        }
    }
    let total: usize = acked.iter().map(|a| a.lock().map_or(0, |v| v.len())).sum();
    assert!(total > CYCLES * PUBLISHERS, "too few messages acknowledged to mean anything: {total}");
    eprintln!("{total} messages acknowledged over {CYCLES} SIGKILL cycles");

    // The last start drains the spool.
    let gw = Gateway::start_in(dir.path(), config)?;
    let wanted: Vec<HashSet<u64>> =
        acked.iter().map(|a| a.lock().map(|v| v.iter().copied().collect()).unwrap_or_default()).collect();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let events = gw.events()?;
        let mut have: Vec<HashSet<u64>> = vec![HashSet::new(); PUBLISHERS];
        for e in &events {
            if let (Some(c), Some(s)) = (e["data"]["client"].as_u64(), e["data"]["seq"].as_u64())
                && let Some(set) = have.get_mut(c as usize)
            {
                set.insert(s);
            }
        }
        let missing: usize = wanted.iter().zip(&have).map(|(w, h)| w.difference(h).count()).sum();
        if missing == 0 {
            break events;
        }
        anyhow::ensure!(std::time::Instant::now() < deadline, "{missing} acknowledged messages never arrived");
        std::thread::sleep(Duration::from_millis(100));
    };

    // Per-client order: first occurrences increase; a duplicate (resent after a crash) keeps its event id.
    let mut ids: HashMap<(u64, u64), String> = HashMap::new();
    let mut last_first: Vec<Option<u64>> = vec![None; PUBLISHERS];
    for e in &events {
        let (Some(c), Some(s)) = (e["data"]["client"].as_u64(), e["data"]["seq"].as_u64()) else { continue };
        let id = e["id"].as_str().unwrap_or_default().to_string();
        match ids.get(&(c, s)) {
            Some(first) => assert_eq!(first, &id, "a resent event must keep its id"),
            None => {
                let prev = &mut last_first[c as usize];
                assert!(prev.is_none_or(|p| s > p), "client {c}: seq {s} after {prev:?}");
                *prev = Some(s);
                ids.insert((c, s), id);
            }
        }
    }
    Ok(())
}

#[test]
fn a_torn_or_garbled_segment_tail_is_cut_and_everything_acknowledged_survives() -> anyhow::Result<()> {
    for damage in ["truncate", "garble"] {
        let dir = tempfile::tempdir()?;
        // The uplink is down, so the records stay in the spool for the damage to hit.
        let down = |b: String| b + "\n[[uplinks]]\nname = \"local\"\nkind = \"file\"\npath = \"/dev/full\"\n";
        let mut gw = Gateway::start_in(dir.path(), down)?;
        let mut c = RawClient::connect(gw.mqtt, Version::V5, "torn", 30)?;
        for id in 1..=20u16 {
            let payload = id.to_string();
            c.send(&Packet::Publish(Publish {
                topic: "t",
                qos: QoS::AtLeastOnce,
                packet_id: Some(id),
                payload: payload.as_bytes(),
                ..Publish::default()
            }))?;
            assert_eq!(c.recv()?, Reply::Ack(4, id, ReasonCode::SUCCESS));
        }
        gw.kill()?;
        // A write that was in progress at the kill: half a record, or garbage, after the acknowledged ones.
        let spool = dir.path().join("spool");
        let newest = std::fs::read_dir(&spool)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "seg"))
            .max()
            .ok_or_else(|| anyhow::anyhow!("no segment"))?;
        let mut bytes = std::fs::read(&newest)?;
        // A valid header whose body never made it: the first 30 bytes of a record (16 of header, 14 of body).
        let torn = bytes[..30].to_vec();
        match damage {
            "truncate" => bytes.extend_from_slice(&torn),
            _ => bytes.extend_from_slice(&[0x5a; 37]),
        }
        std::fs::write(&newest, bytes)?;

        let gw = Gateway::start_in(dir.path(), |b| b)?;
        let events = gw.wait_for_events(20, Duration::from_secs(10))?;
        let payloads: Vec<u64> = events.iter().filter_map(|e| e["data"].as_u64()).collect();
        assert_eq!(payloads, (1..=20).collect::<Vec<_>>(), "{damage}");
        let (_, metrics) = gw.admin_get("/metrics")?;
        // Half a record is a torn write, cut silently; a garbled header is corruption, quarantined and counted.
        let expected = if damage == "truncate" { 0 } else { 1 };
        assert!(metrics.contains(&format!("meshgate_spool_quarantined_total {expected}")), "{damage}: {metrics}");
    }
    Ok(())
}
