//! What a run produces: markdown tables, the JSON record and a hand-written SVG plot.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use plotters::coord::Shift;
use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use serde::Serialize;

use crate::inside::Step;
use crate::phases::{Burst, HopStats, InFlight, Latency, RealisticTeam, ScalePoint, SweepPoint};
use crate::stats::{Pct, ms, ratio};

/// The figures of one NATS setup (R1 single server, or R3 cluster).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Section {
    pub label: String,
    pub replicas: u8,
    pub floor_hops: usize,
    pub floor: Option<Pct>,
    /// The floor's tapped series split as push0's per-hop series is: the first publish seen,
    /// each hop, the last hop's receipt (`floor_hops + 2` legs).
    pub floor_legs: Vec<Pct>,
    /// Hops of the split team's path from submission to proof, and the floor of as many.
    pub split_hops: usize,
    pub split_floor: Option<Pct>,
    pub latency: Option<Latency>,
    pub overhead_p50_x: Option<f64>,
    pub overhead_p99_x: Option<f64>,
    /// Overhead per block of the split team over the floor of its hops, at p50.
    pub block_p50_x: Option<f64>,
    pub sweep: Vec<SweepPoint>,
    pub saturation_per_s: Option<f64>,
    pub burst: Option<Burst>,
    pub scaling: Vec<ScalePoint>,
    pub realistic: Vec<RealisticTeam>,
    pub in_flight: Option<InFlight>,
    /// Peak RSS per process role (MiB) over this section's phases
    pub rss_peak_mb: BTreeMap<String, f64>,
}

impl Section {
    pub fn tasks_per_s(&self) -> f64 {
        let swept = self
            .sweep
            .iter()
            .map(|p| p.achieved_per_s)
            .fold(0.0, f64::max);
        self.burst
            .as_ref()
            .map_or(0.0, |b| b.tasks_per_s)
            .max(swept)
    }

    pub fn efficiency_at(&self, slots: usize) -> Option<f64> {
        self.scaling
            .iter()
            .find(|p| p.slots == slots)
            .map(|p| p.efficiency_pct)
    }

