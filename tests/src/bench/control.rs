//! Section 4: the control plane. Maglev table build time for 10, 100 and 1000 backends
//! (table 65537), the time from a backend's failure to the new table in the map, and the time
//! to apply a configuration with 1000 services.

use super::report::{Measurement, Section};
use super::stats::interleave;
use super::Scale;
use lb::maglev::{build_table, MaglevBackend};
use std::time::Instant;

/// Backend counts of the Maglev build benchmark.
pub const MAGLEV_BACKEND_COUNTS: [usize; 3] = [10, 100, 1000];

/// The case name of the Maglev build row for `n` backends.
pub fn maglev_case(n: usize) -> String {
    format!(
        "Maglev build, {n} backends, M = {}",
        lb_common::DEFAULT_MAGLEV_TABLE_SIZE
    )
}

fn backends(n: usize) -> Vec<MaglevBackend> {
    (0..n)
        .map(|i| MaglevBackend {
            identity: format!("10.{}.{}.2:8080", 1 + i / 250, 1 + i % 250),
            weight: 1,
            id: u32::try_from(i + 1).expect("few backends"),
        })
        .collect()
}

/// Median build time over `reps` builds, in milliseconds (one interleaved round).
fn build_ms(set: &[MaglevBackend], reps: usize) -> Result<f64, String> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let start = Instant::now();
        let table = build_table(set, lb_common::DEFAULT_MAGLEV_TABLE_SIZE)
            .map_err(|e| format!("build_table: {e}"))?;
        times.push(start.elapsed().as_secs_f64() * 1e3);
        // Keep the result observable so the build cannot be optimised away, and check it.
        if table.contains(&lb_common::BACKEND_ID_NONE) {
            return Err("the table has empty slots".into());
        }
    }
    super::stats::median(&times).ok_or_else(|| "no build ran".into())
}

/// Measures Maglev build times into `sec` (rows "Maglev build, N backends").
pub fn maglev(sec: &mut Section, scale: Scale) {
    let reps = scale.pick(15, 1);
    let sets: Vec<Vec<MaglevBackend>> =
        MAGLEV_BACKEND_COUNTS.iter().map(|&n| backends(n)).collect();
    let names: Vec<String> = MAGLEV_BACKEND_COUNTS
        .iter()
        .map(|&n| maglev_case(n))
        .collect();
    let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let runs = interleave(&name_refs, scale.rounds(), |i, _| build_ms(&sets[i], reps));
    for r in &runs {
        sec.push(&r.name, "lb::maglev", "ms", Measurement::from_variant(r));
    }
}

/// Health settings of the failover measurement: fast checks so the control plane's own
/// latency is visible next to detection.
fn failover_health() -> crate::lab::lbd::HealthSpec {
    crate::lab::lbd::HealthSpec {
        kind: "http".into(),
        interval_ms: 100,
        timeout_ms: 80,
        rise: 1,
        fall: 2,
    }
}

fn service_key() -> lb_common::ServiceKey {
    lb_common::ServiceKey {
        vip_be: lb_common::ipv4_to_be(crate::lab::VIP),
        port_be: lb_common::port_to_be(crate::lab::VIP_PORT),
        proto: lb_common::IPPROTO_TCP,
        _pad: 0,
    }
}

/// Reads the service entry from the pinned `LB_SERVICES` map.
fn read_service(pin: &std::path::Path) -> Result<lb_common::ServiceValue, String> {
    use aya::maps::{HashMap, Map, MapData};
    let md = MapData::from_pin(pin).map_err(|e| format!("opening {}: {e}", pin.display()))?;
    let map: HashMap<MapData, lb_common::ServiceKey, lb_common::ServiceValue> =
        HashMap::try_from(Map::HashMap(md)).map_err(|e| format!("{}: {e}", pin.display()))?;
    map.get(&service_key(), 0)
        .map_err(|e| format!("service entry in {}: {e}", pin.display()))
}

/// One failover: lbd up with fast health checks, kill backend 2's server, time until the
/// service entry points to the other Maglev table. Returns milliseconds.
fn failover_once(lab: &mut crate::lab::Lab) -> Result<f64, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    lab.start_backend(2).map_err(e)?;
    let mut cfg = lab.default_config();
    cfg.xdp_mode = "native".into();
    cfg.services[0].health = failover_health();
    let pin = cfg
        .bpffs_root
        .join(format!("abi{}", lb_common::ABI_VERSION))
        .join(lb_common::MAP_SERVICES);
    std::fs::create_dir_all(&cfg.bpffs_root)
        .map_err(|e| format!("creating {}: {e}", cfg.bpffs_root.display()))?;
    lab.start_lbd(&cfg).map_err(e)?;
    let r = (|| {
        let before = read_service(&pin)?;
        let start = Instant::now();
        lab.kill_backend(2);
        loop {
            let now = read_service(&pin)?;
            if now.table_offset != before.table_offset || now.flags != before.flags {
                return Ok(start.elapsed().as_secs_f64() * 1e3);
            }
            if start.elapsed() > std::time::Duration::from_secs(10) {
                return Err("the table did not change within 10 s of the failure".to_string());
            }
            std::thread::sleep(std::time::Duration::from_micros(500));
        }
    })();
    let d = lab.lbd_mut().map_err(e)?.unload().map_err(e);
    let s = lab.start_backend(2).map_err(e);
    let v = r?;
    d?;
    s?;
    Ok(v)
}

