//! `cargo +nightly fuzz run purge_body`: drives [`tollgate::fuzzing::purge_body`] (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::purge_body(data));
