//! `cargo +nightly fuzz run cache_control`: drives [`tollgate::fuzzing::cache_control`] (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::cache_control(data));
