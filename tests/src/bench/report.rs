//! The benchmark report: raw JSON (every run of every measurement) and its Markdown rendering.

use super::machine::Meta;
use super::stats::{self, VariantRuns};
use serde::Serialize;
use std::fmt::Write as _;

/// One measured quantity: every run, and their median; or why it was not measured.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Measurement {
    /// Measured: one value per round, and their median.
    Measured {
        /// One value per round.
        runs: Vec<f64>,
        /// Median of `runs`.
        median: f64,
    },
    /// Not measured, and why (a missing piece, a failing alternative, ...).
    NotMeasured {
        /// The reason, shown as "not measured: <reason>".
        reason: String,
    },
}

impl Measurement {
    /// A measurement from its runs (not measured when there are none).
    pub fn from_runs(runs: Vec<f64>) -> Measurement {
        match stats::median(&runs) {
            Some(median) => Measurement::Measured { runs, median },
            None => Measurement::not_measured("no successful run"),
        }
    }

    /// From an interleaved variant: its values, or its error when no round succeeded. A
    /// variant that failed after some rounds keeps the rounds it completed.
    pub fn from_variant(v: &VariantRuns) -> Measurement {
        if v.values.is_empty() {
            Measurement::not_measured(v.error.as_deref().unwrap_or("no round ran"))
        } else {
            Measurement::from_runs(v.values.clone())
        }
    }

    /// Not measured because of `reason`.
    pub fn not_measured(reason: impl Into<String>) -> Measurement {
        Measurement::NotMeasured {
            reason: reason.into(),
        }
    }

    /// The median, or the reason there is none.
    pub fn median(&self) -> Result<f64, String> {
        match self {
            Measurement::Measured { median, .. } => Ok(*median),
            Measurement::NotMeasured { reason } => Err(reason.clone()),
        }
    }
}

/// One row of a section's table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    /// What was measured (e.g. "established forward, 100k entries").
    pub case: String,
    /// Which implementation or mode (e.g. "lb native", "nftables").
    pub variant: String,
    /// The metric name (e.g. "ns/packet").
    pub metric: String,
    /// The result.
    pub measurement: Measurement,
}

/// A ratio between two rows' medians.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ratio {
    /// What the ratio says (e.g. "lb native / nftables, packets/s").
    pub name: String,
    /// The value, or why it could not be computed.
    pub value: Result<f64, String>,
}

/// The results of one section.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section {
    /// Short stable identifier (`xdp_cost`, `pktrate`, `e2e`, `control`, `memory`).
    pub id: String,
    /// Heading.
    pub title: String,
    /// How it was measured (Markdown).
    pub method: String,
    /// The measurements.
    pub rows: Vec<Row>,
    /// Ratios between rows.
    pub ratios: Vec<Ratio>,
    /// Free-form observations (profiles, limits, caveats).
    pub notes: Vec<String>,
}

impl Section {
    /// An empty section.
    pub fn new(id: &str, title: &str, method: impl Into<String>) -> Section {
        Section {
            id: id.into(),
            title: title.into(),
            method: method.into(),
            rows: Vec::new(),
            ratios: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds a row.
    pub fn push(&mut self, case: &str, variant: &str, metric: &str, measurement: Measurement) {
        self.rows.push(Row {
            case: case.into(),
            variant: variant.into(),
            metric: metric.into(),
            measurement,
        });
    }

    /// The median of the row (`case`, `variant`, `metric`), or why there is none.
    pub fn median(&self, case: &str, variant: &str, metric: &str) -> Result<f64, String> {
        self.rows
            .iter()
            .find(|r| r.case == case && r.variant == variant && r.metric == metric)
            .ok_or_else(|| format!("no row {case} / {variant} / {metric}"))?
            .measurement
            .median()
    }

    /// Adds the ratio `num / den` of two medians (both `(case, variant)` with `metric`).
    pub fn add_ratio(&mut self, name: &str, metric: &str, num: (&str, &str), den: (&str, &str)) {
        let value = ratio(
            self.median(num.0, num.1, metric),
            self.median(den.0, den.1, metric),
        );
        self.ratios.push(Ratio {
            name: name.into(),
            value,
        });
    }
}

/// `num / den`, or the first reason either is missing.
pub fn ratio(num: Result<f64, String>, den: Result<f64, String>) -> Result<f64, String> {
    let n = num?;
    let d = den?;
    if d == 0.0 {
        return Err("denominator is zero".into());
    }
    Ok(n / d)
}

/// Which way a target points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Goal {
    /// measured <= threshold
    AtMost,
    /// measured < threshold
    Below,
    /// measured >= threshold
    AtLeast,
    /// measured > threshold
    Above,
}

/// A published target and where we stand.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Target {
    /// What is targeted (e.g. "per packet, established flow").
    pub name: String,
    /// Direction of the goal.
    pub goal: Goal,
    /// The threshold.
    pub threshold: f64,
    /// Unit of the threshold and the measured value.
    pub unit: String,
    /// The measured value, or why there is none.
    pub measured: Result<f64, String>,
    /// `Some(true)` met, `Some(false)` missed, `None` not measured.
    pub met: Option<bool>,
    /// What limits it, when known (profile findings, environment).
    pub limit: String,
}

