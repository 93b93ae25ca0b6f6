//! `pleiades bench compare`: Pleiades and etcd side by side on this machine. Each system gets
//! three members on loopback and the same closed-loop workloads, one system after the other so
//! neither competes with the other for the cores or the disk.

use std::fmt::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;

use super::etcd::EtcdCluster;
use super::{load, run, BenchReport, Shape, Target};
use crate::chart::Frame;
use crate::cli::{CompareArgs, CompareWorkload, UpArgs};
use crate::client::cluster::{Cluster, ClusterConfig};
use crate::client::ClientConfig;

/// What to measure: every combination of these, for each system.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub value_sizes: Vec<usize>,
    pub concurrencies: Vec<u32>,
    pub workloads: Vec<CompareWorkload>,
    pub duration: u64,
    pub keys: u64,
}

impl Plan {
    pub fn new(args: &CompareArgs) -> anyhow::Result<Self> {
        let plan = Plan {
            value_sizes: given_or(&args.value_sizes, if args.quick { &[256] } else { &[64, 256, 4096] }),
            concurrencies: given_or(&args.concurrencies, &[1, 16, 64, 256]),
            workloads: given_or(
                &args.workloads,
                if args.quick { &[CompareWorkload::Write, CompareWorkload::Read] } else { &CompareWorkload::ALL },
            ),
            duration: args.duration.unwrap_or(if args.quick { 4 } else { 10 }),
            keys: args.keys.unwrap_or(if args.quick { 2_000 } else { 10_000 }),
        };
        anyhow::ensure!(plan.duration > 0, "--duration must be at least 1 second");
        anyhow::ensure!(plan.keys > 0, "--keys must be at least 1");
        anyhow::ensure!(plan.concurrencies.iter().all(|c| (1..=4096).contains(c)), "--concurrencies must be 1 to 4096");
        // etcd refuses requests over 1.5 MiB; Pleiades' default payload limit is larger.
        anyhow::ensure!(
            plan.value_sizes.iter().all(|v| (1..=1024 * 1024).contains(v)),
            "--value-sizes must be 1 byte to 1 MiB"
        );
        Ok(plan)
    }

    fn runs(&self) -> usize {
        self.value_sizes.len() * self.workloads.len() * self.concurrencies.len()
    }
}

/// A list flag as given, or its default when it was not.
fn given_or<T: Clone>(given: &[T], default: &[T]) -> Vec<T> {
    if given.is_empty() { default } else { given }.to_vec()
}

/// One system's figures for one cell of the plan.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    pub ops_per_second: f64,
    pub p50_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub errors: u64,
    /// The first error messages, if any.
    pub sample_errors: Vec<String>,
}

