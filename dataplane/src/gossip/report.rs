//! `pleiades sim gossip`: the figures HashiCorp publishes for Serf and Lifeguard, measured on the
//! simulator with the node's own state machines, and a convergence plot as SVG.

use std::fmt::Write as _;

use super::epidemic;
use super::sim::Sim;
use super::swim::{Event, Millis, State, SwimConfig};
use crate::chart::Frame;

pub struct ReportConfig {
    pub nodes: u64,
    pub loss: f64,
    pub seed: u64,
}

pub struct Report {
    pub nodes: u64,
    /// (ms after the join, fraction of nodes that know the newcomer).
    pub join_curve: Vec<(Millis, f64)>,
    pub join_complete: Option<Millis>,
    pub leave_complete: Option<Millis>,
    pub detection_first: Option<Millis>,
    pub detection_complete: Option<Millis>,
    pub false_failures_swim: usize,
    pub false_failures_lifeguard: usize,
    pub messages_per_node_per_second: f64,
    pub bytes_per_node_per_second: f64,
    /// During the 10 s after the join: what spreading one event costs.
    pub join_bytes_per_node_per_second: f64,
    /// Coordinates learned from probe acks inside the gossip simulation, nodes on a plane.
    pub vivaldi_median: f64,
    pub vivaldi_p90: f64,
    /// Serf's dissemination model: (nodes, time to 99.99 %), at sizes the full simulation
    /// cannot hold in memory too.
    pub model_convergence: Vec<(u64, Option<Millis>)>,
}

/// Nodes the Vivaldi part simulates, and for how long.
const VIVALDI_NODES: u64 = 200;
const VIVALDI_RUN: Millis = 120_000;

const SAMPLE_EVERY: Millis = 100;
const LIMIT: Millis = 60_000;

fn settled(config: &ReportConfig) -> Sim {
    let mut sim = Sim::meshed(config.nodes, SwimConfig::lan(), config.seed);
    sim.step = 20;
    sim.loss = config.loss;
    sim.run_until(2_000);
    sim
}

/// Healthy nodes declared dead in 120 s among 100 nodes with `loss` and 10 overloaded nodes.
pub fn false_failures(lifeguard: bool, loss: f64, seed: u64) -> usize {
    let mut sim = Sim::meshed(100, SwimConfig { lifeguard, ..SwimConfig::lan() }, seed);
    sim.loss = loss;
    for id in (10..=100).step_by(10) {
        sim.slow.insert(id, 10_000);
    }
    sim.run_until(120_000);
    sim.false_failures()
}

pub fn run(config: &ReportConfig) -> Report {
    // A join: how fast the newcomer becomes known everywhere.
    let mut sim = settled(config);
    let before = sim.traffic();
    sim.run_until(sim.now + 5_000);
    let rest = sim.traffic() - before;
    let per_node_second = |value: u64, seconds: f64| value as f64 / config.nodes as f64 / seconds;
    let joining = sim.traffic();

    let newcomer = config.nodes + 1;
    let start = sim.now;
    sim.join(newcomer, SwimConfig::lan(), 1);
    let mut join_curve = vec![(0, 0.0)];
    let mut join_complete = None;
    while sim.now < start + LIMIT && join_complete.is_none() {
        sim.run_until(sim.now + SAMPLE_EVERY);
        let views = sim.views(newcomer);
        let knowing = views.iter().filter(|v| **v == Some(State::Alive)).count();
        let fraction = knowing as f64 / views.len().max(1) as f64;
        join_curve.push((sim.now - start, fraction));
        if fraction >= 0.9999 {
            join_complete = Some(sim.now - start);
        }
    }
    sim.run_until(start + 10_000);
    let join_traffic = sim.traffic() - joining;
    // A leave.
    if let Some(node) = sim.nodes.get_mut(&2) {
        node.leave(sim.now);
    }
    let leave_complete = sim.time_until_all_see(2, State::Left, LIMIT);

    // A crash: first declaration and everyone knowing.
    let victim = config.nodes / 2;
    sim.crashed.insert(victim);
    let crashed_at = sim.now;
    let detection_complete = sim.time_until_all_see(victim, State::Dead, 2 * LIMIT);
    let detection_first = sim
        .events
        .iter()
        .find(|(at, _, e)| *at >= crashed_at && *e == Event::Failed(victim))
        .map(|(at, _, _)| at - crashed_at);

    let mut plane = Sim::meshed(VIVALDI_NODES, SwimConfig::lan(), config.seed);
    plane.place_on_plane(config.seed);
    plane.step = 20;
    plane.run_until(VIVALDI_RUN);
    let errors = plane.coordinate_errors();
    let lan = SwimConfig::lan();
    let model_convergence = [100, 1_000, 10_000, config.nodes]
        .into_iter()
        .map(|n| (n, epidemic::time_to_converge(&epidemic::spread(n as usize, &lan, config.loss, config.seed, LIMIT))))
        .collect();
    Report {
        nodes: config.nodes,
        join_curve,
        join_complete,
        leave_complete,
        detection_first,
        detection_complete,
        false_failures_swim: false_failures(false, config.loss.max(0.1), config.seed),
        false_failures_lifeguard: false_failures(true, config.loss.max(0.1), config.seed),
        messages_per_node_per_second: per_node_second(rest.messages, 5.0),
        bytes_per_node_per_second: per_node_second(rest.bytes, 5.0),
        join_bytes_per_node_per_second: per_node_second(join_traffic.bytes, 10.0),
        vivaldi_median: errors[errors.len() / 2],
        vivaldi_p90: errors[errors.len() * 9 / 10],
        model_convergence,
    }
}

