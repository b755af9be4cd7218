//! The broker as the gateway runs it: the sans-IO [`Broker`] behind a mutex, the wakers of connected clients,
//! and persistence of retained messages and persistent sessions in `{data_dir}/broker/`.
//!
//! A retained publish is appended to `retained.log` and fsynced before the publish goes on to the spool, so a
//! retained message a device was acknowledged for survives a crash. At start the log is replayed over
//! `retained.json` and compacted into it (write, fsync, rename); the maintenance task compacts it again when it
//! grows, and shutdown does too.
//!
//! Persistent sessions are kept exactly across a crash by the spool and the session store together (see
//! [`super::durable`]): a message routed to one is made durable with its event and routed as the commit lands;
//! the session store ([`super::session_store`]) writes the sessions that changed every
//! [`SESSION_SNAPSHOT_INTERVAL`] (and whenever a connection needs its session durable before it answers), then
//! confirms its position to the spool; at start what came after that position is routed again. The broker's
//! lock is never held across an await.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use meshgate_edge_agent::spool::{Spool, StoredRecord};
use meshgate_protocols::mqtt::QoS;
use tokio::sync::{Notify, watch};

use super::durable::{BrokerRecord, CONSUMER, InboundQos2};
use super::session_store::{SessionStore, sync_dir, write_atomically};
use super::{Broker, BrokerConfig, Message, Session};

/// How often sessions are checked for expiry.
const MAINTENANCE_INTERVAL: Duration = Duration::from_millis(500);

/// How often, at most, the session store writes what changed (besides the rounds connections ask for).
pub const SESSION_SNAPSHOT_INTERVAL: Duration = Duration::from_secs(2);

/// The size at which `retained.log` is compacted into `retained.json`.
const RETAINED_LOG_COMPACT_BYTES: u64 = 4 * 1024 * 1024;

/// Records read per batch when routing the spool's companions again at start.
const REPLAY_BATCH: usize = 1024;

/// Connected clients: their connection's id and the notifier its driver waits on.
type Wakers = HashMap<Arc<str>, (u64, Arc<Notify>)>;

/// The running broker, shared by every connection.
#[derive(Debug)]
pub struct LocalBroker {
    core: Mutex<Broker>,
    wakers: Mutex<Wakers>,
    dir: PathBuf,
    /// `retained.log`, appended under this lock (on the blocking pool, never across an await).
    retained_log: Arc<Mutex<std::fs::File>>,
    retained_dirty: AtomicBool,
    /// The session files; held by one round at a time (on the blocking pool).
    store: Mutex<SessionStore>,
    /// The spool position the session store confirmed last.
    confirmed: AtomicU64,
    /// The spool, once [`LocalBroker::recover`] attached it.
    spool: OnceLock<Spool>,
    changed: Notify,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    meshgate_edge_agent::spool::record::now_ms()
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> std::io::Result<Option<T>> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| std::io::Error::other(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Applies `retained.log` over `retained` (a set or, with an empty payload, a clear per line); a torn last line
/// is ignored. Returns how many lines applied.
fn replay_retained_log(path: &Path, retained: &mut Vec<Message>) -> std::io::Result<usize> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut applied = 0;
    for line in text.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
        let Ok(m) = serde_json::from_slice::<Message>(line) else {
            tracing::warn!(path = %path.display(), "unreadable retained-log line skipped (torn write)");
            continue;
        };
        retained.retain(|r| r.topic != m.topic);
        if !m.payload.is_empty() {
            retained.push(m);
        }
        applied += 1;
    }
    Ok(applied)
}

