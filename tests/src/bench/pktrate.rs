//! Section 2: packet rate through the lab. A SYN flood with random sources is generated in
//! the client namespace by [`super::rawbpf::syn_generator`] (`BPF_PROG_TEST_RUN` with live
//! frames, `XDP_TX` out of the client's veth); every backend's veth runs
//! [`super::rawbpf::counter_drop`], so what is counted is what the balancer forwarded and
//! the backends spend nothing answering. Variants: lb native, lb generic, nftables DNAT.

use super::alt::{self, Variant};
use super::rawbpf::{self, Counter, Prog, SYN_FRAME_LEN};
use super::report::{Goal, Measurement, Section, Target};
use super::stats::interleave;
use super::Scale;
use crate::lab::{backend_ip, Lab, VIP, VIP_PORT};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The variants of this section.
pub const VARIANTS: [Variant; 3] = [Variant::LbNative, Variant::LbGeneric, Variant::Nftables];

const METRIC: &str = "forwarded packets/s";
const CASE: &str = "SYN flood, random sources";

fn enter(path: &Path) -> Result<(), String> {
    let f = std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    // SAFETY: setns on a valid namespace fd changes only the calling thread's namespace.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!(
            "setns {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(())
}

/// Runs `f` on a thread inside the namespace at `path`.
fn in_ns<T: Send>(path: &Path, f: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter(path)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err("namespace thread panicked".into()))
    })
}

fn ifindex(name: &str) -> Result<u32, String> {
    let c = std::ffi::CString::new(name).expect("no NUL");
    // SAFETY: a valid C string; if_nametoindex only reads it.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(format!("no interface {name}")),
        i => Ok(i),
    }
}

fn mac_of(ns: &str, dev: &str) -> Result<[u8; 6], String> {
    let out = crate::lab::sys::ip(&["-n", ns, "-j", "link", "show", "dev", dev])
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("ip -j link: {e}"))?;
    let s = v[0]["address"].as_str().ok_or("ip -j link: no address")?;
    let bytes: Vec<u8> = s
        .split(':')
        .map(|h| u8::from_str_radix(h, 16))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("MAC {s}: {e}"))?;
    bytes
        .try_into()
        .map_err(|_| format!("MAC {s}: not 6 bytes"))
}

fn ns_path(name: &str) -> PathBuf {
    Path::new("/run/netns").join(name)
}

/// Counters attached to every backend's `e0`; detached on drop.
struct Counters {
    counters: Vec<Counter>,
    _links: Vec<OwnedFd>,
}

impl Counters {
    fn attach(lab: &Lab) -> Result<Counters, String> {
        let mut counters = Vec::new();
        let mut links = Vec::new();
        for i in 1..=lab.backend_count() {
            let c = rawbpf::counter_drop().map_err(|e| e.to_string())?;
            let link = in_ns(&ns_path(lab.backend_ns(i)), || {
                c.prog
                    .attach(ifindex("e0")?, rawbpf::XDP_FLAGS_DRV_MODE)
                    .map_err(|e| format!("attaching the counter to backend {i}: {e}"))
            })?;
            counters.push(c);
            links.push(link);
        }
        Ok(Counters {
            counters,
            _links: links,
        })
    }

    fn total(&self) -> Result<u64, String> {
        self.counters
            .iter()
            .map(|c| c.total().map_err(|e| e.to_string()))
            .sum()
    }
}

