//! The tokens an upstream answer used, read from its body as the chunks pass to the client: the
//! `usage` object of a JSON answer, or the usage events of an SSE stream. Nothing is held back
//! and nothing is copied on the way: a [`UsageReader`] keeps references to the chunks that hold
//! the body's last `window` bytes (and, for SSE, reads the first event as it passes), and reads
//! them once, at the end.
//!
//! - A JSON answer carries its `usage` near the end (OpenAI, Anthropic). At the end the reader
//!   reads the last `window` bytes backward from the closing brace, member by member, to the
//!   last top-level `"usage"` key, taking the counts of its object as it crosses it
//!   ([`backward`]; a value it does not read plainly is parsed forward): the cost is that of
//!   the bytes after the key, whatever the size of the answer, and a `"usage"` nested in a
//!   message or a tool schema is never taken for it. (Parsing a 2 KB answer whole with
//!   serde_json, even skipping what it does not keep, cost about 3 µs; this costs about
//!   0.33 µs: `cargo bench --bench usage`.)
//! - An SSE stream carries its counts in its first event (Anthropic's `message_start`) and its
//!   last ones (OpenAI's usage chunk, Anthropic's final `message_delta`, the Responses API's
//!   `response.completed`). The first event is read line by line as it passes; the last
//!   `window` bytes are searched at the end for the lines that mention the usage key, from the
//!   end, until both counts are found. Only `data:` lines whose usage key has a value other than
//!   `null` are parsed. Counts are cumulative: the latest value of each count wins. (Reading
//!   every line as it passed cost 9-12 µs per 200-event stream; this costs 4-7 µs, most of it
//!   the per-chunk bookkeeping of a stream fed one event per chunk.)
//!
//! Counts are whatever the upstream says; this module only finds them.

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::Value;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use super::{find_byte, skip_ws, string_end, value_end};
use backward::TopUsage;

mod backward;

/// Tokens one answer used.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Tokens read by the model: the prompt, cached parts included.
    pub input: u64,
    /// Tokens written by the model.
    pub output: u64,
}

impl Usage {
    /// Input and output together (saturating: counts come from the upstream).
    pub fn total(&self) -> u64 {
        self.input.saturating_add(self.output)
    }
}

/// Where the counts are in an answer.
///
/// A count that is absent while the other is present reads as 0 (an embeddings answer has no
/// output); an answer where neither is present has no usage at all ([`UsageReader::finish`] is
/// `None`). Counts may be JSON integers, floats (`12.0`, truncated) or strings of digits;
/// anything else (negative, `null`, an object) is absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UsageShape {
    /// The well-known shapes, in a JSON answer or an SSE stream:
    /// - OpenAI Chat Completions: `usage.prompt_tokens` / `usage.completion_tokens`; streamed,
    ///   the last chunk before `[DONE]` when the request set `stream_options.include_usage`.
    /// - OpenAI Responses: `usage.input_tokens` / `usage.output_tokens`; streamed, the
    ///   `response.completed` event's `response.usage`.
    /// - Anthropic Messages: `usage.input_tokens` / `usage.output_tokens`, plus
    ///   `cache_creation_input_tokens` and `cache_read_input_tokens` into input (Anthropic counts
    ///   them apart, OpenAI inside `prompt_tokens`); streamed, `message_start`'s
    ///   `message.usage` and then `message_delta`'s `usage`, whose counts are cumulative.
    ///
    /// A usage object with only `total_tokens` counts it as input.
    Auto,
    /// Dot-separated JSON paths from the top of the answer (or of each SSE event) to each count,
    /// e.g. `usage.in` and `meta.billing.tokens_out`. There is no `total` path: a provider that
    /// reports only a total can name it as `input` (with an `output` path it never sends).
    /// Keys are matched literally (no escapes); see [`UsageShape::path_problem`].
    /// `Arc<str>` so that a shape compiled once from the config is cloned per answer for free.
    Paths {
        /// The path to the input count.
        input: Arc<str>,
        /// The path to the output count.
        output: Arc<str>,
    },
}

impl UsageShape {
    /// Why `path` cannot be a [`UsageShape::Paths`] path, for config validation: it must be one
    /// or more non-empty keys joined by `.`, without `"` or `\`.
    pub fn path_problem(path: &str) -> Option<&'static str> {
        if path.split('.').any(str::is_empty) {
            Some("must be dot-separated keys, none of them empty (e.g. `usage.input_tokens`)")
        } else if path.contains(['"', '\\']) {
            Some("may not contain `\"` or `\\`")
        } else {
            None
        }
    }
}

/// How an answer's body is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// One JSON document.
    Json,
    /// A `text/event-stream` of events.
    Sse,
}

/// The framing of a response from its `Content-Type`: `text/event-stream` is [`BodyKind::Sse`],
/// `application/json` or any `+json` type is [`BodyKind::Json`], anything else (or no header) is
/// `None`: no usage is read from it. Parameters (`; charset=utf-8`) and case do not matter.
pub fn body_kind(content_type: Option<&[u8]>) -> Option<BodyKind> {
    // The two types every provider sends, as they send them: one comparison each.
    match content_type? {
        b"application/json" => return Some(BodyKind::Json),
        b"text/event-stream" => return Some(BodyKind::Sse),
        _ => {}
    }
    // Bytes, as the header holds them (no UTF-8 check on every answer).
    let essence = content_type?.split(|&b| b == b';').next()?.trim_ascii();
    if essence.eq_ignore_ascii_case(b"text/event-stream") {
        return Some(BodyKind::Sse);
    }
    let slash = memchr::memchr(b'/', essence)?;
    let (kind, sub) = (&essence[..slash], &essence[slash + 1..]);
    let json = sub.eq_ignore_ascii_case(b"json")
        || (sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case(b"+json"));
    (json && !kind.is_empty()).then_some(BodyKind::Json)
}

/// Where [`UsageShape::Auto`] looks in an SSE event: the usage object at the top (OpenAI
/// chunks, Anthropic `message_delta`), in `message_start`'s message, and in a Responses API
/// event's response.
const AUTO_PATHS: [&str; 3] = ["usage", "message.usage", "response.usage"];

/// The key of the usage object: at the top of a JSON answer, and the mention that makes an SSE
/// line worth parsing, under [`UsageShape::Auto`].
const AUTO_KEY: &str = "usage";

/// Reads usage from a response body fed chunk by chunk.
///
/// Holds at most a few `window`s of bytes, and copies almost none of them: the chunks that
/// cover the body's last `window` bytes are kept by reference (a [`Bytes`] clone), and read
/// once, at the end. An SSE stream's first event (up to its first `data:` line, at most
/// `window / 8` bytes) is also read line by line as it passes (Anthropic's `message_start`
/// carries the input count there), holding at most one line of `window` bytes (a longer line
/// is skipped, not kept). Feeding never fails and never
/// holds a chunk back. Chunk boundaries may fall anywhere (inside a key, a number or a UTF-8
/// sequence): the answer is the same as for the body in one piece.
#[derive(Debug)]
pub struct UsageReader {
    kind: BodyKind,
    shape: UsageShape,
    window: usize,
    /// SSE: the head is the stream's lines up to its first `data:` line (the first event:
    /// Anthropic's `message_start` carries the input count), and at most this many bytes.
    head: usize,
    /// SSE: bytes of the head read so far.
    head_read: usize,
    /// SSE: the head is over (JSON has none): later chunks go to `tail` only.
    in_tail: bool,
    /// SSE, in the head: the start of the current line.
    line: Vec<u8>,
    /// SSE, in the head: the current line is over `window` bytes and is being skipped.
    skipping: bool,
    /// SSE: the counts the head's lines reported.
    found: Found,
    /// The chunks after the head that hold its last `window` bytes.
    tail: Tail,
}

impl UsageReader {
    /// A reader for one body. `window` bounds what it holds (16 KiB suits every known provider:
    /// it is the size of a JSON tail that surely holds `usage`, and of the longest SSE line
    /// that may carry it).
    pub fn new(kind: BodyKind, shape: UsageShape, window: usize) -> UsageReader {
        UsageReader {
            kind,
            shape,
            window,
            head: if kind == BodyKind::Sse { window / 8 } else { 0 },
            head_read: 0,
            in_tail: kind == BodyKind::Json,
            line: Vec::new(),
            skipping: false,
            found: Found::default(),
            tail: Tail::default(),
        }
    }

    /// Reads the next chunk of the body.
    pub fn feed(&mut self, chunk: &Bytes) {
        if self.in_tail {
            self.tail.keep(chunk.clone(), self.window);
            return;
        }
        let used = self.feed_head(chunk);
        if used < chunk.len() {
            self.tail.keep(chunk.slice(used..), self.window);
        }
    }

    /// The bytes the reader holds (kept chunks and the current head line), for tests.
    #[cfg(test)]
    fn held(&self) -> usize {
        self.line.capacity() + self.tail.len
    }

