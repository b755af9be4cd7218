//! MQTT clients for the broker tests: real rumqttc clients (3.1.1 and 5) whose event loops run in a task and
//! report what they receive on a channel, so a test can wait for the next publish, SUBACK or CONNACK.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use rumqttc::v5::mqttbytes::v5::{Filter, Packet as Packet5, PublishProperties};
use tokio::sync::mpsc;

/// What a client received.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// CONNACK.
    ConnAck {
        /// Session Present.
        session_present: bool,
        /// The return/reason code.
        code: u8,
    },
    /// SUBACK return codes.
    SubAck(Vec<u8>),
    /// UNSUBACK reason codes (empty for 3.1.1).
    UnsubAck(Vec<u8>),
    /// A PUBLISH.
    Publish(Message),
}

/// A received PUBLISH.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Topic.
    pub topic: String,
    /// Payload as text (lossy).
    pub payload: String,
    /// QoS 0-2.
    pub qos: u8,
    /// RETAIN flag.
    pub retain: bool,
    /// DUP flag.
    pub dup: bool,
    /// MQTT 5 properties.
    pub properties: Option<PublishProperties>,
}

/// A connected client: its handle and what it receives.
pub struct Client {
    v5: Option<rumqttc::v5::AsyncClient>,
    v4: Option<rumqttc::AsyncClient>,
    rx: mpsc::Receiver<Received>,
    task: tokio::task::JoinHandle<()>,
}

/// How to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// MQTT 5 (else 3.1.1).
    pub v5: bool,
    /// Client id.
    pub id: String,
    /// Clean start / clean session.
    pub clean: bool,
    /// MQTT 5 Session Expiry Interval.
    pub session_expiry: Option<u32>,
    /// Last will: topic, payload, QoS, retain (and v5 delay).
    pub will: Option<(String, String, u8, bool, Option<u32>)>,
    /// Keep-alive seconds.
    pub keep_alive: u64,
}

impl Options {
    /// Defaults: clean, keep-alive 10 s, no will.
    pub fn new(v5: bool, id: &str) -> Options {
        Options { v5, id: id.into(), clean: true, session_expiry: None, will: None, keep_alive: 10 }
    }
}

