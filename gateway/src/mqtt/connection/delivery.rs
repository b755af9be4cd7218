//! The broker side of a connection: subscriptions, deliveries to the client (pumped from the broker's queue for
//! this session and encoded by the session, bounded by the client's Receive Maximum and Maximum Packet Size), and
//! the client's acknowledgements of them.

use meshgate_protocols::mqtt::{PubResponse, PubResponseKind, ReasonCode, Subscribe, Unsubscribe, Version};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Connection, Driver, OUTBOUND_BYTES_PER_WAKE, OUTBOUND_PER_WAKE, PROTOCOL};
use crate::broker::local::now_ms;
use crate::broker::{Outbound, SubscribeRefused};
use crate::metrics::RejectReason;
use crate::mqtt::session::ServerSession;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Sends the PUBRELs owed and, when wanted, the next deliveries.
    ///
    /// A persistent session's QoS 2 flows are durable before their packets leave, in one session-store round for
    /// the whole batch: a QoS 2 message sent for the first time must keep its packet id across a crash (it is
    /// resent with that id, which the client recognises, never routed again as a new message the client would
    /// deliver twice), and after a PUBREC the flow must resume with PUBREL, never with the message.
    pub(super) async fn release_and_pump(&mut self) {
        let Connection { session, driver, .. } = self;
        if !session.is_connected() || (driver.pubrels.is_empty() && !driver.pump_wanted) {
            return;
        }
        let client = driver.client_id().to_string();
        let now = now_ms();
        let pump = std::mem::take(&mut driver.pump_wanted);
        let (deliveries, persistent) = driver.ctx.shared.broker.with(|b| {
            let out = if pump {
                b.poll_outbound(&client, now, OUTBOUND_PER_WAKE, OUTBOUND_BYTES_PER_WAKE)
            } else {
                Vec::new()
            };
            (out, b.session(&client).is_some_and(|s| s.expiry_secs > 0))
        });
        let new_qos2 =
            deliveries.iter().any(|d| matches!(d, Outbound::Publish { dup: false, delivery, .. } if delivery.qos == 2));
        let flows_moved = driver.pubrels.iter().any(|(_, _, moved)| *moved);
        if persistent && (new_qos2 || flows_moved) {
            driver.persist_session("QoS 2 flows").await;
        }
        for (id, reason, _) in std::mem::take(&mut driver.pubrels) {
            session.send_pubrel(id, reason);
        }
        let full = deliveries.len() == OUTBOUND_PER_WAKE;
        driver.write_outbound(session, deliveries, now);
        if full && let Some(n) = &driver.deliveries {
            n.notify_one();
        }
    }
}

impl Driver {
    /// Encodes deliveries through the session; one too large for the client is discarded (its flow ended).
    pub(super) fn write_outbound(&self, session: &mut ServerSession, deliveries: Vec<Outbound>, now: u64) {
        let mut sent = 0;
        for out in deliveries {
            let delivered = session.deliver(&out, now).is_ok();
            if delivered && matches!(out, Outbound::Publish { .. }) {
                sent += 1;
            }
            if !delivered && let Outbound::Publish { packet_id, .. } = out {
                tracing::debug!(
                    client = self.client_id(),
                    "delivery larger than the client's maximum packet size dropped"
                );
                let client = self.client_id();
                self.ctx.shared.broker.with(|b| b.session_mut(client).map(|s| s.discard(packet_id)));
            }
        }
        if let Some(listed) = &self.listed {
            listed.client().sent(sent);
        }
    }

    /// Waits until the session store holds this connection's session as it is now (see
    /// [`crate::broker::LocalBroker::persist_session`]); a failure is logged and the answer goes out regardless.
    async fn persist_session(&self, before: &'static str) {
        if let Err(e) = self.ctx.shared.broker.persist_session(self.client_id()).await {
            tracing::warn!(client = self.client_id(), error = %e, before, "session could not be made durable");
        }
    }

