//! A TCP proxy that plays an outage of whatever it stands in front of.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Forwards them.
    Up,
    /// Drops them: the server went away (its host answered with a close).
    Cut,
    /// Holds them open and forwards nothing: the server or the network froze, and only a
    /// client's own timeout tells it.
    Stalled,
}

/// A TCP proxy in front of a server (PostgreSQL, Redis) that a test can cut, stall and restore.
/// It keeps its port for its whole life (no unbind and rebind another test could race): while
/// cut, it drops every open connection and closes each new one as soon as it is accepted; while
/// stalled, it stops forwarding on open connections and leaves new ones unanswered.
pub struct Outage {
    /// Where clients connect instead of the real server.
    pub addr: SocketAddr,
    state: Arc<watch::Sender<State>>,
    accept: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Outage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outage")
            .field("addr", &self.addr)
            .field("state", &*self.state.borrow())
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
        let state = Arc::new(watch::Sender::new(State::Up));
        let accept = tokio::spawn(forward(listener, target, state.clone()));
        Arc::new(Self {
            addr,
            state,
            accept,
        })
    }

    /// Accepts and forwards connections again (connections held while stalled are dropped).
    pub fn restore(&self) {
        self.state.send_replace(State::Up);
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.state.send_replace(State::Cut);
    }

    /// Stops forwarding: open and new connections stay open and hear nothing.
    pub fn stall(&self) {
        self.state.send_replace(State::Stalled);
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        self.accept.abort();
        self.state.send_replace(State::Cut);
    }
}

/// Accepts connections, piping each to `target` while up, until it closes or the proxy leaves
/// the up state; a connection that meets a stall is held, silent, until the state changes.
async fn forward(listener: TcpListener, target: SocketAddr, state: Arc<watch::Sender<State>>) {
    while let Ok((mut inbound, _)) = listener.accept().await {
        let mut changes = state.subscribe();
        let now = *changes.borrow_and_update();
        match now {
            State::Cut => continue, // dropped: the client sees its connection closed
            State::Stalled => {
                tokio::spawn(async move {
                    let _ = changes.changed().await;
                    drop(inbound);
                });
            }
            State::Up => {
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => return,
                        _ = changes.wait_for(|s| *s != State::Up) => {}
                    }
                    if *changes.borrow_and_update() == State::Stalled {
                        let _ = changes.changed().await;
                    }
                    drop((inbound, outbound));
                });
            }
        }
    }
}
