//! The client over a byte stream: any `embedded_io_async::{Read, Write}` (an embassy-net `TcpSocket`, or a host
//! socket through an adapter), with time from embassy-time for the keep-alive. The buffers are the
//! application's; nothing is allocated.
//!
//! ```text
//! let mut session = Session::new(socket, Client::new(Version::V5, &mut outbox), &mut rx, &mut tx);
//! session.connect(&Connect { client_id: "pump-2", keep_alive: 30, ..Connect::default() }).await?;
//! session.publish(&Publish { topic: "devices/pump-2/events/pressure", qos: QoS::AtLeastOnce, .. }).await?;
//! let event = EventAttributes { id: ids.next(&mut id_buf)?, source: "/devices/pump-2", ty: "com.example.pressure", .. };
//! session.publish_event("devices/pump-2/events/pressure", QoS::AtLeastOnce, &event, EventData::Json("{\"bar\":3.1}")).await?;
//! loop {
//!     match session.receive().await? {
//!         Event::Message(command) => { /* act on it; its PUBACK goes out with the next call */ }
//!         Event::Acknowledged { packet_id, .. } => { /* the gateway has it, durably */ }
//!         _ => {}
//!     }
//! }
//! ```

use embassy_futures::select::{Either, select};
use embassy_time::{Instant, Timer};
use embedded_io_async::{Read, Write};
use meshgate_protocols::mqtt::{Connect, DecodeError, FixedHeader, Publish, QoS, SubscribeFilter, UserProperty};

use crate::client::{Client, Error, Event};
use crate::cloudevents::{
    EventAttributes, EventData, EventError, MAX_EVENT_PROPERTIES, binary_properties, write_structured,
};

/// Why a session call failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SessionError<E> {
    /// The transport failed.
    Io(E),
    /// The transport was closed by the peer.
    Closed,
    /// The protocol state refused (see [`Error`]).
    Client(Error),
    /// A packet larger than the receive buffer arrived.
    RxBufferTooSmall,
    /// The event could not be laid out (too many attributes, or too large for the buffer).
    Event(EventError),
}

impl<E> From<EventError> for SessionError<E> {
    fn from(e: EventError) -> Self {
        SessionError::Event(e)
    }
}

impl<E> From<Error> for SessionError<E> {
    fn from(e: Error) -> Self {
        SessionError::Client(e)
    }
}

fn now_ms() -> u64 {
    Instant::now().as_millis()
}

/// A client on a transport, with its receive and transmit buffers.
pub struct Session<'a, T, const N: usize> {
    io: T,
    client: Client<'a, N>,
    rx: &'a mut [u8],
    rx_len: usize,
    /// Bytes of `rx` that the last returned event borrowed, dropped at the next call.
    consumed: usize,
    tx: &'a mut [u8],
}

impl<'a, T: Read + Write, const N: usize> Session<'a, T, N> {
    /// A session over `io` for `client`, reading into `rx` and encoding into `tx` (each at least as large as the
    /// largest packet expected).
    pub fn new(io: T, client: Client<'a, N>, rx: &'a mut [u8], tx: &'a mut [u8]) -> Self {
        Session { io, client, rx, rx_len: 0, consumed: 0, tx }
    }

