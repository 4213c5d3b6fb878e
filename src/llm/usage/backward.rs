//! The top-level `usage` of a JSON object read backward from the object's end, in one pass.
//!
//! Providers put `usage` at the end of an answer (Anthropic last, OpenAI before a few short
//! fields such as `service_tier` and `system_fingerprint`), so reading from the end touches
//! only the bytes after the key. The members after it are crossed (their keys read, their
//! values stepped over); the usage object itself is read as it is crossed, its counts taken
//! on the way, so its bytes are looked at once. Before this, the same bytes were scanned
//! backward to find the key and then forward again to read the object (~2.4k instructions
//! per answer; this is about a quarter of that).
//!
//! Backward reading is sound for JSON because every unescaped quote opens or closes a string
//! in either direction, and a quote is escaped when an odd run of backslashes comes before it.
//! The reader is strict about layout and gives up ([`Found::Elsewhere`] or `None`) on anything
//! it does not read plainly; the caller then falls back to the forward reading, so an answer
//! this module reads gets the counts the forward reading would give.

use super::{auto_found, escaped, plain_member, Found, AUTO_FIELDS, AUTO_KEY};

/// What reading backward found of the last top-level `usage` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TopUsage {
    /// A plain usage object (keys without escapes, counts plain integers): its counts.
    Plain(Found),
    /// A value not read plainly (not an object, a count as a string or a float, an escape in
    /// a key): where it starts, for the forward reading to decide.
    Elsewhere(usize),
}

/// The last top-level `"usage"` key of the JSON object that ends `s` (only whitespace may
/// follow its closing brace), with the index of the key's opening quote and of the end of its
/// value. `None`: no such key, or text that is not a JSON object's end.
pub(super) fn top_usage(s: &[u8]) -> Option<(TopUsage, usize, usize)> {
    let mut r = Back { s, i: s.len() };
    r.expect(b'}')?;
    loop {
        r.ws();
        let end = r.i;
        if r.peek()? == b'{' {
            // The object's start (or an empty object): no usage key in it.
            return None;
        }
        // An object is read as a usage object on the way; anything else (or an object that is
        // not a plain one) is stepped over.
        let usage = (r.peek() == Some(b'}')).then(|| r.plain_usage()).flatten();
        if usage.is_none() {
            r.i = end;
            r.value()?;
        }
        let start = r.i;
        r.expect(b':')?;
        r.ws();
        let (open, key, _) = r.string()?;
        if key == AUTO_KEY.as_bytes() {
            let found = usage.map_or(TopUsage::Elsewhere(start), TopUsage::Plain);
            return Some((found, open, end));
        }
        // The member before, or the object's start (then there is no usage key).
        r.expect(b',')?;
    }
}

/// A backward cursor: `i` is the end of the text not read yet.
struct Back<'s> {
    s: &'s [u8],
    i: usize,
}

