//! Request ids: keep the client's `X-Request-Id` when it is sane, otherwise make one.
//!
//! A client id is kept only if it is 1..=128 characters of `[A-Za-z0-9._:@/+=-]`: it ends up in
//! logs and error bodies, so anything that could forge a log line or a header is replaced.

/// Header carrying the id both ways.
pub const HEADER: &str = "x-request-id";

/// Longest client-supplied id that is kept.
pub const MAX_LEN: usize = 128;

/// The client's id if acceptable, else a fresh one.
pub fn accept_or_generate(client: Option<&[u8]>) -> String {
    match client {
        Some(id) if is_acceptable(id) => String::from_utf8_lossy(id).into_owned(),
        _ => generate(),
    }
}

/// Whether a client-supplied id is kept as is.
pub fn is_acceptable(id: &[u8]) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@/+=-".contains(b))
}

/// 128 random bits as 32 lowercase hex digits (UUID-sized, no dashes).
pub fn generate() -> String {
    crate::textfmt::hex128(fastrand::u128(..))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_ids_and_replaces_others() {
        assert_eq!(accept_or_generate(Some(b"abc-123")), "abc-123");
        let fresh = accept_or_generate(Some(b"bad\"id"));
        assert_eq!(fresh.len(), 32);
        assert!(fresh.bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(accept_or_generate(None), accept_or_generate(None));
        assert_eq!(accept_or_generate(Some(&[b'a'; 129])).len(), 32);
        assert_eq!(accept_or_generate(Some(b"")).len(), 32);
    }
}
