//! `cargo +nightly fuzz run config`: drives [`tollgate::fuzzing::config`] (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(
    init: {
        // A group with a health check builds a TLS connector, which loads the system's CA
        // certificates on every load: 95% of the time of a run. No certificates: 15-25x faster.
        std::env::set_var("SSL_CERT_FILE", "/dev/null");
        std::env::set_var("SSL_CERT_DIR", "/nonexistent");
    },
    |data: &[u8]| tollgate::fuzzing::config(data)
);