    /// At the end of the body: the usage found, if any. Call it once.
    ///
    /// A JSON answer must end with its object's closing brace (whitespace may follow): an answer
    /// cut short, or with text after it, has no usage. An SSE stream's last line counts even
    /// without its line end: a stream cut short still reports the usage events it carried.
    pub fn finish(&mut self) -> Option<Usage> {
        let found = match self.kind {
            BodyKind::Json => {
                let view = self.tail.view(self.tail.count(), self.window);
                json_counts(&self.shape, &view.bytes)
            }
            BodyKind::Sse => {
                if !self.skipping && !self.line.is_empty() {
                    sse_line(&self.shape, &mut self.found, &self.line);
                }
                self.line = Vec::new();
                self.skipping = false;
                // The usage event is usually in the last chunk or the one before (`[DONE]` may
                // come alone): the whole tail is put together (one copy of at most `window`
                // bytes) only when those do not hold every count.
                let mut tail = Found::default();
                for chunks in [1, 2] {
                    let view = self.tail.view(chunks, self.window);
                    tail = sse_counts_backward(&self.shape, &view.bytes, !view.starts_line);
                    if tail.complete() || chunks >= self.tail.count() {
                        break;
                    }
                }
                if !tail.complete() && self.tail.count() > 2 {
                    // Forward: the vectorised search finds the few lines that mention a usage
                    // in one pass (a backward search has no such fast path).
                    let view = self.tail.view(usize::MAX, self.window);
                    tail = sse_counts_forward(&self.shape, &view.bytes, !view.starts_line);
                }
                let mut found = self.found;
                found.update(tail);
                found
            }
        };
        self.tail = Tail::default();
        found.usage()
    }

    /// Reads the lines of an SSE stream's head in `chunk`; returns how many bytes of the chunk
    /// it used (all of them while the head lasts; up to the line end that ends it).
    fn feed_head(&mut self, chunk: &[u8]) -> usize {
        let mut rest = chunk;
        while let Some(nl) = find_byte(rest, b'\n') {
            let part = &rest[..nl];
            rest = &rest[nl + 1..];
            // Whether this line was the stream's first `data:` line.
            let mut data = false;
            if self.skipping {
                self.skipping = false;
            } else if self.line.is_empty() {
                // The whole line is in this chunk: read it in place.
                if part.len() <= self.window {
                    sse_line(&self.shape, &mut self.found, part);
                    data = part.starts_with(b"data:");
                }
            } else {
                if self.line.len() + part.len() <= self.window {
                    push_within(&mut self.line, part, self.window);
                    sse_line(&self.shape, &mut self.found, &self.line);
                    data = self.line.starts_with(b"data:");
                }
                self.line.clear();
            }
            let used = chunk.len() - rest.len();
            if data || self.head_read + used >= self.head {
                // The head ends at a line end: the tail starts with a whole line.
                self.in_tail = true;
                self.line = Vec::new();
                self.head_read += used;
                return used;
            }
        }
        self.head_read += chunk.len();
        if rest.is_empty() || self.skipping {
            return chunk.len();
        }
        if self.line.len() + rest.len() <= self.window {
            push_within(&mut self.line, rest, self.window);
        } else {
            self.line.clear();
            self.skipping = true;
        }
        chunk.len()
    }
}

/// Appends `bytes` to `buf`, whose length stays within `cap`: its capacity doubles as a `Vec`'s
/// would (a few allocations per body, not one per chunk) but never grows past `cap`.
fn push_within(buf: &mut Vec<u8>, bytes: &[u8], cap: usize) {
    let need = buf.len() + bytes.len();
    if need > buf.capacity() {
        let target = need.max(2 * buf.capacity()).min(cap);
        buf.reserve_exact(target - buf.len());
    }
    buf.extend_from_slice(bytes);
}

/// The last chunks of a body, kept by reference: enough of them to hold its last `window`
/// bytes, and no more. The newest chunk is held whole; an older one over twice what the window
/// still needs of it is cut to that (copied), so what is held beyond the newest chunk stays
/// within two windows. The newest chunk has a place of its own, so a body of one chunk
/// allocates nothing here.
#[derive(Debug, Default)]
struct Tail {
    /// The older chunks, oldest first.
    older: VecDeque<Piece>,
    /// The newest chunk.
    last: Option<Piece>,
    /// The bytes held.
    len: usize,
    /// The last byte kept so far, held or not.
    last_byte: Option<u8>,
}

/// A kept chunk, and the byte of the body just before it (`None`: it starts the tail, which
/// starts a line).
#[derive(Debug)]
struct Piece {
    bytes: Bytes,
    before: Option<u8>,
}

/// Bytes of the tail, and whether they start a line.
struct View<'t> {
    bytes: Cow<'t, [u8]>,
    starts_line: bool,
}

impl Tail {
    /// Keeps `chunk`, and drops the oldest chunks the last `window` bytes no longer need.
    fn keep(&mut self, chunk: Bytes, window: usize) {
        let Some(&end) = chunk.last() else {
            return;
        };
        let before = self.last_byte.replace(end);
        if window == 0 {
            return;
        }
        self.len += chunk.len();
        let newest = chunk.len();
        let piece = Piece {
            bytes: chunk,
            before,
        };
        if let Some(previous) = self.last.replace(piece) {
            // No longer the newest: of a large chunk only the end the window may need is
            // kept, copied (the newest is held whole, uncopied: at the end of the body it is
            // read in place, whatever its size).
            let need = window.saturating_sub(newest);
            let b = &previous.bytes;
            if need == 0 {
                self.len -= b.len();
            } else if b.len() > 2 * need {
                self.len -= b.len() - need;
                let from = b.len() - need;
                self.older.push_back(Piece {
                    bytes: Bytes::copy_from_slice(&b[from..]),
                    before: Some(b[from - 1]),
                });
            } else {
                self.older.push_back(previous);
            }
        }
        while let Some(oldest) = self.older.front() {
            if self.len - oldest.bytes.len() < window {
                break;
            }
            self.len -= oldest.bytes.len();
            self.older.pop_front();
        }
    }

    /// How many chunks are held.
    fn count(&self) -> usize {
        self.older.len() + usize::from(self.last.is_some())
    }

    /// The last `window` bytes of the newest `chunks` chunks: borrowed when that is one chunk,
    /// copied together otherwise.
    fn view(&self, chunks: usize, window: usize) -> View<'_> {
        let Some(last) = self.last.as_ref() else {
            return View {
                bytes: Cow::Borrowed(&[]),
                starts_line: true,
            };
        };
        let older = chunks.saturating_sub(1).min(self.older.len());
        let pieces = self.older.range(self.older.len() - older..).chain([last]);
        let len: usize = pieces.clone().map(|p| p.bytes.len()).sum();
        let mut skip = len.saturating_sub(window);
        // The byte before the view: in its first piece when that is cut, else before it.
        let mut starts_line = true;
        for p in pieces.clone() {
            if skip < p.bytes.len() {
                let before = if skip > 0 {
                    Some(p.bytes[skip - 1])
                } else {
                    p.before
                };
                starts_line = before.is_none_or(|b| b == b'\n');
                break;
            }
            skip -= p.bytes.len();
        }
        if older == 0 {
            let b = &last.bytes;
            return View {
                bytes: Cow::Borrowed(&b[b.len().saturating_sub(window)..]),
                starts_line,
            };
        }
        let mut skip = len.saturating_sub(window);
        let mut out = Vec::with_capacity(len - skip);
        for p in pieces {
            let n = skip.min(p.bytes.len());
            skip -= n;
            out.extend_from_slice(&p.bytes[n..]);
        }
        View {
            bytes: Cow::Owned(out),
            starts_line,
        }
    }
}

/// Counts found so far; `None` is "not seen", which differs from 0 only until the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Found {
    input: Option<u64>,
    output: Option<u64>,
}

impl Found {
    /// Takes the counts `newer` has (the latest value wins), keeps the others.
    fn update(&mut self, newer: Found) {
        self.input = newer.input.or(self.input);
        self.output = newer.output.or(self.output);
    }

    /// Whether both counts were seen.
    fn complete(&self) -> bool {
        self.input.is_some() && self.output.is_some()
    }

    /// A usage if at least one count was seen; the missing one is 0.
    fn usage(self) -> Option<Usage> {
        (self.input.is_some() || self.output.is_some()).then(|| Usage {
            input: self.input.unwrap_or(0),
            output: self.output.unwrap_or(0),
        })
    }
}

/// A count: a non-negative integer, a float (truncated) or a string of digits.
fn count(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        }),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// The counts of a JSON answer (or the tail of one): the value of its top-level usage key(s).
fn json_counts(shape: &UsageShape, body: &[u8]) -> Found {
    match shape {
        UsageShape::Auto => match backward::top_usage(body) {
            Some((TopUsage::Plain(found), _, _)) => found,
            Some((TopUsage::Elsewhere(start), _, _)) => usage_object_at(&body[start..])
                .and_then(|(found, _)| found)
                .unwrap_or_default(),
            None => Found::default(),
        },
        UsageShape::Paths { input, output } => {
            let at = |path: &str| {
                let value = top_level_value(body, first_key(path))?;
                read_document(value, &[rest(path, 1)], false)?.input
            };
            Found {
                input: at(input),
                output: at(output),
            }
        }
    }
}