fn seconds(ms: Option<Millis>) -> String {
    ms.map(|ms| format!("{:.1} s", ms as f64 / 1000.0)).unwrap_or_else(|| "not within the limit".into())
}

impl Report {
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "gossip simulation: {} nodes, LAN profile (probe 1 s, gossip 200 ms to 3)", self.nodes);
        let _ = writeln!(
            out,
            "  join known by 99.99 %      {}   (Serf's simulator: ~2.2 s at 1,000 nodes)",
            seconds(self.join_complete)
        );
        let _ = writeln!(out, "  leave known by all         {}", seconds(self.leave_complete));
        let _ = writeln!(out, "  crash first declared       {}", seconds(self.detection_first));
        let _ = writeln!(out, "  crash known by all         {}", seconds(self.detection_complete));
        let _ = writeln!(
            out,
            "  healthy nodes declared dead (100 nodes, >=10 % loss, 10 slow, 120 s): SWIM {}, Lifeguard {}",
            self.false_failures_swim, self.false_failures_lifeguard
        );
        let _ = writeln!(
            out,
            "  traffic per node           at rest {:.1} messages/s, {:.0} B/s; spreading a join {:.0} B/s (protobuf)",
            self.messages_per_node_per_second, self.bytes_per_node_per_second, self.join_bytes_per_node_per_second
        );
        let _ = writeln!(
            out,
            "  Vivaldi relative error     median {:.1} %, p90 {:.1} % ({VIVALDI_NODES} nodes on a plane, {} s of probes)",
            self.vivaldi_median * 100.0,
            self.vivaldi_p90 * 100.0,
            VIVALDI_RUN / 1000
        );
        let model: Vec<String> =
            self.model_convergence.iter().map(|(n, t)| format!("{n} nodes {}", seconds(*t))).collect();
        let _ = writeln!(out, "  Serf's dissemination model, 99.99 %: {}", model.join(", "));
        out
    }

    /// The join's spread over time as an SVG line chart.
    pub fn svg(&self) -> String {
        let frame = Frame { width: 640.0, height: 360.0, left: 60.0, bottom: 40.0, top: 30.0, right: 20.0 };
        let last = self.join_curve.last().map(|(t, _)| *t).unwrap_or(1).max(1) as f64;
        let mut svg = frame.open(&format!("Join of one node reaching {} nodes (fraction that knows it)", self.nodes));
        for tick in 0..=4 {
            let fraction = f64::from(tick) / 4.0;
            let t = fraction * last;
            let (percent, seconds) = (format!("{:.0} %", fraction * 100.0), format!("{:.1} s", t / 1000.0));
            frame.ticks(&mut svg, frame.y(fraction), &percent, frame.x(t, last), &seconds);
        }
        let points = self.join_curve.iter().map(|(t, f)| (frame.x(*t as f64, last), frame.y(*f)));
        Frame::polyline(&mut svg, points, "#1f77b4");
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_report_has_every_figure_and_a_plot() {
        let report = run(&ReportConfig { nodes: 60, loss: 0.0, seed: 1 });
        assert!(report.join_complete.is_some_and(|t| t < 10_000));
        assert!(report.leave_complete.is_some());
        assert!(report.detection_first.is_some() && report.detection_complete.is_some());
        assert!(report.false_failures_lifeguard < report.false_failures_swim);
        assert!(report.vivaldi_median < 0.15);
        let text = report.text();
        assert!(text.contains("join known by 99.99 %") && text.contains("Lifeguard"));
        let svg = report.svg();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(report.join_curve.last().map(|(_, f)| *f >= 0.9999), Some(true));
    }
}
