//! Model-based property test of the spool: random appends, acknowledgements, restarts and torn tails, compared
//! at every step with an in-memory model. The recovered spool must always hold every durable record not yet
//! confirmed by a consumer, in order, exactly once.

use std::path::Path;

use meshgate_protocols::cloudevents::CloudEvent;
use proptest::prelude::*;

use super::*;
use crate::pipeline::Route;

const CONSUMERS: [&str; 2] = ["a", "b"];

#[derive(Debug, Clone)]
enum Action {
    Append { count: usize, size: usize },
    Ack { consumer: usize, upto_percent: u8 },
    Restart,
    TornTail { garbage: Vec<u8> },
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        4 => (1usize..20, 0usize..300).prop_map(|(count, size)| Action::Append { count, size }),
        2 => (0usize..2, 0u8..=100).prop_map(|(consumer, upto_percent)| Action::Ack { consumer, upto_percent }),
        1 => Just(Action::Restart),
        1 => proptest::collection::vec(any::<u8>(), 1..40).prop_map(|garbage| Action::TornTail { garbage }),
    ]
}

fn config() -> SpoolConfig {
    SpoolConfig { segment_bytes: 2048, max_bytes: 1 << 30, queue_capacity: 64, max_batch: 7, ..SpoolConfig::default() }
}

fn record(n: u64, size: usize) -> StoredRecord {
    let event = CloudEvent {
        id: format!("e{n}"),
        source: "/model".into(),
        ty: "t".into(),
        data: Some(meshgate_protocols::cloudevents::Data::Binary(vec![(n % 251) as u8; size])),
        ..CloudEvent::default()
    };
    StoredRecord::new(event, &Route::All)
}

fn open(dir: &Path) -> (Spool, Appender, WriterThread, Recovery) {
    Spool::open(dir, &config(), &CONSUMERS).expect("open spool")
}

fn read_all(spool: &Spool, consumer: &str) -> Vec<(u64, String)> {
    let mut reader = spool.reader(consumer);
    let mut out = Vec::new();
    loop {
        let batch = reader.read_batch(13).expect("read");
        if batch.is_empty() {
            return out;
        }
        out.extend(batch.into_iter().map(|(id, r)| (id, r.id)));
    }
}