impl Target {
    /// Evaluates `measured` against the goal.
    pub fn new(
        name: &str,
        goal: Goal,
        threshold: f64,
        unit: &str,
        measured: Result<f64, String>,
        limit: impl Into<String>,
    ) -> Target {
        let met = measured.as_ref().ok().map(|&m| match goal {
            Goal::AtMost => m <= threshold,
            Goal::Below => m < threshold,
            Goal::AtLeast => m >= threshold,
            Goal::Above => m > threshold,
        });
        Target {
            name: name.into(),
            goal,
            threshold,
            unit: unit.into(),
            measured,
            met,
            limit: limit.into(),
        }
    }

    /// "met", "missed by N%" or "not measured: reason".
    pub fn verdict(&self) -> String {
        match (&self.measured, self.met) {
            (Err(reason), _) => format!("not measured: {reason}"),
            (Ok(_), Some(true)) => "met".into(),
            (Ok(m), _) => {
                let by = match self.goal {
                    Goal::AtMost | Goal::Below => (m / self.threshold - 1.0) * 100.0,
                    Goal::AtLeast | Goal::Above => (1.0 - m / self.threshold) * 100.0,
                };
                format!("missed by {by:.0}%")
            }
        }
    }
}

/// The whole run.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// Machine, kernel, commit, date, scale.
    pub meta: Meta,
    /// Targets against the measured values.
    pub targets: Vec<Target>,
    /// The five sections.
    pub sections: Vec<Section>,
}

/// Formats a number with a precision that suits its magnitude.
pub fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if a >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

fn goal_text(t: &Target) -> String {
    let op = match t.goal {
        Goal::AtMost => "<=",
        Goal::Below => "<",
        Goal::AtLeast => ">=",
        Goal::Above => ">",
    };
    format!("{op} {} {}", fmt_num(t.threshold), t.unit)
}

fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

impl Report {
    /// Every row, ratio and target that was not measured, as "section: what: reason".
    pub fn not_measured(&self) -> Vec<String> {
        let mut out = Vec::new();
        for sec in &self.sections {
            for r in &sec.rows {
                if let Measurement::NotMeasured { reason } = &r.measurement {
                    out.push(format!(
                        "{}: {} / {} / {}: {reason}",
                        sec.id, r.case, r.variant, r.metric
                    ));
                }
            }
        }
        for t in &self.targets {
            if let Err(reason) = &t.measured {
                out.push(format!("target {}: {reason}", t.name));
            }
        }
        out
    }

    /// Like [`Report::not_measured`], split into what concerns lb (rows of any variant for
    /// which `is_alternative` is false) and what concerns only the alternatives (their rows,
    /// and the targets, when every lb row was measured: a target is then missing because of
    /// its alternative).
    pub fn not_measured_split(
        &self,
        is_alternative: impl Fn(&str) -> bool,
    ) -> (Vec<String>, Vec<String>) {
        let (mut lb, mut alt) = (Vec::new(), Vec::new());
        for sec in &self.sections {
            for r in &sec.rows {
                if let Measurement::NotMeasured { reason } = &r.measurement {
                    let line = format!(
                        "{}: {} / {} / {}: {reason}",
                        sec.id, r.case, r.variant, r.metric
                    );
                    if is_alternative(&r.variant) {
                        alt.push(line);
                    } else {
                        lb.push(line);
                    }
                }
            }
        }
        for t in &self.targets {
            if let Err(reason) = &t.measured {
                let line = format!("target {}: {reason}", t.name);
                if lb.is_empty() {
                    alt.push(line);
                } else {
                    lb.push(line);
                }
            }
        }
        (lb, alt)
    }