impl LocalBroker {
    /// Opens the broker state in `dir` (created if needed): retained messages and persistent sessions. Call
    /// [`LocalBroker::recover`] before any connection is served.
    pub fn open(dir: &Path, config: BrokerConfig) -> std::io::Result<LocalBroker> {
        std::fs::create_dir_all(dir)?;
        let mut retained: Vec<Message> = read_json(&dir.join("retained.json"))?.unwrap_or_default();
        let log_path = dir.join("retained.log");
        let replayed = replay_retained_log(&log_path, &mut retained)?;
        if replayed > 0 {
            write_atomically(&dir.join("retained.json"), &retained)?;
            sync_dir(dir)?;
        }
        let retained_log = std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&log_path)?;
        let (store, sessions) = SessionStore::open(dir)?;
        if !retained.is_empty() || !sessions.is_empty() {
            tracing::info!(retained = retained.len(), sessions = sessions.len(), "broker state restored");
        }
        let mut core = Broker::restore(config, sessions, retained, now_ms());
        // Restoring is no change: nothing needs writing until something happens.
        core.take_dirty();
        Ok(LocalBroker {
            core: Mutex::new(core),
            wakers: Mutex::new(HashMap::new()),
            dir: dir.to_path_buf(),
            retained_log: Arc::new(Mutex::new(retained_log)),
            retained_dirty: AtomicBool::new(false),
            store: Mutex::new(store),
            confirmed: AtomicU64::new(0),
            spool: OnceLock::new(),
            changed: Notify::new(),
        })
    }

    /// Attaches the spool: routes again the companions after the session store's position (what persistent
    /// sessions had not stored when the gateway last stopped), then takes every commit's companions from now on
    /// (see [`super::durable`]). Returns how many messages were routed again. Call once, before serving.
    pub fn recover(self: &Arc<Self>, spool: &Spool) -> std::io::Result<usize> {
        let fresh = self.store.lock().unwrap_or_else(|p| p.into_inner()).is_fresh();
        let mut replayed = 0;
        let mut position = spool.cursor(CONSUMER);
        if fresh {
            // No earlier run wrote companions for this store: start at the end of the spool.
            position = position.max(*spool.durable().borrow());
        } else {
            let mut reader = spool.reader(CONSUMER);
            let now = now_ms();
            // A companion waits for the next record: it counts only if its event follows it.
            let mut held: Option<(u64, BrokerRecord, String)> = None;
            let mut torn = 0usize;
            let mut apply = |b: &mut Broker, id: u64, r: BrokerRecord| {
                replayed += usize::from(r.message.is_some());
                apply_record(b, id, r, true, now);
            };
            loop {
                let batch = reader.read_batch(REPLAY_BATCH)?;
                let Some((last, _)) = batch.last() else { break };
                position = position.max(*last);
                self.with(|b| {
                    for (id, record) in &batch {
                        if let Some((companion_id, r, event)) = held.take() {
                            if *id == companion_id + 1 && record.id == event {
                                apply(b, companion_id, r);
                            } else {
                                torn += 1;
                            }
                        }
                        let Some(r) = BrokerRecord::from_stored(record) else { continue };
                        if r.with_event {
                            held = Some((*id, r, record.id.clone()));
                        } else {
                            apply(b, *id, r);
                        }
                    }
                });
            }
            torn += usize::from(held.is_some());
            if torn > 0 {
                tracing::warn!(torn, "broker records whose event a crash tore away skipped (never acknowledged)");
            }
        }
        self.with(|b| b.set_routed_through(position));
        let _ = self.spool.set(spool.clone());
        let broker = Arc::downgrade(self);
        spool.on_commit(Box::new(move |local, last| route_committed(&broker, local, last)));
        if replayed > 0 {
            tracing::info!(replayed, "messages for persistent sessions routed again from the spool");
        }
        self.save_sessions(false)?;
        Ok(replayed)
    }

    /// Runs `f` on the broker under its lock (never across an await).
    pub fn with<R>(&self, f: impl FnOnce(&mut Broker) -> R) -> R {
        let mut core = self.core.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut core)
    }

    /// Reads the broker under its lock (metrics, snapshots).
    pub fn read<R>(&self, f: impl FnOnce(&Broker) -> R) -> R {
        self.with(|b| f(b))
    }

    /// Registers connection `conn_id` as `client`'s; returns the notifier it waits on for deliveries.
    pub fn attach(&self, client: &str, conn_id: u64) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.attach_with(client, conn_id, Arc::clone(&notify));
        notify
    }

    /// Registers connection `conn_id` as `client`'s, waking `notify` for deliveries (one connection serving
    /// several sessions, as AMQP consumers of several queues do, waits on one notifier).
    pub fn attach_with(&self, client: &str, conn_id: u64, notify: Arc<Notify>) {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        wakers.insert(client.into(), (conn_id, notify));
    }

    /// Unregisters connection `conn_id` of `client`, unless a newer connection took the client id; returns
    /// whether it was still the client's connection.
    pub fn detach(&self, client: &str, conn_id: u64) -> bool {
        let mut wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if wakers.get(client).is_some_and(|(id, _)| *id == conn_id) {
            wakers.remove(client);
            return true;
        }
        false
    }

    /// Whether `client` has a live connection.
    pub fn is_attached(&self, client: &str) -> bool {
        self.wakers.lock().unwrap_or_else(|p| p.into_inner()).contains_key(client)
    }

    /// Wakes `client`'s connection, if it has one, to send what is queued.
    pub fn wake(&self, client: &str) {
        let wakers = self.wakers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, n)) = wakers.get(client) {
            n.notify_one();
        }
    }

    /// `client`'s connection ended (see [`Broker::disconnect`]); wakes the clients it handed messages to.
    pub fn disconnect(&self, client: &str, expiry_secs: Option<u32>) {
        let woken = self.with(|b| b.disconnect(client, expiry_secs, now_ms()));
        for c in woken {
            self.wake(&c);
        }
    }

    /// Publishes a message to local subscribers (and the retained store).
    pub fn publish(&self, message: Message) {
        // `$SYS/` figures are retained apart and never saved (see `Broker::retain`).
        let retain = message.retain && !crate::acl::is_sys(&message.topic);
        let woken = self.with(|b| b.publish(message, now_ms()));
        for client in woken {
            self.wake(&client);
        }
        if retain {
            self.retained_dirty.store(true, Ordering::Release);
            self.changed.notify_one();
        }
    }

    /// Deletes the retained message of `topic`, durably (an empty retained message in the log clears the topic on
    /// replay); returns whether there was one.
    pub async fn clear_retained(&self, topic: &str) -> std::io::Result<bool> {
        if !self.read(|b| b.retained().any(|m| m.topic == topic)) {
            return Ok(false);
        }
        let empty = Message::new(topic, b"", QoS::AtMostOnce, true, &Default::default(), "", now_ms());
        self.log_retained(&empty).await?;
        let had = self.with(|b| b.clear_retained(topic));
        self.retained_dirty.store(true, Ordering::Release);
        self.changed.notify_one();
        Ok(had)
    }

    /// Makes a retained publish durable before it is acknowledged: one JSON line in `retained.log`, fsynced.
    pub async fn log_retained(&self, message: &Message) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(message).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let log = Arc::clone(&self.retained_log);
        tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut f = log.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(&line)?;
            f.sync_data()
        })
        .await
        .map_err(std::io::Error::other)?
    }

    /// Compacts the retained messages into `retained.json` and empties the log, when the log has grown (or
    /// `force`).
    fn save_retained(&self, force: bool) -> std::io::Result<()> {
        let mut log = self.retained_log.lock().unwrap_or_else(|p| p.into_inner());
        let size = log.metadata()?.len();
        if !force && size < RETAINED_LOG_COMPACT_BYTES {
            return Ok(());
        }
        // Under the log's lock, so no append lands between the snapshot and the truncation.
        let retained: Vec<Message> = self.read(|b| b.retained().cloned().collect());
        write_atomically(&self.dir.join("retained.json"), &retained)?;
        sync_dir(&self.dir)?;
        log.set_len(0)?;
        use std::io::Seek;
        log.seek(std::io::SeekFrom::Start(0))?;
        log.sync_all()
    }

    /// The broker's companion record for a publish about to be submitted to the spool (see [`super::durable`]),
    /// and the message its connection must still route itself once the event is durable: `None` when the commit
    /// routes it. `inbound_qos2` is the publisher's session and the QoS 2 PUBLISH's packet id.
    pub fn companion(
        &self,
        message: Message,
        inbound_qos2: Option<(&str, u16)>,
    ) -> (Option<StoredRecord>, Option<Message>) {
        if self.spool.get().is_none() {
            return (None, Some(message));
        }
        let (to_persistent, inbound) = self.read(|b| {
            let persistent = |c: &str| b.session(c).is_some_and(|s| s.expiry_secs > 0);
            (b.routes_to_persistent(&message), inbound_qos2.filter(|(c, _)| persistent(c)))
        });
        let inbound_qos2 = inbound.map(|(c, id)| InboundQos2 { session: c.to_string(), packet_id: id });
        let event_id = message.event.as_ref().map_or_else(String::new, |e| e.id.clone());
        let (routed, local) = if to_persistent { (Some(message), None) } else { (None, Some(message)) };
        let record = BrokerRecord { message: routed, inbound_qos2, with_event: true, ..BrokerRecord::default() };
        ((!record.is_empty()).then(|| record.into_stored(&event_id)), local)
    }

    /// A round of the session store: writes the sessions that changed and deletes those that ended, then
    /// confirms to the spool the position every stored state includes. Unless `everything` (at shutdown), a
    /// session with a long queue waits until the records after its stored state outnumber that queue (see
    /// [`SessionStore::defers`]): its messages stay in the spool meanwhile, and its file is rewritten once per
    /// doubling rather than once per round.
    fn save_sessions(&self, everything: bool) -> std::io::Result<()> {
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let (changes, deferred, position) = self.with(|b| {
            let position = b.routed_through();
            let (mut changes, mut deferred) = (Vec::new(), Vec::new());
            for name in b.take_dirty() {
                let queued = b.session(&name).map_or(0, Session::queued);
                if !everything && store.defers(&name, position, queued) {
                    deferred.push(name);
                } else {
                    let session = stored_copy(b, &name, position);
                    changes.push((name, session));
                }
            }
            b.mark_dirty(deferred.iter().cloned());
            (changes, deferred, position)
        });
        if let Err(e) = store.write(&changes) {
            self.with(|b| b.mark_dirty(changes.into_iter().map(|(name, _)| name)));
            return Err(e);
        }
        // The spool keeps what the deferred sessions' stored states do not include.
        let confirm = deferred.iter().filter_map(|name| store.stamp(name)).fold(position, u64::min);
        drop(store);
        if let Some(spool) = self.spool.get()
            && self.confirmed.load(Ordering::Acquire) < confirm
        {
            spool.ack(CONSUMER, confirm)?;
            self.confirmed.fetch_max(confirm, Ordering::AcqRel);
        }
        Ok(())
    }

    /// Makes `client`'s session durable as it is now, writing that session alone (connections call it before a
    /// QoS 2 answer that must not be repeated, a SUBACK, or when a client leaves): the other sessions wait for the
    /// next round, so a busy offline queue is not rewritten for someone else's acknowledgement. The spool position
    /// is confirmed by whole rounds only.
    pub async fn persist_session(self: &Arc<Self>, client: &str) -> std::io::Result<()> {
        let broker = Arc::clone(self);
        let client: Arc<str> = client.into();
        tokio::task::spawn_blocking(move || broker.save_one(&client)).await.map_err(std::io::Error::other)?
    }

    fn save_one(&self, client: &Arc<str>) -> std::io::Result<()> {
        // Under the store's lock: a round that took this session has finished writing it.
        let mut store = self.store.lock().unwrap_or_else(|p| p.into_inner());
        let change = self.with(|b| {
            if !b.take_dirty_one(client) {
                return None;
            }
            Some((Arc::clone(client), stored_copy(b, client, b.routed_through())))
        });
        let Some(change) = change else { return Ok(()) };
        let changes = [change];
        if let Err(e) = store.write(&changes) {
            self.with(|b| b.mark_dirty([Arc::clone(client)]));
            return Err(e);
        }
        Ok(())
    }

    /// Writes retained messages and persistent sessions (at shutdown).
    pub fn save(&self) -> std::io::Result<()> {
        self.save_retained(true)?;
        self.save_sessions(true)
    }

    /// Expires sessions and writes retained changes until `stop`; then saves everything.
    pub async fn run_maintenance(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut last_snapshot = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
                _ = self.changed.notified() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            let (expired, woken) = self.with(|b| b.expire_sessions(now_ms()));
            if !expired.is_empty() {
                tracing::debug!(count = expired.len(), "sessions expired");
            }
            for c in woken {
                self.wake(&c);
            }
            let behind = self.read(|b| b.has_dirty() || b.routed_through() > self.confirmed.load(Ordering::Acquire));
            if last_snapshot.elapsed() >= SESSION_SNAPSHOT_INTERVAL && behind {
                last_snapshot = tokio::time::Instant::now();
                let me = Arc::clone(&self);
                match tokio::task::spawn_blocking(move || me.save_sessions(false)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "cannot write the session snapshot"),
                    Err(e) => tracing::error!(error = %e, "session snapshot failed"),
                }
            }
            if !self.retained_dirty.swap(false, Ordering::AcqRel) {
                continue;
            }
            let me = Arc::clone(&self);
            match tokio::task::spawn_blocking(move || me.save_retained(false)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "cannot write retained messages"),
                Err(e) => tracing::error!(error = %e, "retained writer failed"),
            }
        }
    }
}

