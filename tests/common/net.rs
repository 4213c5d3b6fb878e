//! Loopback plumbing: free ports, addresses nothing listens on, misbehaving peers (a door that
//! slams, a listener that never accepts), raw bytes on a socket, and the `/proc` check that a
//! process owns a listening socket.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port that was free a moment ago (the OS picked it for `127.0.0.1:0`).
/// tollgate binds its own listeners, so there is a tiny window in which another process could
/// take the port; [`crate::common::Tollgate::start`] notices the bind failure and retries.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `127.0.0.1:<a port that was free a moment ago>` (for a process the test starts there).
pub fn free_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// An address nothing listens on (bound, then closed): connecting to it is refused.
pub fn closed_addr() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let a = l.local_addr().unwrap();
    drop(l);
    a
}

/// An endpoint that accepts connections, reads a little and closes them (a reset before
/// any response headers). Runs until the test's runtime ends.
pub async fn slamming_door() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            drop(s);
        }
    });
    addr
}

/// A listener whose accept queue is full: new SYNs are dropped, so connecting to it times
/// out (the loopback way to get an upstream that never completes a connect). Keep it alive
/// while it is used.
pub struct Blackhole {
    _listener: socket2::Socket,
    _fillers: Vec<std::net::TcpStream>,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl Blackhole {
    /// Bind with a backlog of 0 and fill the accept queue with connections never accepted.
    pub fn new() -> Blackhole {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .unwrap();
        s.listen(0).unwrap();
        let addr = s.local_addr().unwrap().as_socket().unwrap();
        let mut fillers = Vec::new();
        for _ in 0..8 {
            match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                Ok(c) => fillers.push(c),
                Err(_) => break,
            }
        }
        Blackhole {
            _listener: s,
            _fillers: fillers,
            addr,
        }
    }
}

/// Send raw bytes to `addr`, return what comes back until the server closes or 5 s pass.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    String::from_utf8_lossy(&buf).into_owned()
}

/// Whether process `pid` holds the TCP socket listening on `addr` (Linux `/proc`): the inode
/// of the LISTEN entry for `addr` in `/proc/net/tcp{,6}` must be one of the process's fds.
pub fn listening_socket_owned_by(pid: u32, addr: SocketAddr) -> bool {
    let inodes = listening_inodes(addr);
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path())
            .ok()
            .and_then(|target| {
                let t = target.to_string_lossy().into_owned();
                t.strip_prefix("socket:[")?
                    .strip_suffix(']')?
                    .parse::<u64>()
                    .ok()
            })
            .is_some_and(|inode| inodes.contains(&inode))
    })
}

/// Inodes of the sockets in LISTEN state (`0A`) on `addr`'s port, per `/proc/net/tcp{,6}`.
fn listening_inodes(addr: SocketAddr) -> Vec<u64> {
    let port = format!(":{:04X}", addr.port());
    let mut out = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode ...
            if f.len() > 9 && f[1].ends_with(&port) && f[3] == "0A" {
                if let Ok(inode) = f[9].parse() {
                    out.push(inode);
                }
            }
        }
    }
    out
}