/// The counts in one whole JSON document (an SSE event's data, or a usage value cut from an
/// answer): under `auto`, the usage objects at `paths`; otherwise the counts at `paths[0]`
/// (input) and `paths[1]` (output). `None` if it does not parse.
fn read_document(json: &[u8], paths: &[&str], auto: bool) -> Option<Found> {
    let mut found = Found::default();
    let mut de = serde_json::Deserializer::from_slice(json);
    Seek {
        paths,
        auto,
        depth: 0,
        active: (1u32 << paths.len()) - 1,
        found: &mut found,
    }
    .deserialize(&mut de)
    .ok()?;
    de.end().ok()?;
    Some(found)
}

/// The value of the last `"key"` at the top level of the JSON object that ends `s` (only
/// whitespace may follow its closing brace); keys nested deeper do not count.
///
/// It scans backward from the end, so it reads only the bytes after that key (a usage object
/// and a few fields, whatever the size of the answer), and `s` may be the tail of a body whose
/// start was cut. Backward works because every unescaped quote opens or closes a string, read
/// in either direction, and a quote is escaped when an odd run of backslashes comes before it.
fn top_level_value<'s>(s: &'s [u8], key: &str) -> Option<&'s [u8]> {
    let start = top_level_start(s, key)?;
    value_end(s, start).map(|end| &s[start..end])
}

/// Where the value of [`top_level_value`] starts (its end not looked for: a reader that
/// parses the value finds it on the way).
fn top_level_start(s: &[u8], key: &str) -> Option<usize> {
    let k = key.as_bytes();
    let mut i = s.len();
    while i > 0 && matches!(s[i - 1], b' ' | b'\t' | b'\n' | b'\r') {
        i -= 1;
    }
    if i == 0 || s[i - 1] != b'}' {
        return None;
    }
    let mut depth = 0usize;
    // Byte by byte: the bytes after the key are a small usage object, dense with quotes and
    // braces, where a vectorised search per token costs more than it skips. A string is
    // crossed by its own tight loop, to its opening quote.
    while i > 0 {
        i -= 1;
        match s[i] {
            b'"' => {
                let close = i;
                loop {
                    if i == 0 {
                        return None;
                    }
                    i -= 1;
                    if s[i] == b'"' && !escaped(s, i) {
                        break;
                    }
                }
                if depth == 1 && &s[i + 1..close] == k {
                    let colon = skip_ws(s, close + 1);
                    if s.get(colon) == Some(&b':') {
                        let start = skip_ws(s, colon + 1);
                        return (start < s.len()).then_some(start);
                    }
                }
            }
            b'}' | b']' => depth += 1,
            b'{' | b'[' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    // The start of the object: the key is not there.
                    return None;
                }
            }
            _ => {}
        }
    }
    None
}

/// Whether the quote at `i` is escaped: an odd run of backslashes before it.
fn escaped(s: &[u8], i: usize) -> bool {
    s[..i].iter().rev().take_while(|&&b| b == b'\\').count() % 2 == 1
}

/// The first key of a dotted path.
fn first_key(path: &str) -> &str {
    path.split('.').next().unwrap_or(path)
}

/// What is left of a dotted path after its first `depth` keys (`""` when nothing is).
fn rest(path: &str, depth: usize) -> &str {
    let mut rest = path;
    for _ in 0..depth {
        rest = rest.split_once('.').map_or("", |(_, tail)| tail);
    }
    rest
}

/// The `depth`-th key of a dotted path (`None` past its end; `""` has no keys).
fn segment(path: &str, depth: usize) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    path.split('.').nth(depth)
}

/// The value at the dotted `path` below `v` (`v` itself for an empty path).
fn walk<'v>(mut v: &'v Value, path: &str) -> Option<&'v Value> {
    if !path.is_empty() {
        for key in path.split('.') {
            v = v.get(key)?;
        }
    }
    Some(v)
}

/// Reads one SSE line (without its `\n`): a `data:` line that mentions a usage key with a value
/// other than `null` is parsed, and its counts update `found`.
fn sse_line(shape: &UsageShape, found: &mut Found, line: &[u8]) {
    if let Some(newer) = sse_counts(shape, line) {
        found.update(newer);
    }
}

/// The counts of the SSE lines in `view` (the end of a stream), the latest value of each
/// winning, found from the end: only lines that hold a usage key are looked at, and the scan
/// stops once both counts are found. `cut`: `view` starts inside a line, which is not read.
fn sse_counts_backward(shape: &UsageShape, view: &[u8], cut: bool) -> Found {
    let mut found = Found::default();
    let mut end = view.len();
    while let Some(at) = last_mention(shape, &view[..end]) {
        let start = memchr::memrchr(b'\n', &view[..at]).map_or(0, |i| i + 1);
        if start == 0 && cut {
            break;
        }
        let stop = find_byte(&view[at..end], b'\n').map_or(end, |i| at + i);
        if let Some(newer) = sse_counts(shape, &view[start..stop]) {
            // Older lines only fill what newer ones did not say.
            found.input = found.input.or(newer.input);
            found.output = found.output.or(newer.output);
            if found.complete() {
                break;
            }
        }
        if start == 0 {
            break;
        }
        end = start - 1;
    }
    found
}

/// The counts of the SSE lines in `view` (the end of a stream), read in order, the latest value
/// of each winning: the same answer as [`sse_counts_backward`], for a view where that one
/// would not stop early. `cut`: `view` starts inside a line, which is not read.
fn sse_counts_forward(shape: &UsageShape, view: &[u8], cut: bool) -> Found {
    let mut found = Found::default();
    let mut from = if cut {
        find_byte(view, b'\n').map_or(view.len(), |i| i + 1)
    } else {
        0
    };
    while let Some(at) = first_mention(shape, &view[from..]).map(|i| from + i) {
        // `from` starts a line, so the line of `at` starts at or after it.
        let start = memchr::memrchr(b'\n', &view[from..at]).map_or(from, |i| from + i + 1);
        let stop = find_byte(&view[at..], b'\n').map_or(view.len(), |i| at + i);
        if let Some(newer) = sse_counts(shape, &view[start..stop]) {
            found.update(newer);
        }
        from = (stop + 1).min(view.len());
    }
    found
}

/// Where the first mention of the shape's usage key(s) in `hay` starts (a searcher built once
/// for `usage`).
fn first_mention(shape: &UsageShape, hay: &[u8]) -> Option<usize> {
    match shape {
        UsageShape::Auto => find_key(hay, AUTO_KEY.as_bytes()),
        UsageShape::Paths { input, output } => {
            let a = memchr::memmem::find(hay, first_key(input).as_bytes());
            let b = memchr::memmem::find(hay, first_key(output).as_bytes());
            match (a, b) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        }
    }
}

/// Where the last mention of the shape's usage key(s) in `hay` starts (a searcher built once
/// for `usage`).
fn last_mention(shape: &UsageShape, hay: &[u8]) -> Option<usize> {
    static USAGE: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(AUTO_KEY.as_bytes()));
    match shape {
        UsageShape::Auto => USAGE.rfind(hay),
        UsageShape::Paths { input, output } => {
            let a = memchr::memmem::rfind(hay, first_key(input).as_bytes());
            let b = memchr::memmem::rfind(hay, first_key(output).as_bytes());
            a.max(b)
        }
    }
}

/// The counts one SSE line reports, if it is a `data:` line whose JSON holds a usage.
fn sse_counts(shape: &UsageShape, line: &[u8]) -> Option<Found> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let data = line.strip_prefix(b"data:")?;
    let data = data.strip_prefix(b" ").unwrap_or(data);
    match shape {
        UsageShape::Auto => {
            // Most events never mention a usage: one vectorised search says so.
            let first = find_key(data, AUTO_KEY.as_bytes())?;
            match top_level_usage(data, first) {
                Some(found) => found,
                None if mentions(data, AUTO_KEY) => read_document(data, &AUTO_PATHS, true),
                None => None,
            }
        }
        UsageShape::Paths { input, output } => {
            let (a, b) = (first_key(input), first_key(output));
            if mentions(data, a) || (b != a && mentions(data, b)) {
                read_document(data, &[input, output], false)
            } else {
                None
            }
        }
    }
}

