//! The gateway's side of CONNECT, once the session checked it against its protocol level: the device
//! authenticated, its client id resolved and registered (taking over an older connection of the same user), its
//! broker session opened or resumed and made durable where a crash must find it, then CONNACK through the session
//! and whatever the broker session owes the client.

use meshgate_protocols::mqtt::{Connect, ReasonCode};

use super::{Driver, PROTOCOL, lifecycle};
use crate::auth::AuthOutcome;
use crate::broker::local::now_ms;
use crate::broker::{SessionOwner, SessionRefused};
use crate::clients::ClientInfo;
use crate::metrics::RejectReason;
use crate::mqtt::registry::Registration;
use crate::mqtt::session::{Accepted, ServerSession};
use crate::mqtt::will::PendingWill;
use crate::normalize::Lifecycle;

/// A CONNECT the device may make, up to its broker session.
pub(super) struct Admitted {
    client_id: String,
    /// The gateway made the client id up (an empty one on MQTT 5).
    assigned: bool,
    owner: SessionOwner,
    registration: Registration,
    clean_start: bool,
    will: Option<PendingWill>,
    /// For the `connected` lifecycle event.
    username: Option<String>,
}

/// A refusal: the reason code for CONNACK and the log's words.
pub(super) type Refusal = (ReasonCode, &'static str);

impl Driver {
    /// Authenticates the device and claims its client id; refused when the device may not connect as it asks.
    pub(super) async fn on_connect(&mut self, connect: &Connect<'_>) -> Result<Admitted, Refusal> {
        let metrics = &self.ctx.shared.metrics;
        let policy = self.ctx.shared.policy.load();
        // A verified client certificate (mTLS) is the identity of a device that sends no user name.
        let certified = connect.username.is_none() && self.peer.identity.is_some();
        let outcome = if certified {
            AuthOutcome::Allowed
        } else {
            policy.auth.check(connect.username, connect.password, self.peer.login(PROTOCOL)).await
        };
        match outcome {
            AuthOutcome::Allowed => {}
            AuthOutcome::BadCredentials => {
                metrics.reject(PROTOCOL, RejectReason::BadCredentials);
                return Err((ReasonCode::BAD_USER_NAME_OR_PASSWORD, "authentication failed"));
            }
            _ => {
                metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                return Err((ReasonCode::NOT_AUTHORIZED, "authentication failed"));
            }
        }
        if connect.will.as_ref().is_some_and(|w| !policy.limits.topic_depth_ok(w.topic)) {
            metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            return Err((ReasonCode::TOPIC_NAME_INVALID, "will topic deeper than limits.max_topic_levels"));
        }
        let identity = if certified { self.peer.identity.as_deref() } else { connect.username };
        let fresh = || uuid::Uuid::now_v7().simple().to_string();
        let rules = &policy.client_ids;
        let (client_id, assigned) =
            match rules.resolve(connect.client_id, identity, self.peer.identity.as_deref(), fresh) {
                Ok(c) => (c.id, c.assigned),
                Err(why) => {
                    metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                    tracing::info!(client = connect.client_id, user = identity, "CONNECT refused: {why}");
                    return Err((ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "client id not allowed for this user"));
                }
            };
        let acl = self.device.admit(&self.ctx.shared.policy, identity, &client_id);
        // A will is a publish: refused at CONNECT where the device may not publish, before any takeover.
        if let Some(w) = connect.will.as_ref().filter(|w| !acl.may_publish(w.topic)) {
            metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            tracing::info!(client = %client_id, topic = w.topic, "CONNECT refused: will on a topic the device may not publish to");
            return Err((ReasonCode::NOT_AUTHORIZED, "will topic not authorized"));
        }
        let owner = SessionOwner::new(identity.unwrap_or_default(), acl);
        // A client id belongs to the user whose session it names: another user is refused before anything of
        // the owner's (connection or session) is touched.
        let not_owner = || {
            metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            tracing::info!(client = %client_id, user = owner.user, "CONNECT refused: the client id belongs to another user");
            (ReasonCode::NOT_AUTHORIZED, "client id belongs to another user")
        };
        if self.ctx.shared.broker.read(|b| b.owner_of(&client_id).is_some_and(|o| o != owner.user)) {
            return Err(not_owner());
        }
        let Ok(registration) = self.ctx.registry.register(&client_id, &owner.user) else {
            return Err(not_owner());
        };
        let will = connect.will.as_ref().map(|w| PendingWill::from_connect(w, &client_id, now_ms()));
        let username = connect.username.map(str::to_string);
        Ok(Admitted { client_id, assigned, owner, registration, clean_start: connect.clean_start, will, username })
    }

    /// Opens or resumes the broker session of an admitted device and answers CONNECT through `session`.
    pub(super) async fn answer_connect(&mut self, session: &mut ServerSession, admitted: Result<Admitted, Refusal>) {
        let Admitted { client_id, assigned, owner, registration, clean_start, will, username } = match admitted {
            Ok(admitted) => admitted,
            Err((reason, why)) => return session.refuse(reason, why),
        };
        let version = session.version();
        let now = now_ms();
        self.deliveries = Some(self.ctx.shared.broker.attach(&client_id, registration.conn_id));
        let limits = self.device.current(&self.ctx.shared.policy).limits;
        let rates = &self.ctx.shared.user_rates;
        self.rate = crate::limits::MessageRate::for_connection(&limits, rates, &owner.user, std::time::Instant::now());
        let (expiry, receive_maximum) = (session.session_expiry(), session.client_receive_maximum());
        let connected = self
            .ctx
            .shared
            .broker
            .with(|b| b.connect(&client_id, &owner, version, clean_start, expiry, receive_maximum, now));
        let connected = match connected {
            Ok(c) => c,
            Err(refused) => {
                self.ctx.registry.unregister(&client_id, registration.conn_id);
                self.ctx.shared.broker.detach(&client_id, registration.conn_id);
                if refused == SessionRefused::NotOwner {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                    tracing::info!(client = %client_id, user = owner.user, "CONNECT refused: the client id belongs to another user");
                    return session.refuse(ReasonCode::NOT_AUTHORIZED, "client id belongs to another user");
                }
                self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
                tracing::info!(client = %client_id, user = owner.user, ?refused, "session refused: limit reached");
                return session.refuse(ReasonCode::QUOTA_EXCEEDED, "session limit reached");
            }
        };
        for c in &connected.woken {
            self.ctx.shared.broker.wake(c);
        }
        // A session the client may resume after a crash exists once CONNACK says so.
        if connected.durable
            && let Err(e) = self.ctx.shared.broker.persist_session(&client_id).await
        {
            tracing::warn!(client = %client_id, error = %e, "session could not be made durable before CONNACK");
        }
        let accepted = Accepted {
            session_present: connected.session_present,
            assigned_client_id: assigned.then_some(client_id.as_str()),
            awaiting_release: &connected.inbound_qos2,
            will,
        };
        session.accept(accepted, self.now());
        self.write_outbound(session, connected.resend, now);
        if self.ctx.lifecycle_events {
            let data = serde_json::json!({
                "clientid": client_id,
                "username": username,
                "version": if version.is_v5() { "5" } else { "3.1.1" },
                "clean_start": clean_start,
                "session_present": connected.session_present,
                "keep_alive": session.keep_alive_secs(),
            });
            lifecycle(&self.ctx, Lifecycle::Connected, &client_id, data).await;
        }
        self.listed = Some(self.ctx.shared.clients.list(ClientInfo {
            client_id: client_id.clone(),
            user: owner.user.clone(),
            protocol: PROTOCOL,
            version: if version.is_v5() { "5" } else { "3.1.1" },
            peer: self.peer.addr,
            keep_alive_secs: u32::from(session.keep_alive_secs()),
            session: Some(client_id.clone()),
        }));
        self.client = Some((client_id, registration));
        // What the session queued while the client was away follows the CONNACK and the resends.
        self.pump_wanted = true;
    }
}
