//! `pleiades bench compare` against real etcd, in a tiny configuration so it keeps working. Its
//! figures are never asserted: benchmarks report numbers, tests check behaviour.

use std::process::{Command, Stdio};

use pleiades_tests::{pleiades_binary, ProcessGroup};

#[test]
fn bench_compare_drives_a_constellation_and_an_etcd_cluster_and_reports_both() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("compare.svg");
    // Ports base+1..3 and base+81..83 (Pleiades), base+201..213 (etcd); clear of the ranges
    // other tests pick theirs from.
    let base_port = 42_000 + (std::process::id() % 15_000) as u16;
    let mut child = ProcessGroup::spawn(
        Command::new(pleiades_binary())
            .args(["bench", "compare", "--value-sizes", "64", "--concurrencies", "1,4", "--workloads", "write,stale"])
            .args(["--duration", "1", "--keys", "50", "--json", "--base-port", &base_port.to_string(), "--svg"])
            .arg(&svg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    )
    .unwrap();
    let (stdout, stderr) = {
        use std::io::Read;
        let (mut out, mut err) = (String::new(), String::new());
        child.0.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        child.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
        (out, err)
    };
    let status = child.0.wait().unwrap();
    assert!(status.success(), "bench compare failed: {stderr}");
    let comparison: serde_json::Value = serde_json::from_str(stdout.trim()).expect("--json prints JSON");
    let rows = comparison["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 4, "every workload at every concurrency: {comparison}");
    for row in rows {
        for system in ["pleiades", "etcd"] {
            assert!(row[system]["ops_per_second"].as_f64().unwrap() > 0.0, "{system} served nothing: {row}");
            assert_eq!(row[system]["errors"], 0, "{system} failed requests: {row}");
        }
        assert!(row["ratio"].as_f64().is_some(), "{row}");
    }
    assert!(comparison["etcd_version"].as_str().unwrap().starts_with("etcd"), "{comparison}");
    let chart = std::fs::read_to_string(&svg).expect("the chart is written");
    assert_eq!(chart.matches("<polyline").count(), 4, "a line per system per panel");
}