fn newest_segment(dir: &Path) -> std::path::PathBuf {
    segment::list(dir).expect("list").last().map(|(_, p)| p.clone()).expect("a segment")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(40))]

    #[test]
    fn the_recovered_spool_always_matches_the_model(actions in proptest::collection::vec(action(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (mut spool, mut appender, mut writer, _) = open(dir.path());
        // The model: every durable record (id, event id) in order, and each consumer's cursor.
        let mut model: Vec<(u64, String)> = Vec::new();
        let mut cursors = [0u64; 2];
        let mut counter = 0u64;
        for action in actions {
            match action {
                Action::Append { count, size } => {
                    rt.block_on(async {
                        let mut durable = appender.durable();
                        let mut tickets = Vec::new();
                        for _ in 0..count {
                            counter += 1;
                            tickets.push(appender.append(record(counter, size)).await.expect("append"));
                        }
                        for ticket in tickets {
                            durable.wait(ticket).await.expect("durable");
                        }
                    });
                    // The appends are the newest records, in the order they were made.
                    let all = read_all(&spool, "@model");
                    let appended = all[all.len() - count..].to_vec();
                    let names: Vec<String> = ((counter + 1 - count as u64)..=counter).map(|n| format!("e{n}")).collect();
                    prop_assert_eq!(appended.iter().map(|(_, n)| n.clone()).collect::<Vec<_>>(), names);
                    for (id, name) in appended {
                        prop_assert!(model.last().is_none_or(|(last, _)| id > *last), "ids must increase");
                        model.push((id, name));
                    }
                }
                Action::Ack { consumer, upto_percent } => {
                    let pending: Vec<u64> = model.iter().map(|(id, _)| *id).filter(|id| *id > cursors[consumer]).collect();
                    if let Some(&id) = pending.get(pending.len() * usize::from(upto_percent) / 101) {
                        spool.ack(CONSUMERS[consumer], id).expect("ack");
                        cursors[consumer] = id;
                    }
                }
                Action::Restart => {
                    drop(appender);
                    writer.join();
                    (spool, appender, writer, _) = open(dir.path());
                }
                Action::TornTail { garbage } => {
                    // A crash in the middle of a write nobody was told about: bytes after the durable ones.
                    drop(appender);
                    writer.join();
                    let path = newest_segment(dir.path());
                    let mut bytes = std::fs::read(&path).expect("read segment");
                    let mut partial = Vec::new();
                    record::encode(u64::MAX / 2, &record(0, garbage.len()), &mut partial, &mut Default::default()).expect("encode");
                    partial.truncate(partial.len() / 2);
                    partial.extend_from_slice(&garbage[..garbage.len().min(8)]);
                    bytes.extend_from_slice(&partial[..partial.len().min(garbage.len() + 8)]);
                    std::fs::write(&path, bytes).expect("write segment");
                    let recovery;
                    (spool, appender, writer, recovery) = open(dir.path());
                    prop_assert_eq!(recovery.quarantined + recovery.torn_tails, 1);
                }
            }
            for (i, consumer) in CONSUMERS.iter().enumerate() {
                let expected: Vec<_> = model.iter().filter(|(id, _)| *id > cursors[i]).cloned().collect();
                prop_assert_eq!(read_all(&spool, consumer), expected, "consumer {}", consumer);
                prop_assert_eq!(spool.cursor(consumer), cursors[i]);
            }
        }
        // Segments every consumer confirmed are gone: at most the active one and the ones holding pending records.
        let low = cursors.iter().copied().min().unwrap_or(0);
        let pending = model.iter().filter(|(id, _)| *id > low).count();
        let segments = segment::list(dir.path()).expect("list").len();
        prop_assert!(segments <= 1 + pending, "{} segments for {} pending records", segments, pending);
    }
}

#[test]
fn a_full_spool_holds_appends_until_acknowledgements_free_space() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        SpoolConfig { segment_bytes: 1024, max_bytes: 4096, queue_capacity: 4, max_batch: 4, ..SpoolConfig::default() };
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config, &["a"]).expect("open");
    rt.block_on(async {
        let mut ids = Vec::new();
        // Fill the spool.
        let mut durable = appender.durable();
        while spool.bytes() < 3500 {
            let ticket = appender.append(record(ids.len() as u64, 200)).await.expect("append");
            durable.wait(ticket).await.expect("durable");
            ids.push(*spool.durable().borrow());
        }
        // The next append waits for space.
        let blocked = appender.append(record(999, 2000)).await.expect("append");
        let blocked = tokio::spawn(async move { durable.wait(blocked).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!blocked.is_finished(), "an append beyond max_bytes must wait");
        let last = *ids.last().expect("ids");
        let spool2 = spool.clone();
        tokio::task::spawn_blocking(move || spool2.ack("a", last)).await.expect("join").expect("ack");
        let stored = tokio::time::timeout(std::time::Duration::from_secs(5), blocked).await.expect("freed");
        stored.expect("join").expect("durable");
        assert!(*spool.durable().borrow() > last);
    });
    drop(appender);
    writer.join();
}

