//! Regression comparison of section 1 (per-packet cost) between two builds:
//! `cargo xtask bench-compare REV` (see `xtask/src/bench.rs`).
//!
//! The two builds may disagree on the map ABI, so each is measured by its own `lb-bench`
//! binary, which loads its own `lb_xdp` object: a *process round* runs one binary with
//! `--only xdp_cost --json FILE` and this module reads the section back from that raw JSON
//! (the format every `lb-bench` since the first one writes, so an old revision needs no new
//! flag). The comparer alternates the two binaries round by round (A B, B A, A B, ...: the
//! side that goes first alternates too), so the machine's drift and the other tenants of a
//! shared machine spread over both. Each process round itself runs the section's inner
//! rounds (3 in a full run), so a side's values are `process rounds x inner rounds` numbers
//! per row.
//!
//! The result per row (case x fill level): the median of every value of each side, the ratio
//! current / baseline of those medians, and its spread: the smallest and largest ratio of
//! *paired* rounds (process round k, inner round r of each side, measured minutes apart at
//! most). A ratio is judged against a budget (issue 9: no regression beyond 10%).

use super::report::fmt_num;
use super::stats::median;
use serde::Serialize;
use serde_json::Value;
use std::collections::HashMap;
use std::fmt::Write as _;

/// One row of section 1 as read back from an `lb-bench` raw JSON file.
#[derive(Debug, Clone, PartialEq)]
pub struct ParsedRow {
    /// The case (e.g. "established fwd/reply (chain, repeat = 254)").
    pub case: String,
    /// The fill level (e.g. "1M entries"; the report's `variant` column).
    pub level: String,
    /// One value per inner round, or why the row was not measured.
    pub runs: Result<Vec<f64>, String>,
}

/// Reads section `section_id` (`xdp_cost`) of an `lb-bench` raw JSON report: every row whose
/// metric is `ns/packet`. Errors name what is missing.
pub fn parse_section(json: &str, section_id: &str) -> Result<Vec<ParsedRow>, String> {
    let v: Value = serde_json::from_str(json).map_err(|e| format!("not JSON: {e}"))?;
    let sections = v
        .get("sections")
        .and_then(Value::as_array)
        .ok_or("no `sections` array")?;
    let sec = sections
        .iter()
        .find(|s| s.get("id").and_then(Value::as_str) == Some(section_id))
        .ok_or_else(|| format!("no section with id {section_id:?}"))?;
    let rows = sec
        .get("rows")
        .and_then(Value::as_array)
        .ok_or_else(|| format!("section {section_id:?} has no `rows` array"))?;
    let mut out = Vec::new();
    for (i, row) in rows.iter().enumerate() {
        let field = |name: &str| {
            row.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| format!("row {i} of {section_id:?}: no string field `{name}`"))
        };
        if field("metric")? != "ns/packet" {
            continue;
        }
        let m = row
            .get("measurement")
            .ok_or_else(|| format!("row {i} of {section_id:?}: no field `measurement`"))?;
        let runs = match m.get("status").and_then(Value::as_str) {
            Some("measured") => {
                let runs = m
                    .get("runs")
                    .and_then(Value::as_array)
                    .ok_or_else(|| format!("row {i} of {section_id:?}: measured without `runs`"))?;
                let vals: Option<Vec<f64>> = runs.iter().map(Value::as_f64).collect();
                Ok(vals.ok_or_else(|| {
                    format!("row {i} of {section_id:?}: `runs` holds a non-number")
                })?)
            }
            Some("not_measured") => Err(m
                .get("reason")
                .and_then(Value::as_str)
                .unwrap_or("no reason given")
                .to_string()),
            other => {
                return Err(format!(
                    "row {i} of {section_id:?}: unknown measurement status {other:?}"
                ))
            }
        };
        out.push(ParsedRow {
            case: field("case")?,
            level: field("variant")?,
            runs,
        });
    }
    if out.is_empty() {
        return Err(format!("section {section_id:?} has no ns/packet rows"));
    }
    Ok(out)
}

/// Which build a process round measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Side {
    /// The revision compared against (before the change).
    Baseline,
    /// The revision under test (after the change).
    Current,
}

