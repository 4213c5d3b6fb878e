//! A scripted origin for cache tests: a real HTTP server on loopback whose every answer is
//! computed by the test's closure from the request and its sequence number, so a test can
//! change freshness headers, validators, statuses and bodies from one request to the next.
//! Answers can be held at a gate the test opens, to make requests overlap deterministically.

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use axum::Router;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use tokio::sync::Semaphore;

/// One request as the origin saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    /// Method.
    pub method: String,
    /// Path (no query).
    pub path: String,
    /// Query ("" when none).
    pub query: String,
    /// Request headers.
    pub headers: HeaderMap,
}

impl Seen {
    /// A request header as a string ("" when absent).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

/// What the origin answers.
#[derive(Debug, Clone)]
pub struct Answer {
    /// Status code.
    pub status: u16,
    /// Response headers.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
    /// Wait for a permit of [`Origin::gate`] before answering.
    pub held: bool,
}

impl Answer {
    /// A 200 with `body` and the given headers.
    pub fn ok(body: impl Into<Vec<u8>>, headers: &[(&str, &str)]) -> Answer {
        Answer {
            status: 200,
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            body: body.into(),
            held: false,
        }
    }

    /// Same answer with another status.
    pub fn status(mut self, status: u16) -> Answer {
        self.status = status;
        self
    }

    /// Same answer, held at the gate until the test opens it.
    pub fn held(mut self) -> Answer {
        self.held = true;
        self
    }
}

type Script = dyn Fn(&Seen, usize) -> Answer + Send + Sync;

struct Shared {
    script: Box<Script>,
    seen: Mutex<Vec<Seen>>,
    gate: Arc<Semaphore>,
}

/// A running scripted origin; stops when dropped.
pub struct Origin {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Origin {
    /// Start on an ephemeral loopback port. `script(request, n)` answers the `n`-th request
    /// (0-based, counted over all paths).
    pub async fn start(script: impl Fn(&Seen, usize) -> Answer + Send + Sync + 'static) -> Origin {
        let shared = Arc::new(Shared {
            script: Box::new(script),
            seen: Mutex::new(Vec::new()),
            gate: Arc::new(Semaphore::new(0)),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().fallback(answer).with_state(shared.clone());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Origin { addr, shared, task }
    }

    /// The listening address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests seen so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.shared.seen.lock().unwrap().clone()
    }

    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.shared.seen.lock().unwrap().len()
    }

    /// Let `n` held answers go.
    pub fn open_gate(&self, n: usize) {
        self.shared.gate.add_permits(n);
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn answer(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let seen = Seen {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
        query: req.uri().query().unwrap_or("").to_string(),
        headers: req.headers().clone(),
    };
    let _ = axum::body::to_bytes(req.into_body(), usize::MAX).await;
    let n = {
        let mut all = shared.seen.lock().unwrap();
        all.push(seen.clone());
        all.len() - 1
    };
    let a = (shared.script)(&seen, n);
    if a.held {
        shared.gate.acquire().await.unwrap().forget();
    }
    let mut resp = Response::new(Body::from(a.body));
    *resp.status_mut() = StatusCode::from_u16(a.status).unwrap();
    for (k, v) in a.headers {
        resp.headers_mut().append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    resp
}
