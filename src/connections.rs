//! Client connections before any request: the caps on how many may be open (for the whole
//! process and per client IP), the deadline for a request header once its first byte came,
//! and the wait between requests. Pingora has none of these: it times out each read of a
//! header, so a client sending one byte every few seconds held its connection forever, it
//! accepts every connection it is offered, and it holds a request's whole pipeline (a future
//! of many KiB) while a connection waits for its next request.
//!
//! [`ConnectionGate`] wraps the proxy application (Pingora's `HttpProxy`) as a `ServerApp`: it
//! counts each accepted connection, refuses one over a cap with a `503` written straight to the
//! socket, and hands the proxy a [`HeaderDeadline`] stream, which fails a read with `408` when a
//! header takes longer than `server.client_header_timeout` from its first byte. For HTTP/1.1 it
//! runs the keep-alive loop itself: each request's first byte is waited for (and kept) before
//! Pingora's session and pipeline are built, so an idle connection costs its socket buffers and
//! little more (`docs/limits.md#memory-per-connection`).

use crate::config::ConnectionLimits;
use crate::observe::metrics;
use async_trait::async_trait;
use parking_lot::Mutex;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{
    GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, Ssl, Stream, UniqueID,
    UniqueIDType,
};
use pingora_core::server::ShutdownWatch;
use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};

/// The proxy application behind the connection caps and the header deadline.
pub struct ConnectionGate<A> {
    inner: Arc<A>,
    limits: ConnectionLimits,
    open: AtomicUsize,
    per_ip: Mutex<HashMap<IpAddr, usize>>,
}

impl<A> ConnectionGate<A> {
    /// `inner` behind `limits` (restart-only settings: `server.*`).
    pub fn new(inner: A, limits: ConnectionLimits) -> ConnectionGate<A> {
        ConnectionGate {
            inner: Arc::new(inner),
            limits,
            open: AtomicUsize::new(0),
            per_ip: Mutex::new(HashMap::new()),
        }
    }

    /// Counts a new connection in, or says which cap it is over.
    fn admit(&self, ip: Option<IpAddr>) -> Result<Admitted<'_, A>, &'static str> {
        if self.open.fetch_add(1, Ordering::AcqRel) >= self.limits.max {
            self.open.fetch_sub(1, Ordering::AcqRel);
            return Err("max_client_connections");
        }
        let ip = match (ip, self.limits.max_per_ip) {
            (Some(ip), Some(max)) => {
                let mut per_ip = self.per_ip.lock();
                let n = per_ip.entry(ip).or_insert(0);
                if *n >= max {
                    drop(per_ip);
                    self.open.fetch_sub(1, Ordering::AcqRel);
                    return Err("max_connections_per_ip");
                }
                *n += 1;
                Some(ip)
            }
            _ => None,
        };
        metrics::CLIENT_CONNECTIONS.inc();
        Ok(Admitted { gate: self, ip })
    }
}

/// A connection counted in; counted out on drop.
struct Admitted<'a, A> {
    gate: &'a ConnectionGate<A>,
    ip: Option<IpAddr>,
}

impl<A> Drop for Admitted<'_, A> {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        metrics::CLIENT_CONNECTIONS.dec();
        if let Some(ip) = self.ip {
            let mut per_ip = self.gate.per_ip.lock();
            if let Some(n) = per_ip.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }
}

/// A minimal HTTP/1.1 answer written on a connection tollgate closes before any request.
fn answer(status: &str, error: &str, message: &str, retry_after: bool) -> Vec<u8> {
    let body = format!("{{\"error\":\"{error}\",\"message\":\"{message}\"}}\n");
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        if retry_after { "Retry-After: 1\r\n" } else { "" }
    )
    .into_bytes()
}

