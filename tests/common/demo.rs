//! [`DemoUpstream`]: the bundled demo app (`tollgate demo-upstream`) as a separate process.
//!
//! This is deliberately not the in-process [`crate::common::Upstream`]: the tests that use it
//! SIGKILL the upstream *process* (failover under load, stale-if-error with a dead origin) and
//! start it again on the same address. Killing a process closes its sockets the way a crash
//! does (every connection reset, the port refusing at once), which aborting a task inside the
//! test process does not reproduce faithfully.

use crate::common::net::listening_socket_owned_by;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `tollgate demo-upstream` process on a fixed address, so that a test can kill it and start
/// it again where the proxy expects it. Killed on drop.
pub struct DemoUpstream {
    child: Child,
    /// Where it listens.
    pub addr: SocketAddr,
}

impl DemoUpstream {
    /// Spawn it on `addr` and wait until it (not some other process) listens there.
    pub async fn start(addr: SocketAddr) -> DemoUpstream {
        let mut child = Command::new(crate::common::bin())
            .args(["demo-upstream", "--listen", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn tollgate demo-upstream");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !listening_socket_owned_by(child.id(), addr) {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("demo upstream on {addr} exited with {status} (port taken?)");
            }
            assert!(
                Instant::now() < deadline,
                "demo upstream on {addr} did not start"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        DemoUpstream { child, addr }
    }

    /// Kill it (SIGKILL) and reap it: its port refuses connections from now on.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for DemoUpstream {
    fn drop(&mut self) {
        self.kill();
    }
}
