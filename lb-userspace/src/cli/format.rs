//! Human output of `lbctl`: units and aligned tables, as pure functions of the API data.
//!
//! Nothing here does I/O, so every view is unit-tested against golden strings. Conventions
//! (in the spirit of `ipvsadm -L` and HAProxy's stats page):
//! - counts and packet rates scale by 1000 with `K`/`M`/`G`/`T` (`12.1K`),
//! - bytes scale by 1024 with `B`/`KiB`/`MiB`/`GiB`/`TiB` (`9.8 MiB/s`),
//! - columns are left-aligned, separated by two spaces, with no trailing spaces,
//! - a backend's `STATE` is one word: `UP`, `DOWN`, `DRAIN`, `BACKUP` or `UNKNOWN`
//!   ([`backend_state`]), followed by `/STALE` when its health checks gave no verdict for
//!   longer than `interval x (fall + 1)` (they could not run: the state is the last known one;
//!   [`state_cell`]).

use crate::api::proto::{
    BackendListEntry, BackendStats, DbClusterInfo, DbEventInfo, Health, ServiceStats,
    StatsSnapshot, StatusInfo,
};
use crate::dataplane::CtFilterStatus;
use std::fmt::Write as _;

/// Formats a count: exact below 1000, else scaled by 1000 with one decimal below 100 of the
/// unit (`1.2K`, `12.1K`, `123K`, `4.5M`).
pub fn count(n: u64) -> String {
    if n < 1000 {
        return n.to_string();
    }
    scaled(n as f64, 1000.0, &["", "K", "M", "G", "T", "P"], "")
}

/// Formats a per-second rate of events (flows, packets): like [`count`], with one decimal
/// for fractional values below 10 (`0.5`, `3`, `350`, `4.0K`). Not-a-number or negative
/// rates (no sample yet) print as `-`.
pub fn rate(r: f64) -> String {
    if !r.is_finite() || r < 0.0 {
        return "-".into();
    }
    if r < 10.0 && r.fract() != 0.0 {
        let s = format!("{r:.1}");
        // 9.96 rounds to "10.0": print it like the integer it became.
        return if s == "10.0" { "10".into() } else { s };
    }
    if r < 999.5 {
        return format!("{r:.0}");
    }
    scaled(r, 1000.0, &["", "K", "M", "G", "T", "P"], "")
}

/// Formats a byte amount in binary units: `512 B`, `1.5 KiB`, `9.8 MiB`, `120 GiB`.
pub fn bytes(b: f64) -> String {
    if !b.is_finite() || b < 0.0 {
        return "-".into();
    }
    if b < 1023.5 {
        return format!("{b:.0} B");
    }
    scaled(b, 1024.0, &["B", "KiB", "MiB", "GiB", "TiB", "PiB"], " ")
}

/// Formats a byte rate: [`bytes`] followed by `/s` (`-` when unknown).
pub fn byte_rate(b: f64) -> String {
    let s = bytes(b);
    if s == "-" {
        s
    } else {
        s + "/s"
    }
}

/// Scales `v` (>= 1 unit) by `base` until it prints below 1000 of the unit: one decimal
/// below 100, none above.
fn scaled(mut v: f64, base: f64, units: &[&str], sep: &str) -> String {
    let mut i = 0;
    while i + 1 < units.len() && v >= 999.5 {
        v /= base;
        i += 1;
    }
    let digits = if v < 99.95 {
        format!("{v:.1}")
    } else {
        format!("{v:.0}")
    };
    format!("{digits}{sep}{}", units[i])
}

/// Formats a duration in whole seconds, two units at most: `45s`, `3m12s`, `2h03m`, `4d02h`.
pub fn duration_secs(s: u64) -> String {
    let (d, h, m, sec) = (s / 86_400, s / 3_600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// The one-word state of a backend, by precedence:
/// `DOWN` (failing checks), `DRAIN` (drained), `UNKNOWN` (no verdict yet), `BACKUP` (a
/// healthy backup standing by, not in the table), `UP` (healthy and in the table; a backup
/// that took over shows `UP`), `IDLE` (healthy primary not in the table: should not last).
pub fn backend_state(b: &BackendStats) -> &'static str {
    match b.health {
        Health::Down => "DOWN",
        _ if b.drained => "DRAIN",
        Health::Unknown => "UNKNOWN",
        Health::Up if b.in_table => "UP",
        Health::Up if b.backup => "BACKUP",
        Health::Up => "IDLE",
    }
}

/// The `STATE` cell: [`backend_state`], with `/STALE` appended when the health is stale.
pub fn state_cell(b: &BackendStats) -> String {
    let state = backend_state(b);
    if b.health_stale {
        format!("{state}/STALE")
    } else {
        state.to_string()
    }
}

/// The `LAST CHECK` cell: time since the last health-check verdict (`3s ago`), prefixed with
/// `STALE ` past the staleness bound; `-` without checks.
pub fn last_check_cell(b: &BackendStats) -> String {
    match b.last_verdict_secs {
        None => "-".into(),
        Some(s) if b.health_stale => format!("STALE {} ago", duration_secs(s)),
        Some(s) => format!("{} ago", duration_secs(s)),
    }
}

/// A duration in milliseconds: `850ms` under a second, else as [`duration_secs`].
pub fn duration_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms}ms")
    } else {
        duration_secs(ms / 1000)
    }
}

