//! `pleiades sim gossip`: the figures and the convergence plot from the binary, and clear
//! errors for impossible parameters.

use std::process::Command;

use pleiades_tests::pleiades_binary;

fn sim(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(pleiades_binary()).args(["sim", "gossip"]).args(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn the_simulator_prints_figures_and_writes_a_plot() {
    let dir = tempfile::tempdir().unwrap();
    let svg = dir.path().join("convergence.svg");
    let (ok, out, err) = sim(&["--nodes", "30", "--seed", "3", "--svg", svg.to_str().unwrap()]);
    assert!(ok, "{out}{err}");
    for figure in ["join known by 99.99 %", "crash known by all", "SWIM", "Lifeguard", "Vivaldi relative error"] {
        assert!(out.contains(figure), "no {figure:?} in:\n{out}");
    }
    let plot = std::fs::read_to_string(&svg).unwrap();
    assert!(plot.starts_with("<svg") && plot.contains("<polyline"), "{plot}");
}

#[test]
fn impossible_parameters_are_clear_errors() {
    let (ok, _, err) = sim(&["--loss", "1.5"]);
    assert!(!ok && err.contains("--loss must be at least 0 and below 1"), "{err}");
    let (ok, _, err) = sim(&["--nodes", "3"]);
    assert!(!ok && err.contains("--nodes"), "{err}");
    let (ok, _, err) = sim(&["--nodes", "10", "--svg", "/nonexistent-dir/plot.svg"]);
    assert!(!ok && err.contains("cannot write /nonexistent-dir/plot.svg"), "{err}");
}