impl Side {
    /// The order of the two sides in process round `round`: baseline first in even rounds,
    /// current first in odd ones, so neither always runs right after the other.
    pub fn order(round: usize) -> [Side; 2] {
        if round.is_multiple_of(2) {
            [Side::Baseline, Side::Current]
        } else {
            [Side::Current, Side::Baseline]
        }
    }
}

/// One side's values of one row: per process round, the inner rounds' values or the reason
/// that round did not measure the row.
type PerRound = Vec<Result<Vec<f64>, String>>;

/// Every value collected so far, per side and row, grouped by process round.
#[derive(Debug, Default, Clone)]
pub struct Comparison {
    /// (case, level) in the order first seen (the report's order).
    keys: Vec<(String, String)>,
    /// (side, key index) -> one entry per process round.
    values: HashMap<(Side, usize), PerRound>,
}

/// One row of the comparison table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CompareRow {
    /// The case.
    pub case: String,
    /// The fill level.
    pub level: String,
    /// Every baseline value (process rounds x inner rounds, in order).
    pub baseline_runs: Vec<f64>,
    /// Every current value.
    pub current_runs: Vec<f64>,
    /// Median of `baseline_runs`.
    pub baseline_median: Option<f64>,
    /// Median of `current_runs`.
    pub current_median: Option<f64>,
    /// `current_median / baseline_median`.
    pub ratio: Option<f64>,
    /// Per paired round (same process round and inner round on both sides), current /
    /// baseline.
    pub paired_ratios: Vec<f64>,
    /// Why a side has no value, if so.
    pub error: Option<String>,
}

impl CompareRow {
    /// Smallest and largest paired-round ratio.
    pub fn spread(&self) -> Option<(f64, f64)> {
        let min = self.paired_ratios.iter().copied().reduce(f64::min)?;
        let max = self.paired_ratios.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }

    /// Whether the ratio of medians stays within `1 + budget` (`None` when not measured).
    pub fn within(&self, budget: f64) -> Option<bool> {
        self.ratio.map(|r| r <= 1.0 + budget)
    }
}

impl Comparison {
    /// Adds process round `round`'s rows of `side`. Rows must come in process rounds
    /// 0, 1, 2, ... per side; a row missing from a round counts as not measured in it.
    pub fn add(&mut self, side: Side, round: usize, rows: &[ParsedRow]) {
        for row in rows {
            let key = (row.case.clone(), row.level.clone());
            let idx = match self.keys.iter().position(|k| *k == key) {
                Some(i) => i,
                None => {
                    self.keys.push(key);
                    self.keys.len() - 1
                }
            };
            let slot = self.values.entry((side, idx)).or_default();
            while slot.len() < round {
                slot.push(Err(format!("not in process round {}", slot.len())));
            }
            slot.push(row.runs.clone());
        }
    }

    /// The table, one row per (case, level) in report order.
    pub fn rows(&self) -> Vec<CompareRow> {
        self.keys
            .iter()
            .enumerate()
            .map(|(idx, (case, level))| {
                let empty = Vec::new();
                let b = self.values.get(&(Side::Baseline, idx)).unwrap_or(&empty);
                let c = self.values.get(&(Side::Current, idx)).unwrap_or(&empty);
                let flat = |v: &PerRound| -> Vec<f64> {
                    v.iter()
                        .filter_map(|r| r.as_ref().ok())
                        .flatten()
                        .copied()
                        .collect()
                };
                let first_err = |v: &PerRound, who: &str| {
                    v.iter()
                        .find_map(|r| r.as_ref().err())
                        .map(|e| format!("{who}: {e}"))
                };
                let baseline_runs = flat(b);
                let current_runs = flat(c);
                let baseline_median = median(&baseline_runs);
                let current_median = median(&current_runs);
                let ratio = match (baseline_median, current_median) {
                    (Some(b), Some(c)) if b > 0.0 => Some(c / b),
                    _ => None,
                };
                // Pair inner round r of process round k on both sides; a process round whose
                // sides measured a different number of inner rounds cannot be paired.
                let mut paired_ratios = Vec::new();
                for (bk, ck) in b.iter().zip(c) {
                    if let (Ok(bv), Ok(cv)) = (bk, ck) {
                        if bv.len() == cv.len() {
                            paired_ratios.extend(
                                bv.iter()
                                    .zip(cv)
                                    .filter(|(b, _)| **b > 0.0)
                                    .map(|(b, c)| c / b),
                            );
                        }
                    }
                }
                let error = first_err(b, "baseline")
                    .or_else(|| first_err(c, "current"))
                    .or_else(|| {
                        baseline_runs
                            .is_empty()
                            .then(|| "baseline: no value".into())
                    })
                    .or_else(|| current_runs.is_empty().then(|| "current: no value".into()));
                CompareRow {
                    case: case.clone(),
                    level: level.clone(),
                    baseline_runs,
                    current_runs,
                    baseline_median,
                    current_median,
                    ratio,
                    paired_ratios,
                    error,
                }
            })
            .collect()
    }
}

