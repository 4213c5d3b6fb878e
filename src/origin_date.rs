//! An answer keeps the `Date` it came with: the origin's, or the one a cached answer was stored
//! with.
//!
//! `Date` is when the origin made the answer (RFC 9110 §6.6.1). A proxy forwards it as it is,
//! and a cache serves it unchanged and says how old the answer is in `Age` (RFC 9111 §4), as
//! nginx and Varnish do. Pingora's HTTP/1 writer stamps the current time on every answer it
//! writes, with no setting to keep the one the answer has (pingora-core 0.9,
//! `prepare_response_header`): a hit stored an hour ago would say it was made now, and say
//! `Age: 3600` too. tollgate owns the client stream under Pingora's session
//! ([`crate::connections::HeaderDeadline`]), so the answer's `Date` is put back there, in the
//! header block on its way out:
//!
//! - `response_filter` arms the stream with the answer's `Date`, written as an IMF-fixdate (29
//!   bytes), when it is not the second Pingora is about to write ([`date_to_keep`]): a hit, or an
//!   origin whose clock or latency puts its `Date` in another second. An answer dated this
//!   second (most of them) costs a comparison.
//! - Pingora then writes the header with its own `Date`, also an IMF-fixdate, and the stream
//!   swaps the 29 bytes of the value as they pass ([`DateRewrite`]): no length changes, so
//!   framing and `Content-Length` are untouched.
//!
//! HTTP/2 answers (`server.h2c`) keep Pingora's `Date`: their header is encoded inside
//! Pingora's session, out of reach.

use pingora_http::ResponseHeader;

/// Bytes of an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`), the only form Pingora writes
/// and the form the answer's date is put in.
pub const IMF_FIXDATE_LEN: usize = 29;

/// `response_filter`: the `Date` to put back in place of the one Pingora will write, as an
/// IMF-fixdate, when `resp` has one that parses and is not the second Pingora writes (the
/// caller hands it to the client stream: `connections::keep_date`).
pub fn date_to_keep(resp: &ResponseHeader) -> Option<[u8; IMF_FIXDATE_LEN]> {
    let date = resp.headers.get(http::header::DATE)?;
    if date == pingora_core::protocols::http::date::get_cached_date() {
        // What Pingora writes anyway.
        return None;
    }
    let date = httpdate::parse_http_date(date.to_str().ok()?).ok()?;
    <[u8; IMF_FIXDATE_LEN]>::try_from(httpdate::fmt_http_date(date).as_bytes()).ok()
}

/// The `Date` value to put in the next answer's header, and how far its writing has gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DateRewrite {
    /// Waiting for the answer's header to be written.
    Armed([u8; IMF_FIXDATE_LEN]),
    /// Found in the header being written: the value starts `start` bytes into what is still
    /// to be written, and its first `done` bytes are out already.
    Writing {
        /// The stored value.
        value: [u8; IMF_FIXDATE_LEN],
        /// Bytes still to be written before the value (or its rest) starts.
        start: usize,
        /// Bytes of the value already written.
        done: usize,
    },
}

/// What to write for the `buf` a writer was asked to write. Either way, report how much the
/// stream took with [`DateRewrite::wrote`].
pub enum Write<'b> {
    /// `buf` itself: nothing to rewrite in it.
    Plain(&'b [u8]),
    /// A copy of the start of `buf` with the stored value in it, to write (or as much of it as
    /// the stream takes) in place of `buf`.
    Rewritten(Vec<u8>),
}

impl DateRewrite {
    /// What to write for `buf`. The rewrite ends (`*this` becomes `None`) once the value is
    /// written, or when `buf` starts an answer whose header has no IMF-fixdate `Date`.
    pub fn write<'b>(this: &mut Option<DateRewrite>, buf: &'b [u8]) -> Write<'b> {
        if let Some(DateRewrite::Armed(value)) = *this {
            // An interim answer (`100 Continue`) is not the one the date belongs to.
            if is_interim(buf) {
                return Write::Plain(buf);
            }
            *this = date_value_at(buf).map(|start| DateRewrite::Writing {
                value,
                start,
                done: 0,
            });
        }
        let Some(DateRewrite::Writing { value, start, done }) = *this else {
            return Write::Plain(buf);
        };
        if start >= buf.len() {
            return Write::Plain(buf);
        }
        let end = buf.len().min(start + IMF_FIXDATE_LEN - done);
        let mut out = buf[..end].to_vec();
        out[start..end].copy_from_slice(&value[done..done + (end - start)]);
        Write::Rewritten(out)
    }

    /// `n` bytes of what [`DateRewrite::write`] gave were written.
    pub fn wrote(this: &mut Option<DateRewrite>, n: usize) {
        if let Some(DateRewrite::Writing { start, done, .. }) = this {
            if n <= *start {
                *start -= n;
            } else {
                *done = (*done + n - *start).min(IMF_FIXDATE_LEN);
                *start = 0;
            }
            if *done == IMF_FIXDATE_LEN {
                *this = None;
            }
        }
    }
}

