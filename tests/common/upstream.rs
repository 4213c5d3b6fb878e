//! The in-process upstream double: an axum server on a real loopback socket (plain HTTP, or
//! HTTPS with a throwaway certificate) that records every request and answers as the test says.
//!
//! Any path not listed below answers with a [`Reply`]: a fixed one ([`Upstream::set_reply`];
//! by default `200 text/plain "hello from upstream"`) or one computed per request by a script
//! ([`Upstream::scripted`], [`Upstream::set_script`]) from the request and its sequence number,
//! so freshness headers, validators, statuses and bodies can change from one request to the
//! next. A reply can wait (`delay`), come chunked (no `Content-Length`), or be held at a gate
//! until the test opens it ([`Upstream::open_gate`]), to make requests overlap
//! deterministically. Every answer carries `x-upstream: <name>`, to tell upstreams apart.
//!
//! Built-in paths:
//! - `/sse`: a `text/event-stream` whose events are the strings the test sends with
//!   [`Upstream::sse_sender`], written when sent (to prove events are not buffered);
//! - `/ws`: a WebSocket echo (`echo: <text>`);
//! - `/bytes/{n}`: streams `n` bytes in 64 KiB chunks;
//! - `/upload`: consumes the request body as a stream and answers with its length.

use axum::body::{Body, Bytes};
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};
use axum::Router;
use futures_util::StreamExt;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, Semaphore};

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path, without the query.
    pub path: String,
    /// Query ("" when none).
    pub query: String,
    /// Path and query, as sent (`/a?b=1`).
    pub uri: String,
    /// Headers as received.
    pub headers: HeaderMap,
    /// Body length.
    pub body_len: usize,
    /// The TCP peer (tollgate's side of the upstream connection).
    pub peer: SocketAddr,
}

impl Recorded {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default()
    }
}

/// What the upstream answers to a request (outside the built-in paths).
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Headers (`x-upstream` is added).
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send the body chunked (in two pieces, no `Content-Length`).
    pub chunked: bool,
    /// Wait for a permit of the gate ([`Upstream::open_gate`]) before answering.
    pub held: bool,
}

impl Default for Reply {
    /// `200`, `content-type: text/plain`, `hello from upstream`.
    fn default() -> Self {
        Reply::ok("hello from upstream").header("content-type", "text/plain")
    }
}

impl Reply {
    /// A 200 with `body` and no headers.
    pub fn ok(body: impl Into<Bytes>) -> Reply {
        Reply {
            status: 200,
            headers: Vec::new(),
            body: body.into(),
            delay: Duration::ZERO,
            chunked: false,
            held: false,
        }
    }

    /// Same reply with another status.
    pub fn status(mut self, status: u16) -> Reply {
        self.status = status;
        self
    }

