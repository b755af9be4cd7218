//! Spool append benchmark: group-committed appends of 200-byte events, durable-acknowledged, next to the disk's own
//! limit measured in the same run (raw sequential writes of the same bytes with the same fsync batching).
//!
//! `cargo bench -p meshgate-edge-agent --bench spool_append` (set `SPOOL_BENCH_DIR` to bench another disk,
//! `SPOOL_BENCH_SECS` for the length of each run). Prints a Markdown table.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use meshgate_edge_agent::CloudEvent;
use meshgate_edge_agent::pipeline::Route;
use meshgate_edge_agent::spool::{Spool, SpoolConfig, StoredRecord, record};
use meshgate_protocols::cloudevents::Data;

const RECORD_BYTES: usize = 200;

/// An event whose spool record (framing included) is about 200 bytes.
fn record() -> StoredRecord {
    let mut event = CloudEvent {
        id: "01a208a7-13b6-768a-8f01-222e324cd7e1".into(),
        source: "/edge-1/devices/thermo-7".into(),
        ty: "com.example.temperature".into(),
        ..CloudEvent::default()
    };
    let mut pad = 0;
    loop {
        event.data = Some(Data::Binary(vec![b'x'; pad]));
        let r = StoredRecord::new(event.clone(), &Route::All);
        let mut buf = Vec::new();
        record::encode(1, &r, &mut buf, &mut Default::default()).expect("encode");
        if buf.len() >= RECORD_BYTES {
            return r;
        }
        pad += 1;
    }
}

struct Outcome {
    events: u64,
    secs: f64,
    commits: u64,
    p50: Duration,
    p99: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or_default()
}

fn run_spool(in_flight: usize, secs: f64, base: &std::path::Path) -> Outcome {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let (spool, appender, writer, _) = Spool::open(dir.path(), &SpoolConfig::default(), &["bench"]).expect("open");
    let record = Arc::new(record());
    let deadline = Instant::now() + Duration::from_secs_f64(secs);
    let start = Instant::now();
    let latencies = rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..in_flight {
            let appender = appender.clone();
            let record = Arc::clone(&record);
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut durable = appender.durable();
                while Instant::now() < deadline {
                    let t = Instant::now();
                    let ticket = appender.append((*record).clone()).await.expect("append");
                    durable.wait(ticket).await.expect("durable");
                    lat.push(t.elapsed());
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let elapsed = start.elapsed().as_secs_f64();
    drop(appender);
    writer.join();
    let mut latencies = latencies;
    latencies.sort();
    Outcome {
        events: latencies.len() as u64,
        secs: elapsed,
        commits: spool.commits(),
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
    }
}

/// The disk's limit for the same work: `batch` records' worth of bytes per write, one fdatasync each.
fn run_raw(batch: usize, secs: f64, base: &std::path::Path) -> (u64, f64) {
    let dir = tempfile::tempdir_in(base).expect("tempdir");
    let mut f = OpenOptions::new().create(true).append(true).open(dir.path().join("raw")).expect("open");
    let buf = vec![0x5au8; batch * RECORD_BYTES];
    let start = Instant::now();
    let mut events = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        events += batch as u64;
    }
    (events, start.elapsed().as_secs_f64())
}

fn main() {
    let secs: f64 = std::env::var("SPOOL_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    let base = std::env::var("SPOOL_BENCH_DIR").map(std::path::PathBuf::from).unwrap_or_else(|_| std::env::temp_dir());
    println!(
        "| appends in flight | durable events/s | MB/s | events per fsync | p50 append→durable | p99 | raw limit (same batching) events/s | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for in_flight in [1usize, 16, 256, 4096] {
        let o = run_spool(in_flight, secs, &base);
        let rate = o.events as f64 / o.secs;
        let per_fsync = (o.events as f64 / o.commits.max(1) as f64).max(1.0);
        let (raw_events, raw_secs) = run_raw(per_fsync.round() as usize, secs, &base);
        let raw_rate = raw_events as f64 / raw_secs;
        println!(
            "| {in_flight} | {rate:.0} | {:.1} | {per_fsync:.1} | {:.2} ms | {:.2} ms | {raw_rate:.0} | {:.2} |",
            rate * RECORD_BYTES as f64 / 1e6,
            o.p50.as_secs_f64() * 1e3,
            o.p99.as_secs_f64() * 1e3,
            rate / raw_rate,
        );
    }
}