    /// Renders the report as `docs/benchmarks.md`: a generated header, the targets, every
    /// section's table, and `method` (the hand-written method section) at the end.
    pub fn to_markdown(&self, method: &str) -> String {
        let m = &self.meta;
        let mut s = String::new();
        let _ = writeln!(s, "# Benchmarks\n");
        let _ = writeln!(
            s,
            "Generated by `cargo xtask bench` (do not edit by hand; the hand-written sections \
             at the end, method, lifecycle cost, failover and database failover, are kept in \
             `tests/src/bench/method.md`). Raw data: `{}`.\n",
            m.json_path
        );
        let _ = writeln!(s, "| | |\n|---|---|");
        let _ = writeln!(
            s,
            "| machine | {} ({} cores, {} memory) |",
            cell(&m.cpu),
            m.cores,
            m.memory
        );
        let _ = writeln!(s, "| kernel | {} |", cell(&m.kernel));
        let _ = writeln!(s, "| commit | {} |", cell(&m.commit));
        let _ = writeln!(s, "| date | {} |", cell(&m.date));
        let _ = writeln!(
            s,
            "| scale | {} ({} rounds, interleaved) |",
            m.scale, m.rounds
        );
        let _ = writeln!(s, "| bench duration | {:.0} s |", m.duration_s);
        let _ = writeln!(s, "\n## Targets\n");
        let _ = writeln!(s, "| target | goal | measured | verdict | what limits it |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for t in &self.targets {
            let measured = match &t.measured {
                Ok(v) => format!("{} {}", fmt_num(*v), t.unit),
                Err(_) => "-".into(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                cell(&t.name),
                cell(&goal_text(t)),
                cell(&measured),
                cell(&t.verdict()),
                cell(&t.limit)
            );
        }
        for sec in &self.sections {
            let _ = writeln!(s, "\n## {}\n", sec.title);
            let _ = writeln!(s, "{}\n", sec.method.trim());
            let _ = writeln!(s, "| case | variant | metric | median | runs |");
            let _ = writeln!(s, "|---|---|---|---|---|");
            for r in &sec.rows {
                let (median, runs) = match &r.measurement {
                    Measurement::Measured { runs, median } => (
                        fmt_num(*median),
                        runs.iter()
                            .map(|v| fmt_num(*v))
                            .collect::<Vec<_>>()
                            .join(", "),
                    ),
                    Measurement::NotMeasured { reason } => {
                        (format!("not measured: {reason}"), String::new())
                    }
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} |",
                    cell(&r.case),
                    cell(&r.variant),
                    cell(&r.metric),
                    cell(&median),
                    cell(&runs)
                );
            }
            if !sec.ratios.is_empty() {
                let _ = writeln!(s, "\nRatios of medians:\n");
                for r in &sec.ratios {
                    match &r.value {
                        Ok(v) => {
                            let _ = writeln!(s, "- {}: **{v:.2}x**", r.name);
                        }
                        Err(e) => {
                            let _ = writeln!(s, "- {}: not measured: {e}", r.name);
                        }
                    }
                }
            }
            for n in &sec.notes {
                let _ = writeln!(s, "\n{n}");
            }
        }
        let _ = writeln!(s, "\n{}", method.trim());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_report_met_missed_and_missing() {
        let t = Target::new("x", Goal::AtMost, 60.0, "ns", Ok(90.0), "");
        assert_eq!(t.met, Some(false));
        assert_eq!(t.verdict(), "missed by 50%");
        let t = Target::new("x", Goal::AtLeast, 4.0, "x", Ok(3.0), "");
        assert_eq!(t.verdict(), "missed by 25%");
        let t = Target::new("x", Goal::Above, 1.0, "x", Ok(1.0), "");
        assert_eq!(t.met, Some(false));
        let t = Target::new("x", Goal::Below, 22.9, "ms", Ok(3.0), "");
        assert_eq!(t.verdict(), "met");
        let t = Target::new("x", Goal::Below, 22.9, "ms", Err("no lbd".into()), "");
        assert_eq!(t.met, None);
        assert_eq!(t.verdict(), "not measured: no lbd");
    }

    #[test]
    fn missing_rows_split_into_lb_and_alternatives() {
        let mut sec = Section::new("e2e", "E", "m");
        sec.push("c", "lb native", "x", Measurement::from_runs(vec![1.0]));
        sec.push(
            "c",
            "HAProxy",
            "x",
            Measurement::not_measured("haproxy died"),
        );
        let mut report = Report {
            meta: crate::bench::machine::collect("c", "smoke", 1, "j"),
            targets: vec![Target::new(
                "lb vs HAProxy",
                Goal::AtLeast,
                2.0,
                "x",
                Err("no HAProxy".into()),
                "",
            )],
            sections: vec![sec],
        };
        let (lb, alt) = report.not_measured_split(|v| v == "HAProxy");
        assert!(lb.is_empty(), "{lb:?}");
        assert_eq!(alt.len(), 2);
        // A missing lb row makes lb fail, and the targets count against lb too.
        report.sections[0].push("c", "lb generic", "x", Measurement::not_measured("no XDP"));
        let (lb, alt) = report.not_measured_split(|v| v == "HAProxy");
        assert_eq!(lb.len(), 2, "{lb:?}");
        assert_eq!(alt.len(), 1);
    }

    #[test]
    fn ratios_use_medians_and_propagate_reasons() {
        let mut sec = Section::new("s", "S", "m");
        sec.push(
            "c",
            "a",
            "pps",
            Measurement::from_runs(vec![10.0, 30.0, 20.0]),
        );
        sec.push("c", "b", "pps", Measurement::from_runs(vec![5.0]));
        sec.push(
            "c",
            "z",
            "pps",
            Measurement::not_measured("haproxy missing"),
        );
        sec.add_ratio("a/b", "pps", ("c", "a"), ("c", "b"));
        sec.add_ratio("a/z", "pps", ("c", "a"), ("c", "z"));
        assert_eq!(sec.ratios[0].value, Ok(4.0));
        assert_eq!(sec.ratios[1].value, Err("haproxy missing".into()));
    }

    #[test]
    fn numbers_are_formatted_by_magnitude() {
        assert_eq!(fmt_num(1_234_567.0), "1.23M");
        assert_eq!(fmt_num(45_600.0), "45.6k");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_num(12.34), "12.3");
        assert_eq!(fmt_num(1.234), "1.23");
    }
}