/// The `SUSPECT` cell of `lbctl stats`: why the backend is suspect and for how long
/// (`passive: RST to SYN (4s)`), `-` when it is not.
pub fn suspect_cell(b: &BackendStats) -> String {
    match &b.suspect {
        Some(s) => format!("{} ({})", s.why, duration_secs(s.age_secs)),
        None => "-".into(),
    }
}

/// The `SUSPECT` cell of `lbctl backend list`: the current suspicion with its age
/// (`passive: RST to SYN (since 4s ago)`), else the last one and how it ended
/// (`no (last: passive: RST to SYN for 120ms, cleared by a passing immediate check 40s ago)`),
/// else `-`.
pub fn suspicion_cell(b: &BackendStats) -> String {
    match (&b.suspect, &b.last_suspicion) {
        (Some(s), _) => format!("{} (since {} ago)", s.why, duration_secs(s.age_secs)),
        (None, Some(e)) => format!(
            "no (last: {} for {}, {} {} ago)",
            e.why,
            duration_ms(e.lasted_ms),
            e.how,
            duration_secs(e.ago_secs)
        ),
        (None, None) => "-".into(),
    }
}

/// `part` of `whole` as a percentage: one decimal below 10% (`0.2%`, `9.5%`), none above
/// (`82%`, `100%`); `<0.1%` for a non-zero part that would round to zero; `-` for an empty
/// whole.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    let p = part as f64 * 100.0 / whole as f64;
    if part == 0 {
        "0%".into()
    } else if p < 0.05 {
        "<0.1%".into()
    } else if p < 9.95 {
        format!("{p:.1}%")
    } else {
        format!("{p:.0}%")
    }
}

/// The `SNAT PORTS` cell: SNAT ports in use by the backend's flows / its pool, and the
/// percentage (`402/256K 0.2%`). With more than one SNAT address, the use of the busiest
/// address follows (`402/256K 0.2% (busiest addr 0.3%)`): new flows are dropped as that
/// address fills. `-` when unknown (no sweep yet, a DSR service, an older lbd).
pub fn snat_ports_cell(b: &BackendStats) -> String {
    let Some(p) = &b.snat_ports else {
        return "-".into();
    };
    let mut cell = format!(
        "{}/{} {}",
        count(p.in_use),
        count(p.total),
        percent(p.in_use, p.total)
    );
    if p.addresses > 1 {
        let _ = write!(
            cell,
            " (busiest addr {})",
            percent(p.busiest_address_in_use, p.ports_per_address)
        );
    }
    cell
}

/// A table of left-aligned columns: cells are padded to the widest cell of their column and
/// separated by two spaces; trailing spaces are trimmed.
#[derive(Debug, Clone, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with a header row.
    pub fn new(header: &[&str]) -> Self {
        Self {
            rows: vec![header.iter().map(|s| s.to_string()).collect()],
        }
    }

    /// Appends a row (missing cells print empty).
    pub fn push(&mut self, row: Vec<String>) {
        self.rows.push(row);
    }

    /// Column widths (in characters) over all rows.
    fn widths(&self) -> Vec<usize> {
        let mut w = Vec::new();
        for row in &self.rows {
            for (i, cell) in row.iter().enumerate() {
                let len = cell.chars().count();
                if i >= w.len() {
                    w.push(len);
                } else {
                    w[i] = w[i].max(len);
                }
            }
        }
        w
    }

    /// Every row rendered (header first), each prefixed by `indent` and without a newline.
    pub fn lines(&self, indent: &str) -> Vec<String> {
        let widths = self.widths();
        self.rows
            .iter()
            .map(|row| {
                let mut line = String::from(indent);
                for (i, cell) in row.iter().enumerate() {
                    if i > 0 {
                        line.push_str("  ");
                    }
                    line.push_str(cell);
                    let pad = widths[i] - cell.chars().count();
                    line.extend(std::iter::repeat_n(' ', pad));
                }
                line.trim_end().to_string()
            })
            .collect()
    }

    /// The whole table, one line per row, each ending in a newline.
    pub fn render(&self, indent: &str) -> String {
        self.lines(indent).into_iter().map(|l| l + "\n").collect()
    }
}

fn service_row(s: &ServiceStats) -> Vec<String> {
    let up = s.backends.iter().filter(|b| b.health == Health::Up).count();
    vec![
        s.name.clone(),
        format!("{}:{}", s.vip, s.port),
        s.health_check.clone(),
        format!("{up}/{} up", s.backends.len()),
        count(s.active_flows),
        rate(s.new_flows_per_sec),
        rate(s.packets_per_sec),
        byte_rate(s.bytes_per_sec),
    ]
}