/// A config with `n` services (each VIP 10.200.x.y:80 with the lab's backends, no health
/// checks), sized so 1000 services fit (Maglev tables of 1021).
fn many_services_yaml(lab: &crate::lab::Lab, n: usize) -> Result<String, String> {
    let mut cfg = lab.default_config();
    cfg.xdp_mode = "native".into();
    let template = cfg.services[0].clone();
    cfg.services = (0..n)
        .map(|i| {
            let mut s = template.clone();
            s.name = format!("svc{i}");
            s.vip = std::net::Ipv4Addr::new(10, 200, (i / 250) as u8, (1 + i % 250) as u8);
            s.health = crate::lab::lbd::HealthSpec {
                kind: "none".into(),
                ..crate::lab::lbd::HealthSpec::default()
            };
            s
        })
        .collect();
    let mut y = cfg.to_yaml();
    for (from, to) in [
        ("max_services: 16", "max_services: 1024"),
        ("max_backends: 256", "max_backends: 4096"),
        ("maglev_table_size: 65537", "maglev_table_size: 1021"),
    ] {
        if !y.contains(from) {
            return Err(format!("the lab's config writer no longer says `{from}`"));
        }
        y = y.replace(from, to);
    }
    Ok(y)
}

/// lbd up with one service, then a reload to `n` services; returns the reload's milliseconds
/// (the API call returns once the new state is in the maps), checked through `status`.
fn apply_once(lab: &mut crate::lab::Lab, n: usize) -> Result<f64, String> {
    let e = |e: crate::lab::LabError| e.to_string();
    let one = many_services_yaml(lab, 1)?;
    let many = many_services_yaml(lab, n)?;
    let root = lab.default_config().bpffs_root;
    std::fs::create_dir_all(&root).map_err(|e| format!("creating {}: {e}", root.display()))?;
    lab.start_lbd_text(&one).map_err(e)?;
    let r = (|| {
        let lbd = lab.lbd_mut().map_err(e)?;
        lbd.write_config(&many).map_err(e)?;
        let start = Instant::now();
        lbd.api(&serde_json::json!({"command": "reload"}))
            .map_err(e)?;
        let ms = start.elapsed().as_secs_f64() * 1e3;
        let st = lbd
            .api(&serde_json::json!({"command": "status"}))
            .map_err(e)?;
        match st.get("services").and_then(serde_json::Value::as_u64) {
            Some(k) if k as usize == n => Ok(ms),
            other => Err(format!(
                "after the reload lbd reports {other:?} services, not {n}"
            )),
        }
    })();
    let d = lab.lbd_mut().map_err(e)?.unload().map_err(e);
    let v = r?;
    d?;
    Ok(v)
}

/// Measures failover and config application on `lab` into `sec`.
pub fn lab_parts(sec: &mut Section, lab: Result<&mut crate::lab::Lab, String>, scale: Scale) {
    let n_services = scale.pick(1000, 20);
    let failover = "backend failure -> new table in LB_SERVICES";
    let apply = format!("reload to a config with {n_services} services");
    let lab = match lab {
        Ok(l) => l,
        Err(e) => {
            sec.push(failover, "lbd", "ms", Measurement::not_measured(e.clone()));
            sec.push(&apply, "lbd", "ms", Measurement::not_measured(e));
            return;
        }
    };
    let runs = interleave(&[failover, apply.as_str()], scale.rounds(), |i, _| {
        if i == 0 {
            failover_once(lab)
        } else {
            apply_once(lab, n_services)
        }
    });
    let h = failover_health();
    sec.notes.push(format!(
        "Failover: health checks `GET /healthz` every {} ms (timeout {} ms, fall {}), so \
         detection alone takes {}-{} ms; the rest is lbd rebuilding the Maglev table and \
         switching the service entry. The time is taken from the SIGKILL of the backend's \
         server to the service entry's switch, polled every 0.5 ms from the pinned map.",
        h.interval_ms,
        h.timeout_ms,
        h.fall,
        h.interval_ms * u64::from(h.fall.saturating_sub(1)),
        h.interval_ms * u64::from(h.fall) + h.interval_ms
    ));
    for r in &runs {
        sec.push(&r.name, "lbd", "ms", Measurement::from_variant(r));
    }
}

/// Runs section 4: Maglev builds (always) and the lab parts.
pub fn run(
    lab: Result<&mut crate::lab::Lab, String>,
    scale: Scale,
) -> (Section, Vec<super::Target>) {
    let mut sec = Section::new(
        "control",
        "4. Control plane",
        "Maglev: `lb::maglev::build_table` (release build) for 10, 100 and 1000 equal-weight \
         backends, table 65537; a round's value is the median of 15 builds; the table is \
         checked to be full. Failover and reload run against the real `lbd` in the lab \
         (2 backends): failover kills one backend's server and polls the pinned service \
         entry; the reload starts lbd with 1 service and times the `reload` API call to a \
         config with 1000 services (each with the lab's 2 backends, no health checks, Maglev \
         tables of 1021 slots so 2 x 1000 tables fit in memory), then checks `status`.",
    );
    maglev(&mut sec, scale);
    lab_parts(&mut sec, lab, scale);
    let target = super::Target::new(
        "Maglev build, 1000 backends (M = 65537)",
        super::report::Goal::Below,
        22.9,
        "ms",
        sec.median(&maglev_case(1000), "lb::maglev", "ms"),
        "single-threaded permutation fill, O(M log M) probes",
    );
    (sec, vec![target])
}
