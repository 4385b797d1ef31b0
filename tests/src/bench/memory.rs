//! Section 5: memory. Loads the data plane with the default sizes and reads every map's
//! `memlock` (the kernel's accounting of its memory) from `/proc/self/fdinfo`, then names the
//! maps through `bpftool map show id N`.

use super::report::{Measurement, Section};
use lb::dataplane::LoadOptions;
use std::collections::{BTreeMap, BTreeSet};

/// One map's accounting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapMemory {
    /// The kernel's map name.
    pub name: String,
    /// `max_entries`.
    pub max_entries: u64,
    /// `memlock` in bytes.
    pub memlock: u64,
}

fn bpf_map_fds() -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        for e in dir.flatten() {
            if let Ok(target) = std::fs::read_link(e.path()) {
                if target.to_string_lossy() == "anon_inode:bpf-map" {
                    out.insert(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
    }
    out
}

/// Parses `key:\tvalue` lines of an fdinfo file.
pub fn parse_fdinfo(text: &str) -> BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn map_name(id: &str) -> Result<String, String> {
    let out = std::process::Command::new("bpftool")
        .args(["map", "show", "id", id, "--json"])
        .output()
        .map_err(|e| format!("bpftool: {e}"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("bpftool map show id {id}: {e}"))?;
    v.get("name")
        .and_then(|n| n.as_str())
        .map(str::to_string)
        .ok_or_else(|| format!("bpftool map show id {id}: no name"))
}

/// Loads the default-sized data plane and accounts its maps.
pub fn measure_maps() -> Result<Vec<MapMemory>, String> {
    let before = bpf_map_fds();
    let dp = super::PrivateDataplane::load(&LoadOptions::default())?;
    let after = bpf_map_fds();
    let mut maps = Vec::new();
    for fd in after.difference(&before) {
        let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
            .map_err(|e| format!("fdinfo {fd}: {e}"))?;
        let kv = parse_fdinfo(&info);
        let num = |k: &str| -> Result<u64, String> {
            kv.get(k)
                .ok_or_else(|| format!("fdinfo {fd} has no {k}"))?
                .parse::<u64>()
                .map_err(|e| format!("fdinfo {fd} {k}: {e}"))
        };
        let id = kv
            .get("map_id")
            .ok_or_else(|| format!("fdinfo {fd} has no map_id"))?;
        let name = map_name(id)?;
        if !lb_common::ALL_MAPS
            .iter()
            .any(|m| m.starts_with(name.as_str()) || name.starts_with(m))
        {
            continue; // e.g. .rodata/.bss of the object
        }
        maps.push(MapMemory {
            name,
            max_entries: num("max_entries")?,
            memlock: num("memlock")?,
        });
    }
    drop(dp);
    if maps.is_empty() {
        return Err("no lb map found among the process's bpf map fds".into());
    }
    maps.sort_by_key(|m| std::cmp::Reverse(m.memlock));
    Ok(maps)
}

/// Runs section 5.
pub fn run() -> Section {
    let mut sec = Section::new(
        "memory",
        "5. Memory",
        "The data plane is loaded with the default sizes (`LoadOptions::default()`: 1M flows \
         = 2M conntrack entries, 64 services x 2 Maglev tables of 65537, 4096 backends); each \
         map's `memlock` is read from `/proc/self/fdinfo` of its fd (the kernel's own \
         accounting of the map's memory, which is locked: not swappable). Bytes per conntrack \
         entry = `memlock / max_entries` of `LB_CONNTRACK` (a preallocated LRU hash: key 16 + \
         value 32 bytes plus the kernel's element header and LRU node); a flow is two entries.",
    );
    match measure_maps() {
        Ok(maps) => {
            let total: u64 = maps.iter().map(|m| m.memlock).sum();
            if let Some(ct) = maps.iter().find(|m| m.name == lb_common::MAP_CONNTRACK) {
                let per = ct.memlock as f64 / ct.max_entries.max(1) as f64;
                sec.push(
                    "conntrack",
                    "per entry",
                    "bytes",
                    Measurement::from_runs(vec![per]),
                );
                sec.push(
                    "conntrack",
                    "per flow (2 entries)",
                    "bytes",
                    Measurement::from_runs(vec![per * 2.0]),
                );
            } else {
                sec.push(
                    "conntrack",
                    "per entry",
                    "bytes",
                    Measurement::not_measured("LB_CONNTRACK not found"),
                );
            }
            for m in &maps {
                sec.push(
                    &m.name,
                    &format!("{} entries", m.max_entries),
                    "MiB",
                    Measurement::from_runs(vec![m.memlock as f64 / (1024.0 * 1024.0)]),
                );
            }
            sec.push(
                "all lb maps, default sizes",
                "total",
                "MiB",
                Measurement::from_runs(vec![total as f64 / (1024.0 * 1024.0)]),
            );
        }
        Err(e) => {
            sec.push(
                "conntrack",
                "per entry",
                "bytes",
                Measurement::not_measured(e.clone()),
            );
            sec.push(
                "all lb maps, default sizes",
                "total",
                "MiB",
                Measurement::not_measured(e),
            );
        }
    }
    sec
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_lines_parse() {
        let kv = parse_fdinfo(
            "pos:\t0\nmap_type:\t9\nmax_entries:\t2097152\nmemlock:\t201326592\nmap_id:\t42\n",
        );
        assert_eq!(kv["max_entries"], "2097152");
        assert_eq!(kv["memlock"], "201326592");
        assert_eq!(kv["map_id"], "42");
    }
}