/// The usage object at the top of an SSE event's data when it is the event's only mention of
/// `usage` (an OpenAI usage chunk, Anthropic's `message_delta`): found from the end without
/// parsing the rest of the event, as in a JSON answer. `None` sends the event to the full
/// parse, which also finds `message.usage` and `response.usage`.
/// `first`: where the event's first mention of `usage` starts.
fn top_level_usage(data: &[u8], first: usize) -> Option<Option<Found>> {
    let (found, open, end) = backward::top_usage(data)?;
    // The key is the last mention before its value: the only one if it is also the first.
    if first != open + 1 {
        return None;
    }
    let found = match found {
        TopUsage::Plain(found) => Some(found),
        TopUsage::Elsewhere(start) => usage_object_at(&data[start..])?.0,
    };
    find_key(&data[end..], AUTO_KEY.as_bytes())
        .is_none()
        .then_some(found)
}

/// Whether `json` has a `"key":`, at any depth, whose value is not `null`: a scan, much cheaper
/// than the parse it saves.
fn mentions(json: &[u8], key: &str) -> bool {
    let mut from = 0;
    while let Some((quote, start)) = next_key_value(json, key, from) {
        if !json[start..].starts_with(b"null") {
            return true;
        }
        from = quote + 1;
    }
    false
}

/// Where `key` first occurs in `hay`. The searcher for `usage`, looked for in every SSE
/// line, is built once (building one costs about as much as searching a line).
fn find_key(hay: &[u8], key: &[u8]) -> Option<usize> {
    static USAGE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(AUTO_KEY.as_bytes()));
    if key == AUTO_KEY.as_bytes() {
        USAGE.find(hay)
    } else {
        memchr::memmem::find(hay, key)
    }
}

/// The first `"key"` whose opening quote is at or after `from` and that is an object key
/// (unescaped opening quote, then a colon): the index of its opening quote and of its value.
fn next_key_value(s: &[u8], key: &str, mut from: usize) -> Option<(usize, usize)> {
    let k = key.as_bytes();
    if k.is_empty() {
        return None;
    }
    while from + k.len() + 2 <= s.len() {
        // The whole key at once (a vectorised substring search): its first letter alone is
        // too common in text (`u` of `usage`) to be a cheap anchor.
        let i = from + 1 + find_key(&s[from + 1..], k)?;
        let quote = i - 1;
        let close = i + k.len();
        if s[quote] == b'"'
            && s.get(close) == Some(&b'"')
            && &s[i..close] == k
            && !escaped(s, quote)
        {
            let colon = skip_ws(s, close + 1);
            if s.get(colon) == Some(&b':') {
                return Some((quote, skip_ws(s, colon + 1)));
            }
        }
        from = i;
    }
    None
}

/// A serde seed that walks one JSON document once, builds nothing but what lies at the given
/// dotted paths and skips the rest. Under `auto` each path leads to a usage object in one of the
/// [`UsageShape::Auto`] shapes; otherwise `paths[0]` leads to the input count and `paths[1]` to
/// the output count. With duplicate keys the last wins. Up to 31 paths.
struct Seek<'p, 'f> {
    paths: &'p [&'p str],
    auto: bool,
    /// How many keys of each path have been matched on the way here.
    depth: usize,
    /// Bit i: `paths[i]` matched every key so far.
    active: u32,
    found: &'f mut Found,
}

/// The indices of the set bits of `mask`.
fn bits(mut mask: u32) -> impl Iterator<Item = usize> {
    std::iter::from_fn(move || {
        let i = mask.trailing_zeros();
        mask &= mask.wrapping_sub(1);
        (i < 32).then_some(i as usize)
    })
}

impl<'de> DeserializeSeed<'de> for Seek<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        let ends_here = bits(self.active).any(|i| segment(self.paths[i], self.depth).is_none());
        if !ends_here {
            return d.deserialize_any(self);
        }
        if self.auto {
            let counts = d.deserialize_any(AutoCounts)?;
            self.found.update(counts);
            return Ok(());
        }
        // A count, or a value on the way to a longer path's count.
        let v = Value::deserialize(d)?;
        for i in bits(self.active) {
            if let Some(n) = walk(&v, rest(self.paths[i], self.depth)).and_then(count) {
                match i {
                    0 => self.found.input = Some(n),
                    _ => self.found.output = Some(n),
                }
            }
        }
        Ok(())
    }
}

