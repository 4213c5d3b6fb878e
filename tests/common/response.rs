//! [`Got`]: a response read to the end (status, headers, body), with the lookups and
//! assertions tests make on it, so a test says `r.assert_status(200).assert_header("vary",
//! "accept-encoding")` or compares `r.cache()` instead of unwrapping header values.

use axum::body::Bytes;
use reqwest::header::HeaderMap;
use std::fmt;

/// A response, read to the end.
pub struct Got {
    /// Status code.
    pub status: u16,
    /// HTTP version it came with.
    pub version: reqwest::Version,
    /// Response headers.
    pub headers: HeaderMap,
    /// The whole body.
    pub body: Bytes,
}

impl Got {
    /// Read `r` to the end.
    pub async fn read(r: reqwest::Response) -> Got {
        let status = r.status().as_u16();
        let version = r.version();
        let headers = r.headers().clone();
        let body = r.bytes().await.expect("response body");
        Got {
            status,
            version,
            headers,
            body,
        }
    }

    /// A header's (first) value ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header value"))
            .unwrap_or("")
    }

    /// A header's (first) value, `None` when absent.
    pub fn header_opt(&self, name: &str) -> Option<&str> {
        self.has(name).then(|| self.header(name))
    }

    /// Whether the response has header `name`.
    pub fn has(&self, name: &str) -> bool {
        self.headers.contains_key(name)
    }

    /// The body as UTF-8 text (panics if it is not).
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).expect("a UTF-8 body")
    }

    /// The body as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    /// Which upstream double answered (its `x-upstream` name; "" for tollgate's own answers).
    pub fn upstream(&self) -> &str {
        self.header("x-upstream")
    }

    /// tollgate's cache verdict, `X-Cache-Status` (`HIT`, `MISS`, `STALE`, ...).
    pub fn cache(&self) -> &str {
        self.header("x-cache-status")
    }

    /// The RFC 9211 `Cache-Status` header.
    pub fn cache_status(&self) -> &str {
        self.header("cache-status")
    }

    /// The `Age` header, in seconds.
    pub fn age(&self) -> Option<u64> {
        self.headers
            .get("age")
            .map(|v| v.to_str().unwrap().parse().expect("Age in seconds"))
    }

    /// Assert the status (the message shows the whole response).
    #[track_caller]
    pub fn assert_status(&self, want: u16) -> &Got {
        assert_eq!(self.status, want, "status of {self:?}");
        self
    }

    /// Assert a header's value.
    #[track_caller]
    pub fn assert_header(&self, name: &str, want: &str) -> &Got {
        assert!(self.has(name), "no {name} header in {self:?}");
        assert_eq!(self.header(name), want, "{name} of {self:?}");
        self
    }

    /// Assert a header is absent.
    #[track_caller]
    pub fn assert_no_header(&self, name: &str) -> &Got {
        assert!(!self.has(name), "unexpected {name} header in {self:?}");
        self
    }
}

impl fmt::Debug for Got {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let body = String::from_utf8_lossy(&self.body);
        let body: String = body.chars().take(400).collect();
        write!(f, "{} {:?} {:?}", self.status, self.headers, body)
    }
}
