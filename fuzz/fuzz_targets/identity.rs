//! `cargo +nightly fuzz run identity`: drives [`tollgate::fuzzing::identity`] (see src/fuzzing.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tollgate::fuzzing::identity(data));