impl<'de> Visitor<'de> for Seek<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Seek {
            paths,
            auto,
            depth,
            active,
            found,
        } = self;
        let key = |key: &str| {
            bits(active)
                .filter(|&i| segment(paths[i], depth) == Some(key))
                .fold(0u32, |m, i| m | (1 << i))
        };
        while let Some(matched) = map.next_key_seed(KeySeed(key))? {
            if matched == 0 {
                map.next_value::<IgnoredAny>()?;
            } else {
                map.next_value_seed(Seek {
                    paths,
                    auto,
                    depth: depth + 1,
                    active: matched,
                    found: &mut *found,
                })?;
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<(), A::Error> {
        skip_seq(seq)
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        Ok(())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        Ok(())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        Ok(())
    }
}

fn skip_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

/// The fields of a usage object that [`UsageShape::Auto`] reads.
const AUTO_FIELDS: [&str; 7] = [
    "prompt_tokens",
    "completion_tokens",
    "input_tokens",
    "output_tokens",
    "cache_creation_input_tokens",
    "cache_read_input_tokens",
    "total_tokens",
];

/// The counts of a usage object from its [`AUTO_FIELDS`] (in that order).
fn auto_found(n: [Option<u64>; AUTO_FIELDS.len()]) -> Found {
    let [prompt, completion, input, output, cache_creation, cache_read, total] = n;
    // Anthropic counts cached prompt tokens apart from input_tokens; OpenAI inside them.
    let mut input = prompt.or_else(|| {
        input.map(|i| {
            i.saturating_add(cache_creation.unwrap_or(0))
                .saturating_add(cache_read.unwrap_or(0))
        })
    });
    let output = completion.or(output);
    if input.is_none() && output.is_none() {
        input = total;
    }
    Found { input, output }
}

/// The counts of the usage object that starts `s` (under [`UsageShape::Auto`]; text may follow
/// it), and where it ends: read by [`plain_usage_at`] when it is plain, else parsed. `None` when
/// no whole value starts there; `Some((None, _))` when it does not parse.
fn usage_object_at(s: &[u8]) -> Option<(Option<Found>, usize)> {
    if let Some((found, end)) = plain_usage_at(s) {
        return Some((Some(found), end));
    }
    let end = value_end(s, 0)?;
    Some((read_document(&s[..end], &[""], true), end))
}

/// [`plain_usage_at`] for a slice that is the object and nothing else.
#[cfg(test)]
fn plain_usage(obj: &[u8]) -> Option<Found> {
    let (found, end) = plain_usage_at(obj)?;
    (skip_ws(obj, end) == obj.len()).then_some(found)
}

/// The counts of the usage object that starts `s`, as every provider sends it: keys without
/// escapes, each count a plain integer, and where the object ends. Members are stepped over by
/// their extent, never parsed, which is several times cheaper than the parse. `None` for
/// anything else (a count that is a string, a float, `null`, a key with an escape, text that
/// is not an object): [`read_document`] then decides, so the answer is the parse's. Nested
/// members (`*_details`) are not validated, only skipped.
fn plain_usage_at(obj: &[u8]) -> Option<(Found, usize)> {
    let mut n = [None; AUTO_FIELDS.len()];
    let mut i = skip_ws(obj, 0);
    if obj.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(obj, i + 1);
    if obj.get(i) == Some(&b'}') {
        return Some((auto_found(n), i + 1));
    }
    loop {
        if obj.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(obj, i)?;
        let key = &obj[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = skip_ws(obj, key_end);
        if obj.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(obj, i + 1);
        let end = value_end(obj, i)?;
        let value = &obj[i..end];
        plain_member(&mut n, key, value, true)?;
        i = skip_ws(obj, end);
        match obj.get(i) {
            Some(b',') => i = skip_ws(obj, i + 1),
            Some(b'}') => return Some((auto_found(n), i + 1)),
            _ => return None,
        }
    }
}

/// One member of a plain usage object: a count, read into `n` (a plain integer; `replace`: over
/// one read before, as when reading forward, where the last of duplicate keys wins), or another
/// member whose value is a string, an object, an array or a scalar. `None` for anything else.
fn plain_member(
    n: &mut [Option<u64>; AUTO_FIELDS.len()],
    key: &[u8],
    value: &[u8],
    replace: bool,
) -> Option<()> {
    match auto_field(key) {
        Some(field) => {
            let count = plain_integer(value)?;
            if replace || n[field].is_none() {
                n[field] = Some(count);
            }
        }
        None if matches!(value.first(), Some(b'"' | b'{' | b'[')) => {}
        None => {
            let scalar = matches!(value, b"true" | b"false" | b"null")
                || value
                    .iter()
                    .all(|b| matches!(b, b'0'..=b'9' | b'-' | b'+' | b'.' | b'e' | b'E'));
            if !scalar {
                return None;
            }
        }
    }
    Some(())
}

/// The index of `key` in [`AUTO_FIELDS`] (a `match`: the compiler compares lengths first).
fn auto_field(key: &[u8]) -> Option<usize> {
    let i = match key {
        b"prompt_tokens" => 0,
        b"completion_tokens" => 1,
        b"input_tokens" => 2,
        b"output_tokens" => 3,
        b"cache_creation_input_tokens" => 4,
        b"cache_read_input_tokens" => 5,
        b"total_tokens" => 6,
        _ => return None,
    };
    debug_assert_eq!(AUTO_FIELDS[i].as_bytes(), key);
    Some(i)
}

/// A JSON integer as a count: digits only, no leading zero, within `u64`.
fn plain_integer(v: &[u8]) -> Option<u64> {
    if v.is_empty() || (v.len() > 1 && v[0] == b'0') {
        return None;
    }
    v.iter().try_fold(0u64, |n, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

/// A usage object in one of the [`UsageShape::Auto`] shapes, read into counts without building
/// the object (its `*_details` members are skipped); anything but an object has no counts.
struct AutoCounts;

impl<'de> Visitor<'de> for AutoCounts {
    type Value = Found;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a usage object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Found, A::Error> {
        let mut n = [None; AUTO_FIELDS.len()];
        let field = |key: &str| AUTO_FIELDS.iter().position(|f| *f == key);
        while let Some(index) = map.next_key_seed(KeySeed(field))? {
            match index {
                Some(i) => n[i] = count(&map.next_value::<Value>()?),
                None => drop(map.next_value::<IgnoredAny>()?),
            }
        }
        Ok(auto_found(n))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Found, A::Error> {
        skip_seq(seq).map(|()| Found::default())
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Found, E> {
        Ok(Found::default())
    }
    fn visit_unit<E: de::Error>(self) -> Result<Found, E> {
        Ok(Found::default())
    }
}

/// A map key, answered by the function it holds without being copied.
struct KeySeed<F>(F);

impl<'de, T, F: FnOnce(&str) -> T> DeserializeSeed<'de> for KeySeed<F> {
    type Value = T;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<T, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de, T, F: FnOnce(&str) -> T> Visitor<'de> for KeySeed<F> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a key")
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<T, E> {
        Ok((self.0)(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOW: usize = 16 * 1024;

    fn paths(input: &str, output: &str) -> UsageShape {
        UsageShape::Paths {
            input: input.into(),
            output: output.into(),
        }
    }

    fn usage(input: u64, output: u64) -> Option<Usage> {
        Some(Usage { input, output })
    }

    /// The answer for `body` fed in the given pieces.
    fn read_chunks(
        kind: BodyKind,
        shape: &UsageShape,
        window: usize,
        chunks: &[&[u8]],
    ) -> Option<Usage> {
        let mut r = UsageReader::new(kind, shape.clone(), window);
        let mut largest = 0;
        for c in chunks {
            r.feed(&Bytes::copy_from_slice(c));
            largest = largest.max(c.len());
            // A head line, the newest chunk, and older chunks within two windows.
            assert!(
                r.held() <= 3 * window + largest,
                "{} held, window {window}",
                r.held()
            );
        }
        r.finish()
    }

    fn read(kind: BodyKind, shape: &UsageShape, window: usize, body: &str) -> Option<Usage> {
        read_chunks(kind, shape, window, &[body.as_bytes()])
    }

    /// The answer for `body` in one piece, checked to be the same for every split in two, in
    /// three at random, and byte by byte.
    fn read_any_split(
        kind: BodyKind,
        shape: &UsageShape,
        window: usize,
        body: &str,
    ) -> Option<Usage> {
        let b = body.as_bytes();
        let want = read_chunks(kind, shape, window, &[b]);
        for i in 0..=b.len() {
            let got = read_chunks(kind, shape, window, &[&b[..i], &b[i..]]);
            assert_eq!(got, want, "split at {i}");
        }
        let mut rng = fastrand::Rng::with_seed(b.len() as u64);
        for _ in 0..200 {
            let (mut x, mut y) = (rng.usize(0..=b.len()), rng.usize(0..=b.len()));
            if x > y {
                std::mem::swap(&mut x, &mut y);
            }
            let got = read_chunks(kind, shape, window, &[&b[..x], &b[x..y], &b[y..]]);
            assert_eq!(got, want, "splits at {x} and {y}");
        }
        let bytes: Vec<&[u8]> = b.chunks(1).collect();
        assert_eq!(
            read_chunks(kind, shape, window, &bytes),
            want,
            "byte by byte"
        );
        want
    }

    const OPENAI_JSON: &str = r#"{"id":"chatcmpl-B9MBs8CjcvOU2jLn4n570S5qMJKcT","object":"chat.completion","created":1741569952,"model":"gpt-4o-2024-08-06","choices":[{"index":0,"message":{"role":"assistant","content":"Hello! How can I assist you today?","refusal":null,"annotations":[]},"logprobs":null,"finish_reason":"stop"}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0,"audio_tokens":0,"accepted_prediction_tokens":0,"rejected_prediction_tokens":0}},"service_tier":"default","system_fingerprint":"fp_ee1d74bde0"}"#;

    const ANTHROPIC_JSON: &str = r#"{
  "id": "msg_013Zva2CMHLNnXjNJJKqJ2EF",
  "type": "message",
  "role": "assistant",
  "model": "claude-sonnet-4-5-20250929",
  "content": [{"type": "text", "text": "Hi! My name is Claude."}],
  "stop_reason": "end_turn",
  "stop_sequence": null,
  "usage": {
    "input_tokens": 2095,
    "cache_creation_input_tokens": 0,
    "cache_read_input_tokens": 0,
    "output_tokens": 503
  }
}
"#;

    /// An OpenAI answer of about `size` bytes whose message is padding, with text that looks like
    /// usage (escaped, as any text is) before the real one.
    fn big_openai(size: usize) -> String {
        let decoy = r#"He wrote \"usage\": {\"prompt_tokens\": 999, \"completion_tokens\": 999} and \\\"usage\\\": 7 "#;
        let mut pad = String::new();
        while pad.len() < size {
            pad.push_str(decoy);
            pad.push_str("lorem ipsum dolor sit amet, ünïcödé… ");
        }
        OPENAI_JSON.replace("Hello! How can I assist you today?", &pad)
    }

    #[test]
    fn openai_json_answer() {
        let shape = UsageShape::Auto;
        assert_eq!(
            read_any_split(BodyKind::Json, &shape, WINDOW, OPENAI_JSON),
            usage(19, 10)
        );
        assert_eq!(usage(19, 10).unwrap().total(), 29);
    }

    #[test]
    fn openai_json_answer_larger_than_the_window() {
        let body = big_openai(200_000);
        assert!(body.len() > 10 * WINDOW);
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, WINDOW, &body),
            usage(19, 10)
        );
        // In pieces the size a network gives.
        let chunks: Vec<&[u8]> = body.as_bytes().chunks(1460).collect();
        assert_eq!(
            read_chunks(BodyKind::Json, &UsageShape::Auto, WINDOW, &chunks),
            usage(19, 10)
        );
        // Every split of a body a few windows long, byte by byte included.
        let small = big_openai(3000);
        assert_eq!(
            read_any_split(BodyKind::Json, &UsageShape::Auto, 1024, &small),
            usage(19, 10)
        );
    }

    #[test]
    fn a_window_that_cuts_the_usage_object_finds_nothing() {
        let body = big_openai(5000);
        let from_usage = body.len() - body.find(r#""usage""#).unwrap();
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, from_usage, &body),
            usage(19, 10)
        );
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, from_usage - 1, &body),
            None
        );
    }

    #[test]
    fn anthropic_json_answer() {
        let shape = UsageShape::Auto;
        assert_eq!(
            read_any_split(BodyKind::Json, &shape, WINDOW, ANTHROPIC_JSON),
            usage(2095, 503)
        );
        // Larger than the window: read from the tail.
        assert_eq!(
            read(BodyKind::Json, &shape, 200, ANTHROPIC_JSON),
            usage(2095, 503)
        );
        // Cached prompt tokens count as input, as OpenAI's prompt_tokens include them.
        let cached = ANTHROPIC_JSON
            .replace(
                r#""cache_creation_input_tokens": 0"#,
                r#""cache_creation_input_tokens": 100"#,
            )
            .replace(
                r#""cache_read_input_tokens": 0"#,
                r#""cache_read_input_tokens": 4000"#,
            );
        assert_eq!(
            read(BodyKind::Json, &shape, WINDOW, &cached),
            usage(6195, 503)
        );
        assert_eq!(read(BodyKind::Json, &shape, 200, &cached), usage(6195, 503));
    }

    #[test]
    fn openai_responses_json_answer() {
        let body = r#"{"id":"resp_1","object":"response","status":"completed","output":[{"type":"message","content":[{"type":"output_text","text":"Hi"}]}],"usage":{"input_tokens":36,"input_tokens_details":{"cached_tokens":0},"output_tokens":87,"output_tokens_details":{"reasoning_tokens":0},"total_tokens":123},"user":null,"metadata":{}}"#;
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, WINDOW, body),
            usage(36, 87)
        );
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, 200, body),
            usage(36, 87)
        );
    }

    #[test]
    fn counts_as_floats_strings_or_missing() {
        let auto = UsageShape::Auto;
        for (body, want) in [
            (
                r#"{"usage":{"prompt_tokens":12.0,"completion_tokens":3.9}}"#,
                usage(12, 3),
            ),
            (
                r#"{"usage":{"prompt_tokens":"12","completion_tokens":" 4 "}}"#,
                usage(12, 4),
            ),
            (
                r#"{"usage":{"prompt_tokens":8,"total_tokens":8}}"#,
                usage(8, 0),
            ),
            (r#"{"usage":{"output_tokens":5}}"#, usage(0, 5)),
            (r#"{"usage":{"total_tokens":42}}"#, usage(42, 0)),
            (
                r#"{"usage":{"prompt_tokens":-1,"completion_tokens":2}}"#,
                usage(0, 2),
            ),
            (
                r#"{"usage":{"prompt_tokens":1e30,"completion_tokens":1}}"#,
                usage(u64::MAX, 1),
            ),
            (
                r#"{"usage":{"prompt_tokens":null,"completion_tokens":true}}"#,
                None,
            ),
            (r#"{"usage":null}"#, None),
            (r#"{"usage":{}}"#, None),
            (r#"{"usage":[1,2]}"#, None),
            (r#"{"usage":"19"}"#, None),
            (r#"{"id":"x","choices":[]}"#, None),
            (
                r#"{"choices":[{"message":{"usage":{"prompt_tokens":5}}}]}"#,
                None,
            ),
            ("[]", None),
            ("", None),
        ] {
            assert_eq!(read(BodyKind::Json, &auto, WINDOW, body), want, "{body}");
        }
        assert_eq!(
            Usage {
                input: u64::MAX,
                output: 1
            }
            .total(),
            u64::MAX,
            "total saturates"
        );
    }

    #[test]
    fn a_body_without_usage_is_none() {
        let body = OPENAI_JSON.replace(r#""usage":{"#, r#""usag":{"#);
        assert_eq!(
            read_any_split(BodyKind::Json, &UsageShape::Auto, WINDOW, &body),
            None
        );
        assert_eq!(read(BodyKind::Json, &UsageShape::Auto, 100, &body), None);
        let null = r#"{"id":"x","choices":[],"usage": null}"#;
        assert_eq!(read(BodyKind::Json, &UsageShape::Auto, WINDOW, null), None);
        assert_eq!(read(BodyKind::Json, &UsageShape::Auto, 20, null), None);
        let mut r = UsageReader::new(BodyKind::Json, UsageShape::Auto, WINDOW);
        assert_eq!(r.finish(), None, "no body at all");
    }

    #[test]
    fn an_answer_cut_short_or_followed_by_text_has_no_usage() {
        let cut = &OPENAI_JSON[..OPENAI_JSON.len() - 40];
        assert_eq!(read(BodyKind::Json, &UsageShape::Auto, WINDOW, cut), None);
        let trailing = format!("{OPENAI_JSON} trailing text");
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, WINDOW, &trailing),
            None
        );
        let whitespace = format!("{OPENAI_JSON}\r\n\n  ");
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, WINDOW, &whitespace),
            usage(19, 10)
        );
    }

    #[test]
    fn only_the_top_level_usage_counts() {
        let body = r#"{"usage":{"prompt_tokens":1},"choices":[{"message":{"usage":{"prompt_tokens":99}}}],"tools":[{"parameters":{"properties":{"usage":{"type":"string"}}}}],"metadata":{"usage":"7"}}"#;
        assert_eq!(
            read_any_split(BodyKind::Json, &UsageShape::Auto, WINDOW, body),
            usage(1, 0)
        );
        // A tail that holds the nested ones but not the top-level one finds nothing.
        let window = body.len() - body.find(r#","choices""#).unwrap();
        assert_eq!(read(BodyKind::Json, &UsageShape::Auto, window, body), None);
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, window + 30, body),
            usage(1, 0)
        );
        // With duplicate top-level keys the last wins, as in serde_json.
        let dup = r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#;
        assert_eq!(
            read(BodyKind::Json, &UsageShape::Auto, WINDOW, dup),
            usage(2, 0)
        );
    }

    #[test]
    fn auto_field_knows_every_auto_field() {
        for (i, f) in AUTO_FIELDS.iter().enumerate() {
            assert_eq!(auto_field(f.as_bytes()), Some(i));
        }
        assert_eq!(auto_field(b"prompt_token"), None);
    }

    /// The plain reading of a usage object gives the parse's answer, and steps aside (None)
    /// for whatever it does not read itself.
    #[test]
    fn a_plain_usage_object_reads_as_the_parse_does() {
        let same = [
            r#"{"prompt_tokens":120,"completion_tokens":380,"total_tokens":500}"#,
            r#"{ "prompt_tokens" : 1 , "completion_tokens": 2 }"#,
            r#"{"input_tokens":10,"cache_creation_input_tokens":5,"cache_read_input_tokens":7,"output_tokens":3}"#,
            r#"{"prompt_tokens":9,"prompt_tokens_details":{"cached_tokens":4,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":[1,{"x":"}"}]}}"#,
            r#"{"total_tokens":42,"note":"a \"quoted\" word","flag":true,"ratio":-1.5e3,"none":null}"#,
            r#"{"prompt_tokens":1,"prompt_tokens":2}"#,
            r#"{}"#,
            r#"{"output_tokens":18446744073709551615}"#,
        ];
        for obj in same {
            let plain = plain_usage(obj.as_bytes());
            assert!(plain.is_some(), "{obj}");
            assert_eq!(plain, read_document(obj.as_bytes(), &[""], true), "{obj}");
        }
        let declined = [
            r#"{"prompt_tokens":"8"}"#,
            r#"{"prompt_tokens":8.0}"#,
            r#"{"prompt_tokens":null}"#,
            r#"{"prompt_tokens":08}"#,
            r#"{"prompt_tokens":-1}"#,
            r#"{"prompt\u005ftokens":8}"#,
            r#"{"prompt_tokens":1,}"#,
            r#"{"prompt_tokens":1} x"#,
            r#"{"x":tru,"prompt_tokens":1}"#,
            r#"{"prompt_tokens" 1}"#,
            r#"[1]"#,
            r#"null"#,
        ];
        for obj in declined {
            assert_eq!(plain_usage(obj.as_bytes()), None, "{obj}");
        }
        // Declined or not, the reader's answer is the parse's.
        for obj in same.iter().chain(&declined) {
            let read =
                plain_usage(obj.as_bytes()).or_else(|| read_document(obj.as_bytes(), &[""], true));
            assert_eq!(read, read_document(obj.as_bytes(), &[""], true), "{obj}");
            // Text after the object is left to the caller: the object's own end is reported.
            if let Some((_, end)) = usage_object_at(obj.as_bytes()) {
                assert!(obj[..end].trim_end().ends_with(['}', ']', 'l']), "{obj}");
            }
        }
    }

    /// The shortcut for an event whose only `usage` is at its top gives what the full parse of
    /// the event gives, and steps aside for every other event.
    #[test]
    fn the_top_level_shortcut_agrees_with_the_full_parse() {
        let events = [
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}"#,
            r#"{"type":"message_delta","usage":{"output_tokens":9}}"#,
            r#"{"usage":{"input_tokens":1},"message":{"usage":{"input_tokens":2}}}"#,
            r#"{"message":{"usage":{"input_tokens":2}},"usage":{"output_tokens":5}}"#,
            r#"{"note":"usage","usage":{"prompt_tokens":6}}"#,
            r#"{"usage":{"prompt_tokens":7},"note":"no usage here"}"#,
            r#"{"usage":null}"#,
            r#"{"usage":{"prompt_tokens":"8","completion_tokens":2}} "#,
            r#"{"response":{"usage":{"input_tokens":4,"output_tokens":1}}}"#,
            r#"{"usage":{"prompt_tokens":1},"usage":{"prompt_tokens":2}}"#,
        ];
        for event in events {
            let full = read_document(event.as_bytes(), &AUTO_PATHS, true);
            let line = format!("data: {event}");
            assert_eq!(
                sse_counts(&UsageShape::Auto, line.as_bytes()).map(|f| f.usage()),
                full.map(|f| f.usage()),
                "{event}"
            );
        }
        // The shortcut is taken only when the top-level key is the one mention.
        let shortcut = |e: &str| {
            let first = find_key(e.as_bytes(), AUTO_KEY.as_bytes()).unwrap();
            top_level_usage(e.as_bytes(), first).is_some()
        };
        assert!(shortcut(events[0]));
        assert!(!shortcut(events[2]));
        assert!(!shortcut(events[4]));
        assert!(!shortcut(events[5]));
    }

    #[test]
    fn a_tail_full_of_nested_keys_is_one_linear_scan() {
        let body = format!(
            "{{\"x\":[{}0],\"y\":\"\\\\\"}}",
            "{\"usage\":{\"prompt_tokens\":1}},".repeat(50_000)
        );
        let started = std::time::Instant::now();
        for _ in 0..10 {
            assert_eq!(
                read(BodyKind::Json, &UsageShape::Auto, 1 << 20, &body),
                None
            );
        }
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }

    #[test]
    fn custom_paths_in_json() {
        let shape = paths("meta.billing.tokens_in", "meta.billing.tokens_out");
        let body =
            r#"{"result":"ok","meta":{"billing":{"tokens_in":7,"tokens_out":3.0},"region":"eu"}}"#;
        assert_eq!(
            read_any_split(BodyKind::Json, &shape, WINDOW, body),
            usage(7, 3)
        );
        // The smallest window that holds `"meta":` and what follows.
        assert_eq!(read(BodyKind::Json, &shape, 66, body), usage(7, 3));
        assert_eq!(read(BodyKind::Json, &shape, 65, body), None);
        // Counts under different first keys; one of them absent.
        let shape = paths("in", "stats.out");
        let body = r#"{"in":11,"text":"\"stats\": {\"out\": 5}","stats":{"out":4}}"#;
        assert_eq!(
            read_any_split(BodyKind::Json, &shape, WINDOW, body),
            usage(11, 4)
        );
        assert_eq!(read(BodyKind::Json, &shape, 30, body), usage(0, 4));
        let shape = paths("usage.in", "usage.out");
        assert_eq!(
            read(BodyKind::Json, &shape, WINDOW, r#"{"usage":{"in":9}}"#),
            usage(9, 0)
        );
        assert_eq!(
            read(BodyKind::Json, &shape, WINDOW, r#"{"usage":{"x":9}}"#),
            None
        );
        // A path to a non-count is absent.
        let shape = paths("usage", "usage.out");
        assert_eq!(
            read(BodyKind::Json, &shape, WINDOW, r#"{"usage":{"out":2}}"#),
            usage(0, 2)
        );
    }

    fn sse(events: &[&str], line_end: &str) -> String {
        let mut s = String::new();
        for e in events {
            for line in e.lines() {
                s.push_str(line);
                s.push_str(line_end);
            }
            s.push_str(line_end);
        }
        s
    }

    fn openai_stream() -> Vec<&'static str> {
        vec![
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}],"usage":null}"#,
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":"The \"usage\": {\"prompt_tokens\": 5} is"},"finish_reason":null}],"usage":null}"#,
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
            r#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21}}"#,
            "data: [DONE]",
        ]
    }

    #[test]
    fn openai_sse_with_include_usage() {
        for end in ["\n", "\r\n"] {
            let body = sse(&openai_stream(), end);
            assert_eq!(
                read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body),
                usage(9, 12)
            );
        }
        // `data:` without the space, and no blank line or line end at the very end.
        let body = sse(&openai_stream()[..3], "\n")
            + r#"data:{"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12}}"#;
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body),
            usage(9, 12)
        );
        // Without include_usage there is nothing to read.
        let body = sse(&openai_stream()[..3], "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body),
            None
        );
    }

    fn anthropic_stream() -> Vec<&'static str> {
        vec![
            "event: message_start\n\
             data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\",\"role\":\"assistant\",\"content\":[],\"model\":\"claude-sonnet-4-5\",\"stop_reason\":null,\"stop_sequence\":null,\"usage\":{\"input_tokens\":25,\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":0,\"output_tokens\":1}}}",
            "event: content_block_start\n\
             data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}",
            "event: ping\ndata: {\"type\": \"ping\"}",
            "event: content_block_delta\n\
             data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}",
            "event: message_delta\n\
             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":null},\"usage\":{\"output_tokens\":7}}",
            "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}",
            "event: message_delta\n\
             data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}",
            "event: message_stop\ndata: {\"type\":\"message_stop\"}",
        ]
    }

    #[test]
    fn anthropic_sse() {
        let body = sse(&anthropic_stream(), "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body),
            usage(25, 15)
        );
        // Cut after message_start: its counts are what there is.
        let cut = sse(&anthropic_stream()[..4], "\r\n");
        assert_eq!(
            read(BodyKind::Sse, &UsageShape::Auto, WINDOW, &cut),
            usage(25, 1)
        );
        // A message_delta that restates the input (newer API versions) wins too.
        let mut events = anthropic_stream();
        events[6] = "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"input_tokens\":30,\"cache_read_input_tokens\":10,\"output_tokens\":16}}";
        assert_eq!(
            read(
                BodyKind::Sse,
                &UsageShape::Auto,
                WINDOW,
                &sse(&events, "\n")
            ),
            usage(40, 16)
        );
    }

    /// `n` OpenAI content chunks of about 150 bytes each.
    fn openai_chunks(n: usize) -> Vec<String> {
        (0..n)
            .map(|i| format!(r#"data: {{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"gpt-4o-mini","choices":[{{"index":0,"delta":{{"content":"token {i:04}"}},"finish_reason":null}}]}}"#))
            .collect()
    }

    #[test]
    fn a_stream_longer_than_the_window_is_read_from_its_head_and_tail() {
        let window = 1024; // a head of 128 bytes
                           // OpenAI: the usage is in the last event, which the tail holds.
        let mut events = openai_chunks(40);
        events.push(
            r#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12}}"#.into(),
        );
        events.push("data: [DONE]".into());
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let body = sse(&refs, "\n");
        assert!(body.len() > 5 * window);
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
            usage(9, 12)
        );
        // Anthropic: the input count is in message_start (the head), the output count in the
        // last message_delta (the tail); an earlier message_delta in the tail is older.
        let start = anthropic_stream()[0];
        let mut events = vec![start.to_string()];
        for (i, chunk) in openai_chunks(40).iter().enumerate() {
            events.push(chunk.clone());
            if i == 35 {
                events.push(
                    "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":7}}"
                        .into(),
                );
            }
        }
        events.push(
            "event: message_delta\ndata: {\"type\":\"message_delta\",\"usage\":{\"output_tokens\":15}}"
                .into(),
        );
        events.push("event: message_stop\ndata: {\"type\":\"message_stop\"}".into());
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        for end in ["\n", "\r\n"] {
            let body = sse(&refs, end);
            assert_eq!(
                read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
                usage(25, 15)
            );
        }
        // Without its last message_delta, the older one in the tail is the output count.
        let body = sse(&refs[..refs.len() - 2], "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
            usage(25, 7)
        );
        // The same with custom paths.
        let shape = paths("message.usage.input_tokens", "usage.output_tokens");
        let body = sse(&refs, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &shape, window, &body),
            usage(25, 15)
        );
    }

    #[test]
    fn a_usage_between_the_head_and_the_last_window_is_not_seen() {
        // The documented limit: counts reported only in the middle of a long stream (no
        // known provider does this) are missed; a stream without usage costs one backward
        // search of the tail and finds nothing.
        let window = 1024;
        let mut events = openai_chunks(40);
        events.insert(
            20,
            r#"data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":12}}"#.into(),
        );
        let refs: Vec<&str> = events.iter().map(String::as_str).collect();
        let body = sse(&refs, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
            None
        );
        assert_eq!(
            read(BodyKind::Sse, &UsageShape::Auto, body.len(), &body),
            usage(9, 12),
            "a window over the whole stream sees it"
        );
    }

    #[test]
    fn openai_responses_sse() {
        let events = [
            "event: response.created\ndata: {\"type\":\"response.created\",\"response\":{\"id\":\"resp_1\",\"status\":\"in_progress\",\"usage\":null}}",
            "event: response.output_text.delta\ndata: {\"type\":\"response.output_text.delta\",\"delta\":\"Hi\"}",
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"id\":\"resp_1\",\"status\":\"completed\",\"usage\":{\"input_tokens\":37,\"output_tokens\":11,\"total_tokens\":48}}}",
        ];
        let body = sse(&events, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body),
            usage(37, 11)
        );
    }

    #[test]
    fn custom_paths_in_sse() {
        let shape = paths("usage.in", "meta.billing.tokens_out");
        let events = [
            r#"data: {"usage":{"in":3},"text":"a"}"#,
            r#"data: {"text":"b","meta":{"billing":{"tokens_out":1}}}"#,
            r#"data: {"text":"c","meta":{"billing":{"tokens_out":2}},"usage":null}"#,
            r#"data: {"usage":{"in":4}}"#,
            "data: [DONE]",
        ];
        let body = sse(&events, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &shape, WINDOW, &body),
            usage(4, 2)
        );
        let none = sse(&[r#"data: {"usage":{"prompt_tokens":3}}"#], "\n");
        assert_eq!(read(BodyKind::Sse, &shape, WINDOW, &none), None);
    }

    #[test]
    fn a_data_line_over_the_window_is_skipped_and_later_events_still_read() {
        let window = 256;
        let long = format!(
            r#"data: {{"usage":{{"prompt_tokens":1000,"completion_tokens":1000}},"pad":"{}"}}"#,
            "x".repeat(400)
        );
        let events = [
            r#"data: {"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            long.as_str(),
            r#"data: {"choices":[],"usage":null}"#,
        ];
        let body = sse(&events, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
            usage(1, 2)
        );
        let events = [
            long.as_str(),
            r#"data: {"usage":{"prompt_tokens":5,"completion_tokens":6}}"#,
        ];
        let body = sse(&events, "\n");
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, window, &body),
            usage(5, 6)
        );
        // The long line is never held: the buffer stays within the window.
        let mut r = UsageReader::new(BodyKind::Sse, UsageShape::Auto, window);
        for c in body.as_bytes().chunks(7) {
            r.feed(&Bytes::copy_from_slice(c));
            assert!(r.line.len() <= window && r.held() <= 3 * window + 7);
        }
        assert_eq!(r.finish(), usage(5, 6));
        // A long last line without its line end is skipped as well.
        assert_eq!(read(BodyKind::Sse, &UsageShape::Auto, window, &long), None);
        assert_eq!(
            read(BodyKind::Sse, &UsageShape::Auto, long.len(), &long),
            usage(1000, 1000)
        );
    }

    #[test]
    fn other_lines_and_fields_are_ignored() {
        let body = ": a comment with \"usage\":{\"prompt_tokens\":1}\n\
                    event: usage\n\
                    id: 7\n\
                    retry: 100\n\
                    data : {\"usage\":{\"prompt_tokens\":2}}\n\
                    datum: {\"usage\":{\"prompt_tokens\":3}}\n\
                    data: not json \"usage\": {\n\
                    data: {\"usage\":{\"prompt_tokens\":4}\n\
                    \n\n\n";
        assert_eq!(
            read_any_split(BodyKind::Sse, &UsageShape::Auto, WINDOW, body),
            None
        );
    }

    #[test]
    fn the_json_tail_never_outgrows_the_window() {
        let body = big_openai(100_000);
        let mut r = UsageReader::new(BodyKind::Json, UsageShape::Auto, 4096);
        for c in body.as_bytes().chunks(1000) {
            r.feed(&Bytes::copy_from_slice(c));
            assert!(r.held() <= 4096 + 1000);
        }
        assert_eq!(r.finish(), usage(19, 10));
        // A chunk much larger than the window is held whole while it is the newest (it is
        // read in place at the end), and cut to what the window needs once another follows.
        let mut r = UsageReader::new(BodyKind::Json, UsageShape::Auto, 4096);
        let (start, end) = body.split_at(body.len() - 1000);
        r.feed(&Bytes::copy_from_slice(start.as_bytes()));
        assert_eq!(r.held(), start.len());
        r.feed(&Bytes::copy_from_slice(end.as_bytes()));
        assert_eq!(r.held(), 4096);
        assert_eq!(r.finish(), usage(19, 10));
        let mut r = UsageReader::new(BodyKind::Json, UsageShape::Auto, 0);
        r.feed(&Bytes::from_static(OPENAI_JSON.as_bytes()));
        assert_eq!(r.finish(), None, "a zero window reads nothing");
    }

    #[test]
    fn every_prefix_of_an_answer_is_read_without_panic() {
        for (kind, body) in [
            (BodyKind::Json, OPENAI_JSON.to_string()),
            (BodyKind::Json, ANTHROPIC_JSON.to_string()),
            (BodyKind::Sse, sse(&anthropic_stream(), "\n")),
            (BodyKind::Sse, sse(&openai_stream(), "\r\n")),
        ] {
            for cut in 0..=body.len() {
                for window in [16, 300, WINDOW] {
                    let _ =
                        read_chunks(kind, &UsageShape::Auto, window, &[&body.as_bytes()[..cut]]);
                }
            }
        }
        // A stream cut after its usage event still counts it.
        let body = sse(&openai_stream(), "\n");
        let done = body.find("data: [DONE]").unwrap();
        assert_eq!(
            read(BodyKind::Sse, &UsageShape::Auto, WINDOW, &body[..done]),
            usage(9, 12)
        );
    }

    #[test]
    fn random_and_mangled_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(18);
        let alphabet = b"{}[]\":,\\ \n\r.-0123456789usagedt:nul\xff\xc3";
        let shapes = [UsageShape::Auto, paths("usage.a", "b.c.d")];
        let samples = [
            OPENAI_JSON.to_string(),
            ANTHROPIC_JSON.to_string(),
            sse(&anthropic_stream(), "\n"),
            sse(&openai_stream(), "\n"),
        ];
        for round in 0..3000 {
            let body: Vec<u8> = if round % 2 == 0 {
                let len = rng.usize(0..400);
                (0..len)
                    .map(|_| {
                        if rng.u8(..4) == 0 {
                            rng.u8(..)
                        } else {
                            alphabet[rng.usize(0..alphabet.len())]
                        }
                    })
                    .collect()
            } else {
                // A real answer with a few bytes changed, dropped or cut.
                let mut b = samples[rng.usize(0..samples.len())].clone().into_bytes();
                for _ in 0..rng.usize(1..6) {
                    if b.is_empty() {
                        break;
                    }
                    let i = rng.usize(0..b.len());
                    match rng.u8(..3) {
                        0 => b[i] = alphabet[rng.usize(0..alphabet.len())],
                        1 => drop(b.remove(i)),
                        _ => b.truncate(i.max(1)),
                    }
                }
                b
            };
            for kind in [BodyKind::Json, BodyKind::Sse] {
                for shape in &shapes {
                    let window = [0, 1, 8, 64, 1024][rng.usize(0..5)];
                    let mut r = UsageReader::new(kind, shape.clone(), window);
                    let mut rest = &body[..];
                    while !rest.is_empty() {
                        let n = rng.usize(1..=rest.len().min(50));
                        r.feed(&Bytes::copy_from_slice(&rest[..n]));
                        rest = &rest[n..];
                    }
                    let _ = r.finish();
                }
            }
        }
    }

    #[test]
    fn body_kind_from_content_type() {
        for (ct, want) in [
            (Some("text/event-stream"), Some(BodyKind::Sse)),
            (
                Some("Text/Event-Stream; charset=utf-8"),
                Some(BodyKind::Sse),
            ),
            (Some("application/json"), Some(BodyKind::Json)),
            (
                Some("application/json; charset=utf-8"),
                Some(BodyKind::Json),
            ),
            (Some("application/problem+json"), Some(BodyKind::Json)),
            (Some("APPLICATION/VND.API+JSON"), Some(BodyKind::Json)),
            (Some("text/plain"), None),
            (Some("application/x-ndjson"), None),
            (Some("application/jsonp"), None),
            (Some("+json"), None),
            (Some("application/ééé"), None),
            (Some("application/é+json"), Some(BodyKind::Json)),
            (Some("/json"), None),
            (Some(""), None),
            (None, None),
        ] {
            assert_eq!(body_kind(ct.map(str::as_bytes)), want, "{ct:?}");
        }
    }

    #[test]
    fn path_problems() {
        assert_eq!(UsageShape::path_problem("usage.input_tokens"), None);
        assert_eq!(UsageShape::path_problem("tokens"), None);
        for bad in ["", ".a", "a.", "a..b", "a.\"b\"", "a\\b"] {
            assert!(UsageShape::path_problem(bad).is_some(), "{bad:?}");
        }
    }

    #[test]
    fn key_scans_skip_escaped_text_and_values() {
        let s = br#"{"a":"\"usage\": 1","usage" : {"x":1},"b":"usage","usage"}"#;
        let (q, v) = next_key_value(s, "usage", 0).unwrap();
        assert_eq!(&s[q..q + 7], br#""usage""#);
        assert_eq!(s[v], b'{');
        assert_eq!(next_key_value(s, "usage", q + 1), None);
        assert_eq!(top_level_value(s, "usage"), Some(&br#"{"x":1}"#[..]));
        let s = br#"{"a":"\"usage\": 1}","usage" : {"x":1} ,"b":"usage"} "#;
        assert_eq!(top_level_value(s, "usage"), Some(&br#"{"x":1}"#[..]));
        assert_eq!(
            top_level_value(br#"{"usage":null}"#, "usage"),
            Some(&b"null"[..])
        );
        assert_eq!(
            top_level_value(br#"{"usage":12}"#, "usage"),
            Some(&b"12"[..])
        );
        assert_eq!(top_level_value(br#"{"usage":{"a":1}"#, "usage"), None);
        assert_eq!(
            top_level_value(br#"usage":{"a":1}}"#, "usage"),
            None,
            "key cut"
        );
        assert_eq!(top_level_value(br#"}}}}"#, "usage"), None);
        assert_eq!(
            top_level_value(br#"{"a":"\\","usage":3}"#, "usage"),
            Some(&b"3"[..])
        );
        // An even run of backslashes does not escape the quote.
        let s = br#"["\\","usage":2]"#;
        assert!(next_key_value(s, "usage", 0).is_some());
    }
}