/// The Markdown table of `rows`: case, level, both medians, ratio, paired-round spread,
/// number of values per side and the verdict against `budget` (0.10 = 10%).
pub fn to_markdown(rows: &[CompareRow], budget: f64) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "| case | fill level | baseline median ns | current median ns | ratio | paired-round ratio min-max | values per side | within {:.0}% |",
        budget * 100.0
    );
    s.push_str("|---|---|---|---|---|---|---|---|\n");
    let opt = |v: Option<f64>| v.map_or_else(|| "-".to_string(), fmt_num);
    for r in rows {
        let spread = r
            .spread()
            .map_or_else(|| "-".into(), |(lo, hi)| format!("{lo:.2}-{hi:.2}"));
        let verdict = match (r.within(budget), r.ratio) {
            (Some(true), _) => "yes".to_string(),
            (Some(false), Some(x)) => format!("**no** (+{:.0}%)", (x - 1.0) * 100.0),
            _ => format!("not measured: {}", r.error.as_deref().unwrap_or("no value")),
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} |",
            r.case.replace('|', "\\|"),
            r.level,
            opt(r.baseline_median),
            opt(r.current_median),
            r.ratio.map_or_else(|| "-".into(), |x| format!("{x:.2}")),
            spread,
            r.baseline_runs.len(),
            r.current_runs.len(),
            verdict.replace('|', "\\|").replace('\n', " "),
        );
    }
    s
}

/// One build to measure: its `lb-bench` binary and a label for the report.
#[derive(Debug, Clone)]
pub struct Build {
    /// The `lb-bench` of that revision (it embeds that revision's `lb_xdp`).
    pub bench: std::path::PathBuf,
    /// What it is (e.g. `48f264e`), shown in the report.
    pub label: String,
}

/// What one process round left behind, for the raw JSON.
#[derive(Debug, Clone, Serialize)]
pub struct ProcessRound {
    /// Process round index.
    pub round: usize,
    /// Which build ran.
    pub side: Side,
    /// The 1-minute load average of the machine right before it started.
    pub load_before: Option<f64>,
    /// Wall time of the process, seconds.
    pub seconds: f64,
    /// Its raw JSON report.
    pub json: String,
}