    /// Same reply with one more header.
    pub fn header(mut self, name: &str, value: &str) -> Reply {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    /// Same reply with more headers.
    pub fn headers(self, headers: &[(&str, &str)]) -> Reply {
        headers.iter().fold(self, |r, (k, v)| r.header(k, v))
    }

    /// Same reply, given after `delay`.
    pub fn delay(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Same reply, its body sent chunked (unknown length).
    pub fn chunked(mut self) -> Reply {
        self.chunked = true;
        self
    }

    /// Same reply, held at the gate until the test opens it.
    pub fn held(mut self) -> Reply {
        self.held = true;
        self
    }
}

type Script = dyn Fn(&Recorded, usize) -> Reply + Send + Sync;

struct Shared {
    name: String,
    sni: Mutex<Option<String>>,
    requests: Mutex<Vec<Recorded>>,
    script: Mutex<Arc<Script>>,
    gate: Semaphore,
    sse: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

/// A running upstream double; stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    sse_tx: mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
    /// The self-signed certificate of a [`Upstream::start_tls`] upstream, as X509.
    cert: Option<openssl::x509::X509>,
}

impl Upstream {
    /// Start on an ephemeral loopback port; answers carry `x-upstream: upstream`.
    pub async fn start() -> Upstream {
        Self::named("upstream").await
    }

    /// Start with a name, sent back in an `x-upstream` response header.
    pub async fn named(name: &str) -> Upstream {
        let (shared, sse_tx) = shared(name);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(
                listener,
                app.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Upstream {
            addr,
            shared,
            sse_tx,
            task,
            cert: None,
        }
    }

    /// Start with `script(request, n)` answering the `n`-th request (0-based, counted over all
    /// paths).
    pub async fn scripted(
        script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static,
    ) -> Upstream {
        let up = Self::start().await;
        up.set_script(script);
        up
    }

    /// Start an HTTPS upstream with a fresh self-signed certificate for `localhost`.
    /// The server name each TLS client sent (SNI) is kept: see [`Upstream::last_sni`].
    pub async fn start_tls(name: &str) -> Upstream {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::service::TowerToHyperService;
        let (shared, sse_tx) = shared(name);
        let (acceptor, cert) = self_signed_acceptor();
        let acceptor = Arc::new(acceptor);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = router(shared.clone());
        let conn_shared = shared.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let app = app.clone().layer(axum::Extension(ConnectInfo(peer)));
                let shared = conn_shared.clone();
                tokio::spawn(async move {
                    let ssl = openssl::ssl::Ssl::new(acceptor.context()).unwrap();
                    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).unwrap();
                    if std::pin::Pin::new(&mut stream).accept().await.is_err() {
                        return;
                    }
                    let sni = stream
                        .ssl()
                        .servername(openssl::ssl::NameType::HOST_NAME)
                        .map(str::to_owned);
                    *shared.sni.lock().unwrap() = sni;
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), TowerToHyperService::new(app))
                        .await;
                });
            }
        });
        Upstream {
            addr,
            shared,
            sse_tx,
            task,
            cert: Some(cert),
        }
    }

    /// The certificate of an upstream from [`Upstream::start_tls`] (self-signed, so its own
    /// CA).
    pub fn tls_certificate(&self) -> &openssl::x509::X509 {
        self.cert
            .as_ref()
            .expect("an upstream from Upstream::start_tls")
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Answer every request from now on with `reply`.
    pub fn set_reply(&self, reply: Reply) {
        self.set_script(move |_, _| reply.clone());
    }

    /// Answer the `n`-th request (0-based, counted over all paths) with `script(request, n)`.
    pub fn set_script(&self, script: impl Fn(&Recorded, usize) -> Reply + Send + Sync + 'static) {
        *self.shared.script.lock().unwrap() = Arc::new(script);
    }

    /// Let `n` held replies go.
    pub fn open_gate(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Requests seen so far for `path` (query ignored).
    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        let all = self.shared.requests.lock().unwrap();
        all.iter().filter(|r| r.path == path).cloned().collect()
    }

    /// The `i`-th request seen (0-based); panics if there were fewer.
    pub fn request(&self, i: usize) -> Recorded {
        let all = self.shared.requests.lock().unwrap();
        all.get(i)
            .unwrap_or_else(|| panic!("request {i} never came; {} seen", all.len()))
            .clone()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// The SNI server name of the latest TLS handshake (TLS upstreams only).
    pub fn last_sni(&self) -> Option<String> {
        self.shared.sni.lock().unwrap().clone()
    }

    /// Sends events on the `/sse` stream (one stream per upstream; drop the sender to end it).
    pub fn sse_sender(&self) -> mpsc::UnboundedSender<String> {
        self.sse_tx.clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Fresh state answering with the default reply, and the sender that feeds its `/sse` stream.
fn shared(name: &str) -> (Arc<Shared>, mpsc::UnboundedSender<String>) {
    let (sse_tx, sse_rx) = mpsc::unbounded_channel();
    let default: Arc<Script> = Arc::new(|_, _| Reply::default());
    let shared = Arc::new(Shared {
        name: name.to_string(),
        sni: Mutex::new(None),
        requests: Mutex::new(Vec::new()),
        script: Mutex::new(default),
        gate: Semaphore::new(0),
        sse: Mutex::new(Some(sse_rx)),
    });
    (shared, sse_tx)
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/sse", get(sse))
        .route("/ws", get(ws))
        .route("/bytes/:n", get(bytes))
        .route("/upload", any(upload))
        .fallback(catch_all)
        .with_state(shared)
}

/// Record `req`; its sequence number.
fn record(shared: &Shared, req: &Request, peer: SocketAddr, body_len: usize) -> (Recorded, usize) {
    let uri = req.uri();
    let rec = Recorded {
        method: req.method().to_string(),
        path: uri.path().to_string(),
        query: uri.query().unwrap_or("").to_string(),
        uri: uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
        body_len,
        peer,
    };
    let mut all = shared.requests.lock().unwrap();
    all.push(rec.clone());
    (rec, all.len() - 1)
}

async fn catch_all(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap_or_default();
    let req = Request::from_parts(parts, Body::empty());
    let (rec, n) = record(&shared, &req, peer, bytes.len());
    let script = shared.script.lock().unwrap().clone();
    let reply = script(&rec, n);
    if reply.held {
        shared.gate.acquire().await.unwrap().forget();
    }
    if !reply.delay.is_zero() {
        tokio::time::sleep(reply.delay).await;
    }
    let mut resp = if reply.chunked {
        // A stream of unknown length: hyper sends it with Transfer-Encoding: chunked.
        let half = reply.body.len() / 2;
        let pieces = [reply.body.slice(..half), reply.body.slice(half..)];
        Response::new(Body::from_stream(futures_util::stream::iter(
            pieces.map(Ok::<_, std::io::Error>),
        )))
    } else {
        Response::new(Body::from(reply.body))
    };
    *resp.status_mut() = StatusCode::from_u16(reply.status).unwrap();
    for (k, v) in reply.headers {
        resp.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp.headers_mut()
        .insert("x-upstream", HeaderValue::from_str(&shared.name).unwrap());
    resp
}

async fn sse(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    record(&shared, &req, peer, 0);
    let mut rx = shared
        .sse
        .lock()
        .unwrap()
        .take()
        .expect("one /sse stream per upstream");
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
        .map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Sse::new(stream).into_response()
}

async fn ws(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    upgrade: WebSocketUpgrade,
    req: Request,
) -> Response {
    record(&shared, &req, peer, 0);
    upgrade.on_upgrade(echo)
}

async fn echo(mut socket: WebSocket) {
    while let Some(Ok(msg)) = socket.recv().await {
        let reply = match msg {
            Message::Text(t) => Message::Text(format!("echo: {t}")),
            Message::Binary(b) => Message::Binary(b),
            Message::Close(_) => break,
            _ => continue,
        };
        if socket.send(reply).await.is_err() {
            break;
        }
    }
}

async fn bytes(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(n): Path<u64>,
    req: Request,
) -> Response {
    record(&shared, &req, peer, 0);
    const CHUNK: usize = 64 * 1024;
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    let stream = futures_util::stream::unfold(n, move |left| {
        let chunk = chunk.clone();
        async move {
            if left == 0 {
                return None;
            }
            let take = left.min(CHUNK as u64) as usize;
            Some((Ok::<_, Infallible>(chunk.slice(..take)), left - take as u64))
        }
    });
    let mut resp = Response::new(Body::from_stream(stream));
    resp.headers_mut()
        .insert("content-length", HeaderValue::from(n));
    resp
}

async fn upload(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    req: Request,
) -> Response {
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut total = 0usize;
    while let Some(chunk) = stream.next().await {
        match chunk {
            Ok(c) => total += c.len(),
            Err(_) => return StatusCode::BAD_REQUEST.into_response(),
        }
    }
    let req = Request::from_parts(parts, Body::empty());
    record(&shared, &req, peer, total);
    total.to_string().into_response()
}

/// A TLS acceptor with a throwaway self-signed certificate for `localhost` (EC P-256, 1 day).
fn self_signed_acceptor() -> (openssl::ssl::SslAcceptor, openssl::x509::X509) {
    use openssl::asn1::Asn1Time;
    use openssl::bn::{BigNum, MsbOption};
    use openssl::ec::{EcGroup, EcKey};
    use openssl::hash::MessageDigest;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::ssl::{SslAcceptor, SslMethod};
    use openssl::x509::extension::SubjectAlternativeName;
    use openssl::x509::{X509NameBuilder, X509};

    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", "localhost").unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_version(2).unwrap();
    let mut serial = BigNum::new().unwrap();
    serial.rand(64, MsbOption::MAYBE_ZERO, false).unwrap();
    b.set_serial_number(&serial.to_asn1_integer().unwrap())
        .unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap())
        .unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap())
        .unwrap();
    let san = SubjectAlternativeName::new()
        .dns("localhost")
        .build(&b.x509v3_context(None, None))
        .unwrap();
    b.append_extension(san).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    let cert = b.build();
    let mut acc = SslAcceptor::mozilla_intermediate_v5(SslMethod::tls_server()).unwrap();
    acc.set_private_key(&key).unwrap();
    acc.set_certificate(&cert).unwrap();
    (acc.build(), cert)
}