/// Pins the backends' neighbour entries in the balancer (the counters drop ARP).
fn pin_neighbours(lab: &Lab, pin: bool) -> Result<(), String> {
    for i in 1..=lab.backend_count() {
        let ip = backend_ip(i).to_string();
        let dev = format!("bk{i}");
        let r = if pin {
            let mac = mac_of(lab.backend_ns(i), "e0")?;
            let mac = mac
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":");
            crate::lab::sys::ip(&[
                "-n",
                lab.balancer_ns(),
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                &dev,
                "nud",
                "permanent",
            ])
        } else {
            crate::lab::sys::ip(&["-n", lab.balancer_ns(), "neigh", "del", &ip, "dev", &dev])
        };
        r.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// One flood: returns (forwarded packets/s, generated packets/s).
fn flood(
    lab: &Lab,
    gen: &Prog,
    frame: &[u8],
    packets: u32,
    budget: Duration,
) -> Result<(f64, f64), String> {
    let counters = Counters::attach(lab)?;
    let before = counters.total()?;
    let chunk = 100_000u32.min(packets);
    let (sent, elapsed) = in_ns(&ns_path(lab.client_ns()), || {
        let c0 = ifindex("c0")?;
        let start = Instant::now();
        let mut sent = 0u32;
        while sent < packets && start.elapsed() < budget {
            let n = chunk.min(packets - sent);
            gen.run_live(frame, c0, n).map_err(|e| e.to_string())?;
            sent += n;
        }
        Ok((sent, start.elapsed()))
    })?;
    // Let the last frames drain through the queues.
    std::thread::sleep(Duration::from_millis(200));
    let forwarded = counters.total()? - before;
    if forwarded == 0 {
        return Err(format!("none of {sent} SYNs reached a backend"));
    }
    let secs = elapsed.as_secs_f64();
    Ok((forwarded as f64 / secs, f64::from(sent) / secs))
}

/// Runs section 2 on `lab` (or reports why it cannot).
pub fn run(lab: Option<&mut Lab>, scale: Scale) -> (Section, Vec<Target>) {
    // Below lb's SNAT capacity (16 addresses x 2 backends x 31744 ports = 1M flows), so the
    // flood measures forwarding, not SNAT exhaustion.
    let packets = scale.pick(600_000u32, 20_000);
    let budget = scale.pick(Duration::from_secs(3), Duration::from_secs(1));
    let mut sec = Section::new(
        "pktrate",
        "2. Packet rate through the lab (SYN flood)",
        format!(
            "A SYN flood with random sources (2^32 distinct 4-tuples from 198.18.0.0/16) is \
             generated in the client namespace by a hand-assembled XDP program run with \
             `BPF_PROG_TEST_RUN` and `BPF_F_TEST_XDP_LIVE_FRAMES` (`XDP_TX` out of the client \
             veth; the kernel has no pktgen): up to {packets} frames or {} s per round. Each \
             backend veth runs a counting XDP program that drops the frame, so the rate is \
             what the balancer forwarded, counted at the backends, divided by the sending \
             time. The balancer's veths have GRO on (needed for a veth to accept XDP frames \
             when it has no native XDP program, i.e. for lb generic and nftables), the \
             backends' neighbour entries are pinned. lb runs with the default conntrack size \
             (1M flows), 16 SNAT addresses (1M SNAT ports toward 2 backends, so the flood \
             never exhausts them) and no health checks; the kernel conntrack table of the \
             balancer is flushed before every round of every variant; nftables is `numgen \
             random` DNAT + masquerade. Everything \
             (generator, balancer, backends' counters) shares the machine's 2 cores, so a \
             balancer whose work competes with the generator also slows the generator down \
             (its rate per variant is in the note below). {} rounds, interleaved.",
            budget.as_secs(),
            scale.rounds()
        ),
    );
    let Some(lab) = lab else {
        for v in VARIANTS {
            sec.push(
                CASE,
                v.name(),
                METRIC,
                Measurement::not_measured("the lab could not be built (see the e2e section)"),
            );
        }
        return finish(sec, (None, None));
    };
    let setup = (|| -> Result<Prog, String> {
        let dst_mac = mac_of(lab.balancer_ns(), "pub0")?;
        let src_mac = mac_of(lab.client_ns(), "c0")?;
        let template = rawbpf::syn_template(dst_mac, src_mac, [198, 18], VIP, VIP_PORT);
        let gen = rawbpf::syn_generator(&template)
            .map_err(|e| format!("loading the SYN generator: {e}"))?;
        // Sanity check of the generator: a valid SYN to the VIP from 198.18/16.
        let (action, out) = gen
            .run_once(&[0u8; SYN_FRAME_LEN])
            .map_err(|e| e.to_string())?;
        if action != 3 || out.len() != SYN_FRAME_LEN || out[26..28] != [198, 18] || out[47] != 0x02
        {
            return Err(format!(
                "the SYN generator produced action {action} and frame {out:02x?}"
            ));
        }
        pin_neighbours(lab, true)?;
        Ok(gen)
    })();
    let gen = match setup {
        Ok(g) => g,
        Err(e) => {
            for v in VARIANTS {
                sec.push(CASE, v.name(), METRIC, Measurement::not_measured(e.clone()));
            }
            return finish(sec, (None, None));
        }
    };
    let frame = [0u8; SYN_FRAME_LEN];
    let names: Vec<&str> = VARIANTS.iter().map(|v| v.name()).collect();
    let mut generated: Vec<Vec<f64>> = vec![Vec::new(); VARIANTS.len()];
    let runs = interleave(&names, scale.rounds(), |i, _| {
        let active = alt::up(lab, VARIANTS[i], true)?;
        let r = flood(lab, &gen, &frame, packets, budget);
        let d = active.down(lab);
        let (fwd, gen_rate) = r?;
        d?;
        generated[i].push(gen_rate);
        Ok(fwd)
    });
    let _ = pin_neighbours(lab, false);
    for r in &runs {
        sec.push(CASE, &r.name, METRIC, Measurement::from_variant(r));
    }
    let gen_medians: Vec<Option<f64>> = generated.iter().map(|g| super::stats::median(g)).collect();
    let parts: Vec<String> = VARIANTS
        .iter()
        .zip(&gen_medians)
        .filter_map(|(v, g)| g.map(|g| format!("{} {}", v.name(), super::report::fmt_num(g))))
        .collect();
    if !parts.is_empty() {
        sec.notes.push(format!(
            "Generator rate (frames handed to the client veth per second while that variant \
             was up, median over its rounds): {}.",
            parts.join(", ")
        ));
    }
    let gen_of = |want: Variant| {
        VARIANTS
            .iter()
            .position(|v| *v == want)
            .and_then(|i| gen_medians[i])
    };
    let gens = (gen_of(Variant::LbNative), gen_of(Variant::Nftables));
    finish(sec, gens)
}

/// Ratios and the target; `generated` holds the generator's median rates while lb native and
/// while nftables were up, if measured.
fn finish(mut sec: Section, generated: (Option<f64>, Option<f64>)) -> (Section, Vec<Target>) {
    let nat = Variant::Nftables.name();
    sec.add_ratio(
        "lb native / nftables",
        METRIC,
        (CASE, Variant::LbNative.name()),
        (CASE, nat),
    );
    sec.add_ratio(
        "lb generic / nftables",
        METRIC,
        (CASE, Variant::LbGeneric.name()),
        (CASE, nat),
    );
    let target = Target::new(
        "packet rate, lb native vs nftables DNAT",
        Goal::AtLeast,
        4.0,
        "x",
        sec.ratios[0].value.clone(),
        pktrate_limit(&sec, generated),
    );
    (sec, vec![target])
}

/// What limits the packet-rate comparison, from the measured rates.
fn pktrate_limit(sec: &Section, generated: (Option<f64>, Option<f64>)) -> String {
    let lb = sec.median(CASE, Variant::LbNative.name(), METRIC).ok();
    let nft = sec.median(CASE, Variant::Nftables.name(), METRIC).ok();
    let fmt = super::report::fmt_num;
    let mut s = String::from(
        "generator, balancer and backend counters share the 2 cores; nftables pays a kernel \
         conntrack entry and NAT binding per SYN",
    );
    if let (Some(lb), Some(g)) = (lb, generated.0) {
        s.push_str(&format!(
            "; lb native forwarded {} frames/s while the generator managed {}",
            fmt(lb),
            fmt(g)
        ));
        if lb >= 0.9 * g {
            s.push_str(
                ", so the generator, not lb, sets lb's number and the ratio is a lower bound",
            );
        }
    }
    if let (Some(n), Some(g)) = (nft, generated.1) {
        s.push_str(&format!(
            "; nftables forwarded {} frames/s while the generator managed {}",
            fmt(n),
            fmt(g)
        ));
    }
    s
}
