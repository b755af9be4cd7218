//! The broker side of a connection: subscriptions, deliveries to the client (pumped from the broker's queue for
//! this session, encoded with topic aliases, bounded by the client's Receive Maximum and Maximum Packet Size), the
//! client's acknowledgements of them, and local routing of the client's own publishes in order.

use meshgate_protocols::mqtt::{
    Packet, Properties, PubResponse, PubResponseKind, ReasonCode, SubAck, Subscribe, UnsubAck, Unsubscribe,
};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Answer, Connection, OUTBOUND_BYTES_PER_WAKE, OUTBOUND_PER_WAKE, PROTOCOL};
use crate::broker::local::now_ms;
use crate::broker::{Message, Outbound, SubscribeRefused};
use crate::metrics::RejectReason;
use crate::mqtt::outbound;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Hands a QoS 0 message to local subscribers now, or behind the client's earlier publishes that are still
    /// waiting to be durable.
    pub(super) fn route_in_order(&mut self, message: Option<Message>) {
        let Some(message) = message else { return };
        if self.pending.is_empty() {
            self.ctx.shared.broker.publish(message);
        } else {
            self.pending.push(Answer::NONE, None, Some(message));
        }
    }

    /// The connected client's id ("" before CONNECT is accepted).
    pub(super) fn client_id(&self) -> &str {
        self.session.as_ref().map_or("", |(c, _)| c.as_str())
    }

    /// Encodes deliveries into the write buffer; one too large for the client is discarded (its flow ended).
    pub(super) fn write_outbound(&mut self, deliveries: Vec<Outbound>, now: u64) {
        for out in deliveries {
            if outbound::encode(&out, self.version, now, self.client_max_packet, &mut self.aliases, &mut self.wbuf)
                .is_err()
                && let Outbound::Publish { packet_id, .. } = out
            {
                tracing::debug!(
                    client = self.client_id(),
                    "delivery larger than the client's maximum packet size dropped"
                );
                let client = self.client_id().to_string();
                self.ctx.shared.broker.with(|b| b.session_mut(&client).map(|s| s.discard(packet_id)));
            }
        }
    }

    /// Writes what the broker queued for this client, up to [`OUTBOUND_PER_WAKE`] deliveries (and the PUBRELs
    /// owed); wakes itself again if more may be waiting.
    pub(super) async fn pump_outbound(&mut self) {
        self.pump_wanted = true;
        self.release_and_pump().await;
    }

    /// Sends the PUBRELs owed and, when wanted, the next deliveries.
    ///
    /// A persistent session's QoS 2 flows are durable before their packets leave, in one session-store round for
    /// the whole batch: a QoS 2 message sent for the first time must keep its packet id across a crash (it is
    /// resent with that id, which the client recognises, never routed again as a new message the client would
    /// deliver twice), and after a PUBREC the flow must resume with PUBREL, never with the message.
    pub(super) async fn release_and_pump(&mut self) {
        if self.pubrels.is_empty() && !self.pump_wanted {
            return;
        }
        let client = self.client_id().to_string();
        if client.is_empty() {
            return;
        }
        let now = now_ms();
        let pump = std::mem::take(&mut self.pump_wanted);
        let (deliveries, persistent) = self.ctx.shared.broker.with(|b| {
            let out = if pump {
                b.poll_outbound(&client, now, OUTBOUND_PER_WAKE, OUTBOUND_BYTES_PER_WAKE)
            } else {
                Vec::new()
            };
            (out, b.session(&client).is_some_and(|s| s.expiry_secs > 0))
        });
        let new_qos2 =
            deliveries.iter().any(|d| matches!(d, Outbound::Publish { dup: false, delivery, .. } if delivery.qos == 2));
        let flows_moved = self.pubrels.iter().any(|(_, _, moved)| *moved);
        if persistent && (new_qos2 || flows_moved) {
            self.persist_session("QoS 2 flows").await;
        }
        for (id, reason, _) in std::mem::take(&mut self.pubrels) {
            let mut rel = PubResponse::new(PubResponseKind::PubRel, id);
            rel.reason = reason;
            self.send(&Packet::PubResponse(rel));
        }
        let full = deliveries.len() == OUTBOUND_PER_WAKE;
        self.write_outbound(deliveries, now);
        if full && let Some(n) = &self.deliveries {
            n.notify_one();
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

    /// SUBSCRIBE: each filter is granted its requested QoS (the broker serves 0, 1 and 2); retained messages
    /// follow the SUBACK. A persistent session's subscriptions are durable before the SUBACK.
    pub(super) async fn on_subscribe(&mut self, s: &Subscribe<'_>) -> Option<&'static str> {
        let v5 = self.version.is_v5();
        let id = s.properties.subscription_identifiers.iter().next();
        let client = self.client_id().to_string();
        let now = now_ms();
        let mut codes = Vec::with_capacity(s.filters.len());
        for f in s.filters.iter() {
            if v5 && f.options.no_local && f.filter.starts_with("$share/") {
                return Some("No Local on a shared subscription");
            }
            if !self.acl.may_subscribe(f.filter) {
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
        self.send(&Packet::SubAck(SubAck { packet_id: s.packet_id, properties: Properties::default(), codes: &codes }));
        self.pump_outbound().await;
        None
    }

    pub(super) fn on_unsubscribe(&mut self, u: &Unsubscribe<'_>) {
        let client = self.client_id().to_string();
        let codes: Vec<u8> = u
            .filters
            .iter()
            .map(|f| {
                let existed = self.ctx.shared.broker.with(|b| b.unsubscribe(&client, f));
                if existed { ReasonCode::SUCCESS.0 } else { ReasonCode::NO_SUBSCRIPTION_EXISTED.0 }
            })
            .collect();
        let codes: &[u8] = if self.version.is_v5() { &codes } else { &[] };
        self.send(&Packet::UnsubAck(UnsubAck { packet_id: u.packet_id, properties: Properties::default(), codes }));
    }

    /// PUBACK, PUBREC or PUBCOMP from the client for a delivery of ours. The PUBREL a PUBREC is owed, and the
    /// deliveries the freed window lets through, go out in [`Self::release_and_pump`] once the input at hand is
    /// handled: a buffer of PUBRECs costs a persistent session one session-store round, not one each.
    pub(super) fn on_delivery_ack(&mut self, r: &PubResponse<'_>) {
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
            let reason = if !pubrel && self.version.is_v5() {
                ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
            } else {
                ReasonCode::SUCCESS
            };
            self.pubrels.push((id, reason, pubrel));
        }
        if !known {
            tracing::debug!(client, packet_id = id, kind = ?r.kind, "acknowledgement for no delivery in flight");
        }
        self.pump_wanted = true;
    }
}