#[test]
fn drop_oldest_evicts_only_segments_of_droppable_telemetry() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config =
        SpoolConfig { segment_bytes: 1024, max_bytes: 4096, queue_capacity: 4, max_batch: 1, ..SpoolConfig::default() };
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config, &["a"]).expect("open");
    let droppable = |n: u64| {
        let mut r = record(n, 200);
        r.droppable = true;
        r
    };
    rt.block_on(async {
        // Two records a device was promised, then telemetry until the spool is full.
        let mut durable = appender.durable();
        for n in 0..2 {
            let ticket = appender.append(record(n, 300)).await.expect("append");
            durable.wait(ticket).await.expect("ok");
        }
        let mut n = 2;
        while spool.bytes() < 3700 {
            let ticket = appender.append(droppable(n)).await.expect("append");
            durable.wait(ticket).await.expect("ok");
            n += 1;
        }
        // More telemetry does not wait: old telemetry makes room.
        for m in n..n + 10 {
            let more = appender.append(droppable(m)).await.expect("append");
            let answer = tokio::time::timeout(std::time::Duration::from_secs(2), durable.wait(more)).await;
            answer.expect("no wait").expect("ok");
        }
        assert!(spool.dropped() > 0);
        assert!(spool.bytes() <= 4096);
        // A record a device is waiting on still waits for confirmed space: it never evicts.
        let promised = appender.append(record(999, 2000)).await.expect("append");
        let promised = tokio::spawn(async move { durable.wait(promised).await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(!promised.is_finished());
        promised.abort();
    });
    // The promised records survived the eviction.
    let read = read_all(&spool, "a");
    assert_eq!(read.first().map(|(_, id)| id.as_str()), Some("e0"));
    assert_eq!(read.get(1).map(|(_, id)| id.as_str()), Some("e1"));
    drop(appender);
    writer.join();
}

#[test]
fn a_cursor_that_could_not_be_stored_moves_nothing_and_deletes_nothing() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, appender, writer, _) = open(dir.path());
    // Enough records for several segments (2 KiB each), so a confirmed cursor would free some.
    rt.block_on(async {
        let mut tickets = Vec::new();
        for n in 0..40 {
            tickets.push(appender.append(record(n, 200)).await.expect("append"));
        }
        let mut durable = appender.durable();
        for ticket in tickets {
            durable.wait(ticket).await.expect("durable");
        }
    });
    let ids: Vec<u64> = read_all(&spool, "a").into_iter().map(|(id, _)| id).collect();
    let last = *ids.last().expect("ids");
    let segments_before = segment::list(dir.path()).expect("list").len();
    assert!(segments_before > 2, "{segments_before} segments");

    // The ledger's temporary file cannot be created: the cursor's store fails.
    std::fs::create_dir(dir.path().join("ledger.json.tmp")).expect("block the ledger");
    for consumer in CONSUMERS {
        assert!(spool.ack(consumer, last).is_err(), "the store must fail");
        assert_eq!(spool.cursor(consumer), 0, "a cursor that is not durable does not move");
    }
    assert_eq!(segment::list(dir.path()).expect("list").len(), segments_before, "nothing deleted");
    assert_eq!(read_all(&spool, "a").len(), ids.len());

    // Once it can be stored, the same acknowledgements move the cursors and free every confirmed segment.
    std::fs::remove_dir(dir.path().join("ledger.json.tmp")).expect("unblock");
    for consumer in CONSUMERS {
        spool.ack(consumer, last).expect("ack");
        assert_eq!(spool.cursor(consumer), last);
    }
    assert_eq!(segment::list(dir.path()).expect("list").len(), 1, "only the active segment is left");
    assert!(read_all(&spool, "b").is_empty());
    drop(appender);
    writer.join();
    let (reopened, appender, writer, _) = open(dir.path());
    assert_eq!(reopened.cursor("a"), last, "the cursor was durable");
    drop(appender);
    writer.join();
}

#[test]
fn the_queue_to_the_writer_is_bounded_in_bytes_and_a_record_larger_than_it_still_passes() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let config = SpoolConfig { queue_bytes: 2_000, ..config() };
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config, &["a"]).expect("open");
    rt.block_on(async {
        // Far more bytes than the queue holds, unconfirmed, as fast as the appender takes them.
        for n in 0..200 {
            appender.append(record(n, 500)).await.expect("append");
        }
        let big = appender.append(record(200, 10_000)).await.expect("append");
        let stored = tokio::time::timeout(std::time::Duration::from_secs(10), appender.durable().wait(big)).await;
        stored.expect("written").expect("durable");
        assert_eq!(*spool.durable().borrow(), 201);
    });
    drop(appender);
    writer.join();
    assert_eq!(read_all(&spool, "a").len(), 201);
}

