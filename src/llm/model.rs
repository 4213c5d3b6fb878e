//! The model a request asks for, read from the first bytes of its JSON body, for metric labels
//! (`model_latency_seconds{provider,model}`) and per-model prices.
//!
//! Only a prefix of the body is needed: the proxy hands over what it has seen so far and never
//! waits for the rest. OpenAI and Anthropic clients usually send `"model"` first, so the first
//! chunk answers; when it comes after a large `"messages"` array the prefix may not reach it, and
//! the answer is `None` (the caller labels it `other`, or tries again with a longer prefix).

use super::{skip_ws, string_end, value_end};

/// The top-level `"model"` string of a JSON request body, from its first bytes.
///
/// The body may be cut anywhere: a prefix that already holds the whole top-level `"model"` string
/// answers, one cut inside it (or before it) does not. `"model"` keys nested in other values
/// (`"messages"`, `"metadata"`, tool schemas...) do not count, nor does a `"model"` that is not a
/// string. Escapes are decoded, in the key as in the value. With duplicate keys the first one
/// wins (the later ones may not have arrived). This is a scanner, not a validator: a malformed
/// prefix answers `None` or, if the model came before the fault, the model.
pub fn model_from_prefix(prefix: &[u8]) -> Option<String> {
    let s = prefix;
    let mut i = skip_ws(s, 0);
    if s.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(s, i);
        // A key, or the end of the object (no model then).
        if s.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(s, i)?;
        let is_model = key_is(&s[i..key_end], "model");
        i = skip_ws(s, key_end);
        if s.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(s, i + 1);
        let end = value_end(s, i)?;
        if is_model {
            if s[i] != b'"' {
                return None;
            }
            return serde_json::from_slice::<String>(&s[i..end]).ok();
        }
        // A scalar that runs to the end of the prefix may itself be cut: what follows it is
        // unknown, so stop there rather than guess.
        i = skip_ws(s, end);
        match s.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

/// Whether the JSON string literal `quoted` (quotes included) decodes to `want`.
fn key_is(quoted: &[u8], want: &str) -> bool {
    let inner = &quoted[1..quoted.len() - 1];
    if !inner.contains(&b'\\') {
        return inner == want.as_bytes();
    }
    serde_json::from_slice::<String>(quoted).is_ok_and(|k| k == want)
}

/// A model name fit for a metric label: 1 to 64 characters of `[A-Za-z0-9._:/-]` (enough for
/// `gpt-4o-2024-08-06`, `claude-3-5-sonnet-latest`, `meta-llama/Llama-3.1-8B`,
/// `ft:gpt-4o-mini:org::id`), else `None`, and the caller counts it as `other`. This bounds
/// what a client can write into a label; the number of distinct labels is the metrics' cap.
pub fn label_safe(model: &str) -> Option<&str> {
    let ok = !model.is_empty()
        && model.len() <= 64
        && model
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b':' | b'/' | b'-'));
    ok.then_some(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(s: &str) -> Option<String> {
        model_from_prefix(s.as_bytes())
    }

    #[test]
    fn reads_the_model_of_a_whole_body() {
        let body = r#"{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}"#;
        assert_eq!(model(body).as_deref(), Some("gpt-4o-mini"));
        assert_eq!(
            model("\n {\n  \"model\"\t:\r\n \"claude-3-5-haiku-latest\"\n}").as_deref(),
            Some("claude-3-5-haiku-latest")
        );
    }

    #[test]
    fn a_prefix_cut_after_the_model_string_answers() {
        let body = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"a long one"#;
        assert_eq!(model(body).as_deref(), Some("gpt-4o"));
        assert_eq!(model(r#"{"model":"gpt-4o""#).as_deref(), Some("gpt-4o"));
    }

    #[test]
    fn a_prefix_cut_before_or_inside_the_model_string_does_not() {
        let body = r#"{"messages":[],"model":"gpt-4o"}"#;
        for cut in 0..body.len() - 1 {
            assert_eq!(model(&body[..cut]), None, "cut {cut}");
        }
        assert_eq!(model(r#"{"model":"gpt-4"#), None);
        assert_eq!(model(r#"{"model":"gpt-4\"#), None);
        assert_eq!(model(r#"{"mod"#), None);
        assert_eq!(model(r#"{"model":"#), None);
    }

    #[test]
    fn every_cut_after_the_model_string_answers() {
        let body = r#"{"model":"o3-mini","stream":true,"messages":[{"content":"x"}]}"#;
        let end = body.find(r#"","#).unwrap() + 1;
        for cut in 0..=body.len() {
            let want = (cut >= end).then(|| "o3-mini".to_string());
            assert_eq!(model(&body[..cut]), want, "cut {cut}");
        }
    }

    #[test]
    fn nested_model_keys_do_not_count() {
        let body = r#"{"messages":[{"role":"user","model":"nested-1"}],
            "metadata":{"model":"nested-2"},"tools":[{"parameters":{"properties":{"model":{"type":"string"}}}}],
            "model":"top-level"}"#;
        assert_eq!(model(body).as_deref(), Some("top-level"));
        // Cut before the top-level key: the nested ones are never taken instead.
        let cut = body.rfind(r#""model""#).unwrap();
        assert_eq!(model(&body[..cut]), None);
        assert_eq!(model(r#"{"metadata":{"model":"x"}}"#), None);
    }

    #[test]
    fn the_model_need_not_be_the_first_key() {
        let body = r#"{"max_tokens":1024,"temperature":0.0,"stream":false,"stop":null,
            "system":"be \"brief\" {not json}","model":"claude-sonnet-4-5"}"#;
        assert_eq!(model(body).as_deref(), Some("claude-sonnet-4-5"));
    }

    #[test]
    fn escapes_are_decoded_in_keys_and_values() {
        assert_eq!(
            model(r#"{"model":"we\"ird\\name"}"#).as_deref(),
            Some("we\"ird\\name")
        );
        assert_eq!(
            model(r#"{"mod\u0065l":"gpt-4o"}"#).as_deref(),
            Some("gpt-4o")
        );
        assert_eq!(
            model(r#"{"note":"\"model\":\"fake\"","model":"real"}"#).as_deref(),
            Some("real")
        );
    }

    #[test]
    fn no_model_or_not_a_string_is_none() {
        for body in [
            "",
            "[]",
            "{}",
            r#"{"model":null}"#,
            r#"{"model":42}"#,
            r#"{"model":{"name":"x"}}"#,
            r#"{"messages":[]}"#,
            r#""model""#,
            "not json at all",
            r#"{"a" "model":"x"}"#,
        ] {
            assert_eq!(model(body), None, "{body}");
        }
    }

    #[test]
    fn the_first_of_duplicate_keys_wins() {
        assert_eq!(model(r#"{"model":"a","model":"b"}"#).as_deref(), Some("a"));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(18);
        let alphabet = br#"{}[]":,\ model01.-"#;
        for _ in 0..20_000 {
            let len = rng.usize(0..48);
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    if rng.bool() {
                        alphabet[rng.usize(0..alphabet.len())]
                    } else {
                        rng.u8(..)
                    }
                })
                .collect();
            let _ = model_from_prefix(&s);
            let mut prefixed = br#"{"model":"#.to_vec();
            prefixed.extend_from_slice(&s);
            let _ = model_from_prefix(&prefixed);
        }
    }

    #[test]
    fn label_safe_keeps_only_short_plain_names() {
        for ok in [
            "gpt-4o-2024-08-06",
            "claude-3-5-sonnet-latest",
            "meta-llama/Llama-3.1-8B",
            "ft:gpt-4o-mini:org::id",
            "a",
        ] {
            assert_eq!(label_safe(ok), Some(ok));
        }
        let long = "m".repeat(65);
        for bad in [
            "",
            "gpt 4",
            "gpt\"4",
            "modèle",
            "a{b}",
            "x\n",
            long.as_str(),
        ] {
            assert_eq!(label_safe(bad), None, "{bad:?}");
        }
        assert!(label_safe(&"m".repeat(64)).is_some());
    }
}
