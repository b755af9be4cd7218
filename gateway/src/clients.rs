//! Who is connected, over every protocol: the admin API's client list, each connection's message counts, and
//! the administrator's kick.
//!
//! A connection is listed once its device logged in ([`Clients::list`]) and unlisted when the [`Listed`] guard
//! it keeps is dropped, however the connection ends. The lock is held for a map operation only; counting a
//! message is a relaxed add on the connection's own entry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::metrics::Protocol;

/// What a connection tells about itself when its device logged in.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client id (MQTT), the connection name (AMQP) or the device name (`cloudevents.json`).
    pub client_id: String,
    /// The user name or certificate name it logged in as (`""`: anonymous).
    pub user: String,
    /// Its protocol (MQTT over WebSocket counts as MQTT).
    pub protocol: Protocol,
    /// The protocol version, where there are several (`3.1.1`, `5`, `0-9-1`).
    pub version: &'static str,
    /// The peer's address.
    pub peer: Option<SocketAddr>,
    /// Keep-alive (MQTT) or heartbeat (AMQP) in seconds; 0 for none.
    pub keep_alive_secs: u32,
    /// The broker session that holds its subscriptions and queue, if it has one.
    pub session: Option<String>,
}

/// One listed connection.
#[derive(Debug)]
pub struct Client {
    /// Unique per listing.
    pub id: u64,
    /// What it told about itself.
    pub info: ClientInfo,
    /// When it logged in.
    pub connected_at: DateTime<Utc>,
    messages_in: AtomicU64,
    messages_out: AtomicU64,
    kick: Notify,
}

impl Client {
    /// A message of its device was accepted.
    pub fn received(&self) {
        self.messages_in.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` messages were delivered to it.
    pub fn sent(&self, n: u64) {
        self.messages_out.fetch_add(n, Ordering::Relaxed);
    }

    /// Messages accepted from its device.
    pub fn messages_in(&self) -> u64 {
        self.messages_in.load(Ordering::Relaxed)
    }

    /// Messages delivered to it.
    pub fn messages_out(&self) -> u64 {
        self.messages_out.load(Ordering::Relaxed)
    }

    /// Resolves once the administrator kicked the connection (at once if that happened already).
    pub async fn kicked(&self) {
        self.kick.notified().await;
    }
}

/// Resolves when the administrator kicked `client`; never while the connection is not listed yet.
pub async fn kicked(client: Option<&Client>) {
    match client {
        Some(c) => c.kicked().await,
        None => std::future::pending().await,
    }
}

/// Every listed connection.
#[derive(Debug, Default)]
pub struct Clients {
    live: Mutex<HashMap<u64, Arc<Client>>>,
    next_id: AtomicU64,
}

/// A connection's place in the list; dropping it unlists the connection.
#[derive(Debug)]
pub struct Listed {
    clients: Arc<Clients>,
    client: Arc<Client>,
}

impl Listed {
    /// The listed connection.
    pub fn client(&self) -> &Arc<Client> {
        &self.client
    }
}

impl Drop for Listed {
    fn drop(&mut self) {
        self.clients.live().remove(&self.client.id);
    }
}

impl Clients {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Client>>> {
        self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Lists a connection whose device logged in.
    pub fn list(self: &Arc<Self>, info: ClientInfo) -> Listed {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let client = Arc::new(Client {
            id,
            info,
            connected_at: Utc::now(),
            messages_in: AtomicU64::new(0),
            messages_out: AtomicU64::new(0),
            kick: Notify::new(),
        });
        self.live().insert(id, Arc::clone(&client));
        Listed { clients: Arc::clone(self), client }
    }

    /// Every listed connection, oldest first.
    pub fn all(&self) -> Vec<Arc<Client>> {
        let mut all: Vec<_> = self.live().values().cloned().collect();
        all.sort_by_key(|c| c.id);
        all
    }

    /// The connections with `client_id` (one per protocol at most, as names are per protocol).
    pub fn named(&self, client_id: &str) -> Vec<Arc<Client>> {
        self.all().into_iter().filter(|c| c.info.client_id == client_id).collect()
    }

    /// Kicks every connection with `client_id`; returns how many.
    pub fn kick(&self, client_id: &str) -> usize {
        let named = self.named(client_id);
        for c in &named {
            c.kick.notify_one();
        }
        named.len()
    }

    /// Kicks every connection for which `judge` says so (a reload removed its user); returns how many.
    pub fn kick_where(&self, judge: impl Fn(&Client) -> bool) -> usize {
        let chosen: Vec<_> = self.all().into_iter().filter(|c| judge(c)).collect();
        for c in &chosen {
            c.kick.notify_one();
        }
        chosen.len()
    }

    /// How many connections are listed.
    pub fn len(&self) -> usize {
        self.live().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str) -> ClientInfo {
        ClientInfo {
            client_id: id.into(),
            user: "u".into(),
            protocol: Protocol::Mqtt,
            version: "5",
            peer: None,
            keep_alive_secs: 30,
            session: Some(id.into()),
        }
    }

    #[tokio::test]
    async fn a_listed_connection_is_counted_kicked_and_unlisted_when_it_ends() {
        let clients = Arc::new(Clients::default());
        let a = clients.list(info("a"));
        let _b = clients.list(info("b"));
        a.client().received();
        a.client().sent(3);
        assert_eq!(clients.all().iter().map(|c| c.info.client_id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!((a.client().messages_in(), a.client().messages_out()), (1, 3));
        assert_eq!(clients.kick("a"), 1);
        assert_eq!(clients.kick("nobody"), 0);
        tokio::time::timeout(std::time::Duration::from_secs(1), a.client().kicked()).await.unwrap();
        drop(a);
        assert_eq!(clients.len(), 1);
    }
}
