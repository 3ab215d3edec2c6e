//! A TCP proxy that plays an outage of whatever it stands in front of.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// A TCP proxy in front of a server (PostgreSQL, Redis) that a test can cut and restore. It
/// keeps its port for its whole life (no unbind and rebind another test could race): while cut,
/// it drops every open connection and closes each new one as soon as it is accepted.
pub struct Outage {
    /// Where clients connect instead of the real server.
    pub addr: SocketAddr,
    up: Arc<watch::Sender<bool>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outage")
            .field("addr", &self.addr)
            .field("up", &*self.up.borrow())
            .finish()
    }
}

impl Outage {
    /// A proxy forwarding to `target`, up. Shared (`Arc`) so a test can hand it to helpers
    /// that cut and restore it.
    pub async fn start(target: SocketAddr) -> Arc<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("binding the outage proxy");
        let addr = listener.local_addr().expect("the proxy's address");
        let up = Arc::new(watch::Sender::new(true));
        let accept = tokio::spawn(forward(listener, target, up.clone()));
        Arc::new(Self { addr, up, accept })
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
        self.up.send_replace(false);
    }
}

/// Accepts connections while up, piping each to `target` until it closes or the proxy is cut.
async fn forward(listener: TcpListener, target: SocketAddr, up: Arc<watch::Sender<bool>>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        if !*up.borrow() {
            continue; // dropped: the client sees its connection closed
        }
        let mut cut = up.subscribe();
        tokio::spawn(async move {
            let Ok(mut outbound) = TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                _ = cut.wait_for(|up| !*up) => {}
            }
        });
    }
}