    /// Whether this connection's session outlives it (its state is kept across a crash).
    fn session_is_persistent(&self) -> bool {
        let client = self.client_id();
        self.ctx.shared.broker.read(|b| b.session(client).is_some_and(|s| s.expiry_secs > 0))
    }

    /// SUBSCRIBE: each filter is granted its requested QoS (the broker serves 0, 1 and 2) or refused; returns the
    /// SUBACK's codes. Retained messages follow the SUBACK. A persistent session's subscriptions are durable
    /// before the SUBACK.
    pub(super) async fn on_subscribe(&mut self, s: &Subscribe<'_>, version: Version) -> Vec<u8> {
        let v5 = version.is_v5();
        let id = s.properties.subscription_identifiers.iter().next();
        let client = self.client_id().to_string();
        let now = now_ms();
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in s.filters.iter() {
            if !self.device.acl(&self.ctx.shared.policy).may_subscribe(f.filter) {
                self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                codes.push(if v5 { ReasonCode::NOT_AUTHORIZED.0 } else { 0x80 });
                continue;
            }
            let granted = self.ctx.shared.broker.with(|b| b.subscribe(&client, f.filter, &f.options, id, now));
            codes.push(match granted {
                Ok(qos) => qos as u8,
                Err(refused) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
                    tracing::debug!(client, ?refused, "subscription refused");
                    match refused {
                        _ if !v5 => 0x80,
                        SubscribeRefused::TooDeep => ReasonCode::TOPIC_FILTER_INVALID.0,
                        SubscribeRefused::Quota => ReasonCode::QUOTA_EXCEEDED.0,
                        SubscribeRefused::NoSession => ReasonCode::UNSPECIFIED_ERROR.0,
                    }
                }
            });
        }
        if self.session_is_persistent() {
            self.persist_session("SUBACK").await;
        }
        codes
    }

    /// UNSUBSCRIBE: returns the UNSUBACK's codes (the session sends them on MQTT 5 only).
    pub(super) fn on_unsubscribe(&mut self, u: &Unsubscribe<'_>) -> Vec<u8> {
        let client = self.client_id().to_string();
        u.filters
            .iter()
            .map(|f| {
                let existed = self.ctx.shared.broker.with(|b| b.unsubscribe(&client, f));
                if existed { ReasonCode::SUCCESS.0 } else { ReasonCode::NO_SUBSCRIPTION_EXISTED.0 }
            })
            .collect()
    }

    /// PUBACK, PUBREC or PUBCOMP from the client for a delivery of ours. The PUBREL a PUBREC is owed, and the
    /// deliveries the freed window lets through, go out in [`Connection::release_and_pump`] once the input at hand
    /// is handled: a buffer of PUBRECs costs a persistent session one session-store round, not one each.
    pub(super) fn on_delivery_ack(&mut self, r: &PubResponse<'_>, version: Version) {
        let client = self.client_id().to_string();
        let id = r.packet_id;
        let (known, pubrel) = self.ctx.shared.broker.with(|b| {
            let Some(session) = b.session_mut(&client) else { return (false, false) };
            match r.kind {
                PubResponseKind::PubAck => (session.puback(id), false),
                PubResponseKind::PubRec => {
                    let owed = session.pubrec(id, r.reason.is_error());
                    (owed || r.reason.is_error(), owed)
                }
                _ => (session.pubcomp(id), false),
            }
        });
        if r.kind == PubResponseKind::PubRec && !r.reason.is_error() {
            let reason =
                if !pubrel && version.is_v5() { ReasonCode::PACKET_IDENTIFIER_NOT_FOUND } else { ReasonCode::SUCCESS };
            self.pubrels.push((id, reason, pubrel));
        }
        if !known {
            tracing::debug!(client, packet_id = id, kind = ?r.kind, "acknowledgement for no delivery in flight");
        }
        self.pump_wanted = true;
    }
}