#[async_trait]
impl<A: HttpServerApp + Send + Sync + 'static> ServerApp for ConnectionGate<A> {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet().map(|a| a.ip())));
        let _admitted = match self.admit(ip) {
            Ok(admitted) => admitted,
            Err(reason) => {
                metrics::CLIENT_CONNECTIONS_REFUSED_TOTAL
                    .with_label_values(&[reason])
                    .inc();
                let message = format!("too many client connections ({reason}); try again");
                let bytes = answer(
                    "503 Service Unavailable",
                    "too_many_connections",
                    &message,
                    true,
                );
                // Best effort, bounded: the client may not even read it.
                let _ = tokio::time::timeout(Duration::from_secs(1), async {
                    stream.write_all(&bytes).await?;
                    stream.flush().await
                })
                .await;
                return None;
            }
        };
        // Connections are served on the worker threads: the first one on each starts that
        // thread's allocator purge timer (once per connection, not on every request).
        crate::memory::collect_on_this_thread();
        let plain = stream.get_ssl_digest().is_none();
        let mut stream: Stream = Box::new(HeaderDeadline::new(stream, self.limits.header_timeout));
        let h2c = self.inner.server_options().is_some_and(|o| o.h2c);
        if !plain || h2c {
            // TLS (ALPN may pick HTTP/2) or h2c: Pingora's own dispatch.
            return ServerApp::process_new(&self.inner, stream, shutdown).await;
        }
        // HTTP/1.1 keep-alive: Pingora's loop, with one change. Between requests the connection
        // waits for the next request's first byte holding only its stream: the request
        // pipeline (a future of many KiB) exists only while a request is in progress.
        // (Pingora also carries pipelined bytes from one request to the next in the settings;
        // tollgate never enables pipelining, so there are none to wait past.)
        let mut settings: Option<HttpPersistentSettings> = None;
        // One watch for the connection's waits, not a clone per request.
        let mut watch = shutdown.clone();
        loop {
            if !wait_for_request(&mut stream, self.limits.keepalive_timeout, &mut watch).await {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            match settings.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => {
                    let limit = self
                        .inner
                        .server_options()
                        .and_then(|o| o.keepalive_request_limit);
                    session.set_keepalive(Some(self.limits.keepalive_timeout.as_secs().max(1)));
                    session.set_keepalive_reuses_remaining(limit);
                }
            }
            if *shutdown.borrow() {
                session.set_keepalive(None);
            }
            (stream, settings) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Waits for the first byte of a request (read and kept by the [`HeaderDeadline`], not lost):
/// `false` when the client closed, `idle` passed, or the process is shutting down (an idle
/// connection is closed at once then).
async fn wait_for_request(
    stream: &mut Stream,
    idle: Duration,
    shutdown: &mut ShutdownWatch,
) -> bool {
    if *shutdown.borrow_and_update() {
        return false;
    }
    let mut first = [0u8; 1];
    // Pingora's coarse timer wheel (the one its own keep-alive wait uses): cheaper to arm on
    // every request than a tokio timer.
    tokio::select! {
        peeked = pingora_timeout::fast_timeout::fast_timeout(idle, stream.try_peek(&mut first)) => {
            matches!(peeked, Ok(Ok(true)))
        }
        _ = shutdown.changed() => false,
    }
}

/// Where a connection is in its current request, as far as the header deadline cares.
#[derive(Debug)]
enum Phase {
    /// Between requests: Pingora's keep-alive timeout governs.
    Idle,
    /// A header has started and not ended: `found` bytes of `\r\n\r\n` matched so far.
    Header { found: usize },
    /// The header is in; the body and the answer are other timeouts' business, until the
    /// answer starts going out.
    Served,
}

/// A client stream whose reads fail (after a `408` is written) when a request header is not
/// complete `limit` after its first byte.
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read by a peek (the first byte of a request, waited for between requests),
    /// served to the next reads before the stream: `pending[..pending_len]`.
    pending: [u8; PEEK_MAX],
    pending_len: usize,
}

/// The most bytes a peek keeps (Pingora peeks 24 for the HTTP/2 preface).
const PEEK_MAX: usize = 32;