fn load_average() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Runs `rounds` process rounds of both builds, alternating ([`Side::order`]): each runs
/// `BENCH --only xdp_cost --json DIR/r<k>-<side>.json --commit LABEL` (output in
/// `DIR/r<k>-<side>.log`) in `cwd`, and its section 1 is added to the comparison. A build
/// whose process fails or writes an unreadable report stops the comparison with an error
/// naming the round and the log.
pub fn run_rounds(
    baseline: &Build,
    current: &Build,
    rounds: usize,
    dir: &std::path::Path,
    cwd: &std::path::Path,
    mut progress: impl FnMut(&str),
) -> Result<(Comparison, Vec<ProcessRound>), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let mut cmp = Comparison::default();
    let mut log = Vec::new();
    for round in 0..rounds {
        for side in Side::order(round) {
            let build = match side {
                Side::Baseline => baseline,
                Side::Current => current,
            };
            let name = match side {
                Side::Baseline => "baseline",
                Side::Current => "current",
            };
            let json = dir.join(format!("r{round}-{name}.json"));
            let out = dir.join(format!("r{round}-{name}.log"));
            let load_before = load_average();
            progress(&format!(
                "round {}/{rounds}: {name} ({}), load {}",
                round + 1,
                build.label,
                load_before.map_or_else(|| "?".into(), |l| format!("{l:.2}"))
            ));
            let logf = std::fs::File::create(&out)
                .map_err(|e| format!("creating {}: {e}", out.display()))?;
            let errf = logf
                .try_clone()
                .map_err(|e| format!("creating {}: {e}", out.display()))?;
            let start = std::time::Instant::now();
            // ETXTBSY: a just-written executable is still open for writing in a child that
            // another thread forked and that has not exec'd yet (a test's fake bench, or a
            // build finishing); the program did not run, so starting it again is safe.
            let mut attempt = 0;
            let status = loop {
                let (out, err) = match (logf.try_clone(), errf.try_clone()) {
                    (Ok(o), Ok(e)) => (o, e),
                    (Err(e), _) | (_, Err(e)) => {
                        return Err(format!("creating {}: {e}", out.display()))
                    }
                };
                match std::process::Command::new(&build.bench)
                    .current_dir(cwd)
                    .args(["--only", "xdp_cost", "--commit", &build.label, "--json"])
                    .arg(&json)
                    .stdout(out)
                    .stderr(err)
                    .status()
                {
                    Err(e) if e.raw_os_error() == Some(libc::ETXTBSY) && attempt < 20 => {
                        attempt += 1;
                        std::thread::sleep(std::time::Duration::from_millis(50));
                    }
                    r => {
                        break r.map_err(|e| format!("starting {}: {e}", build.bench.display()))?
                    }
                }
            };
            let seconds = start.elapsed().as_secs_f64();
            if !status.success() {
                return Err(format!(
                    "round {round}: {name} ({}) failed ({status}); see {}",
                    build.bench.display(),
                    out.display()
                ));
            }
            let text = std::fs::read_to_string(&json)
                .map_err(|e| format!("round {round}: reading {}: {e}", json.display()))?;
            let rows = parse_section(&text, "xdp_cost")
                .map_err(|e| format!("round {round}: {name}: {}: {e}", json.display()))?;
            cmp.add(side, round, &rows);
            log.push(ProcessRound {
                round,
                side,
                load_before,
                seconds,
                json: json.display().to_string(),
            });
        }
    }
    Ok((cmp, log))
}