#[test]
fn local_records_reach_the_hook_before_their_append_resolves_and_a_companion_shares_its_events_commit() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config(), &["a"]).expect("open");
    let seen: Arc<Mutex<Vec<(u64, String, u64)>>> = Arc::default();
    let hook_seen = Arc::clone(&seen);
    spool.on_commit(Box::new(move |local, last| {
        let mut seen = hook_seen.lock().expect("lock");
        seen.extend(local.into_iter().map(|(id, r)| (id, r.id, last)));
    }));
    let local = |n: u64| StoredRecord { route: Some(vec!["@local".into()]), ..record(n, 10) };
    rt.block_on(async {
        let mut durable = appender.durable();
        let plain = appender.append(record(1, 10)).await.expect("append");
        let with = appender.append_with(record(2, 10), Some(local(3)), None).await.expect("append");
        let alone = appender.append(local(4)).await.expect("append");
        assert!(plain < with && with < alone, "tickets follow the order of the appends");
        durable.wait(plain).await.expect("durable");
        durable.wait(with).await.expect("durable");
        // The hook ran before the append resolved; the companion has the id right before its event's.
        assert!(seen.lock().expect("lock").iter().any(|(cid, name, last)| *cid == 2 && name == "e3" && *last >= 3));
        durable.wait(alone).await.expect("durable");
        assert!(seen.lock().expect("lock").iter().any(|(cid, _, _)| *cid == 4));
    });
    drop(appender);
    writer.join();
    let ids: Vec<u64> = read_all(&spool, "@in-process").into_iter().map(|(id, _)| id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4], "ids stay strictly increasing in file order");
    let uplink: Vec<u64> = read_all(&spool, "a").into_iter().map(|(id, _)| id).collect();
    assert_eq!(uplink, vec![1, 3], "an uplink's reader passes over local records");
    let hooked: Vec<u64> = seen.lock().expect("lock").iter().map(|(id, _, _)| *id).collect();
    assert_eq!(hooked, [2, 4], "local records reach the hook, events do not");
    assert!(!local(5).routed_to("a"), "no uplink takes a local record");
    // After a restart the companion is read back like any record.
    drop(spool);
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config(), &["a"]).expect("reopen");
    let names: Vec<String> = read_all(&spool, "@in-process").into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["e1", "e3", "e2", "e4"]);
    drop(appender);
    writer.join();
}

#[test]
fn an_uplink_reader_takes_the_tail_from_memory_and_what_it_fell_behind_from_the_files() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // Room in memory for about ten of the forty records.
    let config = SpoolConfig { memory_tail_bytes: 10 * record(0, 200).size_hint() as u64, ..config() };
    let (spool, appender, writer, _) = Spool::open(dir.path(), &config, &["a"]).expect("open");
    let local = |n: u64| StoredRecord { route: Some(vec!["@local".into()]), ..record(n, 10) };
    rt.block_on(async {
        let mut durable = appender.durable();
        for n in 1..=40 {
            let ticket =
                appender.append_with(record(n, 200), (n % 7 == 0).then(|| local(n)), None).await.expect("append");
            durable.wait(ticket).await.expect("durable");
        }
    });
    let mut reader = spool.reader("a");
    assert!(reader.read_from_tail(100).is_none(), "the first records left memory: the reader has fallen behind");
    let mut from_files = Vec::new();
    let mut from_memory = Vec::new();
    loop {
        if let Some(batch) = reader.read_from_tail(4) {
            if batch.is_empty() {
                break;
            }
            from_memory.extend(batch.into_iter().map(|(_, r)| r.id.clone()));
        } else {
            let batch = reader.read_batch(4).expect("read");
            assert!(!batch.is_empty(), "the files hold what memory does not");
            from_files.extend(batch.into_iter().map(|(_, r)| r.id));
        }
    }
    assert!(
        !from_files.is_empty() && !from_memory.is_empty(),
        "{} from files, {} from memory",
        from_files.len(),
        from_memory.len()
    );
    let all: Vec<String> = from_files.into_iter().chain(from_memory).collect();
    assert_eq!(
        all,
        (1..=40).map(|n| format!("e{n}")).collect::<Vec<_>>(),
        "every event once, in order, no local record"
    );
    drop(appender);
    writer.join();
}