const SERVICE_HEADER: [&str; 8] = [
    "SERVICE", "VIP:PORT", "CHECK", "BACKENDS", "ACTIVE", "NEW/s", "PKT/s", "BYTES/s",
];

const BACKEND_HEADER: [&str; 10] = [
    "BACKEND",
    "STATE",
    "W",
    "ACTIVE",
    "NEW/s",
    "PKT/s",
    "BYTES/s",
    "FLOWS",
    "SNAT PORTS",
    "SUSPECT",
];

fn backend_row(b: &BackendStats) -> Vec<String> {
    vec![
        b.address.to_string(),
        state_cell(b),
        b.weight.to_string(),
        count(b.active_flows),
        rate(b.new_flows_per_sec),
        rate(b.packets_per_sec),
        byte_rate(b.bytes_per_sec),
        b.new_flows.to_string(),
        snat_ports_cell(b),
        suspect_cell(b),
    ]
}

/// The services table (`lbctl service list`): one row per service, no backends.
pub fn services(list: &[ServiceStats]) -> String {
    if list.is_empty() {
        return "no services\n".into();
    }
    let mut t = Table::new(&SERVICE_HEADER);
    for s in list {
        t.push(service_row(s));
    }
    t.render("")
}

/// Services each followed by an indented table of their backends (`lbctl stats`).
///
/// Backend columns are aligned across all services.
pub fn services_with_backends(list: &[ServiceStats]) -> String {
    if list.is_empty() {
        return "no services\n".into();
    }
    let mut st = Table::new(&SERVICE_HEADER);
    let mut bt = Table::new(&BACKEND_HEADER);
    for s in list {
        st.push(service_row(s));
        for b in &s.backends {
            bt.push(backend_row(b));
        }
    }
    let slines = st.lines("");
    let blines = bt.lines("  ");
    let mut out = String::new();
    out.push_str(&slines[0]);
    out.push('\n');
    let mut next_backend = 1;
    for (i, s) in list.iter().enumerate() {
        out.push_str(&slines[i + 1]);
        out.push('\n');
        if s.backends.is_empty() {
            out.push_str("  (no backends)\n");
            continue;
        }
        out.push_str(&blines[0]);
        out.push('\n');
        for line in &blines[next_backend..next_backend + s.backends.len()] {
            out.push_str(line);
            out.push('\n');
        }
        next_backend += s.backends.len();
    }
    out
}

/// The detailed backend table (`lbctl backend list`): state, role and totals per backend.
pub fn backend_list(list: &[BackendListEntry]) -> String {
    if list.is_empty() {
        return "no backends\n".into();
    }
    let mut t = Table::new(&[
        "SERVICE",
        "BACKEND",
        "ID",
        "STATE",
        "W",
        "ROLE",
        "TABLE",
        "ACTIVE",
        "FLOWS",
        "PKTS IN/OUT",
        "BYTES IN/OUT",
        "LAST CHECK",
        "CHANGES",
        "LAST CHANGE",
        "SUSPECT",
    ]);
    for e in list {
        let b = &e.backend;
        t.push(vec![
            e.service.clone(),
            b.address.to_string(),
            b.id.to_string(),
            state_cell(b),
            b.weight.to_string(),
            if b.backup { "backup" } else { "primary" }.into(),
            if b.in_table { "yes" } else { "no" }.into(),
            count(b.active_flows),
            count(b.new_flows),
            format!("{}/{}", count(b.packets_in), count(b.packets_out)),
            format!("{}/{}", bytes(b.bytes_in as f64), bytes(b.bytes_out as f64)),
            last_check_cell(b),
            b.transitions.to_string(),
            b.last_transition.clone().unwrap_or_else(|| "-".into()),
            suspicion_cell(b),
        ]);
    }
    t.render("")
}

