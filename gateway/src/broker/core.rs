//! The broker core: sessions, the subscription index, retained messages and routing. Sans-IO: it never touches
//! a socket or reads a clock (`now_ms` is passed in); connection drivers feed it and send what it returns.
//!
//! The gateway shares one `Broker` behind a mutex; every call is short and synchronous, and no caller holds the
//! lock across an await.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use meshgate_protocols::mqtt::topic::{matches, split_shared};
use meshgate_protocols::mqtt::{QoS, RetainHandling, SubscriptionOptions, Version};

use super::message::Message;
use super::session::{Delivery, MemoryBudget, Outbound, QueueLimits, Session, Subscription};
use super::topic_tree::TopicTree;

/// Limits of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BrokerConfig {
    /// Messages queued per session beyond those in flight.
    pub max_queued_messages: usize,
    /// Bytes queued per session beyond those in flight.
    pub max_queued_bytes: u64,
    /// `[limits]`.
    pub limits: crate::limits::LimitsConfig,
}

impl BrokerConfig {
    /// The broker's limits from `[broker]` and `[limits]`.
    pub fn new(broker: &crate::config::BrokerSection, limits: &crate::limits::LimitsConfig) -> BrokerConfig {
        BrokerConfig {
            max_queued_messages: broker.max_queued_messages,
            max_queued_bytes: broker.max_queued_bytes,
            limits: *limits,
        }
    }

    /// These limits with at most `n` messages queued per session (tests).
    pub fn with_max_queued(n: usize) -> BrokerConfig {
        BrokerConfig::new(
            &crate::config::BrokerSection { max_queued_messages: n, ..Default::default() },
            &crate::limits::LimitsConfig::default(),
        )
    }
}

/// A subscription's key in the index: the client, and the share group for `$share/{group}/...`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct SubKey {
    share: Option<Arc<str>>,
    client: Arc<str>,
}

#[derive(Debug, Clone)]
struct SubValue {
    /// The filter as subscribed (with its `$share/` prefix).
    filter: Arc<str>,
    sub: Subscription,
}

/// Why the broker refused to open a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionRefused {
    /// `limits.max_sessions` sessions exist (MQTT 5 CONNACK 0x97 Quota exceeded; 3.1.1 return code 3).
    TooManySessions,
    /// The user holds `limits.max_sessions_per_user` sessions (as `TooManySessions`).
    TooManyForUser,
    /// The session belongs to another user (MQTT 5 CONNACK 0x87; 3.1.1 return code 5; WebSocket close 1008; AMQP
    /// 403).
    NotOwner,
}

/// Who opens a session: the user it belongs to and what that user may read.
#[derive(Debug, Clone, Default)]
pub struct SessionOwner {
    /// The user name (or certificate name); `""` for anonymous devices.
    pub user: String,
    /// What the user may read, or `None` when that is everything.
    pub reader: Option<Arc<crate::acl::DeviceAcl>>,
}

impl SessionOwner {
    /// `user`, reading what `acl` allows.
    pub fn new(user: &str, acl: &crate::acl::DeviceAcl) -> SessionOwner {
        let reader = (!acl.reads_everything()).then(|| Arc::new(acl.clone()));
        SessionOwner { user: user.to_string(), reader }
    }
}

/// Why the broker refused a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscribeRefused {
    /// The filter has more than `limits.max_topic_levels` levels (MQTT 5 SUBACK 0x8F; 3.1.1 0x80).
    TooDeep,
    /// The session or the broker holds as many subscriptions as allowed (MQTT 5 SUBACK 0x97; 3.1.1 0x80).
    Quota,
    /// The client has no session.
    NoSession,
}

/// What `connect` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connected {
    /// Whether an existing session was resumed.
    pub session_present: bool,
    /// Flows in flight to resend, in order.
    pub resend: Vec<Outbound>,
    /// Clients that got shared messages handed over from a session the clean start discarded, to wake.
    pub woken: Vec<Arc<str>>,
    /// QoS 2 packet ids the client sent, stored and answered with PUBREC, still awaiting PUBREL.
    pub inbound_qos2: Vec<u16>,
    /// Whether the session store must write the session before CONNACK: a new session that outlives the
    /// connection, one that replaced or ended a stored one (whose file must not come back after a crash), or a
    /// stored one resumed with another expiry.
    pub durable: bool,
}