/// Reads back the process rounds a comparison left in `dir` (`r<k>-baseline.json` and
/// `r<k>-current.json` for k = 0, 1, ... while both exist), e.g. of a comparison that was
/// stopped early. Returns the comparison and the number of complete process rounds.
pub fn load_rounds(dir: &std::path::Path) -> Result<(Comparison, usize), String> {
    let mut cmp = Comparison::default();
    let mut round = 0;
    loop {
        let path = |name: &str| dir.join(format!("r{round}-{name}.json"));
        let (b, c) = (path("baseline"), path("current"));
        if !b.exists() || !c.exists() {
            break;
        }
        for (side, p) in [(Side::Baseline, b), (Side::Current, c)] {
            let text =
                std::fs::read_to_string(&p).map_err(|e| format!("reading {}: {e}", p.display()))?;
            let rows =
                parse_section(&text, "xdp_cost").map_err(|e| format!("{}: {e}", p.display()))?;
            cmp.add(side, round, &rows);
        }
        round += 1;
    }
    if round == 0 {
        return Err(format!(
            "no complete process round (r0-baseline.json and r0-current.json) in {}",
            dir.display()
        ));
    }
    Ok((cmp, round))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(rows: &[(&str, &str, Option<&[f64]>)]) -> String {
        let rows: Vec<Value> = rows
            .iter()
            .map(|(case, level, runs)| {
                let m = match runs {
                    Some(r) => serde_json::json!({
                        "status": "measured", "runs": r, "median": median(r)
                    }),
                    None => serde_json::json!({"status": "not_measured", "reason": "broke"}),
                };
                serde_json::json!({
                    "case": case, "variant": level, "metric": "ns/packet", "measurement": m
                })
            })
            .collect();
        serde_json::json!({
            "meta": {},
            "targets": [],
            "sections": [
                {"id": "memory", "rows": []},
                {"id": "xdp_cost", "rows": rows, "ratios": [], "notes": []}
            ]
        })
        .to_string()
    }

    #[test]
    fn parses_measured_and_not_measured_rows() {
        let json = report(&[
            ("est", "1M entries", Some(&[900.0, 1000.0, 950.0])),
            ("syn", "1M entries", None),
        ]);
        let rows = parse_section(&json, "xdp_cost").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].case, "est");
        assert_eq!(rows[0].level, "1M entries");
        assert_eq!(rows[0].runs, Ok(vec![900.0, 1000.0, 950.0]));
        assert_eq!(rows[1].runs, Err("broke".to_string()));
    }

    #[test]
    fn parses_the_committed_report_of_an_older_lb_bench() {
        // The raw JSON of a full run before the connection lifecycle: the format an old
        // revision's lb-bench writes.
        let json = include_str!("../../../docs/bench-results/20261126-073024-613bb14.json");
        let rows = parse_section(json, "xdp_cost").unwrap();
        assert_eq!(rows.len(), 24, "8 cases x 3 fill levels");
        let est = rows
            .iter()
            .find(|r| r.case.starts_with("established fwd/reply (chain") && r.level == "1M entries")
            .unwrap();
        assert_eq!(est.runs, Ok(vec![922.5, 995.575, 866.15]));
    }

    #[test]
    fn parse_errors_name_what_is_missing() {
        assert!(parse_section("{", "xdp_cost")
            .unwrap_err()
            .contains("not JSON"));
        let no_sec = r#"{"sections": [{"id": "memory", "rows": []}]}"#;
        assert!(parse_section(no_sec, "xdp_cost")
            .unwrap_err()
            .contains("no section with id \"xdp_cost\""));
        let bad_row = r#"{"sections": [{"id": "xdp_cost", "rows": [{"case": "a", "metric": "ns/packet", "measurement": {"status": "measured", "runs": [1.0]}}]}]}"#;
        assert!(parse_section(bad_row, "xdp_cost")
            .unwrap_err()
            .contains("no string field `variant`"));
        let bad_status = r#"{"sections": [{"id": "xdp_cost", "rows": [{"case": "a", "variant": "b", "metric": "ns/packet", "measurement": {"status": "later"}}]}]}"#;
        assert!(parse_section(bad_status, "xdp_cost")
            .unwrap_err()
            .contains("unknown measurement status"));
    }

    #[test]
    fn order_alternates_the_side_that_goes_first() {
        assert_eq!(Side::order(0), [Side::Baseline, Side::Current]);
        assert_eq!(Side::order(1), [Side::Current, Side::Baseline]);
        assert_eq!(Side::order(2), [Side::Baseline, Side::Current]);
    }

    #[test]
    fn ratio_of_medians_and_paired_spread() {
        let mut c = Comparison::default();
        let row = |runs: &[f64]| {
            vec![ParsedRow {
                case: "est".into(),
                level: "1M entries".into(),
                runs: Ok(runs.to_vec()),
            }]
        };
        c.add(Side::Baseline, 0, &row(&[100.0, 110.0, 90.0]));
        c.add(Side::Current, 0, &row(&[120.0, 110.0, 99.0]));
        c.add(Side::Current, 1, &row(&[105.0, 130.0, 100.0]));
        c.add(Side::Baseline, 1, &row(&[100.0, 100.0, 100.0]));
        let rows = c.rows();
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(r.baseline_runs.len(), 6);
        // Medians: baseline of {100,110,90,100,100,100} = 100; current of
        // {120,110,99,105,130,100} = (105 + 110) / 2 = 107.5.
        assert_eq!(r.baseline_median, Some(100.0));
        assert_eq!(r.current_median, Some(107.5));
        assert_eq!(r.ratio, Some(1.075));
        // Paired: 1.2, 1.0, 1.1, 1.05, 1.3, 1.0.
        let (lo, hi) = r.spread().unwrap();
        assert!(
            (lo - 1.0).abs() < 1e-12 && (hi - 1.3).abs() < 1e-12,
            "{lo} {hi}"
        );
        assert_eq!(r.paired_ratios.len(), 6);
        assert_eq!(r.within(0.10), Some(true));
        assert_eq!(r.within(0.05), Some(false));
        assert_eq!(r.error, None);
    }

    #[test]
    fn a_round_that_failed_is_kept_out_of_pairs_and_reported() {
        let mut c = Comparison::default();
        let ok = |v: f64| {
            vec![ParsedRow {
                case: "syn".into(),
                level: "empty conntrack".into(),
                runs: Ok(vec![v]),
            }]
        };
        let failed = vec![ParsedRow {
            case: "syn".into(),
            level: "empty conntrack".into(),
            runs: Err("SYN chain: NEW_FLOW rose by 3".into()),
        }];
        c.add(Side::Baseline, 0, &ok(200.0));
        c.add(Side::Current, 0, &failed);
        c.add(Side::Baseline, 1, &ok(200.0));
        c.add(Side::Current, 1, &ok(300.0));
        let r = &c.rows()[0];
        assert_eq!(r.current_runs, vec![300.0]);
        assert_eq!(r.paired_ratios, vec![1.5]);
        assert_eq!(r.ratio, Some(1.5));
        assert_eq!(
            r.error.as_deref(),
            Some("current: SYN chain: NEW_FLOW rose by 3")
        );
        let md = to_markdown(&c.rows(), 0.10);
        assert!(
            md.contains(
                "| syn | empty conntrack | 200 | 300 | 1.50 | 1.50-1.50 | 2 / 1 | **no** (+50%) |"
            ),
            "{md}"
        );
    }

    #[test]
    fn a_side_without_values_is_not_measured() {
        let mut c = Comparison::default();
        c.add(
            Side::Baseline,
            0,
            &[ParsedRow {
                case: "x".into(),
                level: "l".into(),
                runs: Ok(vec![5.0]),
            }],
        );
        let r = &c.rows()[0];
        assert_eq!(r.ratio, None);
        assert_eq!(r.within(0.1), None);
        assert_eq!(r.error.as_deref(), Some("current: no value"));
        assert!(to_markdown(&c.rows(), 0.1).contains("not measured: current: no value"));
    }

    /// A stand-in for `lb-bench`: appends its label to `order.txt` and writes a report whose
    /// one row holds `value` twice (or exits 3 when `value` is `None`).
    fn fake_bench(dir: &std::path::Path, name: &str, value: Option<f64>) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        // Arguments: --only xdp_cost --commit LABEL --json PATH
        let body = match value {
            Some(v) => format!(
                "#!/bin/sh\necho \"$4\" >> {order}\ncat > \"$6\" <<JSON\n\
                 {{\"sections\":[{{\"id\":\"xdp_cost\",\"rows\":[{{\"case\":\"c\",\
                 \"variant\":\"l\",\"metric\":\"ns/packet\",\"measurement\":\
                 {{\"status\":\"measured\",\"runs\":[{v},{v}]}}}}]}}]}}\nJSON\n",
                order = dir.join("order.txt").display()
            ),
            None => "#!/bin/sh\necho broken >&2\nexit 3\n".to_string(),
        };
        std::fs::write(&path, body).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn run_rounds_alternates_two_processes_and_reads_their_reports() {
        let dir = std::env::temp_dir().join(format!("lb-compare-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let base = Build {
            bench: fake_bench(&dir, "base.sh", Some(100.0)),
            label: "old".into(),
        };
        let cur = Build {
            bench: fake_bench(&dir, "cur.sh", Some(120.0)),
            label: "new".into(),
        };
        let (cmp, log) = run_rounds(&base, &cur, 3, &dir.join("out"), &dir, |_| {}).unwrap();
        let order = std::fs::read_to_string(dir.join("order.txt")).unwrap();
        assert_eq!(
            order.lines().collect::<Vec<_>>(),
            ["old", "new", "new", "old", "old", "new"]
        );
        assert_eq!(log.len(), 6);
        let r = &cmp.rows()[0];
        assert_eq!(r.baseline_runs, vec![100.0; 6]);
        assert_eq!(r.current_runs, vec![120.0; 6]);
        assert_eq!(r.ratio, Some(1.2));
        assert_eq!(r.paired_ratios, vec![1.2; 6]);
        // The same numbers read back from the rounds' files.
        let (again, n) = load_rounds(&dir.join("out")).unwrap();
        assert_eq!(n, 3);
        assert_eq!(again.rows(), cmp.rows());
        assert!(load_rounds(&dir)
            .unwrap_err()
            .starts_with("no complete process round"));

        let broken = Build {
            bench: fake_bench(&dir, "broken.sh", None),
            label: "broken".into(),
        };
        let err = run_rounds(&base, &broken, 2, &dir.join("out2"), &dir, |_| {}).unwrap_err();
        assert!(
            err.starts_with("round 0: current (") && err.contains("r0-current.log"),
            "{err}"
        );
        let log = std::fs::read_to_string(dir.join("out2/r0-current.log")).unwrap();
        assert_eq!(log, "broken\n");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
