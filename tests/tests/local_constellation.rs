//! `pleiades up`: a local constellation started, used through the CLI (kv, status, bench),
//! stopped with Ctrl-C (SIGINT), and started again on the same directory with its data.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pleiades_tests::{pleiades_binary, ProcessGroup};

fn cli(dir: &Path, addr: &str, args: &[&str]) -> (bool, String, String) {
    let output = Command::new(pleiades_binary())
        .args(args)
        .args(["--addr", addr, "--ca-cert"])
        .arg(dir.join("tls/ca.crt"))
        .output()
        .expect("run pleiades");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// Starts `pleiades up` and waits for its "is up" line.
fn up(dir: &Path, base_port: u16) -> ProcessGroup {
    let mut child = ProcessGroup::spawn(
        Command::new(pleiades_binary())
            .args(["up", "--nodes", "3", "--base-port", &base_port.to_string(), "--data-dir"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )
    .expect("start pleiades up");
    let stdout = child.0.stdout.take().expect("stdout");
    let (ready, wait) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("is up") {
                let _ = ready.send(());
            }
        }
    });
    wait.recv_timeout(Duration::from_secs(90)).expect("the constellation came up");
    child
}

fn interrupt_and_wait(mut child: ProcessGroup) {
    child.signal(libc::SIGINT);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            assert!(status.success(), "pleiades up exited with {status}");
            return;
        }
        assert!(Instant::now() < deadline, "pleiades up did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn up_serves_the_cli_stops_on_ctrl_c_and_restarts_with_its_data() {
    let dir = tempfile::tempdir().unwrap();
    // Ports base+1..3 (QUIC) and base+81..83 (HTTP); a random high base keeps clear of others.
    let base_port = 20_000 + (std::process::id() % 20_000) as u16;
    let addr = format!("127.0.0.1:{}", base_port + 2);
    let child = up(dir.path(), base_port);

    let (ok, out, err) = cli(dir.path(), &addr, &["kv", "put", "greeting", "hello"]);
    assert!(ok, "{err}");
    assert!(out.starts_with("OK version 1"), "{out}");
    let (ok, out, err) = cli(dir.path(), &addr, &["kv", "cas", "greeting", "bonjour", "--expect", "hello"]);
    assert!(ok && out.starts_with("OK version 2"), "{out}{err}");
    let (ok, _, err) = cli(dir.path(), &addr, &["kv", "cas", "greeting", "hallo", "--expect", "hello"]);
    assert!(!ok && err.contains("not the expected value"), "{err}");
    let (ok, out, err) = cli(dir.path(), &addr, &["status"]);
    assert!(ok, "{err}");
    assert!(out.contains("MEMBERS") && out.contains("RANGES") && out.contains("leader"), "{out}");
    assert_eq!(out.matches(" up ").count(), 3, "three members up:\n{out}");
    let (ok, out, err) = cli(
        dir.path(),
        &addr,
        &["bench", "--workload", "mixed", "--duration", "2", "--keys", "200", "--concurrency", "4", "--json"],
    );
    assert!(ok, "{err}");
    let report: serde_json::Value = serde_json::from_str(out.trim()).expect("bench --json prints JSON");
    assert!(report["ops_per_second"].as_f64().unwrap() > 0.0, "{report}");
    assert_eq!(report["errors"], 0, "{report}");
    assert!(report["writes"]["p99_us"].as_u64().is_some() && report["reads"]["p50_us"].as_u64().is_some(), "{report}");
    interrupt_and_wait(child);

    // Same directory, same constellation, same data.
    let child = up(dir.path(), base_port);
    let (ok, out, err) = cli(dir.path(), &addr, &["kv", "get", "greeting"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "bonjour");
    interrupt_and_wait(child);

    // A different size on the same directory is refused, not silently re-founded.
    let output = Command::new(pleiades_binary())
        .args(["up", "--nodes", "5", "--base-port", &base_port.to_string(), "--data-dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("use the same --nodes"));
}
