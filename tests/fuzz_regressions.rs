//! The fuzz targets' inputs, replayed on the stable toolchain by `cargo test`: every seed of
//! `fuzz/corpus/<target>/` and every crash input kept in `fuzz/regressions/<target>/` goes
//! through the same driver as in `cargo fuzz` (`tollgate::fuzzing`, src/fuzzing.rs), which must
//! return without panicking. So the seeds stay valid inputs as the code changes, and a crash
//! once found and fixed stays fixed. Fuzzing itself: scripts/fuzz.sh, docs/development.md#fuzzing.

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

/// The input files under `fuzz/<kind>/<target>/`, by target (dot files left out).
fn inputs(kind: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(fuzz_dir().join(kind)) else {
        return out;
    };
    for target in targets {
        let target = target.unwrap().path();
        let name = target.file_name().unwrap().to_string_lossy().into_owned();
        for file in std::fs::read_dir(&target).unwrap() {
            let file = file.unwrap().path();
            if file.is_file() && !file.file_name().unwrap().to_string_lossy().starts_with('.') {
                out.push((name.clone(), file));
            }
        }
    }
    out.sort();
    out
}

/// Run every input of `kind` through its target; the panics, each with its file.
fn replay(kind: &str) -> usize {
    let mut failures = Vec::new();
    let all = inputs(kind);
    for (target, file) in &all {
        let data = std::fs::read(file).unwrap();
        let run = std::panic::catch_unwind(|| tollgate::fuzzing::run(target, &data));
        match run {
            Ok(true) => {}
            Ok(false) => failures.push(format!("{}: no fuzz target `{target}`", file.display())),
            Err(_) => failures.push(format!("{}: target `{target}` panicked", file.display())),
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    all.len()
}

#[test]
fn every_seed_runs_through_its_target() {
    let n = replay("corpus");
    assert!(
        n > 0,
        "no seeds under {}",
        fuzz_dir().join("corpus").display()
    );
}

#[test]
fn every_crash_found_stays_fixed() {
    replay("regressions");
}

#[test]
fn every_target_has_seeds_and_the_corpus_stays_small() {
    let seeds = inputs("corpus");
    for (name, _) in tollgate::fuzzing::TARGETS {
        assert!(
            seeds.iter().any(|(t, _)| t == name),
            "fuzz target `{name}` has no seed in fuzz/corpus/{name}/"
        );
        assert!(
            fuzz_dir().join(format!("fuzz_targets/{name}.rs")).is_file(),
            "fuzz target `{name}` has no fuzz/fuzz_targets/{name}.rs"
        );
    }
    // Seeds only: what a fuzzing run adds stays out of the repository (scripts/fuzz.sh).
    let total: u64 = seeds
        .iter()
        .map(|(_, f)| std::fs::metadata(f).unwrap().len())
        .sum();
    assert!(
        total < 100 * 1024,
        "fuzz/corpus/ holds {total} bytes: keep it to a handful of small seeds (< 100 KB)"
    );
}

/// The identity target's configs load, and their keys identify their tenants (else the target
/// would only ever exercise unknown keys).
#[test]
fn identity_target_knows_its_keys() {
    use tollgate::fuzzing::{identity_configs, ACME_KEY, BETA_KEY};
    for c in identity_configs() {
        let tenant = |key| c.identity.tenant_by_key(key).map(|t| t.id.to_string());
        assert_eq!(tenant(ACME_KEY).as_deref(), Some("acme"));
        assert_eq!(tenant(BETA_KEY).as_deref(), Some("beta"));
    }
}

/// Found by the `retry_after` target (fuzz/regressions/retry_after/accept-encoding-q-nan):
/// `q=nan` parsed as an f32 NaN, which `clamp` keeps, so `parse_accept_encoding` returned a
/// q outside 0..=1. It now counts as 0, as any q that is not a number does.
#[test]
fn accept_encoding_q_nan_is_zero() {
    for value in ["gzip;q=nan", "gzip;q=NaN", "gzip; q = -nan"] {
        assert_eq!(
            tollgate::compress::parse_accept_encoding(value),
            vec![("gzip".to_string(), 0.0)],
            "{value}"
        );
    }
    tollgate::fuzzing::retry_after(b"gzip;q=nan");
}
