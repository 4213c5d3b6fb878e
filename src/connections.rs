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
//! runs the keep-alive loop itself: each request's header is read ahead (into a buffer of the
//! bytes that came) before Pingora's session and pipeline are built, so a connection that is
//! idle or trickling a header costs its socket buffers and little more, and a header longer
//! than the limits could accept gets `431` as it arrives
//! (`docs/limits.md#memory-per-connection`).

use crate::config::ConnectionLimits;
use crate::observe::metrics;
use crate::origin_date::{DateRewrite, Write};
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
        let mut conn = Box::new(HeaderDeadline::new(stream, &self.limits));
        let h2c = self.inner.server_options().is_some_and(|o| o.h2c);
        if !plain || h2c {
            // TLS (ALPN may pick HTTP/2) or h2c: Pingora's own dispatch.
            return ServerApp::process_new(&self.inner, conn, shutdown).await;
        }
        // HTTP/1.1 keep-alive: Pingora's loop, with one change. Before each request the
        // connection reads the request header itself (into a buffer the size of what arrived)
        // and only then builds Pingora's session and request pipeline (a future of many KiB):
        // a connection that is idle, or that trickles a header, holds its socket and the bytes
        // it sent, nothing more. (Pingora also carries pipelined bytes from one request to the
        // next in the settings; tollgate never enables pipelining, so it has none: a client's
        // bytes past its request stay in the `HeaderDeadline` and start the next one.)
        let mut settings: Option<HttpPersistentSettings> = None;
        // One watch for the connection's waits, not a clone per request.
        let mut watch = shutdown.clone();
        let mut awaiting = Some(AwaitingFirst::new());
        loop {
            let first = awaiting.is_some();
            if !conn.next_request(&self.limits, &mut watch, first).await {
                return None;
            }
            // Its request is in flight now (counted there) or over.
            awaiting = None;
            let mut session = ServerSession::new_http1(conn);
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
            let stream;
            (stream, settings) = self
                .inner
                .process_new_http(session, shutdown)
                .await?
                .consume();
            // The stream Pingora hands back is the one it was given.
            conn = stream.into_any().downcast::<HeaderDeadline>().ok()?;
        }
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

/// Have the answer about to be written on `session`'s connection carry `value` as its `Date`
/// ([`crate::origin_date`]). Nothing happens on a connection tollgate does not wrap (HTTP/2).
pub fn keep_date(session: &ServerSession, value: [u8; crate::origin_date::IMF_FIXDATE_LEN]) {
    if let Some(conn) = session
        .stream()
        .and_then(|s| s.as_any().downcast_ref::<HeaderDeadline>())
    {
        conn.keep_date(value);
    }
}

/// How long, once a shutdown has begun, a connection that has not sent its first request yet
/// still gets to send it (kept-alive connections between requests are closed at once: their
/// clients retry on a new connection).
pub const FIRST_REQUEST_GRACE: Duration = Duration::from_secs(1);

/// Connections accepted whose first request has not started yet.
static AWAITING_FIRST_REQUEST: AtomicUsize = AtomicUsize::new(0);

/// How many connections are waiting for their first request: the drain waits for them too
/// (each for at most [`FIRST_REQUEST_GRACE`] once the shutdown has begun).
pub fn awaiting_first_request() -> usize {
    AWAITING_FIRST_REQUEST.load(Ordering::Relaxed)
}

/// Counts a connection in [`awaiting_first_request`] while it lives.
struct AwaitingFirst;

impl AwaitingFirst {
    fn new() -> AwaitingFirst {
        AWAITING_FIRST_REQUEST.fetch_add(1, Ordering::Relaxed);
        AwaitingFirst
    }
}