impl HeaderDeadline {
    fn new(inner: Stream, limit: Duration) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            limit,
            phase: Phase::Idle,
            deadline: None,
            pending: [0; PEEK_MAX],
            pending_len: 0,
        }
    }

    /// A final answer going out ends the request as far as headers go: the next byte read
    /// starts the next one. An interim `1xx` (`100 Continue`: the body is still to come) does
    /// not.
    fn answer_started(&mut self, bytes: &[u8]) {
        if matches!(self.phase, Phase::Served)
            && !(bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1"))
        {
            self.phase = Phase::Idle;
        }
    }

    /// Bytes just read from the client: followed through a header's end marker unless the
    /// header is already in (body bytes, the common case, cost one comparison).
    fn read(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Served) {
            self.saw(bytes);
        }
    }

    /// Follows the bytes just read through the header's end marker.
    fn saw(&mut self, bytes: &[u8]) {
        const END: &[u8] = b"\r\n\r\n";
        for &b in bytes {
            match &mut self.phase {
                Phase::Idle => {
                    self.phase = Phase::Header {
                        found: usize::from(b == b'\r'),
                    };
                    self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
                }
                Phase::Header { found } => {
                    *found = if b == END[*found] {
                        *found + 1
                    } else {
                        usize::from(b == b'\r')
                    };
                    if *found == END.len() {
                        self.phase = Phase::Served;
                        self.deadline = None;
                        return;
                    }
                }
                Phase::Served => return,
            }
        }
    }
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.pending_len > 0 {
            // Peeked bytes first (already seen by the deadline), then whatever the stream has
            // ready, so that a request arrives in one read as it would have without the peek.
            let n = this.pending_len.min(buf.remaining());
            buf.put_slice(&this.pending[..n]);
            this.pending.copy_within(n..this.pending_len, 0);
            this.pending_len -= n;
            if this.pending_len == 0 && buf.remaining() > 0 {
                let before = buf.filled().len();
                if let Poll::Ready(Ok(())) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                    this.read(&buf.filled()[before..]);
                }
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                this.read(&buf.filled()[before..]);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let expired = this
                    .deadline
                    .as_mut()
                    .is_some_and(|d| d.as_mut().poll(cx).is_ready());
                if !expired {
                    return Poll::Pending;
                }
                this.deadline = None;
                metrics::CLIENT_CONNECTIONS_REFUSED_TOTAL
                    .with_label_values(&["client_header_timeout"])
                    .inc();
                // One try to say why; the socket buffer takes it unless the client stopped
                // reading too.
                let bytes = answer(
                    "408 Request Timeout",
                    "client_timeout",
                    "the request header did not arrive in time (server.client_header_timeout)",
                    false,
                );
                let _ = Pin::new(&mut this.inner).poll_write(cx, &bytes);
                let _ = Pin::new(&mut this.inner).poll_flush(cx);
                Poll::Ready(Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "request header not complete within server.client_header_timeout",
                )))
            }
        }
    }
}

impl AsyncWrite for HeaderDeadline {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.answer_started(buf);
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            self.answer_started(first);
        }
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for HeaderDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await
    }
}

impl UniqueID for HeaderDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeaderDeadline {
    fn get_ssl(&self) -> Option<&pingora_core::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora_core::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<pingora_core::protocols::ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeaderDeadline {
    fn get_timing_digest(&self) -> Vec<Option<pingora_core::protocols::TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeaderDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<pingora_core::protocols::raw_connect::ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for HeaderDeadline {
    fn get_socket_digest(&self) -> Option<Arc<pingora_core::protocols::SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for HeaderDeadline {
    /// Waits until `buf.len()` bytes have come and copies them, without consuming them: they
    /// are kept here (no allocation) and served to the next reads. The bytes count for the
    /// header deadline as they arrive.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if buf.len() > PEEK_MAX {
            return Ok(false);
        }
        while self.pending_len < buf.len() {
            let mut chunk = [0u8; PEEK_MAX];
            let want = buf.len() - self.pending_len;
            let n = std::future::poll_fn(|cx| {
                let mut rb = ReadBuf::new(&mut chunk[..want]);
                match Pin::new(&mut self.inner).poll_read(cx, &mut rb) {
                    Poll::Ready(Ok(())) => Poll::Ready(Ok(rb.filled().len())),
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.read(&chunk[..n]);
            self.pending[self.pending_len..self.pending_len + n].copy_from_slice(&chunk[..n]);
            self.pending_len += n;
        }
        buf.copy_from_slice(&self.pending[..buf.len()]);
        Ok(true)
    }
}
