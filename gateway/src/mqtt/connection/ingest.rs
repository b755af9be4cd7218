//! The gateway's side of a device's publish, once the session admitted it: the ACL, the retained-message limits,
//! the CloudEvents mapping, then the spool; the answer waits in the acknowledgement seam until the event is
//! durable. And the QoS 2 release that ends a persistent session's flow, stored before its PUBCOMP.

use meshgate_protocols::mqtt::{Publish, QoS, ReasonCode, Version};

use super::{Ack, Driver, PROTOCOL};
use crate::broker::Message;
use crate::broker::durable::BrokerRecord;
use crate::broker::local::now_ms;
use crate::broker::message::EventIdentity;
use crate::metrics::RejectReason;
use crate::mqtt::session::{Token, Verdict};
use crate::normalize::{MqttInbound, Normalized};
use meshgate_edge_agent::trace::Ingest;

/// Refused because the pipeline is gone (the gateway is stopping).
const STOPPED: Verdict = Verdict::Refused(ReasonCode::SERVER_SHUTTING_DOWN, "pipeline stopped");

impl Driver {
    /// Takes a publish: the verdict when it is known at once, `None` when its answer waits in the seam.
    pub(super) async fn on_publish(
        &mut self,
        token: Token,
        topic: &str,
        publish: &Publish<'_>,
        version: Version,
    ) -> Option<Verdict> {
        // Over its message rate the connection waits here, and reads nothing meanwhile.
        self.rate.pace().await;
        let metrics = &self.ctx.shared.metrics;
        let acknowledged = publish.qos != QoS::AtMostOnce;
        if !self.device.acl(&self.ctx.shared.policy).may_publish(topic) {
            metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            tracing::debug!(client = self.client_id(), topic, "publish not authorized");
            return Some(Verdict::Dropped(ReasonCode::NOT_AUTHORIZED));
        }
        let mut local = Message::from_publish(publish, topic, self.client_id(), now_ms());
        if local.retain && !self.ctx.shared.broker.read(|b| b.may_retain(&local)) {
            metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            if acknowledged && version.is_v5() {
                return Some(Verdict::Dropped(ReasonCode::QUOTA_EXCEEDED));
            }
            // MQTT 3.1.1 (and QoS 0) cannot be told: delivered without retaining.
            local.retain = false;
        }
        // Validated before anything is stored: a publish refused here leaves no retained message behind.
        let mut normalized = match self.normalize(publish, topic, version) {
            Ok(n) => n,
            Err(verdict) => return Some(verdict),
        };
        let traces = &self.ctx.shared.traces;
        let at =
            Ingest { protocol: PROTOCOL.as_str(), client: self.client_id(), topic, bytes: Some(publish.payload.len()) };
        let span = traces.ingest(&mut normalized.event, at);
        if traces.is_on() {
            local.carry_trace(&normalized.event);
        }
        local.event = Some(EventIdentity::of(&normalized.event));
        if local.retain
            && let Err(e) = self.ctx.shared.broker.log_retained(&local).await
        {
            tracing::warn!(error = %e, "retained message not stored; refusing the publish");
            metrics.reject(PROTOCOL, RejectReason::StorageFailed);
            if let Some(span) = span {
                span.fail("retained message not stored");
            }
            return Some(Verdict::Refused(ReasonCode::UNSPECIFIED_ERROR, "retained message not stored"));
        }
        // A message for persistent sessions, and a QoS 2 packet id, are made durable with the event; the commit
        // routes such a message (`local` is then `None`).
        let pubrec = (publish.qos == QoS::ExactlyOnce).then_some(publish.packet_id.unwrap_or(0));
        let publisher = self.client.as_ref().map(|(c, _)| c.as_str());
        let (companion, local) = self.ctx.shared.broker.companion(local, publisher.zip(pubrec));
        let Normalized { event, route, when_full } = normalized;
        metrics.message_in(PROTOCOL);
        if let Some(listed) = &self.listed {
            listed.client().received();
        }
        let ingest = &self.ctx.shared.ingest;
        let ack = Ack { token, pubrec, release: false };
        if acknowledged || self.ctx.config.qos0_wait_durable {
            // Answered, and given to local subscribers, once durable (QoS 0: closed if it cannot be stored).
            let Ok(ticket) = ingest.submit_with(event, route, companion, span).await else { return Some(STOPPED) };
            self.pending.push(ack, Some(ticket), local);
            return None;
        }
        let share = Some(&self.share);
        let submitted = ingest.submit_unconfirmed_within(event, route, when_full, share, companion, span).await;
        if submitted.is_err() {
            return Some(STOPPED);
        }
        // QoS 0 reaches local subscribers now, or behind the client's earlier publishes still waiting to be durable.
        if self.pending.is_empty() {
            if let Some(message) = local {
                self.ctx.shared.broker.publish(message);
            }
            return Some(Verdict::Stored);
        }
        self.pending.push(ack, None, local);
        None
    }

    /// Turns a publish into its CloudEvent, or the verdict refusing it (a payload flagged UTF-8 that is not, an
    /// invalid CloudEvent).
    fn normalize(&self, publish: &Publish<'_>, topic: &str, version: Version) -> Result<Normalized, Verdict> {
        let metrics = &self.ctx.shared.metrics;
        if publish.properties.payload_format_utf8 == Some(true) && std::str::from_utf8(publish.payload).is_err() {
            metrics.reject(PROTOCOL, RejectReason::InvalidPayloadFormat);
            return Err(Verdict::Refused(ReasonCode::PAYLOAD_FORMAT_INVALID, "payload flagged UTF-8 is not"));
        }
        let inbound = MqttInbound {
            version,
            client_id: self.client_id(),
            topic,
            properties: &publish.properties,
            payload: publish.payload,
        };
        // The policy `on_publish` looked at for the ACL.
        self.device.policy_seen().normalizer.mqtt(&inbound, uuid::Uuid::now_v7(), chrono::Utc::now()).map_err(|e| {
            tracing::debug!(error = %e, topic, "invalid CloudEvent refused");
            metrics.reject(PROTOCOL, RejectReason::InvalidCloudEvent);
            Verdict::Refused(ReasonCode::PAYLOAD_FORMAT_INVALID, "invalid CloudEvent")
        })
    }

    /// PUBREL: the broker session forgets the id; a persistent session's release is stored before its PUBCOMP
    /// (see [`BrokerRecord::released_qos2`]), so no crash brings the id back as awaiting PUBREL.
    pub(super) async fn on_release(&mut self, token: Token, packet_id: u16, found: bool) -> Option<Verdict> {
        let client = self.client_id().to_string();
        let (kept, persistent) = self
            .ctx
            .shared
            .broker
            .with(|b| b.session_mut(&client).map(|s| (s.inbound_qos2.remove(&packet_id), s.expiry_secs > 0)))
            .unwrap_or_default();
        if !((found || kept) && persistent) {
            return Some(Verdict::Stored);
        }
        let record = BrokerRecord::released(&client, packet_id);
        let Ok(ticket) = self.ctx.shared.ingest.submit_local(record).await else { return Some(STOPPED) };
        self.pending.push_record(Ack { token, pubrec: None, release: true }, ticket);
        None
    }
}
