//! The start of a connection: CONNECT read and checked, the device authenticated, its client id registered
//! (taking over an older connection), its broker session opened or resumed, CONNACK with the negotiated
//! properties, then whatever the session owes the client.

use std::time::Duration;

use bytes::Buf;
use meshgate_protocols::mqtt::reason::v311;
use meshgate_protocols::mqtt::{ConnAck, Connect, DecodeError, Malformed, Packet, Properties, ReasonCode, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use super::{Closed, Connection, Lifecycle, PROTOCOL, lifecycle};
use crate::auth::AuthOutcome;
use crate::broker::local::now_ms;
use crate::broker::{SessionOwner, SessionRefused};
use crate::metrics::RejectReason;
use crate::mqtt::outbound;
use crate::mqtt::will::PendingWill;

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Reads CONNECT, authenticates, registers the client id and answers CONNACK.
    pub(super) async fn handshake(&mut self) -> Result<(), Closed> {
        loop {
            // The buffer is moved out while a packet borrows it, and put back before it is read into again.
            let rbuf = std::mem::take(&mut self.rbuf);
            let step = match Packet::decode(&rbuf, Version::V5, self.max_packet()) {
                Ok((Packet::Connect(connect), len)) => Ok(self.accept(&connect).await.map(|()| len)),
                Ok(_) => Ok(Err(Closed::Refused("first packet was not CONNECT"))),
                Err(e) => Err(e),
            };
            self.rbuf = rbuf;
            match step {
                Ok(Ok(len)) => {
                    self.rbuf.advance(len);
                    return Ok(());
                }
                Ok(Err(closed)) => return Err(closed),
                Err(DecodeError::Incomplete { .. }) => {
                    if self.stream.read_buf(&mut self.rbuf).await? == 0 {
                        return Err(Closed::Dropped);
                    }
                }
                Err(DecodeError::Malformed(Malformed::UnsupportedProtocolVersion(level))) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::UnsupportedVersion);
                    // Answer in the form the client can read: 3.1.1's return code below level 5, 5's reason above.
                    self.version = if level < 5 { Version::V311 } else { Version::V5 };
                    let code = if level < 5 {
                        ReasonCode(v311::UNACCEPTABLE_PROTOCOL_VERSION)
                    } else {
                        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
                    };
                    self.send(&Packet::ConnAck(ConnAck { code, ..ConnAck::default() }));
                    self.flush().await?;
                    return Err(Closed::Refused("unsupported protocol version"));
                }
                Err(DecodeError::TooLarge { .. }) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::TooLarge);
                    return Err(Closed::Refused("CONNECT too large"));
                }
                Err(DecodeError::Malformed(_)) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::Malformed);
                    return Err(Closed::Refused("malformed CONNECT"));
                }
            }
        }
    }

    /// Refuses a CONNECT whose client id names a session or connection of another user (MQTT 5 0x87 Not
    /// authorized, 3.1.1 return code 5), leaving the owner's untouched.
    async fn refuse_not_owner(&mut self, client_id: &str, user: &str, v5: bool) -> Result<(), Closed> {
        self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
        tracing::info!(client = client_id, user, "CONNECT refused: the client id belongs to another user");
        let code =
            if v5 { ReasonCode::NOT_AUTHORIZED } else { ReasonCode(ReasonCode::NOT_AUTHORIZED.to_v311_connack()) };
        self.send(&Packet::ConnAck(ConnAck { code, ..ConnAck::default() }));
        self.flush().await?;
        Err(Closed::Refused("client id belongs to another user"))
    }

    async fn accept(&mut self, connect: &Connect<'_>) -> Result<(), Closed> {
        self.version = connect.version;
        let v5 = self.version.is_v5();
        if !v5 {
            self.inbound.without_quota();
        }
        let refuse = |code_v5: ReasonCode| {
            let code = if v5 { code_v5 } else { ReasonCode(code_v5.to_v311_connack()) };
            Packet::ConnAck(ConnAck { code, ..ConnAck::default() })
        };
        // A verified client certificate (mTLS) is the identity of a device that sends no user name.
        let certified = connect.username.is_none() && self.peer.identity.is_some();
        let outcome = if certified {
            AuthOutcome::Allowed
        } else {
            self.ctx.shared.auth.check(connect.username, connect.password, self.peer.login(PROTOCOL)).await
        };
        match outcome {
            AuthOutcome::Allowed => {}
            outcome => {
                let (code, reason) = if outcome == AuthOutcome::BadCredentials {
                    (ReasonCode::BAD_USER_NAME_OR_PASSWORD, RejectReason::BadCredentials)
                } else {
                    (ReasonCode::NOT_AUTHORIZED, RejectReason::NotAuthorized)
                };
                self.ctx.shared.metrics.reject(PROTOCOL, reason);
                self.send(&refuse(code));
                self.flush().await?;
                return Err(Closed::Refused("authentication failed"));
            }
        }
        if connect.will.as_ref().is_some_and(|w| !self.ctx.shared.limits.topic_depth_ok(w.topic)) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
            self.send(&refuse(ReasonCode::TOPIC_NAME_INVALID));
            self.flush().await?;
            return Err(Closed::Refused("will topic deeper than limits.max_topic_levels"));
        }
        if connect.client_id.is_empty() && !v5 && !connect.clean_start {
            // MQTT 3.1.1: a zero-length client id requires a clean session.
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
            self.send(&refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
            self.flush().await?;
            return Err(Closed::Refused("empty client id without clean session"));
        }
        // A keep-alive of 0 or above `max_keepalive`: MQTT 5 is told the maximum (below); 3.1.1 cannot be told and
        // is refused with "identifier rejected", as Mosquitto does.
        let max_keep_alive = self.ctx.config.max_keep_alive_secs;
        let beyond_max_keep_alive =
            max_keep_alive > 0 && (connect.keep_alive == 0 || connect.keep_alive > max_keep_alive);
        if beyond_max_keep_alive && !v5 {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::ProtocolViolation);
            self.send(&refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
            self.flush().await?;
            return Err(Closed::Refused("keep-alive above listeners.mqtt.max_keepalive"));
        }
        let identity = if certified { self.peer.identity.as_deref() } else { connect.username };
        let fresh = || uuid::Uuid::now_v7().simple().to_string();
        let rules = &self.ctx.shared.client_ids;
        let (client_id, assigned) =
            match rules.resolve(connect.client_id, identity, self.peer.identity.as_deref(), fresh) {
                Ok(c) => (c.id, c.assigned),
                Err(why) => {
                    self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
                    tracing::info!(client = connect.client_id, user = identity, "CONNECT refused: {why}");
                    self.send(&refuse(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID));
                    self.flush().await?;
                    return Err(Closed::Refused("client id not allowed for this user"));
                }
            };
        self.acl = self.ctx.shared.acl.for_device(identity, &client_id);
        // A will is a publish: refused at CONNECT where the device may not publish, before any takeover.
        if let Some(w) = connect.will.as_ref().filter(|w| !self.acl.may_publish(w.topic)) {
            self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::NotAuthorized);
            tracing::info!(client = %client_id, topic = w.topic, "CONNECT refused: will on a topic the device may not publish to");
            self.send(&refuse(ReasonCode::NOT_AUTHORIZED));
            self.flush().await?;
            return Err(Closed::Refused("will topic not authorized"));
        }
        let owner = SessionOwner::new(identity.unwrap_or_default(), &self.acl);
        // A client id belongs to the user whose session it names: another user is refused before anything of
        // the owner's (connection or session) is touched.
        if self.ctx.shared.broker.read(|b| b.owner_of(&client_id).is_some_and(|o| o != owner.user)) {
            return self.refuse_not_owner(&client_id, &owner.user, v5).await;
        }
        let Ok(registration) = self.ctx.registry.register(&client_id, &owner.user) else {
            return self.refuse_not_owner(&client_id, &owner.user, v5).await;
        };
        // MQTT 5: a keep-alive of 0 or above the maximum is replaced by the maximum (Server Keep Alive).
        let server_keep_alive = (v5 && beyond_max_keep_alive).then_some(max_keep_alive);
        let keep_alive = server_keep_alive.unwrap_or(connect.keep_alive);
        self.keep_alive = (keep_alive > 0).then(|| Duration::from_millis(u64::from(keep_alive) * 1500));
        self.aliases = outbound::OutboundAliases::new(connect.properties.topic_alias_maximum.unwrap_or(0));
        self.problem_info = connect.properties.request_problem_information != Some(false);
        // 3.1.1: a clean session ends with the connection, any other lasts until the next clean one.
        let expiry = if v5 {
            connect.properties.session_expiry_interval.unwrap_or(0)
        } else if connect.clean_start {
            0
        } else {
            u32::MAX
        };
        self.session_expiry = expiry;
        let client_receive_maximum = connect.properties.receive_maximum.unwrap_or(u16::MAX);
        self.client_max_packet =
            connect.properties.maximum_packet_size.map_or(usize::MAX, |m| usize::try_from(m).unwrap_or(usize::MAX));
        let now = now_ms();
        self.will = connect.will.as_ref().map(|w| PendingWill::from_connect(w, &client_id, now));
        self.deliveries = Some(self.ctx.shared.broker.attach(&client_id, registration.conn_id));
        let (limits, rates) = (&self.ctx.shared.limits, &self.ctx.shared.user_rates);
        self.rate = crate::limits::MessageRate::for_connection(limits, rates, &owner.user, std::time::Instant::now());
        let connected = self.ctx.shared.broker.with(|b| {
            b.connect(&client_id, &owner, self.version, connect.clean_start, expiry, client_receive_maximum, now)
        });
        let connected = match connected {
            Ok(c) => c,
            Err(refused) => {
                self.ctx.registry.unregister(&client_id, registration.conn_id);
                self.ctx.shared.broker.detach(&client_id, registration.conn_id);
                if refused == SessionRefused::NotOwner {
                    return self.refuse_not_owner(&client_id, &owner.user, v5).await;
                }
                self.ctx.shared.metrics.reject(PROTOCOL, RejectReason::LimitExceeded);
                tracing::info!(client = %client_id, user = owner.user, ?refused, "session refused: limit reached");
                self.send(&refuse(ReasonCode::QUOTA_EXCEEDED));
                self.flush().await?;
                return Err(Closed::Refused("session limit reached"));
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
        self.inbound.resume(connected.inbound_qos2.iter().copied());
        let cfg = &self.ctx.config;
        let properties = if v5 {
            Properties {
                assigned_client_identifier: assigned.then_some(client_id.as_str()),
                receive_maximum: Some(cfg.receive_maximum),
                maximum_packet_size: Some(cfg.max_packet_size),
                topic_alias_maximum: Some(cfg.topic_alias_maximum),
                server_keep_alive,
                ..Properties::default()
            }
        } else {
            Properties::default()
        };
        // MQTT 3.1's CONNACK has no Session Present flag: the byte is reserved.
        let session_present = connected.session_present && !connect.mqtt31;
        self.send(&Packet::ConnAck(ConnAck { session_present, code: ReasonCode::SUCCESS, properties }));
        self.write_outbound(connected.resend, now);
        if self.ctx.lifecycle_events {
            let data = serde_json::json!({
                "clientid": client_id,
                "username": connect.username,
                "version": if v5 { "5" } else { "3.1.1" },
                "clean_start": connect.clean_start,
                "session_present": session_present,
                "keep_alive": connect.keep_alive,
            });
            lifecycle(&self.ctx, Lifecycle::Connected, &client_id, data).await;
        }
        self.session = Some((client_id, registration));
        // What the session queued while the client was away follows the CONNACK and the resends.
        self.pump_outbound().await;
        self.flush().await?;
        self.touch();
        Ok(())
    }
}
