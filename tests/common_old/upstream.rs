//! In-process upstream servers for tests (axum on real loopback sockets).
//!
//! Every request is recorded (method, path, headers, body size, client address). Any path not
//! listed below answers with the scripted [`Reply`]. Built-in paths:
//! - `/sse`: a `text/event-stream` whose events are the strings the test sends with
//!   [`MockUpstream::sse_sender`], written when sent (to prove events are not buffered);
//! - `/ws`: a WebSocket echo;
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
use tokio::sync::mpsc;

/// One request as the upstream saw it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
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

/// What the catch-all answers.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Status code.
    pub status: u16,
    /// Extra headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Bytes,
    /// Wait this long before answering.
    pub delay: Duration,
    /// Send the body chunked (in two pieces, no `Content-Length`).
    pub chunked: bool,
}

impl Default for Reply {
    fn default() -> Self {
        Reply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: Bytes::from_static(b"hello from upstream"),
            delay: Duration::ZERO,
            chunked: false,
        }
    }
}

struct Shared {
    name: String,
    sni: Mutex<Option<String>>,
    requests: Mutex<Vec<Recorded>>,
    reply: Mutex<Reply>,
    sse: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Shared {
    /// Fresh state, and the sender that feeds its `/sse` stream.
    fn new(name: &str) -> (Arc<Shared>, mpsc::UnboundedSender<String>) {
        let (sse_tx, sse_rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            name: name.to_string(),
            sni: Mutex::new(None),
            requests: Mutex::new(Vec::new()),
            reply: Mutex::new(Reply::default()),
            sse: Mutex::new(Some(sse_rx)),
        });
        (shared, sse_tx)
    }
}

/// A running mock upstream; stops when dropped.
pub struct MockUpstream {
    addr: SocketAddr,
    shared: Arc<Shared>,
    sse_tx: mpsc::UnboundedSender<String>,
    task: tokio::task::JoinHandle<()>,
}

impl MockUpstream {
    /// Start on an ephemeral loopback port; answers carry `x-upstream: upstream`.
    pub async fn start() -> MockUpstream {
        Self::named("upstream").await
    }

    /// Start with a name, sent back in an `x-upstream` response header (to tell upstreams apart).
    pub async fn named(name: &str) -> MockUpstream {
        let (shared, sse_tx) = Shared::new(name);
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
        MockUpstream {
            addr,
            shared,
            sse_tx,
            task,
        }
    }

    /// Start an HTTPS upstream with a fresh self-signed certificate for `localhost`.
    /// The server name each TLS client sent (SNI) is kept: see [`MockUpstream::last_sni`].
    pub async fn start_tls(name: &str) -> MockUpstream {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::service::TowerToHyperService;
        let (shared, sse_tx) = Shared::new(name);
        let acceptor = Arc::new(self_signed_acceptor());
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
        MockUpstream {
            addr,
            shared,
            sse_tx,
            task,
        }
    }

    /// The SNI server name of the latest TLS handshake (TLS mocks only).
    pub fn last_sni(&self) -> Option<String> {
        self.shared.sni.lock().unwrap().clone()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Change what the catch-all answers.
    pub fn set_reply(&self, reply: Reply) {
        *self.shared.reply.lock().unwrap() = reply;
    }

    /// Requests seen so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Number of requests seen so far.
    pub fn count(&self) -> usize {
        self.shared.requests.lock().unwrap().len()
    }

    /// Send one event on the `/sse` stream (`None` would end it: drop the sender instead).
    pub fn sse_sender(&self) -> mpsc::UnboundedSender<String> {
        self.sse_tx.clone()
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
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

fn record(shared: &Shared, req: &Request, peer: SocketAddr, body_len: usize) {
    shared.requests.lock().unwrap().push(Recorded {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: req.headers().clone(),
        body_len,
        peer,
    });
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
    record(&shared, &req, peer, bytes.len());
    let reply = shared.reply.lock().unwrap().clone();
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
    let rx = shared
        .sse
        .lock()
        .unwrap()
        .take()
        .expect("one /sse stream per mock upstream");
    let stream = tokio_stream_from(rx).map(|data| Ok::<_, Infallible>(Event::default().data(data)));
    Sse::new(stream).into_response()
}

fn tokio_stream_from(
    mut rx: mpsc::UnboundedReceiver<String>,
) -> impl futures_util::Stream<Item = String> {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
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
fn self_signed_acceptor() -> openssl::ssl::SslAcceptor {
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
    acc.build()
}