/// What the session store writes for `name` at `position`: a copy of the session stamped with it, or `None` when
/// the session ended or no longer outlives its connection (its file is deleted).
fn stored_copy(b: &Broker, name: &str, position: u64) -> Option<Session> {
    b.session(name).filter(|s| s.expiry_secs > 0).map(|s| {
        let mut s = s.clone();
        s.routed_through = position;
        s
    })
}

/// Applies the broker record `id` as its commit lands, or with `replayed` at start to the sessions whose stored
/// state does not cover it: its QoS 2 marks first, then its message. Returns the clients with new deliveries.
fn apply_record(b: &mut Broker, id: u64, r: BrokerRecord, replayed: bool, now: u64) -> Vec<Arc<str>> {
    for (q, awaiting) in [(r.inbound_qos2, true), (r.released_qos2, false)] {
        let Some(q) = q else { continue };
        if replayed {
            b.replay_inbound_qos2(id, &q.session, q.packet_id, awaiting);
        } else {
            b.note_inbound_qos2(&q.session, q.packet_id, awaiting);
        }
    }
    match r.message {
        Some(m) if replayed => b.replay(id, m, now),
        Some(m) => b.publish(m, now),
        None => Vec::new(),
    }
}

/// The spool's commit hook: routes the companions' messages in id order and records their QoS 2 packet ids in
/// their sessions, before their publishers are acknowledged, and moves the broker's position to the commit's last
/// id (so a session stored at that position holds all of it).
fn route_committed(broker: &Weak<LocalBroker>, local: Vec<(u64, StoredRecord)>, last: u64) {
    let Some(broker) = broker.upgrade() else { return };
    let now = now_ms();
    let mut retained = false;
    let woken = broker.with(|b| {
        let mut woken = Vec::new();
        for (id, record) in local {
            let Some(r) = BrokerRecord::from_stored_owned(record) else { continue };
            retained |= r.message.as_ref().is_some_and(|m| m.retain);
            woken.extend(apply_record(b, id, r, false, now));
        }
        b.set_routed_through(last);
        woken
    });
    for client in woken {
        broker.wake(&client);
    }
    if retained {
        broker.retained_dirty.store(true, Ordering::Release);
        broker.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::session_name;
    use meshgate_protocols::mqtt::Version;

    fn session(owner: &str) -> Session {
        let mut s = Session::new(Version::V311, u32::MAX);
        s.owner = owner.into();
        s
    }

    #[test]
    fn a_session_store_from_before_namespaces_is_migrated_to_one_file_per_session() {
        let dir = tempfile::tempdir().unwrap();
        let old: Vec<(String, Session)> =
            vec![("amqp:q-dev1".into(), session("device-1")), ("sensor-7".into(), session("device-7"))];
        std::fs::write(dir.path().join("sessions.json"), serde_json::to_vec(&old).unwrap()).unwrap();
        let broker = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(10)).unwrap();
        broker.read(|b| {
            assert_eq!(b.owner_of(&session_name::amqp_queue("q-dev1")), Some("device-1"), "the queue, tagged");
            assert_eq!(b.owner_of("amqp:q-dev1"), None, "no MQTT client id names it");
            assert_eq!(b.owner_of("sensor-7"), Some("device-7"));
        });
        assert!(!dir.path().join("sessions.json").exists(), "migrated and removed");
        let files: Vec<String> = std::fs::read_dir(dir.path().join("sessions"))
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        assert_eq!(files.len(), 2);
        assert!(files.iter().all(|f| f.starts_with("{\"format\":3,")), "{files:?}");
        drop(broker);
        let again = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(10)).unwrap();
        assert_eq!(
            again.read(|b| b.owner_of(&session_name::amqp_queue("q-dev1")).map(String::from)),
            Some("device-1".into())
        );
    }

    #[test]
    fn a_round_writes_only_the_sessions_that_changed_and_deletes_ended_ones() {
        use meshgate_protocols::mqtt::SubscriptionOptions;
        let dir = tempfile::tempdir().unwrap();
        let broker = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(10)).unwrap();
        let owner = crate::broker::SessionOwner::default();
        broker.with(|b| {
            for c in ["a", "b"] {
                b.connect(c, &owner, Version::V311, false, u32::MAX, 10, 0).unwrap();
                b.subscribe(c, "t/#", &SubscriptionOptions::default(), None, 0).unwrap();
            }
            b.connect("clean", &owner, Version::V311, true, 0, 10, 0).unwrap();
        });
        broker.save().unwrap();
        let path_of = |name: &str| {
            std::fs::read_dir(dir.path().join("sessions"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| std::fs::read_to_string(p).unwrap().contains(&format!("\"name\":\"{name}\"")))
        };
        assert!(path_of("clean").is_none(), "a session that ends with its connection is not stored");
        let (a, b) = (path_of("a").unwrap(), path_of("b").unwrap());
        let b_written = std::fs::metadata(&b).unwrap().modified().unwrap();
        std::thread::sleep(Duration::from_millis(20));
        broker.with(|core| core.unsubscribe("a", "t/#"));
        broker.save().unwrap();
        assert!(std::fs::read_to_string(&a).unwrap().contains("\"subscriptions\":{}"), "a rewritten");
        assert_eq!(std::fs::metadata(&b).unwrap().modified().unwrap(), b_written, "b untouched");
        broker.with(|core| core.connect("b", &owner, Version::V311, true, 0, 10, 0).unwrap());
        broker.save().unwrap();
        assert!(!b.exists(), "b's clean start ended its stored session");
    }

    /// A long queue that keeps growing is not rewritten by every round: once per doubling of the records after
    /// its stored state; a short one is written whenever it changed.
    #[test]
    fn a_long_queue_is_rewritten_once_per_doubling_not_per_round() {
        use crate::broker::session_store::REWRITE_FLOOR;
        use meshgate_protocols::mqtt::{QoS, SubscriptionOptions};
        let dir = tempfile::tempdir().unwrap();
        let broker = LocalBroker::open(dir.path(), BrokerConfig::with_max_queued(100_000)).unwrap();
        let owner = crate::broker::SessionOwner::default();
        let options = SubscriptionOptions { qos: QoS::AtLeastOnce, ..SubscriptionOptions::default() };
        let publish = |b: &mut Broker, n: usize| {
            for i in 0..n {
                let id = b.routed_through() + 1;
                let properties = meshgate_protocols::mqtt::Properties::default();
                let mut m = Message::new("q/1", b"x", QoS::AtLeastOnce, false, &properties, "p", 0);
                m.event =
                    Some(crate::broker::message::EventIdentity { id: i.to_string(), source: "/".into(), time: None });
                b.publish(m, 0);
                b.set_routed_through(id);
            }
        };
        broker.with(|b| {
            for c in ["long", "short"] {
                b.connect(c, &owner, Version::V5, false, u32::MAX, 10, 0).unwrap();
                b.subscribe(c, "q/#", &options, None, 0).unwrap();
                b.disconnect(c, None, 0);
            }
            publish(b, REWRITE_FLOOR + 100);
            b.session_mut("short").unwrap().purge();
        });
        broker.save_sessions(false).unwrap();
        let file_of = |name: &str| {
            std::fs::read_dir(dir.path().join("sessions"))
                .unwrap()
                .map(|e| e.unwrap().path())
                .find(|p| std::fs::read_to_string(p).unwrap().contains(&format!("\"name\":\"{name}\"")))
                .unwrap()
        };
        let stamp = |name: &str| broker.store.lock().unwrap().stamp(name).unwrap();
        let (long_written, short_written) = (stamp("long"), stamp("short"));
        assert_eq!(long_written, short_written, "both written by the first round");
        broker.with(|b| {
            publish(b, 10);
            b.session_mut("short").unwrap().purge();
        });
        broker.save_sessions(false).unwrap();
        assert_eq!(stamp("long"), long_written, "the long queue waits");
        assert!(stamp("short") > short_written, "the short one is written");
        assert!(broker.read(|b| b.has_dirty()), "the long one is still to write");
        broker.with(|b| publish(b, REWRITE_FLOOR * 3));
        broker.save_sessions(false).unwrap();
        assert!(stamp("long") > long_written, "written once the records after it outnumber its queue");
        let stored = std::fs::read_to_string(file_of("long")).unwrap();
        assert!(stored.contains("\"format\":3"));
        broker.with(|b| publish(b, 1));
        broker.save().unwrap();
        assert!(!broker.read(|b| b.has_dirty()), "shutdown writes everything");
    }

    /// The spool's broker records end to end: a commit routes a message to an offline persistent session and
    /// records a persistent publisher's QoS 2 id before the append resolves; after a "crash" (nothing saved) the
    /// same records are routed again into the restored sessions, once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn broker_records_are_routed_at_commit_and_again_after_a_crash() {
        use crate::broker::SessionOwner;
        use crate::broker::durable::{BrokerRecord, CONSUMER, InboundQos2};
        use meshgate_edge_agent::spool::{Spool, SpoolConfig};
        use meshgate_protocols::mqtt::SubscriptionOptions;
        let dir = tempfile::tempdir().unwrap();
        let (broker_dir, spool_dir) = (dir.path().join("broker"), dir.path().join("spool"));
        let open = || {
            let broker = Arc::new(LocalBroker::open(&broker_dir, BrokerConfig::with_max_queued(10)).unwrap());
            let (spool, appender, writer, _) = Spool::open(&spool_dir, &SpoolConfig::default(), &[CONSUMER]).unwrap();
            broker.recover(&spool).unwrap();
            (broker, spool, appender, writer)
        };
        let (broker, _spool, appender, writer) = open();
        let owner = SessionOwner::default();
        broker.with(|b| {
            b.connect("sub", &owner, Version::V5, false, u32::MAX, 10, 0).unwrap();
            let options = SubscriptionOptions { qos: meshgate_protocols::mqtt::QoS::AtLeastOnce, ..Default::default() };
            b.subscribe("sub", "cmd/#", &options, None, 0).unwrap();
            b.disconnect("sub", None, 0);
            b.connect("pub", &owner, Version::V5, false, u32::MAX, 10, 0).unwrap();
        });
        broker.save().unwrap();
        let message = Message {
            topic: "cmd/1".into(),
            payload: b"go".to_vec(),
            qos: 1,
            retain: false,
            properties: Default::default(),
            publisher: "pub".into(),
            expires_at_ms: None,
            event: Some(crate::broker::message::EventIdentity { id: "e-1".into(), source: "/t".into(), time: None }),
        };
        let (companion, local) = broker.companion(message, Some(("pub", 7)));
        assert!(local.is_none(), "the commit routes a message for a persistent session");
        let record = BrokerRecord {
            message: None,
            inbound_qos2: Some(InboundQos2 { session: "pub".into(), packet_id: 7 }),
            ..BrokerRecord::default()
        };
        assert!(companion.is_some() && !record.is_empty());
        let event = meshgate_edge_agent::spool::StoredRecord { route: None, ..record.into_stored("e-1") };
        let ticket = appender.append_with(event, companion, None).await.unwrap();
        appender.durable().wait(ticket).await.unwrap();
        broker.read(|b| {
            assert_eq!(b.session("sub").unwrap().queued(), 1, "routed before the append resolved");
            assert!(b.session("pub").unwrap().inbound_qos2.contains(&7), "the id, in the same step");
        });
        // A crash: nothing saved since.
        drop(appender);
        writer.join();
        drop(broker);
        let (broker, _spool, appender, writer) = open();
        broker.read(|b| {
            assert_eq!(b.session("sub").unwrap().queued(), 1, "routed again, once");
            assert!(b.session("pub").unwrap().inbound_qos2.contains(&7));
        });
        // And once more: the restored state now covers the records (saved by recover).
        drop(appender);
        writer.join();
        drop(broker);
        let (broker, _spool, _appender, _writer) = open();
        assert_eq!(broker.read(|b| b.session("sub").unwrap().queued()), 1, "not routed a second time");
    }
}
