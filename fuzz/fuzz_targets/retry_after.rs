//! `cargo +nightly fuzz run retry_after`: drives [`tollgate::fuzzing::retry_after`] (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::retry_after(data));
