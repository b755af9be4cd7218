//! The client on embassy-net (the `embassy-net` feature): a [`TcpSocket`] is the session's transport, and
//! [`Session::open`] (re)opens the TCP connection and the MQTT session in one call, so a device's reconnect loop
//! is one line.
//!
//! ```text
//! let mut socket = TcpSocket::new(stack, &mut socket_rx, &mut socket_tx);
//! socket.set_timeout(Some(Duration::from_secs(60)));
//! let mut session = Session::new(socket, Client::new(Version::V5, &mut outbox), &mut rx, &mut tx);
//! loop {
//!     if session.open(gateway, &connect).await.is_err() { Timer::after_secs(5).await; continue; }
//!     // publish and receive until an error; unacknowledged publishes go again after the next open
//! }
//! ```

use embassy_net::IpEndpoint;
use embassy_net::tcp::{ConnectError, Error as TcpError, State, TcpSocket};
use meshgate_protocols::mqtt::Connect;

use crate::session::{Session, SessionError};

/// Why [`Session::open`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum OpenError {
    /// The TCP connection could not be made.
    Tcp(ConnectError),
    /// The MQTT connection failed (refused, closed, or the transport broke).
    Session(SessionError<TcpError>),
}

impl<'a, 's, const N: usize> Session<'a, TcpSocket<'s>, N> {
    /// Opens a TCP connection to `endpoint`, first aborting what is left of the last one (and waiting for its
    /// reset to leave), then connects with `connect`; publishes an earlier connection left unacknowledged are
    /// resent. Returns whether the server resumed the session.
    pub async fn open(&mut self, endpoint: IpEndpoint, connect: &Connect<'_>) -> Result<bool, OpenError> {
        let socket = self.reset_transport();
        if socket.state() != State::Closed || socket.remote_endpoint().is_some() {
            socket.abort();
            // Waits until the reset is sent, so the server drops the old connection now rather than at its
            // keep-alive; the socket is closed either way.
            let _ = embedded_io_async::Write::flush(socket).await;
        }
        socket.connect(endpoint).await.map_err(|e| {
            log!(warn, "TCP connect failed: {}", e);
            OpenError::Tcp(e)
        })?;
        self.connect(connect).await.map_err(OpenError::Session)
    }
}
