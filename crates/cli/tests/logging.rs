//! The CLI's log output: library warnings reach standard error, and
//! `--log-level`/`-v` show more. Runs the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

fn hologram(args: &[&str], docker_config: &std::path::Path) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hologram"))
        .args(args)
        .env("DOCKER_CONFIG", docker_config)
        .env_remove("HOLOGRAM_LOG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A registry address nothing listens on: connections are refused at once.
fn dead_registry() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    format!("{addr}/x/y:1")
}

#[test]
fn errors_and_debug_detail_reach_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let image = dead_registry();
    let (ok, quiet) = hologram(&["uor", "resolve", "--plain-http", &image], tmp.path());
    assert!(!ok);
    assert!(quiet.contains("hologram: "), "{quiet}");
    assert!(
        !quiet.contains("attempt failed"),
        "debug detail without -v: {quiet}"
    );
    let (ok, loud) = hologram(
        &[
            "--log-level",
            "debug",
            "uor",
            "resolve",
            "--plain-http",
            &image,
        ],
        tmp.path(),
    );
    assert!(!ok);
    assert!(loud.contains("attempt failed"), "{loud}");
    let (_, vv) = hologram(
        &["-vv", "uor", "resolve", "--plain-http", &image],
        tmp.path(),
    );
    assert!(vv.contains("attempt failed"), "{vv}");
}
