//! A TCP proxy a test controls, to put faults between meshgate and a broker: pass traffic, cut every connection
//! hard (and refuse new ones), or black-hole (accept, then forward nothing).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const PASS: u8 = 0;
const CUT: u8 = 1;
const BLACK_HOLE: u8 = 2;

/// The proxy's control handle; dropping it stops the proxy.
pub struct FaultProxy {
    /// Where clients connect.
    pub addr: SocketAddr,
    mode: Arc<AtomicU8>,
    /// Bumped on every mode change so live connections re-check.
    epoch: watch::Sender<u64>,
    task: tokio::task::JoinHandle<()>,
}

impl FaultProxy {
    /// Starts a proxy to `upstream` on an ephemeral port. Call inside a tokio runtime.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<FaultProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let mode = Arc::new(AtomicU8::new(PASS));
        let (epoch, epoch_rx) = watch::channel(0u64);
        let accept_mode = Arc::clone(&mode);
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                match accept_mode.load(Ordering::SeqCst) {
                    CUT => drop(client),
                    _ => {
                        tokio::spawn(pipe(client, upstream, Arc::clone(&accept_mode), epoch_rx.clone()));
                    }
                }
            }
        });
        Ok(FaultProxy { addr, mode, epoch, task })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
        self.epoch.send_modify(|e| *e += 1);
    }

    /// Closes every connection now and refuses new ones.
    pub fn cut(&self) {
        self.set(CUT);
    }

    /// Accepts connections but forwards nothing, either way.
    pub fn black_hole(&self) {
        self.set(BLACK_HOLE);
    }

    /// Forwards traffic again.
    pub fn heal(&self) {
        self.set(PASS);
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn pipe(mut client: TcpStream, upstream: SocketAddr, mode: Arc<AtomicU8>, mut epoch: watch::Receiver<u64>) {
    let Ok(mut server) = TcpStream::connect(upstream).await else { return };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    loop {
        match mode.load(Ordering::SeqCst) {
            CUT => return,
            BLACK_HOLE => {
                // Hold the sockets open and silent until the mode changes.
                if epoch.changed().await.is_err() {
                    return;
                }
                continue;
            }
            _ => {}
        }
        tokio::select! {
            n = cr.read(&mut a) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if sw.write_all(&a[..n]).await.is_err() { return },
            },
            n = sr.read(&mut b) => match n {
                Ok(0) | Err(_) => return,
                Ok(n) => if cw.write_all(&b[..n]).await.is_err() { return },
            },
            changed = epoch.changed() => if changed.is_err() { return },
        }
    }
}