/// Figures for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BrokerStats {
    /// Sessions, connected or not.
    pub sessions: usize,
    /// Subscriptions.
    pub subscriptions: usize,
    /// Retained messages.
    pub retained: usize,
    /// Messages queued for sessions.
    pub queued: usize,
    /// Outbound QoS 1/2 flows in flight.
    pub in_flight: usize,
    /// Messages handed to connections for sending, in total.
    pub delivered: u64,
    /// Messages dropped from full session queues, in total (ended sessions' drops included: a counter).
    pub dropped: u64,
    /// Bytes queued for sessions (against `limits.max_memory_bytes`).
    pub queued_bytes: u64,
}

/// The broker.
#[derive(Debug)]
pub struct Broker {
    config: BrokerConfig,
    sessions: HashMap<Arc<str>, Session>,
    tree: TopicTree<SubKey, SubValue>,
    retained: BTreeMap<String, Arc<Message>>,
    /// Bytes of `retained`, as queues count them.
    retained_bytes: u64,
    /// The gateway's `$SYS/` figures: retained for new subscribers, outside the retained store's limits and
    /// never saved.
    sys: BTreeMap<String, Arc<Message>>,
    /// Next member per shared subscription, for round-robin.
    share_turn: HashMap<Arc<str>, usize>,
    delivered: u64,
    /// Drops of sessions that have ended, so `dropped` never goes down.
    dropped_by_ended: u64,
    /// Bytes queued over all sessions.
    budget: MemoryBudget,
    /// Sessions per owner (user name; `""` for anonymous devices).
    owners: HashMap<String, usize>,
    /// Sessions changed (or ended) since the session store last took them: what its next round writes.
    dirty: HashSet<Arc<str>>,
    /// The highest spool record id whose companion messages are routed (see [`super::durable`]).
    routed_through: u64,
}

impl Broker {
    /// An empty broker.
    pub fn new(config: BrokerConfig) -> Broker {
        Broker {
            config,
            sessions: HashMap::new(),
            tree: TopicTree::new(),
            retained: BTreeMap::new(),
            retained_bytes: 0,
            sys: BTreeMap::new(),
            share_turn: HashMap::new(),
            delivered: 0,
            dropped_by_ended: 0,
            budget: MemoryBudget::new(config.limits.max_memory_bytes),
            owners: HashMap::new(),
            dirty: HashSet::new(),
            routed_through: 0,
        }
    }

    /// Puts new limits in force (a reload): what is queued already stays; new messages meet the new limits.
    pub fn set_config(&mut self, config: BrokerConfig) {
        self.budget.set_limit(config.limits.max_memory_bytes);
        self.config = config;
    }

    /// A reload changed the ACL: each session of a device that can be named again (MQTT and `cloudevents.json`)
    /// loses the subscriptions `acl_of(owner, client)` refuses and reads only what it allows from now on. AMQP
    /// queues keep their bindings (the new rules judge the next ones). Returns how many subscriptions ended.
    pub fn reapply_acl(&mut self, acl_of: impl Fn(&str, &str) -> crate::acl::DeviceAcl) -> usize {
        let names: Vec<Arc<str>> =
            self.sessions.keys().filter(|n| !n.starts_with(super::session_name::AMQP_QUEUE)).cloned().collect();
        let mut ended = 0;
        for name in names {
            let client = name.strip_prefix(super::session_name::WS_CLIENT).unwrap_or(&name);
            let Some(session) = self.sessions.get(&name) else { continue };
            let acl = acl_of(&session.owner, client);
            let refused: Vec<String> =
                session.subscriptions.keys().filter(|f| !acl.may_subscribe(f)).cloned().collect();
            for filter in refused {
                ended += usize::from(self.unsubscribe(&name, &filter));
            }
            let reader = (!acl.reads_everything()).then(|| Arc::new(acl));
            if let Some(s) = self.session_entry(&name) {
                s.set_reader(reader);
            }
        }
        ended
    }

