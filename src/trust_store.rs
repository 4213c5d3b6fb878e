//! Where OpenSSL finds the CA certificates that TLS upstreams (and `rediss://`) are verified
//! against: the system's hashed directory, read a certificate at a time, rather than its bundle
//! file, read whole into every TLS context.
//!
//! OpenSSL's default trust store is the bundle (`/etc/ssl/certs/ca-certificates.crt`, about
//! 140 certificates), parsed in full by every TLS context that asks for the default paths.
//! Pingora builds two at start-up (its HTTP/1 and HTTP/2 upstream connectors), each asking
//! twice (the `openssl` crate's builder, then Pingora), and more for a health-checked group on
//! each load. An idle tollgate held 2.9 MB of parsed certificates that way, of its 20.6 MB
//! resident, whether or not any upstream spoke TLS.
//!
//! The system keeps the same certificates one per file in a hashed directory
//! (`/etc/ssl/certs/<subject hash>.0`, which `update-ca-certificates` maintains), where
//! OpenSSL looks an issuer up when a handshake needs it, and keeps what it loaded. So when the
//! operator has named no file (`SSL_CERT_FILE` unset) and such a directory exists, tollgate
//! sets `SSL_CERT_FILE=/dev/null` and trust comes from the directory (after any of
//! `SSL_CERT_DIR`'s own). A certificate
//! appended to the bundle by hand, without `update-ca-certificates` or `c_rehash`, is then
//! not trusted: setting `SSL_CERT_FILE` to the bundle gives the whole-file behaviour back.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};

/// What [`choose`] decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustStore {
    /// The operator set `SSL_CERT_FILE`: OpenSSL reads that file, as it always does.
    Chosen,
    /// No directory with hashed names: OpenSSL's default (the bundle file) stays.
    Bundle,
    /// These hashed directories, looked up a certificate at a time, and no file.
    Hashed(Vec<PathBuf>),
}

/// Decide from the values of `SSL_CERT_FILE` and `SSL_CERT_DIR` and the system's candidate
/// directories.
///
/// The system's hashed directories stand in for the bundle, so there must be one. An
/// operator's `SSL_CERT_DIR` comes first and is kept: with OpenSSL's defaults it adds to the
/// bundle, and here it adds to the system's directory, which holds the same certificates.
pub fn choose(
    cert_file: Option<&OsStr>,
    cert_dir: Option<&OsStr>,
    candidates: &[PathBuf],
) -> TrustStore {
    if cert_file.is_some_and(|f| !f.is_empty()) {
        return TrustStore::Chosen;
    }
    let system: Vec<&PathBuf> = candidates.iter().filter(|d| has_hashed_names(d)).collect();
    if system.is_empty() {
        return TrustStore::Bundle;
    }
    let mut dirs: Vec<PathBuf> = cert_dir
        .filter(|d| !d.is_empty())
        .map(|list| std::env::split_paths(list).collect())
        .unwrap_or_default();
    for dir in system {
        if !dirs.contains(dir) {
            dirs.push(dir.clone());
        }
    }
    TrustStore::Hashed(dirs)
}

/// Whether `dir` holds at least one certificate under OpenSSL's hashed name: eight hex digits,
/// a dot, a sequence number (`5ad8a5d6.0`).
pub fn has_hashed_names(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| is_hashed_name(&e.file_name()))
}

fn is_hashed_name(name: &OsStr) -> bool {
    let Some(name) = name.to_str() else {
        return false;
    };
    let Some((hash, seq)) = name.split_once('.') else {
        return false;
    };
    hash.len() == 8
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !seq.is_empty()
        && seq.bytes().all(|b| b.is_ascii_digit())
}

/// Apply [`choose`] to this process's environment; call it before the first TLS context is
/// built and before other threads read the environment (`server::build_server` does, first).
/// Returns the decision, for the start-up log.
pub fn use_hashed_directory() -> TrustStore {
    let candidates: Vec<PathBuf> = openssl_probe::candidate_cert_dirs()
        .map(Path::to_path_buf)
        .collect();
    let choice = choose(
        std::env::var_os("SSL_CERT_FILE").as_deref(),
        std::env::var_os("SSL_CERT_DIR").as_deref(),
        &candidates,
    );
    if let TrustStore::Hashed(dirs) = &choice {
        let joined: OsString = std::env::join_paths(dirs).unwrap_or_default();
        std::env::set_var("SSL_CERT_FILE", "/dev/null");
        std::env::set_var("SSL_CERT_DIR", joined);
    }
    choice
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_with(names: &[&str]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for n in names {
            std::fs::write(d.path().join(n), b"").unwrap();
        }
        d
    }

    #[test]
    fn an_operators_file_is_kept() {
        let hashed = dir_with(&["5ad8a5d6.0"]);
        let got = choose(
            Some(OsStr::new("/etc/ssl/certs/ca-certificates.crt")),
            None,
            &[hashed.path().to_path_buf()],
        );
        assert_eq!(got, TrustStore::Chosen);
    }

    #[test]
    fn a_hashed_directory_replaces_the_bundle() {
        let hashed = dir_with(&["ca-certificates.crt", "5ad8a5d6.0", "5ad8a5d6.1"]);
        let plain = dir_with(&["ca-certificates.crt", "README"]);
        let got = choose(
            None,
            None,
            &[plain.path().to_path_buf(), hashed.path().to_path_buf()],
        );
        assert_eq!(got, TrustStore::Hashed(vec![hashed.path().to_path_buf()]));
        // An empty SSL_CERT_FILE names no file.
        let got = choose(Some(OsStr::new("")), None, &[hashed.path().to_path_buf()]);
        assert_eq!(got, TrustStore::Hashed(vec![hashed.path().to_path_buf()]));
    }

    #[test]
    fn without_hashed_names_the_bundle_stays() {
        let plain = dir_with(&[
            "ca-certificates.crt",
            "5ad8a5d.0",
            "5ad8a5dg.0",
            "5ad8a5d6.",
        ]);
        assert_eq!(
            choose(None, None, &[plain.path().to_path_buf()]),
            TrustStore::Bundle
        );
        assert_eq!(choose(None, None, &[]), TrustStore::Bundle);
    }

    #[test]
    fn an_operators_directories_come_first_and_the_systems_follow() {
        let mine = dir_with(&["0a1b2c3d.0"]);
        let system = dir_with(&["5ad8a5d6.0"]);
        let list =
            std::env::join_paths([mine.path(), Path::new("/nonexistent"), system.path()]).unwrap();
        let got = choose(None, Some(&list), &[system.path().to_path_buf()]);
        assert_eq!(
            got,
            TrustStore::Hashed(vec![
                mine.path().to_path_buf(),
                PathBuf::from("/nonexistent"),
                system.path().to_path_buf()
            ])
        );
        // An operator's hashed directory alone does not stand in for the system's bundle.
        let plain = dir_with(&["ca-certificates.crt"]);
        let got = choose(
            None,
            Some(mine.path().as_os_str()),
            &[plain.path().to_path_buf()],
        );
        assert_eq!(got, TrustStore::Bundle);
    }
}
