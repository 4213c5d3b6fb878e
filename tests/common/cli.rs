//! tollgate's command line, run as a child process: `check`, `explain`, `hash-key`, a `run`
//! expected to fail. Each returns (exit code, stdout, stderr).

use std::path::Path;
use std::process::Command;

/// Path of the tollgate binary cargo built for these tests.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_tollgate")
}

/// Run `tollgate ARGS...` with extra environment variables and wait for it to exit:
/// (exit code, or -1 if killed by a signal; stdout; stderr).
pub fn run_cli<S: AsRef<std::ffi::OsStr>>(
    args: impl IntoIterator<Item = S>,
    env: &[(&str, &str)],
) -> (i32, String, String) {
    let out = Command::new(bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("run tollgate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Run `tollgate check FILE`, with the secrets the shipped examples ask the operator for.
pub fn check_file(path: &Path) -> (i32, String, String) {
    check_file_with_env(path, &[])
}

/// [`check_file`] with more environment variables.
pub fn check_file_with_env(path: &Path, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut all = vec![("TOLLGATE_ADMIN_TOKEN", "example-token")];
    all.extend_from_slice(env);
    run_cli([std::ffi::OsStr::new("check"), path.as_os_str()], &all)
}

/// Write `yaml` to a temp file (`broken.yaml`) and run `tollgate check` on it.
pub fn check_yaml(yaml: &str) -> (i32, String, String) {
    check_yaml_with_env(yaml, &[])
}

/// [`check_yaml`] with more environment variables.
pub fn check_yaml_with_env(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.yaml");
    std::fs::write(&p, yaml).unwrap();
    check_file_with_env(&p, env)
}