fn qos4(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// A SUBACK reason as its byte (MQTT 5 section 3.9.3).
fn suback_code(c: &rumqttc::v5::mqttbytes::v5::SubscribeReasonCode) -> u8 {
    use rumqttc::v5::mqttbytes::v5::SubscribeReasonCode as C;
    match c {
        C::Success(q) => *q as u8,
        C::Failure | C::Unspecified => 0x80,
        C::ImplementationSpecific => 0x83,
        C::NotAuthorized => 0x87,
        C::TopicFilterInvalid => 0x8F,
        C::PkidInUse => 0x91,
        C::QuotaExceeded => 0x97,
        C::SharedSubscriptionsNotSupported => 0x9E,
        C::SubscriptionIdNotSupported => 0xA1,
        C::WildcardSubscriptionsNotSupported => 0xA2,
    }
}

/// An UNSUBACK reason as its byte (MQTT 5 section 3.11.3).
fn unsuback_code(c: &rumqttc::v5::mqttbytes::v5::UnsubAckReason) -> u8 {
    use rumqttc::v5::mqttbytes::v5::UnsubAckReason as R;
    match c {
        R::Success => 0x00,
        R::NoSubscriptionExisted => 0x11,
        R::UnspecifiedError => 0x80,
        R::ImplementationSpecificError => 0x83,
        R::NotAuthorized => 0x87,
        R::TopicFilterInvalid => 0x8F,
        R::PacketIdentifierInUse => 0x91,
    }
}

impl Client {
    /// Connects to `addr` and waits for the CONNACK (returned).
    pub async fn connect(addr: SocketAddr, o: &Options) -> Result<(Client, Received)> {
        let (tx, rx) = mpsc::channel(10_000);
        let (host, port) = (addr.ip().to_string(), addr.port());
        let client = if o.v5 {
            let mut opts = rumqttc::v5::MqttOptions::new(&o.id, host, port);
            opts.set_keep_alive(Duration::from_secs(o.keep_alive));
            opts.set_clean_start(o.clean);
            if let Some(e) = o.session_expiry {
                opts.set_session_expiry_interval(Some(e));
            }
            if let Some((topic, payload, qos, retain, delay)) = &o.will {
                let props = rumqttc::v5::mqttbytes::v5::LastWillProperties {
                    delay_interval: *delay,
                    payload_format_indicator: None,
                    message_expiry_interval: None,
                    content_type: None,
                    response_topic: None,
                    correlation_data: None,
                    user_properties: Vec::new(),
                };
                let will =
                    rumqttc::v5::mqttbytes::v5::LastWill::new(topic, payload.clone(), qos5(*qos), *retain, Some(props));
                opts.set_last_will(will);
            }
            let (c, mut el) = rumqttc::v5::AsyncClient::new(opts, 1000);
            let task = tokio::spawn(async move {
                loop {
                    let event = match el.poll().await {
                        Ok(rumqttc::v5::Event::Incoming(p)) => p,
                        Ok(_) => continue,
                        Err(_) => return,
                    };
                    let r = match event {
                        Packet5::ConnAck(a) => {
                            Received::ConnAck { session_present: a.session_present, code: a.code as u8 }
                        }
                        Packet5::SubAck(s) => Received::SubAck(s.return_codes.iter().map(suback_code).collect()),
                        Packet5::UnsubAck(u) => Received::UnsubAck(u.reasons.iter().map(unsuback_code).collect()),
                        Packet5::Publish(p) => Received::Publish(Message {
                            topic: String::from_utf8_lossy(&p.topic).into_owned(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            dup: p.dup,
                            properties: p.properties,
                        }),
                        _ => continue,
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            });
            Client { v5: Some(c), v4: None, rx, task }
        } else {
            let mut opts = rumqttc::MqttOptions::new(&o.id, host, port);
            opts.set_keep_alive(Duration::from_secs(o.keep_alive));
            opts.set_clean_session(o.clean);
            if let Some((topic, payload, qos, retain, _)) = &o.will {
                opts.set_last_will(rumqttc::LastWill::new(topic, payload.clone(), qos4(*qos), *retain));
            }
            let (c, mut el) = rumqttc::AsyncClient::new(opts, 1000);
            let task = tokio::spawn(async move {
                loop {
                    let event = match el.poll().await {
                        Ok(rumqttc::Event::Incoming(p)) => p,
                        Ok(_) => continue,
                        Err(_) => return,
                    };
                    let r = match event {
                        rumqttc::Packet::ConnAck(a) => {
                            Received::ConnAck { session_present: a.session_present, code: a.code as u8 }
                        }
                        rumqttc::Packet::SubAck(s) => Received::SubAck(
                            s.return_codes
                                .iter()
                                .map(|c| match c {
                                    rumqttc::SubscribeReasonCode::Success(q) => *q as u8,
                                    rumqttc::SubscribeReasonCode::Failure => 0x80,
                                })
                                .collect(),
                        ),
                        rumqttc::Packet::UnsubAck(_) => Received::UnsubAck(Vec::new()),
                        rumqttc::Packet::Publish(p) => Received::Publish(Message {
                            topic: p.topic.clone(),
                            payload: String::from_utf8_lossy(&p.payload).into_owned(),
                            qos: p.qos as u8,
                            retain: p.retain,
                            dup: p.dup,
                            properties: None,
                        }),
                        _ => continue,
                    };
                    if tx.send(r).await.is_err() {
                        return;
                    }
                }
            });
            Client { v5: None, v4: Some(c), rx, task }
        };
        let mut client = client;
        let connack = client.next(Duration::from_secs(10)).await.context("no CONNACK")?;
        if !matches!(connack, Received::ConnAck { .. }) {
            bail!("expected CONNACK, got {connack:?}");
        }
        Ok((client, connack))
    }

    /// The next thing received, within `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Option<Received> {
        tokio::time::timeout(timeout, self.rx.recv()).await.ok().flatten()
    }

    /// The next PUBLISH within `timeout` (skipping anything else).
    pub async fn next_publish(&mut self, timeout: Duration) -> Option<Message> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next(left).await? {
                Received::Publish(m) => return Some(m),
                _ => continue,
            }
        }
    }

    /// Every PUBLISH received until `quiet` passes without one.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Message> {
        let mut out = Vec::new();
        while let Some(m) = self.next_publish(quiet).await {
            out.push(m);
        }
        out
    }

    /// Subscribes to `filters` (filter, QoS) and returns the SUBACK codes.
    pub async fn subscribe(&mut self, filters: &[(&str, u8)]) -> Result<Vec<u8>> {
        if let Some(c) = &self.v5 {
            let f: Vec<Filter> = filters.iter().map(|(t, q)| Filter::new(*t, qos5(*q))).collect();
            c.subscribe_many(f).await?;
        } else if let Some(c) = &self.v4 {
            let f: Vec<rumqttc::SubscribeFilter> =
                filters.iter().map(|(t, q)| rumqttc::SubscribeFilter::new(t.to_string(), qos4(*q))).collect();
            c.subscribe_many(f).await?;
        }
        loop {
            match self.next(Duration::from_secs(10)).await.context("no SUBACK")? {
                Received::SubAck(codes) => return Ok(codes),
                Received::Publish(_) => bail!("PUBLISH before SUBACK"),
                _ => continue,
            }
        }
    }

    /// MQTT 5 subscribe with full options.
    pub async fn subscribe_v5(
        &mut self,
        filters: Vec<Filter>,
        properties: Option<rumqttc::v5::mqttbytes::v5::SubscribeProperties>,
    ) -> Result<Vec<u8>> {
        let c = self.v5.as_ref().context("not an MQTT 5 client")?;
        match properties {
            Some(p) => c.subscribe_many_with_properties(filters, p).await?,
            None => c.subscribe_many(filters).await?,
        }
        loop {
            match self.next(Duration::from_secs(10)).await.context("no SUBACK")? {
                Received::SubAck(codes) => return Ok(codes),
                Received::Publish(_) => bail!("PUBLISH before SUBACK"),
                _ => continue,
            }
        }
    }

    /// Unsubscribes from `filter`; returns the UNSUBACK reasons.
    pub async fn unsubscribe(&mut self, filter: &str) -> Result<Vec<u8>> {
        if let Some(c) = &self.v5 {
            c.unsubscribe(filter).await?;
        } else if let Some(c) = &self.v4 {
            c.unsubscribe(filter).await?;
        }
        loop {
            match self.next(Duration::from_secs(10)).await.context("no UNSUBACK")? {
                Received::UnsubAck(codes) => return Ok(codes),
                _ => continue,
            }
        }
    }

    /// Publishes (the client library acknowledges flows on its own).
    pub async fn publish(&self, topic: &str, qos: u8, retain: bool, payload: &str) -> Result<()> {
        if let Some(c) = &self.v5 {
            c.publish(topic, qos5(qos), retain, payload.to_string()).await?;
        } else if let Some(c) = &self.v4 {
            c.publish(topic, qos4(qos), retain, payload.to_string()).await?;
        }
        Ok(())
    }

    /// MQTT 5 publish with properties.
    pub async fn publish_v5(
        &self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: &str,
        p: PublishProperties,
    ) -> Result<()> {
        let c = self.v5.as_ref().context("not an MQTT 5 client")?;
        c.publish_with_properties(topic, qos5(qos), retain, payload.to_string(), p).await?;
        Ok(())
    }

    /// Sends DISCONNECT and stops.
    pub async fn disconnect(self) {
        if let Some(c) = &self.v5 {
            let _ = c.disconnect().await;
        } else if let Some(c) = &self.v4 {
            let _ = c.disconnect().await;
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), self.task).await;
    }

    /// Drops the connection without DISCONNECT (the network went away).
    pub fn kill(self) {
        self.task.abort();
    }
}
