//! [`Relay`]: a TCP relay on `127.0.0.1:<ephemeral port>` that forwards every connection to a
//! target address, and can cut them all at once. Point one replica's `redis.url` at a relay in
//! front of the fleet's Redis to take Redis away from that replica only, while the others keep
//! theirs.
//!
//! - [`Relay::cut`] closes every relayed connection at once (both sides see EOF) and, until
//!   [`Relay::restore`], closes each new connection as soon as it is accepted (a client sees
//!   its connect succeed, then EOF before any answer).
//! - [`Relay::restore`] relays new connections again (the ones cut stay closed: clients
//!   reconnect).
//!
//! The relay runs as tasks of the test's Tokio runtime (so the test must keep awaiting for it to
//! move data: use a multi-threaded runtime if the test blocks). Dropping it stops the accept
//! loop and closes every connection it relays.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Whether the relay is cut, and how many times it was: a connection accepted in one epoch is
/// closed as soon as the epoch changes (even if the relay was restored meanwhile).
#[derive(Clone, Copy, Debug, Default)]
struct State {
    cut: bool,
    epoch: u64,
}

/// A running relay; stops (and closes every relayed connection) when dropped.
pub struct Relay {
    addr: SocketAddr,
    target: SocketAddr,
    state: Arc<watch::Sender<State>>,
    active: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listen on `127.0.0.1:0` and forward every connection to `target`.
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(watch::Sender::new(State::default()));
        let active = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let task = tokio::spawn(accept_loop(
            listener,
            target,
            state.clone(),
            active.clone(),
            accepted.clone(),
        ));
        Relay {
            addr,
            target,
            state,
            active,
            accepted,
            task,
        }
    }

    /// `127.0.0.1:PORT`, where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `redis://127.0.0.1:PORT`: a Redis URL through the relay.
    pub fn redis_url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Where it forwards to.
    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Close every relayed connection now, and every new one until [`Relay::restore`].
    pub fn cut(&self) {
        self.state.send_modify(|s| {
            s.cut = true;
            s.epoch += 1;
        });
    }

    /// Relay new connections again.
    pub fn restore(&self) {
        self.state.send_modify(|s| s.cut = false);
    }

    /// Whether it is cut.
    pub fn is_cut(&self) -> bool {
        self.state.borrow().cut
    }

    /// Connections relayed right now (both sides open).
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Connections accepted so far (relayed or closed at once while cut).
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
        // Every connection task sees the change and closes both of its sockets.
        self.cut();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    state: Arc<watch::Sender<State>>,
    active: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        accepted.fetch_add(1, Ordering::SeqCst);
        let mut rx = state.subscribe();
        let at = *rx.borrow_and_update();
        if at.cut {
            drop(client);
            continue;
        }
        tokio::spawn(relay_one(client, target, rx, at.epoch, active.clone()));
    }
}

/// Counts a relayed connection while it lives.
struct Live(Arc<AtomicUsize>);

impl Drop for Live {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Copy both ways between `client` and a new connection to `target` until either side closes
/// or the relay is cut (or dropped); then close both.
async fn relay_one(
    mut client: TcpStream,
    target: SocketAddr,
    mut rx: watch::Receiver<State>,
    epoch: u64,
    active: Arc<AtomicUsize>,
) {
    active.fetch_add(1, Ordering::SeqCst);
    let _live = Live(active);
    let cut = async move {
        loop {
            if rx.borrow_and_update().epoch != epoch {
                return;
            }
            if rx.changed().await.is_err() {
                return;
            }
        }
    };
    let relay = async move {
        let Ok(mut server) = TcpStream::connect(target).await else {
            return;
        };
        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
    };
    tokio::select! {
        _ = cut => {}
        _ = relay => {}
    }
}
