//! A loopback TCP balancer for tests, standing in for the load balancer in front of a
//! cluster: it listens on `127.0.0.1:0` and hands each new connection to the next backend in
//! turn (round robin), skipping a backend that refuses the connection, so clients of a dead
//! node land on a live one when they reconnect. Bytes are copied both ways untouched (HTTP,
//! websockets, EventSource alike).
//!
//! API: [`Balancer::start`] with the backend addresses, [`Balancer::addr`] to point clients
//! at, [`Balancer::remove`] / [`Balancer::add`] to change the rotation for new connections,
//! [`Balancer::cut`] to drop the open connections to one backend, [`Balancer::connections`]
//! to count what each backend received. Dropping it stops accepting and closes every proxied
//! connection.
#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// How long a backend may take to accept before it counts as dead for this connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Default)]
struct State {
    backends: Vec<SocketAddr>,
    next: usize,
    /// Connections handed to each backend so far.
    handed: HashMap<SocketAddr, usize>,
    /// Cancelled by [`Balancer::cut`]: closes the open connections to that backend.
    cuts: HashMap<SocketAddr, CancellationToken>,
}

/// A round-robin TCP balancer on `127.0.0.1`; see the module doc.
pub struct Balancer {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    stop: CancellationToken,
}

impl Balancer {
    /// Starts listening on `127.0.0.1:0`, spreading new connections over `backends`.
    pub async fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("balancer binds 127.0.0.1:0");
        let addr = listener.local_addr().expect("balancer address");
        let state = Arc::new(Mutex::new(State { backends, ..State::default() }));
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, state.clone(), stop.clone()));
        Self { addr, state, stop }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Takes `backend` out of the rotation: new connections no longer go there (open ones stay).
    pub fn remove(&self, backend: SocketAddr) {
        self.state.lock().unwrap().backends.retain(|b| *b != backend);
    }

    /// Puts `backend` (back) into the rotation.
    pub fn add(&self, backend: SocketAddr) {
        let mut state = self.state.lock().unwrap();
        if !state.backends.contains(&backend) {
            state.backends.push(backend);
        }
    }

    /// Closes every open connection to `backend`, as a balancer does when a health check fails.
    pub fn cut(&self, backend: SocketAddr) {
        if let Some(token) = self.state.lock().unwrap().cuts.remove(&backend) {
            token.cancel();
        }
    }

    /// How many connections each backend was handed so far.
    pub fn connections(&self) -> HashMap<SocketAddr, usize> {
        self.state.lock().unwrap().handed.clone()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(listener: TcpListener, state: Arc<Mutex<State>>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let Ok((client, _)) = accepted else { continue };
        let _ = client.set_nodelay(true);
        tokio::spawn(proxy(client, state.clone(), stop.clone()));
    }
}

/// The backends in the order this connection tries them: the rotation, starting at the next.
fn candidates(state: &Mutex<State>) -> Vec<SocketAddr> {
    let mut state = state.lock().unwrap();
    let n = state.backends.len();
    if n == 0 {
        return Vec::new();
    }
    let start = state.next % n;
    state.next = state.next.wrapping_add(1);
    (0..n).map(|i| state.backends[(start + i) % n]).collect()
}

async fn proxy(mut client: TcpStream, state: Arc<Mutex<State>>, stop: CancellationToken) {
    for backend in candidates(&state) {
        let Ok(Ok(mut upstream)) = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(backend)).await else {
            continue; // dead backend: try the next one
        };
        let _ = upstream.set_nodelay(true);
        let cut = {
            let mut state = state.lock().unwrap();
            *state.handed.entry(backend).or_default() += 1;
            state.cuts.entry(backend).or_default().clone()
        };
        tokio::select! {
            _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            _ = cut.cancelled() => {}
            _ = stop.cancelled() => {}
        }
        return;
    }
    // No backend answers: the client sees its connection closed.
}

#[cfg(test)]
mod balancer_tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend that answers every connection with its own tag and closes.
    async fn tagged_backend(tag: u8) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let _ = s.write_all(&[tag]).await;
            }
        });
        addr
    }

    async fn read_tag(addr: SocketAddr) -> Option<u8> {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let mut buf = [0u8; 1];
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap() {
            Ok(1) => Some(buf[0]),
            _ => None,
        }
    }

    #[tokio::test]
    async fn spreads_connections_and_skips_dead_or_removed_backends() {
        let a = tagged_backend(b'a').await;
        let b = tagged_backend(b'b').await;
        // A port nobody listens on: refused at once.
        let dead = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
        let lb = Balancer::start(vec![a, dead, b]).await;
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(read_tag(lb.addr()).await.expect("a live backend answers"));
        }
        assert!(seen.contains(&b'a') && seen.contains(&b'b'), "both live backends used: {seen:?}");
        lb.remove(a);
        for _ in 0..3 {
            assert_eq!(read_tag(lb.addr()).await, Some(b'b'));
        }
        lb.remove(b);
        assert_eq!(read_tag(lb.addr()).await, None, "no backend left: the connection closes");
    }
}