impl Drop for AwaitingFirst {
    fn drop(&mut self) {
        AWAITING_FIRST_REQUEST.fetch_sub(1, Ordering::Relaxed);
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
/// complete `limit` after its first byte. On the HTTP/1.1 path it also reads each request
/// header ahead of Pingora ([`HeaderDeadline::next_request`]).
#[derive(Debug)]
pub struct HeaderDeadline {
    inner: Stream,
    limit: Duration,
    phase: Phase,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    /// Bytes read before Pingora asked for them (a request header read ahead, or a peek),
    /// served to the next reads before the stream: `pending[served..]`. Freed once served, so
    /// a connection between requests holds no buffer.
    pending: Vec<u8>,
    served: usize,
    /// The most one read ahead takes from the socket (Pingora's own first read of a request).
    read_size: usize,
    /// The `Date` the next answer came with (a hit's stored one, the origin's), to put back in
    /// its header as it is written ([`crate::origin_date`]). Set through `&self` (Pingora
    /// lends the stream by reference); read through `&mut self` on every write, which takes no
    /// lock.
    date: Mutex<Option<DateRewrite>>,
}

thread_local! {
    /// The buffer reads ahead land in, one per worker thread: a connection keeps only the
    /// bytes that arrived, not a buffer of the size a read may fill.
    static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl HeaderDeadline {
    fn new(inner: Stream, limits: &ConnectionLimits) -> HeaderDeadline {
        HeaderDeadline {
            inner,
            limit: limits.header_timeout,
            phase: Phase::Idle,
            deadline: None,
            pending: Vec::new(),
            served: 0,
            read_size: limits.read_size.max(1),
            date: Mutex::new(None),
        }
    }

    /// Have the next answer's header carry `value` as its `Date` (the one it came with).
    pub fn keep_date(&self, value: [u8; crate::origin_date::IMF_FIXDATE_LEN]) {
        *self.date.lock() = Some(DateRewrite::Armed(value));
    }

    /// The `Date` rewrite, from a write (no lock taken: the write owns the stream).
    fn date_mut(&mut self) -> &mut Option<DateRewrite> {
        self.date.get_mut()
    }

    /// Bytes read ahead and not yet served.
    fn unserved(&self) -> usize {
        self.pending.len() - self.served
    }

    /// Waits for the next request's header and reads it whole (a few hundred bytes, kept
    /// until Pingora's session reads them): `false` when the connection is to be closed. The
    /// wait for its first byte is bounded by `keepalive_timeout` and ends at once on shutdown
    /// (an idle connection is closed then), except on a connection's `first` request, which
    /// gets [`FIRST_REQUEST_GRACE`] more; from that byte the header has
    /// `client_header_timeout` to end (else `408`), and it may not pass what the request limits
    /// could ever accept (else `431`, without reading the rest).
    async fn next_request(
        &mut self,
        limits: &ConnectionLimits,
        shutdown: &mut ShutdownWatch,
        first: bool,
    ) -> bool {
        if !first && *shutdown.borrow_and_update() {
            return false;
        }
        // A date armed for an answer that was never written (an error) is not the next one's.
        *self.date_mut() = None;
        if self.unserved() > 0 {
            // Bytes a client sent past its last request (pipelined) start this one.
            track(&mut self.phase, &self.pending[self.served..]);
        } else {
            // A tokio timer, not Pingora's coarse wheel: a cancelled tokio timer is freed with
            // the future, while Pingora's stays in its shared map until its deadline (60 s
            // here by default), pinning whatever allocator pages it landed in. Registered only
            // when the read is pending (not when the request is already there).
            let closing = async {
                if !*shutdown.borrow_and_update() {
                    let _ = shutdown.changed().await;
                }
                if first {
                    // Accepted just before the shutdown (or while the listening socket was
                    // being handed to a new process): its client has had no answer it could
                    // retry after and is about to send. Closing it now would fail that request.
                    tokio::time::sleep(FIRST_REQUEST_GRACE).await;
                }
            };
            let read = tokio::select! {
                read = tokio::time::timeout(
                    limits.keepalive_timeout,
                    std::future::poll_fn(|cx| self.poll_fill(cx, false)),
                ) => read,
                _ = closing => return false,
            };
            if !matches!(read, Ok(Ok(n)) if n > 0) {
                return false;
            }
        }
        if matches!(self.phase, Phase::Served) {
            // The whole header came at once: the common case, no timer armed.
            return true;
        }
        let rest = std::future::poll_fn(|cx| loop {
            if matches!(self.phase, Phase::Served) {
                return Poll::Ready(Ok(true));
            }
            if self.unserved() > limits.max_header_bytes {
                return Poll::Ready(Ok(false));
            }
            match std::task::ready!(self.poll_fill(cx, false)) {
                Ok(0) => return Poll::Ready(Err(std::io::ErrorKind::UnexpectedEof.into())),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        });
        let (status, error, message, reason) =
            match tokio::time::timeout(limits.header_timeout, rest).await {
                Ok(Ok(true)) => return true,
                Ok(Err(_)) => return false,
                Ok(Ok(false)) => (
                    "431 Request Header Fields Too Large",
                    "request_headers_too_large",
                    "the request header is larger than server.max_uri_length, max_header_size and max_headers allow",
                    "request_headers_too_large",
                ),
                Err(_) => (
                    "408 Request Timeout",
                    "client_timeout",
                    "the request header did not arrive in time (server.client_header_timeout)",
                    "client_header_timeout",
                ),
            };
        metrics::CLIENT_CONNECTIONS_REFUSED_TOTAL
            .with_label_values(&[reason])
            .inc();
        let bytes = answer(status, error, message, false);
        // Best effort, bounded: the client may not even read it.
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            self.inner.write_all(&bytes).await?;
            self.inner.flush().await
        })
        .await;
        false
    }

    /// Reads what the socket has (at most `read_size` bytes, through the thread's scratch
    /// buffer) onto `pending`; `Ok(0)`: the client closed. `arm`: the bytes may start the
    /// header deadline's timer (reads Pingora drives); the read ahead has its own timeout.
    fn poll_fill(&mut self, cx: &mut Context<'_>, arm: bool) -> Poll<std::io::Result<usize>> {
        SCRATCH.with_borrow_mut(|scratch| {
            if scratch.len() < self.read_size {
                scratch.resize(self.read_size, 0);
            }
            let mut rb = ReadBuf::new(&mut scratch[..self.read_size]);
            std::task::ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
            let got = rb.filled();
            if arm {
                self.read(got);
            } else {
                self.track(got);
            }
            self.pending.extend_from_slice(got);
            Poll::Ready(Ok(got.len()))
        })
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

    /// Bytes just read from the client by a read Pingora drives: followed through a header's
    /// end marker unless the header is already in (body bytes, the common case, cost one
    /// comparison), and a header's first byte starts the deadline's timer.
    fn read(&mut self, bytes: &[u8]) {
        if !matches!(self.phase, Phase::Served) {
            self.track(bytes);
            if matches!(self.phase, Phase::Header { .. }) && self.deadline.is_none() {
                self.deadline = Some(Box::pin(tokio::time::sleep(self.limit)));
            }
        }
    }

    /// Follows the bytes just read through the header's end marker.
    fn track(&mut self, bytes: &[u8]) {
        if track(&mut self.phase, bytes) {
            self.deadline = None;
        }
    }
}

/// Follows `bytes`, just read, through a request header's end marker; `true` when it ends
/// there. A header is hundreds of bytes, read on every request, so the marker is looked for
/// with memchr's vectorised search, not byte by byte (only a marker cut between two reads is
/// matched by hand).
fn track(phase: &mut Phase, bytes: &[u8]) -> bool {
    const END: &[u8] = b"\r\n\r\n";
    let mut i = 0;
    if matches!(phase, Phase::Idle) {
        if bytes.is_empty() {
            return false;
        }
        *phase = Phase::Header { found: 0 };
    }
    let Phase::Header { found } = phase else {
        return false;
    };
    // The rest of a marker the last read ended inside.
    while *found > 0 && i < bytes.len() {
        *found = if bytes[i] == END[*found] {
            *found + 1
        } else {
            usize::from(bytes[i] == b'\r')
        };
        i += 1;
        if *found == END.len() {
            *phase = Phase::Served;
            return true;
        }
    }
    if *found > 0 {
        // Still inside a marker at the end of this read.
        return false;
    }
    let rest = &bytes[i..];
    // Built once: building a searcher costs about what searching a header does.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(END));
    if FINDER.find(rest).is_some() {
        *phase = Phase::Served;
        return true;
    }
    // How much of a marker this read ends with.
    *found = (1..END.len())
        .rev()
        .find(|&n| rest.ends_with(&END[..n]))
        .unwrap_or(0);
    false
}

impl AsyncRead for HeaderDeadline {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.unserved() > 0 {
            // Bytes read ahead first (already seen by the deadline). After a whole header read
            // ahead that is all a read gets (Pingora needs no more to parse it, and trying the
            // socket would cost a read that finds nothing); after a peek, whatever the stream
            // has ready too, so that a request arrives in one read as it would without it.
            let n = this.unserved().min(buf.remaining());
            buf.put_slice(&this.pending[this.served..this.served + n]);
            this.served += n;
            if this.unserved() == 0 {
                this.pending = Vec::new();
                this.served = 0;
                if buf.remaining() > 0 && !matches!(this.phase, Phase::Served) {
                    let before = buf.filled().len();
                    if let Poll::Ready(Ok(())) = Pin::new(&mut this.inner).poll_read(cx, buf) {
                        this.read(&buf.filled()[before..]);
                    }
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
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let this = self.get_mut();
        this.answer_started(buf);
        let HeaderDeadline { inner, date, .. } = this;
        let rewrite = date.get_mut();
        if rewrite.is_none() {
            return Pin::new(inner).poll_write(cx, buf);
        }
        let n = match DateRewrite::write(rewrite, buf) {
            Write::Plain(b) => std::task::ready!(Pin::new(inner).poll_write(cx, b))?,
            Write::Rewritten(b) => std::task::ready!(Pin::new(inner).poll_write(cx, &b))?,
        };
        DateRewrite::wrote(rewrite, n);
        Poll::Ready(Ok(n))
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
        let first = bufs.iter().find(|b| !b.is_empty());
        if self.date_mut().is_some() {
            // A header whose date is rewritten goes through the plain write, a buffer at a time.
            return self.poll_write(cx, first.map_or(&[], |b| &b[..]));
        }
        if let Some(first) = first {
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
    /// are kept and served to the next reads. The bytes count for the header deadline as they
    /// arrive.
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        while self.unserved() < buf.len() {
            if std::future::poll_fn(|cx| self.poll_fill(cx, true)).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        buf.copy_from_slice(&self.pending[self.served..self.served + buf.len()]);
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header's end is found wherever the reads split it, and not before.
    #[test]
    fn the_end_of_a_header_is_found_across_any_split() {
        let head = b"GET /a HTTP/1.1\r\nHost: a\r\nX: \r\r\n\r\r\n\r\nbody";
        let end = memchr::memmem::find(head, b"\r\n\r\n").unwrap() + 4;
        for cut in 0..=head.len() {
            for cut2 in cut..=head.len() {
                let mut phase = Phase::Idle;
                let mut served_at = None;
                for (from, to) in [(0, cut), (cut, cut2), (cut2, head.len())] {
                    if track(&mut phase, &head[from..to]) {
                        served_at.get_or_insert(to);
                    }
                }
                let served_at = served_at.expect("served");
                // Reported by the read that holds the marker's last byte.
                let holder = [cut, cut2, head.len()]
                    .into_iter()
                    .find(|&to| to >= end)
                    .unwrap();
                assert_eq!(served_at, holder, "cuts {cut} {cut2}");
                assert!(matches!(phase, Phase::Served));
            }
        }
        // Byte by byte.
        let mut phase = Phase::Idle;
        let at = (0..head.len()).find(|&i| track(&mut phase, &head[i..i + 1]));
        assert_eq!(at, Some(end - 1));
        // No marker: never served.
        let mut phase = Phase::Idle;
        assert!(!track(&mut phase, b"GET / HTTP/1.1\r\nHost: a\r\n\r"));
        assert!(matches!(phase, Phase::Header { found: 3 }));
        assert!(track(&mut phase, b"\n"));
    }
}