/// The `lbctl status` view.
pub fn status(s: &StatusInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lbd {}  pid {}  up {}",
        s.version,
        s.pid,
        duration_secs(s.uptime_secs)
    );
    let interfaces = if s.interfaces.is_empty() {
        "none".to_string()
    } else {
        s.interfaces
            .iter()
            .map(|i| {
                let mode = match i.mode {
                    crate::dataplane::AttachedMode::Native => "native",
                    crate::dataplane::AttachedMode::Generic => "generic",
                };
                format!("{} (ifindex {}, {mode})", i.name, i.ifindex)
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let pinned = match &s.pin_root {
        Some(p) => p.display().to_string(),
        None => "not pinned (forwarding stops with lbd)".into(),
    };
    let down = s.backends.saturating_sub(s.healthy_backends);
    let mut t = Table::default();
    t.push(vec!["config".into(), s.config_path.display().to_string()]);
    t.push(vec!["pinned at".into(), pinned]);
    t.push(vec!["interfaces".into(), interfaces]);
    t.push(vec!["services".into(), s.services.to_string()]);
    t.push(vec![
        "backends".into(),
        format!("{} ({} up, {down} not up)", s.backends, s.healthy_backends),
    ]);
    if let Some(m) = &s.maglev {
        t.push(vec![
            "maglev seed".into(),
            format!("{} ({:#010x})", m.seed, m.seed),
        ]);
        let check = match &m.expected_digest {
            None => String::new(),
            Some(e) if *e == m.configured_digest => "  (= maglev.expected_digest)".into(),
            Some(e) => format!("  (MISMATCH: maglev.expected_digest is {e}; not announcing)"),
        };
        t.push(vec![
            "maglev digest".into(),
            format!("{}{check}", m.configured_digest),
        ]);
        t.push(vec!["live digest".into(), m.live_digest.clone()]);
    }
    if let Some(a) = &s.announce {
        let device = if a.device_up { "up" } else { "DOWN" };
        t.push(vec![
            "announce".into(),
            format!(
                "BIRD {} via {}, dead-man device {} {device}",
                a.bird_socket.display(),
                a.include_file.display(),
                a.device
            ),
        ]);
        if let Some(e) = &a.last_error {
            t.push(vec!["last error".into(), e.clone()]);
        }
    }
    out.push_str(&t.render(""));
    if let Some(a) = &s.announce {
        let mut v = Table::default();
        v.push(vec!["VIP".into(), "ANNOUNCED".into(), "WHY".into()]);
        for x in &a.vips {
            let state = match (x.announced, x.wanted) {
                (true, true) => "yes",
                (false, false) => "no",
                (false, true) => "pending",
                (true, false) => "withdrawing",
            };
            v.push(vec![x.vip.to_string(), state.into(), x.reason.clone()]);
        }
        out.push('\n');
        out.push_str(&v.render(""));
    }
    out
}

/// A Unix time in milliseconds as `YYYY-MM-DD HH:MM:SS.mmm` UTC.
pub fn utc_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{:03}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// The `lbctl db status` view: per cluster a summary line, then one row per member.
pub fn db_status(list: &[DbClusterInfo]) -> String {
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no database clusters configured\n");
    }
    for (i, c) in list.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        let primary = match c.primary {
            Some(p) => format!(
                "{p}  timeline {}  since {}",
                c.timeline.map_or("?".into(), |t| t.to_string()),
                c.primary_since_unix_ms.map_or("?".into(), utc_ms)
            ),
            None => "NONE (writes refused)".into(),
        };
        let _ = writeln!(out, "cluster {}  primary {primary}", c.name);
        let mut flags = Vec::new();
        if c.split_brain {
            flags.push("SPLIT BRAIN".to_string());
        }
        if c.read_fallback {
            flags.push("read fallback".to_string());
        }
        flags.push(format!("primary changes {}", c.primary_changes));
        if let Some(l) = c.lost_bytes_estimate {
            flags.push(format!("last lost-bytes estimate {l}"));
        }
        flags.push(format!("rounds {}", c.rounds));
        let _ = writeln!(out, "  {}", flags.join("  "));
        let mut t = Table::new(&[
            "MEMBER", "ROLE", "STATE", "CHECK", "LSN", "TL", "LAG", "READS", "FLOWS", "WHY",
        ]);
        for m in &c.members {
            t.push(vec![
                m.address.to_string(),
                m.role.clone(),
                m.state.clone(),
                m.probe.clone(),
                m.lsn.clone().unwrap_or_else(|| "-".into()),
                m.timeline.map_or("-".into(), |t| t.to_string()),
                m.lag_bytes.map_or("-".into(), |l| bytes(l as f64)),
                if m.read_eligible { "yes" } else { "no" }.into(),
                count(m.flows),
                m.why.clone(),
            ]);
        }
        out.push_str(&t.render("  "));
    }
    out
}

/// The `lbctl db events` view: one line per event, oldest first.
pub fn db_events(list: &[DbEventInfo]) -> String {
    if list.is_empty() {
        return "no database events\n".into();
    }
    let mut t = Table::new(&["TIME (UTC)", "CLUSTER", "EVENT", "MESSAGE"]);
    for e in list {
        t.push(vec![
            utc_ms(e.at_unix_ms),
            e.cluster.clone(),
            e.event.clone(),
            e.message.clone(),
        ]);
    }
    t.render("")
}

/// The conntrack key filter's line of `lbctl stats`:
/// `conntrack key filter: on, 2.1% of 16.8M bits set, 12 rebuilds`, with `(high)` after the
/// percentage above [`CtFilterStatus::HIGH_FILL_RATIO`].
pub fn conntrack_filter(f: &CtFilterStatus) -> String {
    if !f.enabled {
        return "conntrack key filter: off (new flows make every conntrack lookup)".into();
    }
    let high = if f.fill_ratio() > CtFilterStatus::HIGH_FILL_RATIO {
        " (high)"
    } else {
        ""
    };
    format!(
        "conntrack key filter: on, {}{high} of {} bits set, {} rebuilds",
        percent(f.bits_set, f.bits_total),
        count(f.bits_total),
        f.rebuilds
    )
}

