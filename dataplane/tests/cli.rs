//! The `pleiades` binary's command line without a node: help, version, and clear errors.
//! (Building this test also makes cargo build the binary the `tests/` crate runs.)

use std::process::Command;

fn pleiades(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_pleiades")).args(args).output().expect("run pleiades");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn help_lists_every_command() {
    let (ok, out, _) = pleiades(&["--help"]);
    assert!(ok);
    for command in ["node", "info", "health", "ping", "kv", "up", "status", "bench"] {
        assert!(out.contains(command), "{command} missing from:\n{out}");
    }
    let (ok, out, _) = pleiades(&["--version"]);
    assert!(ok);
    assert_eq!(out.trim(), format!("pleiades {}", env!("CARGO_PKG_VERSION")));
}

#[test]
fn a_missing_ca_certificate_is_a_clear_error() {
    let (ok, _, err) = pleiades(&["info", "--addr", "127.0.0.1:9", "--ca-cert", "/nonexistent/ca.crt"]);
    assert!(!ok);
    assert!(err.contains("cannot read /nonexistent/ca.crt"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn an_unreachable_node_times_out_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pleiades::transport::tls::CaFiles::in_dir(dir.path());
    ca.create("local").unwrap();
    let ca = ca.cert.to_str().unwrap();
    // Nothing listens on this loopback port.
    let (ok, _, err) = pleiades(&["health", "--addr", "127.0.0.1:9", "--ca-cert", ca, "--timeout-ms", "300"]);
    assert!(!ok);
    assert!(err.contains("cannot reach the node at 127.0.0.1:9"), "{err}");
}

#[test]
fn bad_arguments_are_refused_by_the_parser() {
    let (ok, _, err) = pleiades(&["ping", "--count", "many"]);
    assert!(!ok);
    assert!(err.contains("invalid value 'many'"), "{err}");
    let (ok, _, err) = pleiades(&["kv", "frobnicate"]);
    assert!(!ok);
    assert!(err.contains("unrecognized subcommand"), "{err}");
}