    /// `client`'s session, marked changed for the session store.
    fn session_entry(&mut self, client: &str) -> Option<&mut Session> {
        let (key, _) = self.sessions.get_key_value(client)?;
        self.dirty.insert(Arc::clone(key));
        self.sessions.get_mut(client)
    }

    /// Takes the names of the sessions changed or ended since the last call (the session store writes or
    /// deletes them).
    pub fn take_dirty(&mut self) -> HashSet<Arc<str>> {
        std::mem::take(&mut self.dirty)
    }

    /// Whether a session changed since the session store last took them.
    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Takes `client` out of the changed sessions; returns whether it was among them.
    pub fn take_dirty_one(&mut self, client: &str) -> bool {
        self.dirty.remove(client)
    }

    /// Marks sessions changed again (a session-store round that failed puts back what it took).
    pub fn mark_dirty(&mut self, names: impl IntoIterator<Item = Arc<str>>) {
        self.dirty.extend(names);
    }

    /// The highest spool record id whose companion messages are routed: the session store's position.
    pub fn routed_through(&self) -> u64 {
        self.routed_through
    }

    /// Records that the spool's records up to `id` are routed (after a commit, or a replay at start).
    pub fn set_routed_through(&mut self, id: u64) {
        self.routed_through = self.routed_through.max(id);
    }

    fn queue_limits(&self) -> QueueLimits {
        QueueLimits { messages: self.config.max_queued_messages, bytes: self.config.max_queued_bytes }
    }

    /// Adds a session to the broker's books (budget and owner count).
    fn admit_session(&mut self, client: Arc<str>, mut session: Session) -> &mut Session {
        session.join_budget(&self.budget);
        *self.owners.entry(session.owner.clone()).or_default() += 1;
        self.dirty.insert(Arc::clone(&client));
        self.sessions.entry(client).or_insert(session)
    }

    /// Figures for `/metrics` (walks the sessions: call per scrape, not per message).
    pub fn stats(&self) -> BrokerStats {
        let mut stats = BrokerStats {
            sessions: self.sessions.len(),
            subscriptions: self.tree.len(),
            retained: self.retained.len(),
            delivered: self.delivered,
            dropped: self.dropped_by_ended,
            queued_bytes: self.budget.used(),
            ..BrokerStats::default()
        };
        for s in self.sessions.values() {
            stats.queued += s.queued();
            stats.in_flight += s.in_flight();
            stats.dropped += s.dropped;
        }
        stats
    }

    /// A broker holding `sessions` (all disconnected, as after a restart at `now_ms`) and `retained` messages.
    pub fn restore(
        config: BrokerConfig,
        sessions: Vec<(String, Session)>,
        retained: Vec<Message>,
        now_ms: u64,
    ) -> Broker {
        let mut broker = Broker::new(config);
        let limits = config.limits;
        for m in retained {
            if !limits.topic_depth_ok(&m.topic) {
                tracing::warn!(
                    levels_max = limits.max_topic_levels,
                    "retained message on a topic deeper than limits.max_topic_levels dropped"
                );
                continue;
            }
            if !broker.may_retain(&m) {
                tracing::warn!(topic = %m.topic, "retained message over limits.max_retained_messages or max_retained_bytes dropped");
                continue;
            }
            broker.retain(Arc::new(m));
        }
        for (client, mut session) in sessions {
            let client: Arc<str> = client.into();
            session.disconnected_at_ms.get_or_insert(now_ms);
            let before = session.subscriptions.len();
            session.subscriptions.retain(|filter, _| limits.topic_depth_ok(filter));
            session.subscriptions = std::mem::take(&mut session.subscriptions)
                .into_iter()
                .take(limits.max_subscriptions_per_session)
                .collect();
            if session.subscriptions.len() < before {
                tracing::warn!(
                    client = &*client,
                    dropped = before - session.subscriptions.len(),
                    "stored subscriptions over limits.max_topic_levels or limits.max_subscriptions_per_session dropped"
                );
            }
            let subscriptions: Vec<(String, Subscription)> =
                session.subscriptions.iter().map(|(f, s)| (f.clone(), *s)).collect();
            for (filter, sub) in &subscriptions {
                broker.index(&client, filter, *sub);
            }
            broker.admit_session(client, session);
        }
        broker
    }