/// The `lbctl stats` view: services with backends, the conntrack key filter's line (once a
/// sweep reported it), then the global counters in [`lb_common::COUNTER_NAMES`] order (then
/// any the server added).
///
/// `rates` adds a per-second column computed against `previous` (the sample before, as in
/// `--watch`; `-` while there is none). A single sample prints totals only.
pub fn stats(snap: &StatsSnapshot, previous: Option<&StatsSnapshot>, rates: bool) -> String {
    let mut out = services_with_backends(&snap.services);
    out.push('\n');
    if let Some(f) = &snap.conntrack_filter {
        out.push_str(&conntrack_filter(f));
        out.push_str("\n\n");
    }
    let dt_secs = previous
        .map(|p| snap.timestamp_ms.saturating_sub(p.timestamp_ms) as f64 / 1000.0)
        .filter(|dt| *dt > 0.0);
    let mut names: Vec<&str> = lb_common::COUNTER_NAMES
        .iter()
        .copied()
        .filter(|n| snap.counters.contains_key(*n) && !n.starts_with(lb_common::RESERVED_PREFIX))
        .collect();
    names.extend(
        snap.counters
            .keys()
            .map(String::as_str)
            .filter(|n| !lb_common::COUNTER_NAMES.contains(n)),
    );
    let mut t = if rates {
        Table::new(&["COUNTER", "TOTAL", "RATE/s"])
    } else {
        Table::new(&["COUNTER", "TOTAL"])
    };
    for name in names {
        let total = snap.counters[name];
        let r = match (previous, dt_secs) {
            (Some(p), Some(dt)) => match p.counters.get(name) {
                Some(&before) if before <= total => rate((total - before) as f64 / dt),
                _ => "-".into(),
            },
            _ => "-".into(),
        };
        let mut row = vec![name.to_string(), total.to_string()];
        if rates {
            row.push(r);
        }
        t.push(row);
    }
    out.push_str(&t.render(""));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::proto::InterfaceInfo;
    use crate::dataplane::AttachedMode;
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    #[test]
    fn counts_scale_by_thousands() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1000, "1.0K"),
            (1234, "1.2K"),
            (12_100, "12.1K"),
            (99_949, "99.9K"),
            (99_950, "100K"),
            (123_456, "123K"),
            (999_499, "999K"),
            (999_500, "1.0M"),
            (4_500_000, "4.5M"),
            (7_000_000_000, "7.0G"),
            (u64::MAX, "18447P"),
        ];
        for (n, want) in cases {
            assert_eq!(count(n), want, "{n}");
        }
    }

    #[test]
    fn rates_show_small_fractions() {
        let cases = [
            (0.0, "0"),
            (0.5, "0.5"),
            (3.0, "3"),
            (9.96, "10"),
            (117.4, "117"),
            (350.0, "350"),
            (999.4, "999"),
            (999.6, "1.0K"),
            (4000.5, "4.0K"),
            (12_100.0, "12.1K"),
            (f64::NAN, "-"),
            (-1.0, "-"),
        ];
        for (r, want) in cases {
            assert_eq!(rate(r), want, "{r}");
        }
    }

    #[test]
    fn bytes_use_binary_units() {
        let cases = [
            (0.0, "0 B"),
            (512.0, "512 B"),
            (1023.0, "1023 B"),
            (1024.0, "1.0 KiB"),
            (1536.0, "1.5 KiB"),
            (10_276_045.0, "9.8 MiB"),
            (3.5 * 1024.0 * 1024.0 * 1024.0, "3.5 GiB"),
            (150.0 * 1024.0 * 1024.0, "150 MiB"),
            (1023.9 * 1024.0, "1.0 MiB"),
        ];
        for (b, want) in cases {
            assert_eq!(bytes(b), want, "{b}");
        }
        assert_eq!(byte_rate(10_276_045.0), "9.8 MiB/s");
        assert_eq!(byte_rate(f64::INFINITY), "-");
    }

    #[test]
    fn durations_use_two_units() {
        assert_eq!(duration_secs(0), "0s");
        assert_eq!(duration_secs(45), "45s");
        assert_eq!(duration_secs(192), "3m12s");
        assert_eq!(duration_secs(7384), "2h03m");
        assert_eq!(duration_secs(4 * 86_400 + 2 * 3600 + 59), "4d02h");
    }

    fn backend(addr: &str) -> BackendStats {
        BackendStats {
            address: addr.parse().unwrap(),
            id: 1,
            weight: 1,
            backup: false,
            health: Health::Up,
            drained: false,
            in_table: true,
            active_flows: 402,
            new_flows: 12034,
            packets_in: 2500,
            bytes_in: 300_000,
            packets_out: 1500,
            bytes_out: 3_500_000,
            new_flows_per_sec: 117.0,
            packets_per_sec: 4000.0,
            bytes_per_sec: 3.3 * 1024.0 * 1024.0,
            transitions: 0,
            last_transition: None,
            last_verdict_secs: None,
            health_stale: false,
            suspect: None,
            last_suspicion: None,
            snat_ports: Some(crate::api::proto::SnatPortsInfo {
                in_use: 402,
                total: 4 * 64_512,
                busiest_address_in_use: 700,
                ports_per_address: 64_512,
                addresses: 4,
            }),
        }
    }

    fn web() -> ServiceStats {
        let mut b2 = backend("10.1.2.2:8080");
        b2.health = Health::Down;
        b2.in_table = false;
        b2.active_flows = 0;
        b2.new_flows = 310;
        b2.new_flows_per_sec = 0.0;
        b2.packets_per_sec = 0.0;
        b2.bytes_per_sec = 0.0;
        b2.suspect = Some(crate::api::proto::SuspectInfo {
            why: "passive: RST to SYN; active: 3 checks failed".into(),
            passive_reason: Some("rst_to_syn".into()),
            detections: 2,
            failed_checks: 3,
            last_failure: Some("connect: Connection refused".into()),
            since_unix_ms: 1_800_000_000_000,
            age_secs: 14,
        });
        let mut b3 = backend("10.1.3.2:8080");
        b3.backup = true;
        b3.in_table = false;
        b3.weight = 10;
        b3.active_flows = 0;
        b3.new_flows = 0;
        b3.new_flows_per_sec = 0.0;
        b3.packets_per_sec = 0.0;
        b3.bytes_per_sec = 0.0;
        b3.snat_ports = None;
        if let Some(p) = &mut b2.snat_ports {
            p.in_use = 0;
            p.busiest_address_in_use = 0;
        }
        ServiceStats {
            name: "web".into(),
            vip: Ipv4Addr::new(192, 0, 2, 10),
            port: 80,
            health_check: "http".into(),
            active_flows: 1234,
            new_flows: 12344,
            refused: 0,
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            new_flows_per_sec: 350.0,
            packets_per_sec: 12_100.0,
            bytes_per_sec: 10_276_045.0,
            backends: vec![backend("10.1.1.2:8080"), b2, b3],
        }
    }

    fn api() -> ServiceStats {
        let mut b = backend("10.2.0.20:443");
        b.drained = true;
        b.in_table = false;
        b.active_flows = 7;
        b.new_flows_per_sec = 0.0;
        b.packets_per_sec = 0.5;
        b.bytes_per_sec = 40.0;
        b.new_flows = 5;
        if let Some(p) = &mut b.snat_ports {
            p.in_use = 52_000;
            p.busiest_address_in_use = 54_000;
        }
        ServiceStats {
            name: "api-internal".into(),
            vip: Ipv4Addr::new(192, 0, 2, 11),
            port: 443,
            health_check: "tcp".into(),
            active_flows: 7,
            new_flows: 5,
            refused: 2,
            packets_in: 0,
            bytes_in: 0,
            packets_out: 0,
            bytes_out: 0,
            new_flows_per_sec: 0.0,
            packets_per_sec: 0.5,
            bytes_per_sec: 40.0,
            backends: vec![b],
        }
    }

    #[test]
    fn backend_states_follow_precedence() {
        let mut b = backend("10.0.0.1:80");
        assert_eq!(backend_state(&b), "UP");
        b.backup = true;
        assert_eq!(backend_state(&b), "UP");
        b.in_table = false;
        assert_eq!(backend_state(&b), "BACKUP");
        b.backup = false;
        assert_eq!(backend_state(&b), "IDLE");
        b.drained = true;
        assert_eq!(backend_state(&b), "DRAIN");
        b.health = Health::Unknown;
        assert_eq!(backend_state(&b), "DRAIN");
        b.drained = false;
        assert_eq!(backend_state(&b), "UNKNOWN");
        b.drained = true;
        b.health = Health::Down;
        assert_eq!(backend_state(&b), "DOWN");
    }

    #[test]
    fn golden_services_with_backends() {
        let got = services_with_backends(&[web(), api()]);
        let want = "\
SERVICE       VIP:PORT        CHECK  BACKENDS  ACTIVE  NEW/s  PKT/s  BYTES/s
web           192.0.2.10:80   http   2/3 up    1.2K    350    12.1K  9.8 MiB/s
  BACKEND        STATE   W   ACTIVE  NEW/s  PKT/s  BYTES/s    FLOWS  SNAT PORTS                         SUSPECT
  10.1.1.2:8080  UP      1   402     117    4.0K   3.3 MiB/s  12034  402/258K 0.2% (busiest addr 1.1%)  -
  10.1.2.2:8080  DOWN    1   0       0      0      0 B/s      310    0/258K 0% (busiest addr 0%)        passive: RST to SYN; active: 3 checks failed (14s)
  10.1.3.2:8080  BACKUP  10  0       0      0      0 B/s      0      -                                  -
api-internal  192.0.2.11:443  tcp    1/1 up    7       0      0.5    40 B/s
  BACKEND        STATE   W   ACTIVE  NEW/s  PKT/s  BYTES/s    FLOWS  SNAT PORTS                         SUSPECT
  10.2.0.20:443  DRAIN   1   7       0      0.5    40 B/s     5      52.0K/258K 20% (busiest addr 84%)  -
";
        assert_eq!(got, want, "\n{got}");
    }

    #[test]
    fn percent_and_snat_ports_cell() {
        assert_eq!(percent(0, 100), "0%");
        assert_eq!(percent(1, 100_000), "<0.1%");
        assert_eq!(percent(2, 1000), "0.2%");
        assert_eq!(percent(99, 1000), "9.9%");
        assert_eq!(percent(998, 10_000), "10%");
        assert_eq!(percent(85, 100), "85%");
        assert_eq!(percent(100, 100), "100%");
        assert_eq!(percent(1, 0), "-");
        let mut b = backend("10.0.0.1:80");
        b.snat_ports = Some(crate::api::proto::SnatPortsInfo {
            in_use: 900,
            total: 1000,
            busiest_address_in_use: 900,
            ports_per_address: 1000,
            addresses: 1,
        });
        // One SNAT address: the busiest address is the whole pool, said once.
        assert_eq!(snat_ports_cell(&b), "900/1.0K 90%");
        b.snat_ports = None;
        assert_eq!(snat_ports_cell(&b), "-");
    }

    #[test]
    fn golden_services_only_and_empty() {
        let got = services(&[web()]);
        let want = "\
SERVICE  VIP:PORT       CHECK  BACKENDS  ACTIVE  NEW/s  PKT/s  BYTES/s
web      192.0.2.10:80  http   2/3 up    1.2K    350    12.1K  9.8 MiB/s
";
        assert_eq!(got, want, "\n{got}");
        assert_eq!(services(&[]), "no services\n");
        assert_eq!(services_with_backends(&[]), "no services\n");
        let mut empty = api();
        empty.backends.clear();
        let got = services_with_backends(&[empty]);
        assert!(
            got.ends_with("0/0 up    7       0      0.5    40 B/s\n  (no backends)\n"),
            "\n{got}"
        );
    }

    #[test]
    fn golden_backend_list() {
        let web = web();
        let mut entries: Vec<BackendListEntry> = web
            .backends
            .iter()
            .map(|b| BackendListEntry {
                service: "web".into(),
                backend: b.clone(),
            })
            .collect();
        entries[1].backend.transitions = 2;
        entries[1].backend.last_transition = Some("down 12s ago: connection refused".into());
        entries[0].backend.last_verdict_secs = Some(1);
        entries[1].backend.last_verdict_secs = Some(1);
        // Checks that have not run for 3 minutes: the last state, marked stale.
        entries[2].backend.last_verdict_secs = Some(192);
        entries[2].backend.health_stale = true;
        // A passive suspicion of b1 cleared by the immediate check 40 s ago.
        entries[0].backend.last_suspicion = Some(crate::api::proto::SuspicionEndInfo {
            why: "passive: SYN unanswered".into(),
            since_unix_ms: 1_800_000_000_000,
            ended_unix_ms: 1_800_000_000_120,
            lasted_ms: 120,
            ago_secs: 40,
            how: "cleared by a passing immediate check".into(),
        });
        let got = backend_list(&entries);
        let want = "\
SERVICE  BACKEND        ID  STATE         W   ROLE     TABLE  ACTIVE  FLOWS  PKTS IN/OUT  BYTES IN/OUT     LAST CHECK       CHANGES  LAST CHANGE                       SUSPECT
web      10.1.1.2:8080  1   UP            1   primary  yes    402     12.0K  2.5K/1.5K    293 KiB/3.3 MiB  1s ago           0        -                                 no (last: passive: SYN unanswered for 120ms, cleared by a passing immediate check 40s ago)
web      10.1.2.2:8080  1   DOWN          1   primary  no     0       310    2.5K/1.5K    293 KiB/3.3 MiB  1s ago           2        down 12s ago: connection refused  passive: RST to SYN; active: 3 checks failed (since 14s ago)
web      10.1.3.2:8080  1   BACKUP/STALE  10  backup   no     0       0      2.5K/1.5K    293 KiB/3.3 MiB  STALE 3m12s ago  0        -                                 -
";
        assert_eq!(got, want, "\n{got}");
        assert_eq!(backend_list(&[]), "no backends\n");
    }

    #[test]
    fn golden_status() {
        let s = StatusInfo {
            version: "0.1.0".into(),
            pid: 4242,
            uptime_secs: 7384,
            config_path: "/etc/lb/lb.yaml".into(),
            interfaces: vec![
                InterfaceInfo {
                    name: "eth0".into(),
                    ifindex: 2,
                    mode: AttachedMode::Native,
                },
                InterfaceInfo {
                    name: "eth1".into(),
                    ifindex: 3,
                    mode: AttachedMode::Generic,
                },
            ],
            services: 2,
            backends: 4,
            healthy_backends: 3,
            pin_root: Some("/sys/fs/bpf/lb".into()),
            maglev: None,
            announce: None,
        };
        let want = "\
lbd 0.1.0  pid 4242  up 2h03m
config      /etc/lb/lb.yaml
pinned at   /sys/fs/bpf/lb
interfaces  eth0 (ifindex 2, native), eth1 (ifindex 3, generic)
services    2
backends    4 (3 up, 1 not up)
";
        assert_eq!(status(&s), want, "\n{}", status(&s));
        let s = StatusInfo {
            maglev: Some(crate::api::proto::MaglevInfo {
                seed: 12345,
                configured_digest: "2b446bc2ef4f2593".into(),
                live_digest: "0123456789abcdef".into(),
                expected_digest: Some("2b446bc2ef4f2594".into()),
            }),
            announce: Some(crate::api::proto::AnnounceInfo {
                bird_socket: "/run/bird/bird.ctl".into(),
                include_file: "/etc/bird/lb-vips.conf".into(),
                device: "lbvip0".into(),
                device_up: true,
                last_error: None,
                vips: vec![crate::api::proto::VipAnnounceInfo {
                    vip: "192.0.2.10".parse().unwrap(),
                    wanted: false,
                    announced: false,
                    reason: "maglev digest differs".into(),
                }],
            }),
            ..s
        };
        let want = "\
lbd 0.1.0  pid 4242  up 2h03m
config         /etc/lb/lb.yaml
pinned at      /sys/fs/bpf/lb
interfaces     eth0 (ifindex 2, native), eth1 (ifindex 3, generic)
services       2
backends       4 (3 up, 1 not up)
maglev seed    12345 (0x00003039)
maglev digest  2b446bc2ef4f2593  (MISMATCH: maglev.expected_digest is 2b446bc2ef4f2594; not announcing)
live digest    0123456789abcdef
announce       BIRD /run/bird/bird.ctl via /etc/bird/lb-vips.conf, dead-man device lbvip0 up

VIP         ANNOUNCED  WHY
192.0.2.10  no         maglev digest differs
";
        assert_eq!(status(&s), want, "\n{}", status(&s));
    }

    #[test]
    fn golden_stats_with_counter_rates() {
        let mut counters = BTreeMap::new();
        for name in lb_common::COUNTER_NAMES {
            counters.insert(name.to_string(), 0);
        }
        let prev = StatsSnapshot {
            timestamp_ms: 10_000,
            services: vec![],
            counters: counters.clone(),
            conntrack_filter: None,
        };
        counters.insert("fwd_to_backend".into(), 4000);
        counters.insert("new_flow".into(), 3);
        counters.insert("from_the_future".into(), 1);
        let mut snap = StatsSnapshot {
            timestamp_ms: 12_000,
            services: vec![],
            counters,
            conntrack_filter: None,
        };
        let got = stats(&snap, Some(&prev), true);
        assert!(
            got.starts_with("no services\n\nCOUNTER                 TOTAL  RATE/s\n"),
            "\n{got}"
        );
        // Once a sweep reported the key filter, its line comes before the counters.
        let mut f = CtFilterStatus {
            enabled: true,
            bits_set: 352_322,
            bits_total: 1 << 24,
            rebuilds: 12,
        };
        snap.conntrack_filter = Some(f);
        let with_filter = stats(&snap, Some(&prev), true);
        assert!(
            with_filter.starts_with(
                "no services\n\nconntrack key filter: on, 2.1% of 16.8M bits set, 12 rebuilds\n\n\
                 COUNTER                 TOTAL  RATE/s\n"
            ),
            "\n{with_filter}"
        );
        f.bits_set = 1 << 23;
        assert_eq!(
            conntrack_filter(&f),
            "conntrack key filter: on, 50% (high) of 16.8M bits set, 12 rebuilds"
        );
        f.enabled = false;
        assert_eq!(
            conntrack_filter(&f),
            "conntrack key filter: off (new flows make every conntrack lookup)"
        );
        snap.conntrack_filter = None;
        assert!(
            got.contains("\nfwd_to_backend          4000   2.0K\n"),
            "\n{got}"
        );
        assert!(
            got.contains("\nnew_flow                3      1.5\n"),
            "\n{got}"
        );
        assert!(
            got.contains("\npass_non_ip             0      0\n"),
            "\n{got}"
        );
        assert!(
            got.contains(
                "\ntx_rst_ct_conflict      0      0\ndrop_ct_conflict        0      0\n\
                 drop_syn_refused        0      0\n"
            ),
            "\n{got}"
        );
        assert!(
            got.ends_with(
                "\nct_syn_retried          0      0\n\
                 ct_syn_retry_exhausted  0      0\nfwd_dsr                 0      0\n\
                 drop_dsr_no_backend     0      0\nsnat_pool_full          0      0\n\
                 snat_search_short       0      0\nct_dsr_new              0      0\n\
                 ct_dsr_repick           0      0\nfrom_the_future         1      -\n"
            ),
            "\n{got}"
        );
        // Index order, not alphabetical.
        assert!(got.find("pass_non_ip").unwrap() < got.find("drop_malformed").unwrap());
        // Without a previous sample there is no rate.
        let first = stats(&snap, None, true);
        assert!(
            first.contains("\nfwd_to_backend          4000   -\n"),
            "\n{first}"
        );
        // A single sample has no rate column.
        let single = stats(&snap, None, false);
        assert!(
            single.contains("\nCOUNTER                 TOTAL\n"),
            "\n{single}"
        );
        assert!(
            single.contains("\nfwd_to_backend          4000\n"),
            "\n{single}"
        );
    }
}