    /// The protocol state (in-flight count, connection state).
    pub fn client(&self) -> &Client<'a, N> {
        &self.client
    }

    /// Swaps in a new transport after the old one failed; unacknowledged publishes are resent after the next
    /// [`Session::connect`]. Returns the old transport.
    pub fn replace_transport(&mut self, io: T) -> T {
        core::mem::replace(self.reset_transport(), io)
    }

    /// The connection is over: forgets buffered input and hands out the transport to be reopened in place.
    pub(crate) fn reset_transport(&mut self) -> &mut T {
        self.client.connection_lost();
        self.rx_len = 0;
        self.consumed = 0;
        &mut self.io
    }

    async fn send(&mut self, n: usize) -> Result<(), SessionError<T::Error>> {
        let bytes = self.tx.get(..n).ok_or(SessionError::Client(Error::BufferTooSmall))?;
        self.io.write_all(bytes).await.map_err(SessionError::Io)?;
        self.io.flush().await.map_err(SessionError::Io)
    }

    /// Sends everything the client owes (acknowledgements, resends, a due PINGREQ).
    pub async fn flush(&mut self) -> Result<(), SessionError<T::Error>> {
        flush_owed(&mut self.client, &mut self.io, self.tx).await
    }

    /// Connects: CONNECT, then waits for CONNACK and resends what an earlier connection left unacknowledged.
    /// Returns whether the server resumed the session.
    pub async fn connect(&mut self, connect: &Connect<'_>) -> Result<bool, SessionError<T::Error>> {
        self.drop_consumed();
        let n = self.client.connect(connect, now_ms(), self.tx)?;
        self.send(n).await?;
        let session_present = match self.receive().await? {
            Event::Connected { session_present } => session_present,
            _ => return Err(SessionError::Client(Error::Protocol)),
        };
        self.drop_consumed();
        self.flush().await?;
        Ok(session_present)
    }

    /// Publishes; returns the packet identifier of a QoS 1 publish, whose [`Event::Acknowledged`] comes from
    /// [`Session::receive`]. [`Error::InflightFull`] means: receive until an acknowledgement, then publish again.
    pub async fn publish(&mut self, publish: &Publish<'_>) -> Result<Option<u16>, SessionError<T::Error>> {
        self.drop_consumed();
        self.flush().await?;
        let (n, id) = self.client.publish(publish, now_ms(), self.tx)?;
        self.send(n).await?;
        Ok(id)
    }

    /// Publishes a CloudEvent on `topic`. MQTT 5: binary mode (the attributes as user properties,
    /// `datacontenttype` as Content Type, the data as the payload). MQTT 3.1.1: a structured JSON event, written
    /// into the upper half of the transmit buffer while the packet is encoded into the lower half, so the
    /// transmit buffer must hold about twice the event. Returns the packet identifier as [`Session::publish`] does.
    pub async fn publish_event(
        &mut self,
        topic: &str,
        qos: QoS,
        attrs: &EventAttributes<'_>,
        data: EventData<'_>,
    ) -> Result<Option<u16>, SessionError<T::Error>> {
        if self.client.version().is_v5() {
            let mut slots = [UserProperty { name: "", value: "" }; MAX_EVENT_PROPERTIES];
            let properties = binary_properties(attrs, &mut slots)?;
            let publish = Publish { topic, qos, payload: data.bytes(), properties, ..Publish::default() };
            return self.publish(&publish).await;
        }
        self.drop_consumed();
        self.flush().await?;
        let half = self.tx.len() / 2;
        let (out, scratch) = self.tx.split_at_mut(half);
        let len = write_structured(attrs, data, scratch)?;
        let payload = scratch.get(..len).ok_or(SessionError::Event(EventError::BufferTooSmall))?;
        let publish = Publish { topic, qos, payload, ..Publish::default() };
        let (n, id) = self.client.publish(&publish, now_ms(), out)?;
        self.send(n).await?;
        Ok(id)
    }

    /// Subscribes; the answer is an [`Event::Subscribed`] from [`Session::receive`].
    pub async fn subscribe(
        &mut self,
        packet_id: u16,
        filters: &[SubscribeFilter<'_>],
    ) -> Result<(), SessionError<T::Error>> {
        self.drop_consumed();
        self.flush().await?;
        let n = self.client.subscribe(packet_id, filters, now_ms(), self.tx)?;
        self.send(n).await
    }

    /// Sends DISCONNECT.
    pub async fn disconnect(&mut self) -> Result<(), SessionError<T::Error>> {
        self.drop_consumed();
        self.flush().await?;
        let n = self.client.disconnect(now_ms(), self.tx)?;
        self.send(n).await
    }

    fn drop_consumed(&mut self) {
        if self.consumed > 0 {
            self.rx_len = crate::consume(self.rx, self.consumed, self.rx_len);
            self.consumed = 0;
        }
    }

    /// Whether the buffer holds a whole packet (by its fixed header; the client reads the packet next).
    fn packet_ready(&self) -> Result<bool, SessionError<T::Error>> {
        let buffered = self.rx.get(..self.rx_len).unwrap_or_default();
        match FixedHeader::parse(buffered, usize::MAX) {
            Ok(header) if header.packet_len() <= self.rx_len => Ok(true),
            Ok(header) if header.packet_len() > self.rx.len() => Err(SessionError::RxBufferTooSmall),
            Ok(_) => Ok(false),
            Err(DecodeError::Incomplete { .. }) => Ok(false),
            // Let the client judge it.
            Err(_) => Ok(true),
        }
    }

    /// Waits for the next thing the server says, keeping the connection alive meanwhile.
    pub async fn receive(&mut self) -> Result<Event<'_>, SessionError<T::Error>> {
        self.drop_consumed();
        loop {
            self.flush().await?;
            if self.rx_len > 0 && self.packet_ready()? {
                break;
            }
            let deadline = self.client.poll_timeout();
            let free = self.rx.get_mut(self.rx_len..).unwrap_or_default();
            let read = self.io.read(free);
            let outcome = match deadline {
                Some(at) => match select(read, Timer::at(Instant::from_millis(at))).await {
                    Either::First(r) => Some(r),
                    Either::Second(()) => None,
                },
                None => Some(read.await),
            };
            match outcome {
                Some(Ok(0)) => {
                    self.client.connection_lost();
                    return Err(SessionError::Closed);
                }
                Some(Ok(n)) => self.rx_len += n,
                Some(Err(e)) => {
                    self.client.connection_lost();
                    return Err(SessionError::Io(e));
                }
                None => self.client.handle_timeout(now_ms())?,
            }
        }
        let buffered = self.rx.get(..self.rx_len).unwrap_or_default();
        match self.client.handle(buffered, now_ms()) {
            Ok(Some((used, event))) => {
                self.consumed = used;
                Ok(event)
            }
            Ok(None) => Err(SessionError::Client(Error::Protocol)),
            Err(e) => {
                // The server broke the protocol: tell it why (MQTT 5), best effort; the connection is over.
                let _ = flush_owed(&mut self.client, &mut self.io, self.tx).await;
                Err(SessionError::Client(e))
            }
        }
    }
}

/// Sends what `client` owes over `io`, encoding into `tx`. (Free of `Session` so it can run while a received
/// packet still borrows the receive buffer.)
async fn flush_owed<T: Write, const N: usize>(
    client: &mut Client<'_, N>,
    io: &mut T,
    tx: &mut [u8],
) -> Result<(), SessionError<T::Error>> {
    loop {
        let n = client.poll_transmit(now_ms(), tx)?;
        let Some(bytes) = tx.get(..n).filter(|b| !b.is_empty()) else { return Ok(()) };
        io.write_all(bytes).await.map_err(SessionError::Io)?;
        io.flush().await.map_err(SessionError::Io)?;
    }
}