impl From<&BenchReport> for Figures {
    fn from(report: &BenchReport) -> Self {
        let latency = |pick: fn(&super::LatencySummary) -> u64| report.overall.as_ref().map_or(0, pick);
        Figures {
            ops_per_second: report.ops_per_second,
            p50_us: latency(|s| s.p50_us),
            p99_us: latency(|s| s.p99_us),
            p999_us: latency(|s| s.p999_us),
            errors: report.errors,
            sample_errors: report.sample_errors.clone(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub value_size: usize,
    pub workload: CompareWorkload,
    pub concurrency: u32,
    pub pleiades: Figures,
    pub etcd: Figures,
    /// Pleiades' throughput over etcd's.
    pub ratio: f64,
}

#[derive(Debug, Serialize)]
pub struct Comparison {
    pub plan: Plan,
    pub etcd_version: String,
    pub rows: Vec<Row>,
}

type Cell = (usize, CompareWorkload, u32);

/// Runs the whole plan on one system: per value size, load the keys, then every workload at
/// every concurrency, lowest first (so the highest runs on a system that has run all lower).
async fn measure(target: &Target, plan: &Plan, system: &str, progress: bool) -> anyhow::Result<Vec<(Cell, Figures)>> {
    let mut done = Vec::new();
    for &value_size in &plan.value_sizes {
        if progress {
            eprintln!("{system}: loading {} keys of {value_size} bytes…", plan.keys);
        }
        load(target, plan.keys, value_size, 64, None).await?;
        for &workload in &plan.workloads {
            for &concurrency in &plan.concurrencies {
                let (kind, consistency) = workload.workload();
                let shape = Shape {
                    workload: kind,
                    consistency,
                    concurrency,
                    keys: plan.keys,
                    value_size,
                    duration: plan.duration,
                    load: false,
                    prefix: None,
                };
                if progress {
                    eprintln!(
                        "{system}: {workload:?} at concurrency {concurrency}, {value_size}-byte values ({}/{})",
                        done.len() + 1,
                        plan.runs()
                    );
                }
                let report = run(target, &shape, false).await?;
                done.push(((value_size, workload, concurrency), Figures::from(&report)));
            }
        }
    }
    Ok(done)
}

async fn measure_pleiades(
    plan: &Plan,
    dir: &Path,
    base_port: u16,
    progress: bool,
) -> anyhow::Result<Vec<(Cell, Figures)>> {
    let up = UpArgs { nodes: 3, data_dir: dir.to_path_buf(), base_port, initial_ranges: 4, log_level: "warn".into() };
    if progress {
        eprintln!("pleiades: starting 3 nodes under {}…", dir.display());
    }
    let constellation = crate::local::start(&up).await?;
    let identity = Some(constellation.admin());
    let config = ClusterConfig {
        seeds: constellation.nodes.iter().map(|n| n.quic.clone()).collect(),
        server_name: Some("localhost".into()),
        ca_cert: constellation.ca.clone(),
        identity: identity.clone(),
        attempt_timeout: Duration::from_secs(5),
        deadline: Duration::from_secs(15),
    };
    let connect = Arc::new(ClientConfig {
        addr: constellation.nodes[0].quic.clone(),
        server_name: Some("localhost".into()),
        ca_cert: constellation.ca.clone(),
        identity,
        timeout: Duration::from_secs(5),
    });
    let measured = match Cluster::connect(config).await {
        Ok(cluster) => {
            let measured =
                measure(&Target::Pleiades { cluster: cluster.clone(), connect }, plan, "pleiades", progress).await;
            cluster.close().await;
            measured
        }
        Err(e) => Err(anyhow::anyhow!("cannot reach the constellation: {e}")),
    };
    constellation.stop().await;
    measured
}

async fn measure_etcd(
    plan: &Plan,
    binary: &Path,
    dir: &Path,
    base_port: u16,
    progress: bool,
) -> anyhow::Result<Vec<(Cell, Figures)>> {
    if progress {
        eprintln!("etcd: starting 3 members under {}…", dir.display());
    }
    let mut etcd = EtcdCluster::start(binary, dir, base_port).await?;
    let measured = match etcd_client::Client::connect(&etcd.endpoints, None).await {
        Ok(client) => measure(&Target::Etcd(Box::new(client.kv_client())), plan, "etcd", progress).await,
        Err(e) => Err(anyhow::anyhow!("cannot reach etcd at {:?}: {e}", etcd.endpoints)),
    };
    etcd.stop().await;
    measured
}

/// `etcd --version`'s first line.
async fn etcd_version(binary: &Path) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(binary).arg("--version").output().await.map_err(|e| {
        anyhow::anyhow!(
            "cannot run etcd ({}): {e}; scripts/setup.sh installs Debian's etcd-server, or pass --etcd-bin",
            binary.display()
        )
    })?;
    let first = String::from_utf8_lossy(&output.stdout).lines().next().unwrap_or("etcd").trim().to_string();
    Ok(first.replace("Version: ", ""))
}

/// Runs the plan on Pleiades, then on etcd, and pairs the figures.
pub async fn compare(args: &CompareArgs, progress: bool) -> anyhow::Result<Comparison> {
    let plan = Plan::new(args)?;
    anyhow::ensure!(args.base_port < u16::MAX - 300, "--base-port {} leaves no room for both systems", args.base_port);
    let etcd_version = etcd_version(&args.etcd_bin).await?;
    // A directory of its own, removed at the end, unless one is given to keep.
    let (_temporary, dir): (Option<tempfile::TempDir>, PathBuf) = match &args.data_dir {
        Some(dir) => (None, dir.clone()),
        None => {
            let temporary = tempfile::Builder::new().prefix("pleiades-bench-").tempdir()?;
            let dir = temporary.path().to_path_buf();
            (Some(temporary), dir)
        }
    };
    let pleiades = measure_pleiades(&plan, &dir.join("pleiades"), args.base_port, progress).await?;
    let etcd = measure_etcd(&plan, &args.etcd_bin, &dir.join("etcd"), args.base_port + 200, progress).await?;
    let rows = pleiades
        .into_iter()
        .zip(etcd)
        .map(|(((value_size, workload, concurrency), pleiades), (_, etcd))| Row {
            value_size,
            workload,
            concurrency,
            ratio: pleiades.ops_per_second / etcd.ops_per_second.max(f64::MIN_POSITIVE),
            pleiades,
            etcd,
        })
        .collect();
    Ok(Comparison { plan, etcd_version, rows })
}

fn millis(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

impl Comparison {
    /// One table per value size.
    pub fn tables(&self) -> String {
        let mut out = String::new();
        for &value_size in &self.plan.value_sizes {
            let _ = writeln!(
                out,
                "\n{value_size}-byte values, {} keys, {} s per run, 3 members each (Pleiades vs {})",
                self.plan.keys, self.plan.duration, self.etcd_version
            );
            let _ = writeln!(
                out,
                "{:<8} {:>5} | {:>9} {:>7} {:>7} {:>7} {:>5} | {:>9} {:>7} {:>7} {:>7} {:>5} | {:>6}",
                "workload",
                "conc",
                "pleiades",
                "p50 ms",
                "p99 ms",
                "p99.9",
                "err",
                "etcd",
                "p50 ms",
                "p99 ms",
                "p99.9",
                "err",
                "×etcd"
            );
            for row in self.rows.iter().filter(|r| r.value_size == value_size) {
                let (p, e) = (&row.pleiades, &row.etcd);
                let _ = writeln!(
                    out,
                    "{:<8} {:>5} | {:>9.0} {:>7} {:>7} {:>7} {:>5} | {:>9.0} {:>7} {:>7} {:>7} {:>5} | {:>6.2}",
                    format!("{:?}", row.workload).to_lowercase(),
                    row.concurrency,
                    p.ops_per_second,
                    millis(p.p50_us),
                    millis(p.p99_us),
                    millis(p.p999_us),
                    p.errors,
                    e.ops_per_second,
                    millis(e.p50_us),
                    millis(e.p99_us),
                    millis(e.p999_us),
                    e.errors,
                    row.ratio
                );
            }
        }
        for row in self.rows.iter().filter(|r| r.pleiades.errors + r.etcd.errors > 0) {
            let first = row.pleiades.sample_errors.first().or(row.etcd.sample_errors.first());
            let _ = writeln!(
                out,
                "errors in {:?} at concurrency {} ({} bytes): {}",
                row.workload,
                row.concurrency,
                row.value_size,
                first.map_or("", String::as_str)
            );
        }
        out
    }

    /// Throughput against p99 by concurrency: a panel per value size and workload, a line per
    /// system through its points in order of concurrency.
    pub fn svg(&self) -> String {
        const PANEL_W: f64 = 360.0;
        const PANEL_H: f64 = 260.0;
        let (columns, rows) = (self.plan.workloads.len().max(1), self.plan.value_sizes.len().max(1));
        let mut svg = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
             <text x=\"10\" y=\"20\" font-size=\"15\">Pleiades (blue) vs {} (orange): throughput (x, ops/s) against p99 (y, ms); points labelled by concurrency</text>\n",
            PANEL_W * columns as f64,
            PANEL_H * rows as f64 + 30.0,
            self.etcd_version
        );
        let frame = Frame { width: PANEL_W, height: PANEL_H, left: 56.0, bottom: 30.0, top: 30.0, right: 16.0 };
        for (row, &value_size) in self.plan.value_sizes.iter().enumerate() {
            for (column, &workload) in self.plan.workloads.iter().enumerate() {
                let cells: Vec<&Row> =
                    self.rows.iter().filter(|r| r.value_size == value_size && r.workload == workload).collect();
                let max_ops =
                    cells.iter().map(|r| r.pleiades.ops_per_second.max(r.etcd.ops_per_second)).fold(1.0, f64::max);
                let max_p99 = cells.iter().map(|r| r.pleiades.p99_us.max(r.etcd.p99_us)).max().unwrap_or(1).max(1)
                    as f64
                    / 1000.0;
                let _ = writeln!(
                    svg,
                    "<g transform=\"translate({:.0},{:.0})\">",
                    column as f64 * PANEL_W,
                    row as f64 * PANEL_H + 30.0
                );
                svg.push_str(&frame.open(&format!("{workload:?}, {value_size}-byte values")));
                for tick in 0..=4 {
                    let fraction = f64::from(tick) / 4.0;
                    frame.ticks(
                        &mut svg,
                        frame.y(fraction),
                        &format!("{:.1}", max_p99 * fraction),
                        frame.x(max_ops * fraction, max_ops),
                        &format!("{:.0}", max_ops * fraction),
                    );
                }
                for (color, pleiades) in [("#1f77b4", true), ("#ff7f0e", false)] {
                    let points: Vec<(f64, f64, u32)> = cells
                        .iter()
                        .map(|r| {
                            let figures = if pleiades { &r.pleiades } else { &r.etcd };
                            (
                                frame.x(figures.ops_per_second, max_ops),
                                frame.y(figures.p99_us as f64 / 1000.0 / max_p99),
                                r.concurrency,
                            )
                        })
                        .collect();
                    Frame::polyline(&mut svg, points.iter().map(|&(x, y, _)| (x, y)), color);
                    for (x, y, concurrency) in points {
                        let _ = writeln!(
                            svg,
                            "<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"3\" fill=\"{color}\"/><text x=\"{:.1}\" y=\"{:.1}\" font-size=\"10\" fill=\"{color}\">{concurrency}</text>",
                            x + 4.0,
                            y - 4.0
                        );
                    }
                }
                svg.push_str("</svg>\n</g>\n");
            }
        }
        svg.push_str("</svg>\n");
        svg
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn figures(ops: f64, p99_us: u64) -> Figures {
        Figures {
            ops_per_second: ops,
            p50_us: p99_us / 2,
            p99_us,
            p999_us: p99_us * 2,
            errors: 0,
            sample_errors: vec![],
        }
    }

    fn comparison() -> Comparison {
        let plan = Plan {
            value_sizes: vec![256],
            concurrencies: vec![1, 16],
            workloads: vec![CompareWorkload::Write],
            duration: 1,
            keys: 10,
        };
        let rows = [(1, 900.0, 1_200.0), (16, 4_000.0, 3_000.0)]
            .into_iter()
            .map(|(concurrency, p, e)| Row {
                value_size: 256,
                workload: CompareWorkload::Write,
                concurrency,
                pleiades: figures(p, 5_000),
                etcd: figures(e, 9_000),
                ratio: p / e,
            })
            .collect();
        Comparison { plan, etcd_version: "etcd 3.4.23".into(), rows }
    }

    #[test]
    fn the_table_shows_both_systems_and_the_ratio_per_concurrency() {
        let table = comparison().tables();
        let lines: Vec<&str> = table.lines().filter(|l| l.starts_with("write")).collect();
        assert_eq!(lines.len(), 2, "{table}");
        assert!(lines[0].contains("900") && lines[0].contains("1200") && lines[0].ends_with("0.75"), "{}", lines[0]);
        assert!(lines[1].contains("4000") && lines[1].contains("3000") && lines[1].ends_with("1.33"), "{}", lines[1]);
        assert!(table.contains("256-byte values"), "{table}");
    }

    #[test]
    fn the_chart_has_a_line_and_labelled_points_per_system() {
        let svg = comparison().svg();
        assert_eq!(svg.matches("<polyline").count(), 2, "{svg}");
        assert_eq!(svg.matches("<circle").count(), 4, "{svg}");
        assert!(svg.contains(">16</text>"), "points are labelled by concurrency");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn quick_plans_a_short_run_and_flags_override_it() {
        let args = |extra: &[&str]| {
            use clap::Parser;
            let mut argv = vec!["pleiades", "bench", "compare", "--quick"];
            argv.extend_from_slice(extra);
            match crate::cli::Cli::parse_from(argv).command {
                crate::cli::Command::Bench(crate::cli::BenchArgs {
                    action: Some(crate::cli::BenchAction::Compare(args)),
                    ..
                }) => args,
                other => panic!("not bench compare: {other:?}"),
            }
        };
        let quick = Plan::new(&args(&[])).unwrap();
        assert_eq!(quick.value_sizes, vec![256]);
        assert_eq!(quick.workloads, vec![CompareWorkload::Write, CompareWorkload::Read]);
        assert!(quick.runs() as u64 * quick.duration * 2 < 120, "the quick runs fit in two minutes");
        let chosen = Plan::new(&args(&["--value-sizes", "64,4096", "--concurrencies", "2"])).unwrap();
        assert_eq!((chosen.value_sizes, chosen.concurrencies), (vec![64, 4096], vec![2]));
        assert!(Plan::new(&args(&["--concurrencies", "0"])).is_err());
        assert!(Plan::new(&args(&["--duration", "0"])).is_err());
    }
}