    fn index(&mut self, client: &Arc<str>, filter: &str, sub: Subscription) {
        let (share, inner) = match split_shared(filter) {
            Some((group, inner)) => (Some(Arc::from(group)), inner),
            None => (None, filter),
        };
        let key = SubKey { share, client: Arc::clone(client) };
        self.tree.insert(inner, key, SubValue { filter: filter.into(), sub });
    }

    fn unindex(&mut self, client: &Arc<str>, filter: &str) {
        let (share, inner) = match split_shared(filter) {
            Some((group, inner)) => (Some(Arc::from(group)), inner),
            None => (None, filter),
        };
        self.tree.remove(inner, &SubKey { share, client: Arc::clone(client) });
    }

    /// A client connects. `clean_start` discards an existing session; `expiry_secs` is how long the session
    /// outlives the connection (3.1.1: 0 for clean session, forever otherwise).
    ///
    /// A session belongs to the user that created it: another `owner` is refused, the session untouched. A new
    /// session is refused past `limits.max_sessions` in all or `limits.max_sessions_per_user` for its owner.
    /// Deliveries queued for it that the owner may not read (queued before a restart) are dropped.
    #[allow(clippy::too_many_arguments, reason = "each is one CONNECT field")]
    pub fn connect(
        &mut self,
        client: &str,
        owner: &SessionOwner,
        version: Version,
        clean_start: bool,
        expiry_secs: u32,
        receive_maximum: u16,
        now_ms: u64,
    ) -> Result<Connected, SessionRefused> {
        if self.owner_of(client).is_some_and(|o| o != owner.user) {
            return Err(SessionRefused::NotOwner);
        }
        let owner_reader = owner.reader.clone();
        let owner = owner.user.as_str();
        let exists = self.sessions.contains_key(client);
        // A clean start replaces a session: that one makes room for itself.
        let limits = self.config.limits;
        let replaced_owner = self.sessions.get(client).map(|s| s.owner.as_str()).filter(|_| clean_start);
        let room = usize::from(replaced_owner.is_some());
        let owner_room = usize::from(replaced_owner == Some(owner));
        if !exists || clean_start {
            if self.sessions.len().saturating_sub(room) >= limits.max_sessions {
                return Err(SessionRefused::TooManySessions);
            }
            if self.owners.get(owner).copied().unwrap_or(0).saturating_sub(owner_room) >= limits.max_sessions_per_user {
                return Err(SessionRefused::TooManyForUser);
            }
        }
        let stored_expiry = self.sessions.get(client).map(|s| s.expiry_secs).filter(|e| *e > 0);
        let woken = if clean_start { self.end_session(client, now_ms) } else { Vec::new() };
        let session_present = self.sessions.contains_key(client);
        let session = if session_present {
            self.session_entry(client).ok_or(SessionRefused::TooManySessions)?
        } else {
            let mut fresh = Session::new(version, expiry_secs);
            fresh.owner = owner.to_string();
            self.admit_session(client.into(), fresh)
        };
        session.expiry_secs = expiry_secs;
        let unreadable = session.set_reader(owner_reader);
        if unreadable > 0 {
            tracing::debug!(client, unreadable, "queued deliveries the owner may no longer read dropped");
        }
        let resend = session.connected(version, receive_maximum);
        let inbound_qos2 = session.inbound_qos2.iter().copied().collect();
        // A stored session resumed as it was is stored already; a new one, one that ended a stored one, or a new
        // expiry must reach the store before CONNACK.
        let resumed_as_stored = session_present && stored_expiry == Some(expiry_secs);
        let durable = (stored_expiry.is_some() || expiry_secs > 0) && !resumed_as_stored;
        Ok(Connected { session_present, resend, woken, inbound_qos2, durable })
    }

