//! LLM-aware traffic helpers: what tollgate reads from the requests and answers of OpenAI- and
//! Anthropic-style APIs to count tokens and label metrics, without ever buffering a body.
//!
//! - [`usage`]: the tokens an answer used, read from its JSON body or its SSE stream as the
//!   chunks pass, keeping at most a bounded window.
//! - [`model`]: the model a request asks for, read from the first bytes of its JSON body.
//!
//! Both read the bytes as they are on the wire: a compressed body (`Content-Encoding: gzip`) must
//! be decompressed before it is fed, or it yields nothing.
//!
//! The byte-level JSON scanning both need (where a value ends, respecting strings and escapes)
//! lives here. It is not a validator: it finds boundaries in text that may be cut anywhere, and
//! serde_json then parses the slice it found.

pub mod model;
pub mod usage;

/// A route's `tokens:`, compiled.
#[derive(Debug, Clone)]
pub struct TokenRoute {
    /// Where the usage is in an answer.
    pub shape: usage::UsageShape,
}

impl TokenRoute {
    /// Compile a validated `tokens:` (both paths or neither).
    pub fn new(c: &crate::config::model::RouteTokensConfig) -> TokenRoute {
        let shape = match (&c.input, &c.output) {
            (Some(input), Some(output)) => usage::UsageShape::Paths {
                input: input.as_str().into(),
                output: output.as_str().into(),
            },
            _ => usage::UsageShape::Auto,
        };
        TokenRoute { shape }
    }
}

/// The index of the first `byte` in `hay`: the scan every SSE line goes through.
pub(crate) fn find_byte(hay: &[u8], byte: u8) -> Option<usize> {
    // memchr's vectorised search (SSE2/AVX2 strides): the usage reader runs it over every line
    // of every stream.
    memchr::memchr(byte, hay)
}

/// The index of the first byte at or after `i` that is not JSON whitespace (`s.len()` if none).
pub(crate) fn skip_ws(s: &[u8], mut i: usize) -> usize {
    while i < s.len() && matches!(s[i], b' ' | b'\t' | b'\n' | b'\r') {
        i += 1;
    }
    i
}

/// The index just after the closing quote of the string whose opening quote is at `open`, or
/// `None` if the text ends first.
pub(crate) fn string_end(s: &[u8], open: usize) -> Option<usize> {
    let mut i = open + 1;
    while i < s.len() {
        match s[i] {
            b'"' => return Some(i + 1),
            // Whatever follows a backslash is part of the string, a quote included.
            b'\\' => i += 2,
            _ => i += 1,
        }
    }
    None
}

/// The index just after the JSON value that starts at `start` (no leading whitespace), or `None`
/// if the text ends before the value does (or there is no value there).
///
/// Objects and arrays end at the bracket that brings the depth back to zero, whatever kind it is;
/// brackets inside strings do not count. A scalar (number, `true`, `null`...) ends at the next
/// delimiter or whitespace, or at the end of the text, since a number cut at the end cannot be
/// told from a whole one; callers that care check what follows.
pub(crate) fn value_end(s: &[u8], start: usize) -> Option<usize> {
    match *s.get(start)? {
        b'"' => string_end(s, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < s.len() {
                match s[i] {
                    b'"' => {
                        i = string_end(s, i)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            None
        }
        b'}' | b']' | b',' | b':' => None,
        _ => {
            let len = s[start..]
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r'))
                .unwrap_or(s.len() - start);
            Some(start + len)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn value_end_finds_the_end_of_each_kind_of_value() {
        let s = br#"{"a":[1,{"b":"x}]\"y"}],"c":2} tail"#;
        assert_eq!(value_end(s, 0), Some(s.len() - 5));
        assert_eq!(value_end(br#""a\"b" x"#, 0), Some(6));
        assert_eq!(value_end(b"12.5, 3", 0), Some(4));
        assert_eq!(value_end(b"null}", 0), Some(4));
        assert_eq!(value_end(b"17", 0), Some(2));
    }

    #[test]
    fn value_end_is_none_when_the_text_ends_first() {
        assert_eq!(value_end(br#"{"a":[1,2"#, 0), None);
        assert_eq!(value_end(br#""abc\""#, 0), None);
        assert_eq!(value_end(br#"{"a":"}"#, 0), None);
        assert_eq!(value_end(b"", 0), None);
        assert_eq!(value_end(b"}", 0), None);
        // A backslash as the last byte must not step past the end.
        assert_eq!(value_end(b"\"\\", 0), None);
    }

    #[test]
    fn find_byte_finds_the_first_match_anywhere() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..5000 {
            let len = rng.usize(0..40);
            let hay: Vec<u8> = (0..len)
                .map(|_| [b'\n', 0, 1, 0x80, 0x0b, 0xff][rng.usize(0..6)])
                .collect();
            for byte in [b'\n', 0, 1, 0x80, 0xff, b'x'] {
                let want = hay.iter().position(|&b| b == byte);
                assert_eq!(find_byte(&hay, byte), want, "{hay:?} {byte}");
            }
        }
    }

    #[test]
    fn skip_ws_stops_at_the_first_other_byte() {
        assert_eq!(skip_ws(b" \t\r\n x", 0), 5);
        assert_eq!(skip_ws(b"  ", 0), 2);
        assert_eq!(skip_ws(b"x", 3), 3);
    }
}