    /// Largest RSS of any push0 service process (MiB; the NATS server is not one), over the
    /// run and with blocks in flight.
    pub fn max_service_rss(&self) -> f64 {
        let in_flight = self.in_flight.iter().flat_map(|f| f.rss_mb.iter());
        self.rss_peak_mb
            .iter()
            .chain(in_flight)
            .filter(|(role, _)| role.as_str() != "nats-server")
            .map(|(_, mb)| *mb)
            .fold(0.0, f64::max)
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Machine {
    pub cores: usize,
    pub cpu: String,
    pub memory_mb: u64,
    pub kernel: String,
    pub nats_server: String,
}

impl Machine {
    pub fn detect() -> Self {
        use procfs::Current;
        let nats = push0_natsd::nats_server_binary()
            .ok()
            .and_then(|b| std::process::Command::new(b).arg("--version").output().ok())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_default();
        Self {
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu: procfs::CpuInfo::current()
                .ok()
                .and_then(|c| c.model_name(0).map(str::to_string))
                .unwrap_or_default(),
            memory_mb: procfs::Meminfo::current().map_or(0, |m| m.mem_total / (1024 * 1024)),
            kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            nats_server: nats,
        }
    }
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub started_at: String,
    /// The commit the harness ran from (`+changes` when the tree differed from it).
    pub commit: String,
    pub command: String,
    pub machine: Machine,
    pub sections: Vec<Section>,
    /// Why the R3 section did not finish, if it did not
    pub r3_error: Option<String>,
    pub summary: String,
}

/// A markdown table, first row the header.
pub fn md_table(rows: &[Vec<String>]) -> String {
    let mut out = String::new();
    for (i, row) in rows.iter().enumerate() {
        let _ = writeln!(out, "| {} |", row.join(" | "));
        if i == 0 {
            let _ = writeln!(out, "|{}", "---|".repeat(row.len()));
        }
    }
    out
}

fn header(cells: &[&str]) -> Vec<String> {
    cells.iter().map(|c| c.to_string()).collect()
}

fn f1(v: f64) -> String {
    format!("{v:.1}")
}

fn roles_cells(m: &BTreeMap<String, f64>, fmt: fn(f64) -> String) -> String {
    m.iter()
        .map(|(r, v)| format!("{r} {}", fmt(*v)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The markdown for one section.
pub fn section_markdown(s: &Section) -> String {
    let mut out = format!("## {}\n\n", s.label);
    if let (Some(floor), Some(lat)) = (&s.floor, &s.latency) {
        let mut rows = vec![header(&[
            "series (ms)",
            "p50",
            "p90",
            "p99",
            "max",
            "p50 ÷ floor",
            "p99 ÷ floor",
        ])];
        let row = |name: &str, p: &Pct, floor: &Pct| {
            let mut r = vec![name.to_string()];
            r.extend(p.ms_cells());
            r.push(format!("{:.2}×", ratio(p.p50, floor.p50)));
            r.push(format!("{:.2}×", ratio(p.p99, floor.p99)));
            r
        };
        let hops = |n: usize| format!("floor: {n} work-queue hops");
        rows.push(row(&hops(s.floor_hops), floor, floor));
        rows.push(row(
            "overhead per task (`single`, 1 task)",
            &lat.task,
            floor,
        ));
        if let Some(split) = &s.split_floor {
            rows.push(row(&hops(s.split_hops), split, split));
        }
        rows.push(row(
            "overhead per block (`split` 4/2, 7 tasks)",
            &lat.block_split,
            s.split_floor.as_ref().unwrap_or(floor),
        ));
        let _ = writeln!(
            out,
            "Closed loop, one block at a time, 0 ms simulated provers; {} samples per series. \
             Each overhead is divided by the floor above it: a task's path has {} hops, a \
             split block's {} (ingest's, then the scheduler's, the gateway's and the \
             aggregator's for each level of its tree).\n",
            lat.task.n, s.floor_hops, s.split_hops
        );
        out.push_str(&md_table(&rows));
        out.push('\n');
        out.push_str(&hops_markdown(&lat.hops, &s.floor_legs));
        if !lat.steps.is_empty() {
            out.push_str(&steps_markdown(
                &lat.steps,
                floor.p50 as f64 / s.floor_hops.max(1) as f64,
            ));
        }
    }
    if !s.sweep.is_empty() {
        let mut rows = vec![header(&[
            "offered blocks/s",
            "achieved/s",
            "overhead p50 ms",
            "p90",
            "p99",
            "max",
            "CPU % of a core",
        ])];
        for p in &s.sweep {
            let mut r = vec![f1(p.offered_per_s), f1(p.achieved_per_s)];
            r.extend(p.overhead.ms_cells());
            r.push(roles_cells(&p.cpu_pct, |v| format!("{v:.0}")));
            rows.push(r);
        }
        let _ = writeln!(
            out,
            "Open loop, team `single` (1 task per block), 2 gateways × 32 slots, 0 ms provers. \
             Saturation (highest rate sustained at ≥ 95 %): {} blocks/s.\n",
            s.saturation_per_s.map_or("-".into(), f1)
        );
        out.push_str(&md_table(&rows));
        out.push('\n');
    }
    if let Some(b) = &s.burst {
        let _ = writeln!(
            out,
            "Burst: {} blocks submitted at once to `single` + `split` 4/2 on one chain ({} tasks), \
             0 ms provers: **{:.0} tasks/s**, {:.0} blocks/s over {:.2} s.\n",
            b.blocks, b.tasks, b.tasks_per_s, b.blocks_per_s, b.secs
        );
        let mut rows = vec![vec![
            "role".to_string(),
            "CPU % of a core".into(),
            "CPU µs per task".into(),
        ]];
        for (role, pct) in &b.cpu_pct {
            let per = b.cpu_us_per_task.get(role).copied().unwrap_or(0.0);
            rows.push(vec![role.clone(), format!("{pct:.0}"), format!("{per:.0}")]);
        }
        out.push_str(&md_table(&rows));
        out.push('\n');
    }
    if !s.scaling.is_empty() {
        let mut rows = vec![header(&[
            "slots",
            "teams",
            "gateway processes",
            "tasks",
            "seconds",
            "tasks/s",
            "efficiency %",
        ])];
        for p in &s.scaling {
            rows.push(vec![
                p.slots.to_string(),
                p.teams.to_string(),
                p.gateway_processes.to_string(),
                p.tasks.to_string(),
                format!("{:.2}", p.secs),
                f1(p.tasks_per_s),
                f1(p.efficiency_pct),
            ]);
        }
        out.push_str("Scaling, 1 s simulated provers, every slot busy from the start:\n\n");
        out.push_str(&md_table(&rows));
        out.push('\n');
    }
    if !s.realistic.is_empty() {
        let mut rows = vec![header(&[
            "team",
            "workflow",
            "blocks",
            "proving p50 ms",
            "overhead p50 ms",
            "overhead p99 ms",
            "overhead ÷ proving p50",
            "p99",
        ])];
        for t in &s.realistic {
            rows.push(vec![
                t.team.clone(),
                t.workflow.clone(),
                t.blocks.to_string(),
                ms(t.proving.p50),
                ms(t.overhead.p50),
                ms(t.overhead.p99),
                format!("{:.3} %", t.overhead_pct_p50),
                format!("{:.3} %", t.overhead_pct_p99),
            ]);
        }
        out.push_str("Realistic workload:\n\n");
        out.push_str(&md_table(&rows));
        out.push('\n');
    }
    let mut rows = vec![vec![
        "role".to_string(),
        "peak RSS MiB over the run".into(),
        "RSS MiB with blocks in flight".into(),
    ]];
    for (role, mb) in &s.rss_peak_mb {
        let inflight = s
            .in_flight
            .as_ref()
            .and_then(|f| f.rss_mb.get(role))
            .map_or("-".to_string(), |v| f1(*v));
        rows.push(vec![role.clone(), f1(*mb), inflight]);
    }
    if let Some(f) = &s.in_flight {
        let _ = writeln!(
            out,
            "Memory (largest process of each role): in flight = {} blocks accepted and planned \
             for 2 teams (5 leaf tasks each) with provers that never finish, {:.1} s to accept.\n",
            f.blocks, f.secs_to_accept
        );
    } else {
        out.push_str("Memory (largest process of each role):\n\n");
    }
    out.push_str(&md_table(&rows));
    out
}

/// Inside the hops: each role's steps per block of the per-hop series, beside the floor's
/// time per hop (`floor_hop_us`, its p50 divided by its hops).
fn steps_markdown(steps: &[Step], floor_hop_us: f64) -> String {
    let mut rows = vec![header(&[
        "role",
        "step",
        "per block",
        "mean µs",
        "µs per block",
    ])];
    for s in steps {
        rows.push(vec![
            s.role.clone(),
            s.step.clone(),
            format!("{:.2}", s.per_block),
            format!("{:.0}", s.mean_us),
            format!("{:.0}", s.us_per_block()),
        ]);
    }
    format!(
        "Inside the hops, from each service's metrics over the per-hop series (`single`, one \
         block at a time): the wait from a message's stream time to its handler, the handler's \
         time, and each request to the server the handler waited on (a KV get, create or \
         compare-and-set update of a bucket; a publish until its ack, by schema). A floor hop \
         takes {:.0} µs at p50 (its whole p50 over its hops). The gateway acks on its own, so only its \
         round trips are listed.\n\n{}\n",
        floor_hop_us,
        md_table(&rows)
    )
}

/// push0's path split hop by hop beside the floor's, both split the same way (a core
/// subscriber stamps every publish as the server routes it). `floor` has the floor's legs;
/// with another number of hops than push0's four, only push0's column is shown.
fn hops_markdown(h: &HopStats, floor: &[Pct]) -> String {
    let ours = [
        ("publish of the block → seen on the bus", &h.submit),
        ("hop 1: ingest (block → accepted)", &h.ingest),
        ("hop 2: scheduler (accepted → task)", &h.scheduler),
        ("hop 3: gateway (task → result, − prover)", &h.gateway),
        ("hop 4: aggregator (result → proof)", &h.aggregator),
        ("proof seen → received by the harness", &h.deliver),
    ];
    let beside = floor.len() == ours.len();
    let mut rows = vec![header(&[
        "step (ms)",
        "push0 p50",
        "floor p50",
        "push0 − floor",
        "push0 p90",
        "floor p90",
    ])];
    let cell = |p: Option<&Pct>, f: fn(&Pct) -> u64| p.map_or("–".to_string(), |p| ms(f(p)));
    let (mut sum, mut floor_sum) = (0, 0);
    for (i, (name, p)) in ours.iter().enumerate() {
        let f = beside.then(|| &floor[i]);
        sum += p.p50;
        floor_sum += f.map_or(0, |f| f.p50);
        let diff = f.map_or("–".to_string(), |f| {
            format!("{:+.2}", (p.p50 as f64 - f.p50 as f64) / 1000.0)
        });
        rows.push(vec![
            name.to_string(),
            ms(p.p50),
            cell(f, |p| p.p50),
            diff,
            ms(p.p90),
            cell(f, |p| p.p90),
        ]);
    }
    rows.push(vec![
        "sum of the p50s".into(),
        ms(sum),
        if beside { ms(floor_sum) } else { "–".into() },
        if beside {
            format!("{:+.2}", (sum as f64 - floor_sum as f64) / 1000.0)
        } else {
            "–".into()
        },
        String::new(),
        String::new(),
    ]);
    format!(
        "Hop by hop (`single`, {} blocks one at a time, beside {} messages of the floor): a core \
         subscriber on the whole prefix stamps each publish as the server routes it, on the \
         harness's clock, so a hop runs from one message seen to the next (its delivery, the \
         service's work and its publish), and the first and last rows are the harness's own \
         publish and receipt. The tap costs the server a little, so these series run apart from \
         the ones above.\n\n{}\n",
        h.samples,
        floor.first().map_or(0, |f| f.n),
        md_table(&rows)
    )
}

/// The performance targets against the R1 section.
pub fn targets_markdown(s: &Section) -> String {
    let yes = |ok: bool| if ok { "met" } else { "**missed**" }.to_string();
    let opt = |v: Option<f64>, f: &dyn Fn(f64) -> String| v.map_or("-".to_string(), f);
    let p50x = s.overhead_p50_x;
    let p99x = s.overhead_p99_x;
    let rows = vec![
        vec!["target".to_string(), "measured".into(), "".into()],
        vec![
            "overhead p50 ≤ 1.5× floor".into(),
            opt(p50x, &|v| format!("{v:.2}×")),
            yes(p50x.is_some_and(|v| v <= 1.5)),
        ],
        vec![
            "overhead p99 ≤ 2× floor".into(),
            opt(p99x, &|v| format!("{v:.2}×")),
            yes(p99x.is_some_and(|v| v <= 2.0)),
        ],
        vec![
            format!(
                "overhead per block (`split` 4/2) p50 ≤ 2× the floor of its {} hops",
                s.split_hops
            ),
            opt(s.block_p50_x, &|v| format!("{v:.2}×")),
            yes(s.block_p50_x.is_some_and(|v| v <= 2.0)),
        ],
        vec![
            "≥ 5,000 tasks/s, 0 ms provers".into(),
            format!("{:.0}", s.tasks_per_s()),
            yes(s.tasks_per_s() >= 5000.0),
        ],
        vec![
            "efficiency ≥ 99 % at 32 slots".into(),
            opt(s.efficiency_at(32), &|v| format!("{v:.1} %")),
            yes(s.efficiency_at(32).is_some_and(|v| v >= 99.0)),
        ],
        vec![
            "efficiency ≥ 95 % at 1,024 slots".into(),
            opt(s.efficiency_at(1024), &|v| format!("{v:.1} %")),
            yes(s.efficiency_at(1024).is_some_and(|v| v >= 95.0)),
        ],
        vec![
            "< 100 MB RSS per service (10k blocks in flight)".into(),
            format!("{:.1} MiB", s.max_service_rss()),
            yes(s.max_service_rss() < 100.0),
        ],
    ];
    md_table(&rows)
}

/// The one-line summary the issue asks for.
pub fn summary_line(s: &Section) -> String {
    let pct = |v: Option<f64>| v.map_or("na".to_string(), |v| format!("{v:.1}"));
    format!(
        "loadtest: overhead_p50_x={:.2} overhead_p99_x={:.2} tasks_per_s={:.0} eff32={} eff1024={} max_rss_mb={:.1}",
        s.overhead_p50_x.unwrap_or(0.0),
        s.overhead_p99_x.unwrap_or(0.0),
        s.tasks_per_s(),
        pct(s.efficiency_at(32)),
        pct(s.efficiency_at(1024)),
        s.max_service_rss()
    )
}

// ---------------------------------------------------------------------------------------------
// SVG: the plot, drawn with plotters (text laid out by its estimate: no font is needed)

struct Series {
    name: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

/// One chart: a logarithmic x axis, a logarithmic or linear y axis.
struct Panel {
    title: String,
    x_label: String,
    y_label: String,
    y_log: bool,
    series: Vec<Series>,
    /// Horizontal reference lines: (y, label)
    marks: Vec<(f64, String)>,
}

fn label(v: f64) -> String {
    if v >= 1000.0 && v.fract() == 0.0 {
        format!("{}k", v / 1000.0)
    } else if v >= 1.0 || v == 0.0 {
        format!("{v}")
    } else {
        format!("{v:.2}")
    }
}

const GRID: RGBColor = RGBColor(0xee, 0xee, 0xee);
const MARK: RGBColor = RGBColor(0x99, 0x99, 0x99);
const NOTE: RGBColor = RGBColor(0x66, 0x66, 0x66);

fn draw_panel<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, p: &Panel) -> Result<(), String> {
    let points = p.series.iter().flat_map(|s| s.points.iter().copied());
    let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for (x, y) in points {
        (xmin, xmax) = (xmin.min(x), xmax.max(x));
        (ymin, ymax) = (ymin.min(y), ymax.max(y));
    }
    for (y, _) in &p.marks {
        (ymin, ymax) = (ymin.min(*y), ymax.max(*y));
    }
    if xmin > xmax {
        (xmin, xmax, ymin, ymax) = (1.0, 10.0, 1.0, 10.0);
    }
    // Logarithmic axes span whole decades, so each has at least two labelled ticks.
    let decades = |lo: f64, hi: f64| {
        let (lo, hi) = (lo.max(1e-3), hi.max(1e-3));
        let (a, b) = (lo.log10().floor(), hi.log10().ceil());
        (10f64.powf(a), 10f64.powf(b.max(a + 1.0)))
    };
    let x = decades(xmin, xmax);
    let mut builder = ChartBuilder::on(area);
    builder
        .caption(&p.title, ("sans-serif", 14))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    if p.y_log {
        let y = decades(ymin, ymax);
        let mut chart = builder
            .build_cartesian_2d((x.0..x.1).log_scale(), (y.0..y.1).log_scale())
            .map_err(error)?;
        fill(&mut chart, p, x)
    } else {
        let y = (ymin.min(0.0), ymax * 1.05 + 1.0);
        let mut chart = builder
            .build_cartesian_2d((x.0..x.1).log_scale(), y.0..y.1)
            .map_err(error)?;
        fill(&mut chart, p, x)
    }
}

fn fill<'a, DB, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    p: &Panel,
    (xlo, xhi): (f64, f64),
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let error = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    chart
        .configure_mesh()
        .x_desc(p.x_label.as_str())
        .y_desc(p.y_label.as_str())
        .x_label_formatter(&|v| label(*v))
        .y_label_formatter(&|v| label(*v))
        .light_line_style(GRID)
        .draw()
        .map_err(error)?;
    for (y, text) in &p.marks {
        chart
            .draw_series(DashedLineSeries::new(
                [(xlo, *y), (xhi, *y)],
                2,
                3,
                MARK.into(),
            ))
            .map_err(error)?;
        chart
            .draw_series(std::iter::once(Text::new(
                text.clone(),
                (xlo * 1.1, *y),
                ("sans-serif", 10).into_font().color(&NOTE),
            )))
            .map_err(error)?;
    }
    for s in &p.series {
        let style = ShapeStyle::from(s.color).stroke_width(2);
        let drawn = match s.dashed {
            true => chart.draw_series(DashedLineSeries::new(s.points.clone(), 6, 4, style)),
            false => chart.draw_series(LineSeries::new(s.points.clone(), style)),
        }
        .map_err(error)?;
        drawn
            .label(s.name.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        chart
            .draw_series(
                s.points
                    .iter()
                    .map(|&(x, y)| Circle::new((x, y), 3, s.color.filled())),
            )
            .map_err(error)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(GRID)
        .draw()
        .map_err(error)
}

/// Overhead percentiles against offered load, and scaling efficiency against slots.
pub fn svg(report: &Report) -> String {
    let mut load = Panel {
        title: "Orchestration overhead vs offered load (0 ms provers)".into(),
        x_label: "offered load, blocks (= tasks) per second".into(),
        y_label: "overhead per task, ms".into(),
        y_log: true,
        series: Vec::new(),
        marks: Vec::new(),
    };
    let mut scale = Panel {
        title: "Scaling efficiency (1 s provers)".into(),
        x_label: "prover slots".into(),
        y_label: "efficiency, %".into(),
        y_log: false,
        series: Vec::new(),
        marks: vec![(99.0, "99 %".into()), (95.0, "95 %".into())],
    };
    let colors = [
        (RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28)),
        (RGBColor(0x2c, 0xa0, 0x2c), RGBColor(0x94, 0x67, 0xbd)),
    ];
    for (s, (c50, c99)) in report.sections.iter().zip(colors) {
        let tag = if s.replicas > 1 { " R3" } else { "" };
        let series = |q: fn(&Pct) -> u64| -> Vec<(f64, f64)> {
            s.sweep
                .iter()
                .map(|p| (p.offered_per_s, q(&p.overhead) as f64 / 1000.0))
                .collect()
        };
        if !s.sweep.is_empty() {
            load.series.push(Series {
                name: format!("p50{tag}"),
                color: c50,
                dashed: s.replicas > 1,
                points: series(|p| p.p50),
            });
            load.series.push(Series {
                name: format!("p99{tag}"),
                color: c99,
                dashed: s.replicas > 1,
                points: series(|p| p.p99),
            });
        }
        if let Some(f) = &s.floor {
            load.marks
                .push((f.p50 as f64 / 1000.0, format!("floor p50{tag}")));
        }
        if !s.scaling.is_empty() {
            scale.series.push(Series {
                name: format!("efficiency{tag}"),
                color: c50,
                dashed: s.replicas > 1,
                points: s
                    .scaling
                    .iter()
                    .map(|p| (p.slots as f64, p.efficiency_pct))
                    .collect(),
            });
        }
    }
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (1000, 400)).into_drawing_area();
        let drawn = (|| -> Result<(), String> {
            root.fill(&WHITE).map_err(|e| e.to_string())?;
            let (body, footer) = root.split_vertically(380);
            let panels = body.split_evenly((1, 2));
            draw_panel(&panels[0], &load)?;
            draw_panel(&panels[1], &scale)?;
            footer
                .draw(&Text::new(
                    format!(
                        "push0-loadtest {} · {} cores · {}",
                        report.started_at, report.machine.cores, report.machine.nats_server
                    ),
                    (10, 4),
                    ("sans-serif", 10).into_font().color(&NOTE),
                ))
                .map_err(|e| e.to_string())?;
            root.present().map_err(|e| e.to_string())
        })();
        if let Err(e) = drawn {
            eprintln!("the plot could not be drawn: {e}");
        }
    }
    out
}