    /// The client's connection ended at `now_ms`; a session with expiry 0 ends with it. `expiry_secs` replaces
    /// the session's expiry when the client set a new one in DISCONNECT. Returns the clients that got messages
    /// handed over from the ended session (shared subscriptions), to wake.
    pub fn disconnect(&mut self, client: &str, expiry_secs: Option<u32>, now_ms: u64) -> Vec<Arc<str>> {
        let Some(session) = self.session_entry(client) else { return Vec::new() };
        if let Some(e) = expiry_secs {
            session.expiry_secs = e;
        }
        session.disconnected_at_ms = Some(now_ms);
        if session.expiry_secs == 0 {
            return self.end_session(client, now_ms);
        }
        Vec::new()
    }

    /// Ends sessions whose expiry passed by `now_ms`; returns their client ids and the clients to wake.
    pub fn expire_sessions(&mut self, now_ms: u64) -> (Vec<String>, Vec<Arc<str>>) {
        let expired: Vec<String> = self
            .sessions
            .iter()
            .filter(|(_, s)| {
                s.expiry_secs != u32::MAX
                    && s.disconnected_at_ms
                        .is_some_and(|at| now_ms >= at.saturating_add(u64::from(s.expiry_secs) * 1000))
            })
            .map(|(c, _)| c.to_string())
            .collect();
        let mut woken = Vec::new();
        for c in &expired {
            woken.extend(self.end_session(c, now_ms));
        }
        (expired, woken)
    }