impl Back<'_> {
    /// Steps back over whitespace.
    fn ws(&mut self) {
        let blank = self.s[..self.i]
            .iter()
            .rev()
            .take_while(|&&b| matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
            .count();
        self.i -= blank;
    }

    /// The byte before the cursor.
    fn peek(&self) -> Option<u8> {
        self.i.checked_sub(1).map(|j| self.s[j])
    }

    /// Steps back over whitespace and `b`, which must be there.
    fn expect(&mut self, b: u8) -> Option<()> {
        self.ws();
        (self.peek()? == b).then(|| self.i -= 1)
    }

    /// Steps back over the string that ends at the cursor (the byte before it is its closing
    /// quote): its opening quote's index, its raw content, and whether that has a backslash.
    fn string(&mut self) -> Option<(usize, &[u8], bool)> {
        let close = self.i.checked_sub(1).filter(|&c| self.s[c] == b'"')?;
        let mut j = close;
        let mut escapes = false;
        loop {
            // Vectorised: the haystack is everything before the string, so the search runs
            // at full stride even for a short key.
            j = memchr::memrchr2(b'"', b'\\', &self.s[..j])?;
            if self.s[j] == b'"' && !escaped(self.s, j) {
                break;
            }
            escapes = true;
        }
        self.i = j;
        Some((j, &self.s[j + 1..close], escapes))
    }

    /// Steps back over the value that ends at the cursor: a string, an object or array
    /// (nesting and strings tracked), or a scalar (number or literal).
    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'}' | b']' => {
                let mut depth = 0usize;
                loop {
                    match self.peek()? {
                        b'"' => {
                            self.string()?;
                            continue;
                        }
                        b'}' | b']' => depth += 1,
                        b'{' | b'[' => {
                            depth -= 1;
                            if depth == 0 {
                                self.i -= 1;
                                return Some(());
                            }
                        }
                        _ => {}
                    }
                    self.i -= 1;
                }
            }
            _ => {
                let end = self.i;
                while self
                    .peek()
                    .is_some_and(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'+' | b'.'))
                {
                    self.i -= 1;
                }
                (self.i < end).then_some(())
            }
        }
    }

    /// Reads back the object that ends at the cursor as a plain usage object: each member's
    /// key without escapes, each count a plain integer (a duplicate count must be one too; the
    /// last one wins, as in the forward reading), other members' values strings, objects,
    /// arrays or scalars (numbers, `true`, `false`, `null`). `None` for anything else; the
    /// cursor is then anywhere inside the object.
    fn plain_usage(&mut self) -> Option<Found> {
        let mut n = [None; AUTO_FIELDS.len()];
        self.i -= 1; // the closing brace
        self.ws();
        if self.peek()? == b'{' {
            self.i -= 1;
            return Some(auto_found(n));
        }
        loop {
            let end = self.i;
            self.value()?;
            let value = &self.s[self.i..end];
            self.expect(b':')?;
            self.ws();
            let (_, key, escapes) = self.string()?;
            if escapes {
                return None;
            }
            // Read last first: the first count read is the last of duplicates, which wins.
            plain_member(&mut n, key, value, false)?;
            self.ws();
            match self.peek()? {
                b',' => {
                    self.i -= 1;
                    self.ws();
                }
                b'{' => {
                    self.i -= 1;
                    return Some(auto_found(n));
                }
                _ => return None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{top_level_start, usage_object_at};
    use super::*;

    /// What the forward reading gives: the key found by the backward scan, its value parsed.
    fn forward(s: &[u8]) -> Option<Option<Found>> {
        let start = top_level_start(s, AUTO_KEY)?;
        usage_object_at(&s[start..]).map(|(found, _)| found)
    }

    /// What `top_usage` gives, completed by the forward reading as its callers do.
    fn backward(s: &[u8]) -> Option<Option<Found>> {
        let (found, _, _) = top_usage(s)?;
        Some(match found {
            TopUsage::Plain(found) => Some(found),
            TopUsage::Elsewhere(start) => usage_object_at(&s[start..]).and_then(|(f, _)| f),
        })
    }

    fn counts(input: u64, output: u64) -> Option<Option<Found>> {
        Some(Some(Found {
            input: Some(input),
            output: Some(output),
        }))
    }

    #[test]
    fn provider_answers_are_read_plainly() {
        let openai = br#"{"id":"x","choices":[{"message":{"content":"hi \"usage\": {}"}}],"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,"prompt_tokens_details":{"cached_tokens":0,"audio_tokens":0},"completion_tokens_details":{"reasoning_tokens":0}},"service_tier":"default","system_fingerprint":"fp_ee1d74bde0"}"#;
        let anthropic = br#"{"id":"msg","content":[{"type":"text","text":"usage"}],"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":5,"output_tokens":13,"service_tier":"standard"}}"#;
        let spaced = b"{ \"usage\" : { \"prompt_tokens\" : 120 ,\n \"completion_tokens\" : 380 } , \"n\" : -1.5e3 , \"ok\" : true }\n";
        for (doc, want) in [
            (&openai[..], counts(19, 10)),
            (anthropic, counts(30, 13)),
            (spaced, counts(120, 380)),
        ] {
            assert!(
                matches!(top_usage(doc), Some((TopUsage::Plain(_), _, _))),
                "{}",
                String::from_utf8_lossy(doc)
            );
            assert_eq!(backward(doc), want);
            assert_eq!(forward(doc), want);
        }
        let (_, open, end) = top_usage(spaced).unwrap();
        assert_eq!(&spaced[open..open + 7], b"\"usage\"");
        assert_eq!(spaced[end - 1], b'}');
    }

    #[test]
    fn values_not_read_plainly_are_left_to_the_forward_reading() {
        for doc in [
            &br#"{"usage":{"prompt_tokens":"12","completion_tokens":3}}"#[..],
            br#"{"usage":{"prompt_tokens":1.5,"completion_tokens":3}}"#,
            br#"{"usage":{"prompt_tokens":12,"completion\u005ftokens":3}}"#,
            br#"{"usage":{"prompt_tokens":012}}"#,
            br#"{"usage":null}"#,
            br#"{"usage":12}"#,
            br#"{"usage":{"prompt_tokens":null}}"#,
            br#"{"usage":{"x":nope,"prompt_tokens":1}}"#,
        ] {
            assert!(
                matches!(top_usage(doc), Some((TopUsage::Elsewhere(_), _, _))),
                "{}",
                String::from_utf8_lossy(doc)
            );
            assert_eq!(
                backward(doc),
                forward(doc),
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    #[test]
    fn nested_or_missing_usage_is_not_taken() {
        for doc in [
            &br#"{"message":{"usage":{"input_tokens":1}}}"#[..],
            br#"{"a":"\"usage\":{\"prompt_tokens\":1}"}"#,
            br#"{"type":"usage"}"#,
            br#"{}"#,
            br#"usage":{"a":1}}"#,
            br#"{"usage":{"a":1}"#,
            br#"}}}}"#,
            br#""#,
        ] {
            assert_eq!(
                top_usage(doc).map(|(f, _, _)| f),
                None,
                "{}",
                String::from_utf8_lossy(doc)
            );
        }
    }

    /// Random documents (and random damage to them): wherever the backward reading answers,
    /// its counts are the forward reading's.
    #[test]
    fn agrees_with_the_forward_reading() {
        let mut rng = fastrand::Rng::with_seed(18);
        let scalars = [
            "0",
            "17",
            "-3",
            "2.5",
            "1e3",
            "true",
            "null",
            "\"s\"",
            "\"a\\\"}\"",
            "\"\\\\\"",
        ];
        let keys = [
            "prompt_tokens",
            "completion_tokens",
            "input_tokens",
            "output_tokens",
            "cache_read_input_tokens",
            "total_tokens",
            "x",
            "usage",
            "a\\\"b",
        ];
        let ws = ["", " ", "\n", " \t"];
        let mut checked = 0;
        for _ in 0..20_000 {
            let mut members = Vec::new();
            for _ in 0..rng.usize(0..5) {
                let key = keys[rng.usize(..keys.len())];
                let value = match rng.u8(0..4) {
                    0 => format!("{{\"k\":{}}}", scalars[rng.usize(..scalars.len())]),
                    1 => format!("[{},{{}}]", scalars[rng.usize(..scalars.len())]),
                    _ => scalars[rng.usize(..scalars.len())].to_string(),
                };
                let w = ws[rng.usize(..ws.len())];
                members.push(format!("{w}\"{key}\"{w}:{w}{value}{w}"));
            }
            let usage = format!("{{{}}}", members.join(","));
            let mut top = vec![format!("\"id\":\"x\""), format!("\"usage\":{usage}")];
            for _ in 0..rng.usize(0..3) {
                top.push(format!(
                    "\"{}\":{}",
                    keys[rng.usize(..keys.len())],
                    scalars[rng.usize(..scalars.len())]
                ));
            }
            let mut doc =
                format!("{{{}}}{}", top.join(","), ws[rng.usize(..ws.len())]).into_bytes();
            if rng.u8(0..4) == 0 && !doc.is_empty() {
                let at = rng.usize(..doc.len());
                doc[at] = b"{}[]\",:\\ 1a"[rng.usize(..11)];
            }
            // The counts the answer is given (no key and a value without counts alike). A
            // damaged document may lose counts the lenient forward scan found (it reads any
            // text around the object), never get other ones.
            let got = backward(&doc).flatten().unwrap_or_default();
            let want = forward(&doc).flatten().unwrap_or_default();
            let valid = serde_json::from_slice::<serde_json::Value>(&doc).is_ok();
            let plain = matches!(top_usage(&doc), Some((TopUsage::Plain(_), _, _)));
            if valid || plain || got != Found::default() {
                assert_eq!(got, want, "{}", String::from_utf8_lossy(&doc));
            }
            checked += usize::from(valid);
        }
        assert!(checked > 10_000, "{checked} valid documents");
    }
}