/// Whether `buf` starts an interim (`1xx`) answer.
fn is_interim(buf: &[u8]) -> bool {
    buf.starts_with(b"HTTP/1.1 1") || buf.starts_with(b"HTTP/1.0 1")
}

/// Where the value of the `Date` field of the header block that starts `buf` begins, if it is
/// an IMF-fixdate (29 bytes, then the line end).
fn date_value_at(buf: &[u8]) -> Option<usize> {
    let head_end = memchr::memmem::find(buf, b"\r\n\r\n").unwrap_or(buf.len());
    let head = &buf[..head_end];
    let mut at = memchr::memmem::find(head, b"\r\n")? + 2;
    while at < head.len() {
        let line_end = memchr::memmem::find(&head[at..], b"\r\n").map_or(head.len(), |e| at + e);
        let line = &head[at..line_end];
        if line.len() > 5 && line[..5].eq_ignore_ascii_case(b"date:") {
            let value = 5 + line[5..].iter().take_while(|&&b| b == b' ').count();
            return (line.len() - value == IMF_FIXDATE_LEN).then_some(at + value);
        }
        at = line_end + 2;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const STORED: &[u8; IMF_FIXDATE_LEN] = b"Sun, 06 Nov 1994 08:49:37 GMT";
    const HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nDate: Mon, 07 Dec 2026 22:40:00 GMT\r\nage: 5\r\n\r\nok";

    /// Writes `buf` through the rewrite, the stream taking at most `step` bytes a call.
    fn write_all(rewrite: &mut Option<DateRewrite>, buf: &[u8], step: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut rest = buf;
        while !rest.is_empty() {
            let n = match DateRewrite::write(rewrite, rest) {
                Write::Plain(b) => {
                    let n = b.len().min(step);
                    out.extend_from_slice(&b[..n]);
                    n
                }
                Write::Rewritten(b) => {
                    let n = b.len().min(step);
                    out.extend_from_slice(&b[..n]);
                    n
                }
            };
            DateRewrite::wrote(rewrite, n);
            rest = &rest[n..];
        }
        out
    }

    #[test]
    fn the_stored_date_replaces_pingoras_whatever_the_write_sizes() {
        let want = String::from_utf8_lossy(HEAD).replace(
            "Mon, 07 Dec 2026 22:40:00 GMT",
            std::str::from_utf8(STORED).unwrap(),
        );
        for step in 1..=HEAD.len() {
            let mut rewrite = Some(DateRewrite::Armed(*STORED));
            let out = write_all(&mut rewrite, HEAD, step);
            assert_eq!(String::from_utf8_lossy(&out), want, "step {step}");
            assert_eq!(rewrite, None, "step {step}");
            // The next answer on the connection is left alone.
            assert_eq!(write_all(&mut rewrite, HEAD, step), HEAD);
        }
    }

    #[test]
    fn answers_without_a_fixdate_date_and_interim_answers_are_left_alone() {
        for head in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ndate: Sunday, 06-Nov-94 08:49:37 GMT\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx-date: Mon, 07 Dec 2026 22:40:00 GMT\r\n\r\n",
            b"HTTP/1.1 200 OK\r\n\r\ndate: Mon, 07 Dec 2026 22:40:00 GMT\r\n\r\n",
        ] {
            let mut rewrite = Some(DateRewrite::Armed(*STORED));
            assert_eq!(write_all(&mut rewrite, head, 7), head);
            assert_eq!(rewrite, None);
        }
        let mut rewrite = Some(DateRewrite::Armed(*STORED));
        let interim = b"HTTP/1.1 100 Continue\r\ndate: Mon, 07 Dec 2026 22:40:00 GMT\r\n\r\n";
        assert_eq!(write_all(&mut rewrite, interim, 64), interim);
        assert_eq!(rewrite, Some(DateRewrite::Armed(*STORED)), "still armed");
        let out = write_all(&mut rewrite, HEAD, 64);
        assert!(String::from_utf8_lossy(&out).contains("Date: Sun, 06 Nov 1994 08:49:37 GMT"));
    }
}