    /// Removes a session and its subscriptions; shared messages it had not acknowledged go to another member,
    /// whose client ids are returned.
    fn end_session(&mut self, client: &str, now_ms: u64) -> Vec<Arc<str>> {
        let Some((key, mut session)) = self.sessions.remove_entry(client) else { return Vec::new() };
        self.dirty.insert(Arc::clone(&key));
        self.dropped_by_ended += session.dropped;
        if let Some(n) = self.owners.get_mut(&session.owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.owners.remove(&session.owner);
            }
        }
        for filter in session.subscriptions.keys() {
            self.unindex(&key, filter);
        }
        let mut woken = Vec::new();
        for delivery in session.take_unacknowledged() {
            if let Some(filter) = delivery.shared.clone() {
                woken.extend(self.route_shared(&filter, delivery.message, now_ms));
            }
        }
        woken
    }

    /// The user `client`'s session belongs to, if it exists.
    pub fn owner_of(&self, client: &str) -> Option<&str> {
        self.sessions.get(client).map(|s| s.owner.as_str())
    }

    /// Whether `client` has a session.
    pub fn has_session(&self, client: &str) -> bool {
        self.sessions.contains_key(client)
    }

    /// `client`'s session.
    pub fn session(&self, client: &str) -> Option<&Session> {
        self.sessions.get(client)
    }

    /// `client`'s session, to acknowledge flows.
    pub fn session_mut(&mut self, client: &str) -> Option<&mut Session> {
        self.session_entry(client)
    }

    /// Adds a subscription (or replaces one with the same filter) and queues the retained messages it should
    /// get. Returns the QoS granted, or why the subscription is refused (`limits`).
    pub fn subscribe(
        &mut self,
        client: &str,
        filter: &str,
        options: &SubscriptionOptions,
        id: Option<u32>,
        now_ms: u64,
    ) -> Result<QoS, SubscribeRefused> {
        let limits = self.config.limits;
        if !limits.topic_depth_ok(filter) {
            return Err(SubscribeRefused::TooDeep);
        }
        let Some((key, session)) = self.sessions.get_key_value(client) else { return Err(SubscribeRefused::NoSession) };
        let key = Arc::clone(key);
        let sub = Subscription::new(options, id);
        let existed = session.subscriptions.contains_key(filter);
        if !existed
            && (session.subscriptions.len() >= limits.max_subscriptions_per_session
                || self.tree.len() >= limits.max_subscriptions)
        {
            return Err(SubscribeRefused::Quota);
        }
        self.index(&key, filter, sub);
        let max_queued = self.queue_limits();
        let retained: Vec<Arc<Message>> = match (split_shared(filter), options.retain_handling) {
            // Retained messages are not sent for shared subscriptions (MQTT 5 section 4.8.2).
            (Some(_), _) | (None, RetainHandling::DoNotSend) => Vec::new(),
            (None, RetainHandling::SendIfNew) if existed => Vec::new(),
            (None, _) => {
                let reads = |topic: &str| self.sessions.get(client).is_some_and(|s| s.may_read(topic));
                self.retained
                    .values()
                    .chain(self.sys.values())
                    .filter(|m| matches(filter, &m.topic) && !m.is_expired(now_ms) && reads(&m.topic))
                    .cloned()
                    .collect()
            }
        };
        if let Some(session) = self.session_entry(client) {
            session.subscriptions.insert(filter.to_string(), sub);
            for message in retained {
                let qos = Session::delivery_qos(&message, &sub) as u8;
                let delivery = Delivery::new(message, qos, true, id.into_iter().collect(), None);
                session.enqueue(delivery, max_queued);
            }
        }
        Ok(options.qos)
    }

    /// Removes a subscription; returns whether it existed.
    pub fn unsubscribe(&mut self, client: &str, filter: &str) -> bool {
        let Some((key, session)) = self.sessions.get_key_value(client) else { return false };
        let key = Arc::clone(key);
        if !session.subscriptions.contains_key(filter) {
            return false;
        }
        self.unindex(&key, filter);
        if let Some(session) = self.session_entry(client) {
            session.subscriptions.remove(filter);
        }
        true
    }

    /// Whether `message` (retained, with a payload) fits within `limits.max_retained_messages` and
    /// `limits.max_retained_bytes`, counting the message it would replace as gone.
    pub fn may_retain(&self, message: &Message) -> bool {
        let limits = &self.config.limits;
        let replaced = self.retained.get(&message.topic).map(|m| m.queued_size());
        let count = self.retained.len() + usize::from(replaced.is_none());
        let bytes = self.retained_bytes - replaced.unwrap_or(0) + message.queued_size();
        message.payload.is_empty() || (count <= limits.max_retained_messages && bytes <= limits.max_retained_bytes)
    }

    /// Stores a retained message (an empty payload clears its topic), keeping `retained_bytes`.
    fn retain(&mut self, message: Arc<Message>) {
        if crate::acl::is_sys(&message.topic) {
            self.sys.insert(message.topic.clone(), message);
            return;
        }
        let old = if message.payload.is_empty() {
            self.retained.remove(&message.topic)
        } else {
            self.retained_bytes += message.queued_size();
            self.retained.insert(message.topic.clone(), message)
        };
        self.retained_bytes -= old.map_or(0, |m| m.queued_size());
    }

    /// Removes the retained message of `topic` (an administrator's delete); returns whether there was one.
    pub fn clear_retained(&mut self, topic: &str) -> bool {
        let had = self.retained.contains_key(topic);
        if let Some(old) = self.retained.remove(topic) {
            self.retained_bytes -= old.queued_size();
        }
        had
    }

    /// Every session, connected or not, by name.
    pub fn sessions(&self) -> impl Iterator<Item = (&str, &Session)> {
        self.sessions.iter().map(|(c, s)| (c.as_ref(), s))
    }

    /// The retained messages, for persistence.
    pub fn retained(&self) -> impl Iterator<Item = &Message> {
        self.retained.values().map(AsRef::as_ref)
    }

    /// The sessions that outlive their connection, for persistence.
    pub fn persistent_sessions(&self) -> impl Iterator<Item = (&str, &Session)> {
        self.sessions.iter().filter(|(_, s)| s.expiry_secs > 0).map(|(c, s)| (c.as_ref(), s))
    }

    /// Routes a message to every matching subscription and, with RETAIN, updates the retained store (an empty
    /// payload clears the topic). Returns the clients with new deliveries, to wake.
    /// A topic deeper than `limits.max_topic_levels` is neither routed nor retained (listeners refuse it first).
    pub fn publish(&mut self, message: Message, now_ms: u64) -> Vec<Arc<str>> {
        if !self.config.limits.topic_depth_ok(&message.topic) {
            return Vec::new();
        }
        let message = Arc::new(message);
        if message.retain {
            if self.may_retain(&message) {
                self.retain(Arc::clone(&message));
            } else {
                tracing::debug!(topic = %message.topic, "retained store full: delivered, not retained");
            }
        }
        self.route(message, now_ms, None)
    }

    /// Routes again, after a restart, the message of the spool's record `id`: to the matching sessions whose
    /// stored state does not cover `id` (see [`Session::routed_through`]); a shared subscription takes it only
    /// when none of its members' state covers it. The retained store is left alone (its own log restored it).
    pub fn replay(&mut self, id: u64, message: Message, now_ms: u64) -> Vec<Arc<str>> {
        if !self.config.limits.topic_depth_ok(&message.topic) || message.is_expired(now_ms) {
            return Vec::new();
        }
        self.route(Arc::new(message), now_ms, Some(id))
    }

    /// Replays the spool's record `id` saying `client`'s session stored its QoS 2 publish `packet_id`
    /// (`awaiting`) or its PUBREL for it: unless the session's stored state covers `id`, the id awaits PUBREL
    /// again (a resend is not stored twice), or no longer (the client's next message under it is new).
    pub fn replay_inbound_qos2(&mut self, id: u64, client: &str, packet_id: u16, awaiting: bool) {
        if self.sessions.get(client).is_some_and(|s| s.routed_through < id) {
            self.note_inbound_qos2(client, packet_id, awaiting);
        }
    }

    /// `client`'s QoS 2 publish `packet_id` is stored (`awaiting`: the id awaits PUBREL from now on) or its PUBREL
    /// is: noted as the commit lands, in the same step that moves [`Broker::routed_through`] past it, so a
    /// stored state that covers the commit agrees.
    pub fn note_inbound_qos2(&mut self, client: &str, packet_id: u16, awaiting: bool) {
        if let Some(session) = self.session_entry(client) {
            if awaiting {
                session.inbound_qos2.insert(packet_id);
            } else {
                session.inbound_qos2.remove(&packet_id);
            }
        }
    }

    /// Whether `message` (QoS 1 or 2) would be routed to a persistent session that takes QoS 1 or 2: such a
    /// message is made durable for the broker too (see [`super::durable`]).
    pub fn routes_to_persistent(&self, message: &Message) -> bool {
        if message.qos == 0 {
            return false;
        }
        let mut found = false;
        self.tree.for_each_match(&message.topic, |key, value| {
            found = found || (value.sub.qos > 0 && self.sessions.get(&key.client).is_some_and(|s| s.expiry_secs > 0));
        });
        found
    }

    /// Routes a message to every matching subscription, or with `replayed`, to those whose session's stored
    /// state does not cover that record id. Returns the clients with new deliveries.
    fn route(&mut self, message: Arc<Message>, now_ms: u64, replayed: Option<u64>) -> Vec<Arc<str>> {
        let covers = |s: &Session| replayed.is_some_and(|id| s.routed_through >= id);
        // Overlapping subscriptions of one client deliver once, at the highest QoS, with every identifier; shared
        // subscriptions are gathered by filter, members and all, in the same walk of the tree.
        let mut direct: BTreeMap<Arc<str>, (u8, bool, Vec<u32>)> = BTreeMap::new();
        let mut shared: BTreeMap<Arc<str>, Vec<(Arc<str>, Subscription)>> = BTreeMap::new();
        let publisher = message.publisher.as_str();
        self.tree.for_each_match(&message.topic, |key, value| match &key.share {
            None => {
                if value.sub.no_local && &*key.client == publisher {
                    return;
                }
                let entry = direct.entry(Arc::clone(&key.client)).or_insert((0, false, Vec::new()));
                entry.0 = entry.0.max(value.sub.qos);
                entry.1 |= value.sub.retain_as_published;
                entry.2.extend(value.sub.id);
            }
            Some(_) => {
                shared.entry(Arc::clone(&value.filter)).or_default().push((Arc::clone(&key.client), value.sub));
            }
        });
        let max_queued = self.queue_limits();
        let mut woken = Vec::with_capacity(direct.len() + shared.len());
        for (client, (sub_qos, rap, ids)) in direct {
            if !self.sessions.get(&client).is_some_and(|s| !covers(s) && s.may_read(&message.topic)) {
                continue;
            }
            if let Some(session) = self.session_entry(&client) {
                let qos = message.qos.min(sub_qos);
                let retain = rap && message.retain;
                let delivery = Delivery::new(Arc::clone(&message), qos, retain, ids, None);
                session.enqueue(delivery, max_queued);
                woken.push(client);
            }
        }
        for (filter, members) in shared {
            if members.iter().any(|(c, _)| self.sessions.get(c).is_some_and(covers)) {
                continue;
            }
            woken.extend(self.hand_to_member(&filter, &members, Arc::clone(&message), now_ms));
        }
        woken
    }

    /// Hands a message to a member of the shared subscription `filter`, finding the members in the tree (for
    /// messages of a session that ended).
    fn route_shared(&mut self, filter: &str, message: Arc<Message>, now_ms: u64) -> Option<Arc<str>> {
        let (group, _) = split_shared(filter)?;
        let mut members: Vec<(Arc<str>, Subscription)> = Vec::new();
        self.tree.for_each_match(&message.topic, |key, value| {
            if key.share.as_deref() == Some(group) && &*value.filter == filter {
                members.push((Arc::clone(&key.client), value.sub));
            }
        });
        self.hand_to_member(filter, &members, message, now_ms)
    }

    /// Hands a message to one of `members` of the shared subscription `filter`, round-robin, connected members
    /// first.
    fn hand_to_member(
        &mut self,
        filter: &str,
        members: &[(Arc<str>, Subscription)],
        message: Arc<Message>,
        now_ms: u64,
    ) -> Option<Arc<str>> {
        if members.is_empty() || message.is_expired(now_ms) {
            return None;
        }
        let sessions = &self.sessions;
        // Only members that may read the topic take part.
        let readers: Vec<&(Arc<str>, Subscription)> =
            members.iter().filter(|(c, _)| sessions.get(c).is_some_and(|s| s.may_read(&message.topic))).collect();
        if readers.is_empty() {
            return None;
        }
        let connected =
            |(c, _): &&&(Arc<str>, Subscription)| sessions.get(c).is_some_and(|s| s.disconnected_at_ms.is_none());
        let live = readers.iter().filter(connected).count();
        let turn = self.share_turn.entry(filter.into()).or_insert(0);
        let pick = if live == 0 {
            readers.get(*turn % readers.len()).copied()
        } else {
            readers.iter().filter(connected).nth(*turn % live).copied()
        };
        *turn = turn.wrapping_add(1);
        let (client, sub) = pick?.clone();
        let limits = self.queue_limits();
        let session = self.session_entry(&client)?;
        let qos = Session::delivery_qos(&message, &sub) as u8;
        let retain = sub.retain_as_published && message.retain;
        let delivery = Delivery::new(message, qos, retain, sub.id.into_iter().collect(), Some(filter.into()));
        session.enqueue(delivery, limits);
        Some(client)
    }

    /// The next outbound packets for `client` (at most `max`, and past `max_bytes` only the first).
    pub fn poll_outbound(&mut self, client: &str, now_ms: u64, max: usize, max_bytes: u64) -> Vec<Outbound> {
        let out = self.session_entry(client).map(|s| s.poll_outbound(now_ms, max, max_bytes)).unwrap_or_default();
        self.delivered += out.len() as u64;
        out
    }
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;
