//! The real kernel data plane: loads the embedded `lb_xdp` object, pins and re-adopts its maps,
//! attaches it to interfaces, and implements [`Dataplane`] with typed map reads and writes.
//!
//! Pin layout under `<pin_root>/abi<ABI_VERSION>/`: one file per map (named after the map) and
//! `links/<iface>` per attachment. Re-adoption reuses the pinned maps as they are, so the
//! conntrack table and counters survive an `lbd` restart; the pinned XDP links keep forwarding
//! while no `lbd` runs.

mod conntrack;
mod ct_filter;
mod events;
mod maps;
mod mmap;
mod pins;

use conntrack::{BpfConntrackSweeper, DsrSweeper, OneMapSweeper};
pub use ct_filter::CtFilter;
use events::RingEvents;
use maps::{mmap_maglev, MaglevMmap};
use mmap::ArrayMapping;
use pins::{check_pinned, maglev_entries, remove_empty_root};
pub(super) use pins::{
    for_each_key_batched, ifindex, is_bpffs, link_detach, obj_get, private_pin_dir, TempPinDir,
};

use super::{
    local_bits, AttachedMode, ConntrackSweep, ConntrackSweeper, CtFilterStatus, Dataplane,
    DataplaneError, EventBatch, LoadOptions, PassiveEventSource, Result, XdpMode, EBPF_OBJECT,
};
use aya::{
    maps::{
        Array, DevMapHash, HashMap as BpfHashMap, IterableMap, Map, MapData, PerCpuArray,
        PerCpuValues, RingBuf,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        TestRun, TestRunOptions, Xdp, XdpMode as AyaXdpMode,
    },
    Ebpf, EbpfLoader,
};
use lb_common::{
    passive::{BackendSuspect, PassiveEvent},
    BackendValue, DsrEntry, FlowEntry, FlowKey, FlowStats, GlobalConfig, ServiceKey, ServiceValue,
    VipValue, ABI_VERSION, ALL_MAPS, CONFIG_ENTRIES, CONNTRACK_ENTRIES_PER_FLOW, EVENTS_RING_BYTES,
    FLOW_F_REPLY, IPPROTO_TCP, LOCAL_F_DSR_ONLY, LOCAL_F_SNAT, LOCAL_F_VIP, MAP_BACKENDS,
    MAP_BACKEND_STATS, MAP_BACKEND_SUSPECT, MAP_CONFIG, MAP_CONNTRACK, MAP_CT_DSR, MAP_CT_SYN,
    MAP_EVENTS, MAP_LOCAL_ADDRS, MAP_MAGLEV, MAP_SERVICES, MAP_SERVICE_STATS, MAP_SNAT_ADDRS,
    MAP_SNAT_FULL, MAP_STATS, MAP_TX_PORTS, MAP_VIPS, MAX_SNAT_ADDRS, MAX_TX_PORTS, NUM_COUNTERS,
    PROGRAM_NAME, VIP_F_DSR_ONLY,
};
use std::collections::{BTreeMap, HashMap};
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

/// Name of the pass-through XDP program in the object (for veth peers in the test lab).
pub const PASS_PROGRAM_NAME: &str = "lb_xdp_pass";

/// Where bpffs is expected for the private pin directory of unpinned loads.
const BPFFS_DEFAULT: &str = "/sys/fs/bpf";

/// What one `BPF_PROG_TEST_RUN` of `lb_xdp` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunResult {
    /// The XDP action (`XDP_ABORTED` = 0, `XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_TX` = 3,
    /// `XDP_REDIRECT` = 4).
    pub verdict: u32,
    /// The frame as the program left it (after rewrites and tail adjustments).
    pub output: Vec<u8>,
    /// Kernel-reported mean duration of one run, in nanoseconds.
    pub duration_ns: u64,
}

/// The loaded XDP program and its maps.
pub struct BpfDataplane {
    ebpf: Ebpf,
    /// `<pin_root>/abi<ABI_VERSION>` when pinning.
    pin_dir: Option<PathBuf>,
    services: BpfHashMap<MapData, ServiceKey, ServiceValue>,
    vips: BpfHashMap<MapData, u32, VipValue>,
    local_addrs: BpfHashMap<MapData, u32, u32>,
    backends: Array<MapData, BackendValue>,
    maglev: Array<MapData, u32>,
    maglev_mmap: Option<MaglevMmap>,
    conntrack: BpfHashMap<MapData, FlowKey, FlowEntry>,
    ct_syn: BpfHashMap<MapData, FlowKey, FlowEntry>,
    /// `LB_CT_DSR`: the backend each DSR flow is pinned to.
    ct_dsr: BpfHashMap<MapData, FlowKey, DsrEntry>,
    config: Array<MapData, GlobalConfig>,
    snat_addrs: Array<MapData, u32>,
    tx_ports: DevMapHash<MapData>,
    stats: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, FlowStats>,
    backend_stats: PerCpuArray<MapData, FlowStats>,
    suspect: Array<MapData, BackendSuspect>,
    /// `LB_SNAT_FULL`: per backend id, until when new flows search short (data plane only).
    snat_full: Array<MapData, u64>,
    /// The key filter in front of `LB_CONNTRACK` (`None`: the kernel refused its mapping;
    /// the filter then stays as it is, off for a fresh map).
    ct_filter: Option<std::sync::Arc<CtFilter>>,
    /// The event ring buffer until [`Dataplane::take_passive_events`] hands it out.
    /// (A mutex so tests can drain it through `&self`: [`BpfDataplane::pending_events`].)
    events: std::sync::Mutex<Option<RingBuf<MapData>>>,
}

pub(super) fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> DataplaneError {
    let what = what.into();
    move |source| DataplaneError::Io { what, source }
}

pub(super) fn program_err<'a>(
    action: &'static str,
    name: &'a str,
) -> impl FnOnce(aya::programs::ProgramError) -> DataplaneError + 'a {
    move |source| DataplaneError::Program {
        action,
        name: name.into(),
        source: Box::new(source),
    }
}

/// The XDP program `name` of the loaded object `ebpf` (`MissingInObject` when the object has
/// none of that name).
pub(super) fn xdp_program<'a>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut Xdp> {
    ebpf.program_mut(name)
        .ok_or_else(|| DataplaneError::MissingInObject {
            kind: "program",
            name: name.into(),
        })?
        .try_into()
        .map_err(program_err("converting program", name))
}

/// Pins the link `id` that attaching `prog` to `iface` just made at `path`, so the attachment
/// outlives this process (lbd's `lb_xdp`, `lbctl decap attach`'s `lb_decap`).
pub(super) fn pin_link(
    prog: &mut Xdp,
    id: aya::programs::xdp::XdpLinkId,
    iface: &str,
    path: &Path,
) -> Result<()> {
    let link = prog
        .take_link(id)
        .map_err(link_err(iface, "taking the new link"))?;
    let fd_link = FdLink::try_from(link).map_err(link_err(
        iface,
        "the kernel attached XDP without a bpf_link; cannot pin it",
    ))?;
    fd_link
        .pin(path)
        .map_err(link_err(iface, "pinning the link"))?;
    Ok(())
}

/// Loads `prog`, retrying a refusal that looks transient (see [`super::transient`]).
pub(super) fn load_program(prog: &mut Xdp, name: &str) -> Result<(), DataplaneError> {
    use super::transient::{is_transient, retry_transient, ATTEMPTS};
    use aya::programs::ProgramError;
    let errno = |e: &ProgramError| match e {
        ProgramError::LoadError { io_error, .. } => Some(io_error.to_string()),
        _ => None,
    };
    retry_transient(
        ATTEMPTS,
        || prog.load(),
        |e| matches!(e, ProgramError::LoadError { io_error, .. } if is_transient(io_error)),
        |attempt, e| {
            tracing::warn!(
                program = name,
                attempt,
                error = errno(e).unwrap_or_default(),
                "the kernel refused the program transiently; retrying"
            )
        },
        std::thread::sleep,
    )
    .map_err(|(attempts, e)| DataplaneError::ProgramLoad {
        name: name.into(),
        attempts,
        errno: errno(&e).unwrap_or_else(|| "no errno".into()),
        source: Box::new(e),
    })
}

pub(super) fn link_err<'a, E: std::error::Error + Send + Sync + 'static>(
    iface: &'a str,
    what: &'static str,
) -> impl FnOnce(E) -> DataplaneError + 'a {
    move |e| DataplaneError::Link {
        iface: iface.into(),
        what,
        source: Box::new(e),
    }
}

pub(super) fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> DataplaneError {
    move |e| DataplaneError::Map {
        map,
        source: io::Error::other(e),
    }
}
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| DataplaneError::MissingInObject {
            kind: "map",
            name: name.into(),
        })?;
    T::try_from(map).map_err(map_err(name))
}

impl BpfDataplane {
    /// Loads the embedded object (`EBPF_OBJECT`; [`DataplaneError::NoObject`] if empty) with map
    /// sizes from `opts`, pinning maps under `<pin_root>/abi<ABI_VERSION>/` and re-adopting maps
    /// already pinned there (sizes that differ from the pinned maps -> an error telling the
    /// operator to run `lbd --unload`). Without a pin root the maps are private to this value.
    pub fn load(opts: &LoadOptions) -> Result<Self> {
        Self::load_object(opts, EBPF_OBJECT)
    }

    /// [`Self::load`] with another build of the eBPF object (`object`, the bytes of an
    /// `lb-ebpf` ELF file): lets measurements compare builds without touching the embedded one.
    pub fn load_object(opts: &LoadOptions, object: &[u8]) -> Result<Self> {
        if object.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        if opts.max_services == 0
            || opts.max_backends < 2
            || opts.maglev_table_size == 0
            || opts.conntrack_flows == 0
            || opts.embryonic_flows == 0
        {
            return Err(DataplaneError::Limits(format!(
                "invalid limits {opts:?}: max_services, maglev_table_size, conntrack_flows and embryonic_flows must be > 0 and max_backends >= 2"
            )));
        }
        let entries = maglev_entries(opts);
        if u64::from(opts.max_services) * 2 * u64::from(opts.maglev_table_size)
            > u64::from(u32::MAX)
        {
            return Err(DataplaneError::Limits("limits.max_services * 2 * limits.maglev_table_size exceeds 2^32 Maglev slots; lower one of them".into()));
        }
        // With a pin root: the persistent directory. Without: a private directory on bpffs that
        // is removed right after loading (the maps then live as long as this value).
        let (dir, _temp) = match &opts.pin_root {
            Some(root) => (root.join(format!("abi{ABI_VERSION}")), None),
            None => {
                let nanos = SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                let dir = Path::new(BPFFS_DEFAULT)
                    .join(format!("lb-private-{}-{nanos}", std::process::id()));
                (dir.clone(), Some(TempPinDir(dir)))
            }
        };
        let parent = dir.parent().unwrap_or(Path::new("/"));
        std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Fs {
            action: "creating the pin directory",
            path: dir.clone(),
            source,
        })?;
        if !is_bpffs(&dir) {
            return Err(DataplaneError::Usage(format!(
                "{} is not on a bpffs mount; mount one (`mount -t bpf bpf {}`, or `cargo xtask setup`, which mounts {BPFFS_DEFAULT}) or set `bpffs_root` to a directory under one",
                dir.display(),
                if opts.pin_root.is_some() { parent.display().to_string() } else { BPFFS_DEFAULT.to_string() }
            )));
        }
        check_pinned(&dir, opts)?;

        let ct_entries = opts
            .conntrack_flows
            .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW);
        let mut loader = EbpfLoader::new();
        let pin_paths: Vec<(&'static str, PathBuf)> =
            ALL_MAPS.iter().map(|n| (*n, dir.join(n))).collect();
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        loader
            .map_max_entries(MAP_SERVICES, opts.max_services)
            .map_max_entries(MAP_VIPS, opts.max_services)
            .map_max_entries(
                MAP_LOCAL_ADDRS,
                lb_common::local_addrs_capacity(opts.max_services),
            )
            .map_max_entries(MAP_BACKENDS, opts.max_backends)
            .map_max_entries(MAP_MAGLEV, entries)
            .map_max_entries(
                MAP_CONNTRACK,
                opts.conntrack_flows
                    .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW),
            )
            .map_max_entries(
                MAP_CT_SYN,
                opts.embryonic_flows
                    .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW),
            )
            .map_max_entries(
                MAP_CT_DSR,
                lb_common::dsr_flows_capacity(opts.conntrack_flows),
            )
            .map_max_entries(MAP_SERVICE_STATS, opts.max_services)
            .map_max_entries(MAP_BACKEND_STATS, opts.max_backends)
            .map_max_entries(MAP_BACKEND_SUSPECT, opts.max_backends)
            .map_max_entries(MAP_SNAT_FULL, opts.max_backends)
            .map_max_entries(
                lb_common::MAP_CT_FILTER,
                lb_common::ct_filter_map_entries(ct_entries),
            );
        let mut ebpf = loader.load(object).map_err(|e| DataplaneError::Load {
            source: Box::new(e),
        })?;
        for name in [PROGRAM_NAME, PASS_PROGRAM_NAME] {
            load_program(xdp_program(&mut ebpf, name)?, name)?;
        }
        let maglev_mmap = mmap_maglev(&ebpf, entries);
        let conntrack: BpfHashMap<MapData, FlowKey, FlowEntry> = take(&mut ebpf, MAP_CONNTRACK)?;
        let conntrack_empty = conntrack.keys().next().is_none();
        let ct_filter = CtFilter::open(&ebpf, ct_entries, conntrack_empty);
        Ok(Self {
            services: take(&mut ebpf, MAP_SERVICES)?,
            vips: take(&mut ebpf, MAP_VIPS)?,
            local_addrs: take(&mut ebpf, MAP_LOCAL_ADDRS)?,
            backends: take(&mut ebpf, MAP_BACKENDS)?,
            maglev: take(&mut ebpf, MAP_MAGLEV)?,
            maglev_mmap,
            conntrack,
            ct_filter,
            ct_syn: take(&mut ebpf, MAP_CT_SYN)?,
            ct_dsr: take(&mut ebpf, MAP_CT_DSR)?,
            config: take(&mut ebpf, MAP_CONFIG)?,
            snat_addrs: take(&mut ebpf, MAP_SNAT_ADDRS)?,
            tx_ports: take(&mut ebpf, MAP_TX_PORTS)?,
            stats: take(&mut ebpf, MAP_STATS)?,
            service_stats: take(&mut ebpf, MAP_SERVICE_STATS)?,
            backend_stats: take(&mut ebpf, MAP_BACKEND_STATS)?,
            suspect: take(&mut ebpf, MAP_BACKEND_SUSPECT)?,
            snat_full: take(&mut ebpf, MAP_SNAT_FULL)?,
            events: std::sync::Mutex::new(Some(take(&mut ebpf, MAP_EVENTS)?)),
            ebpf,
            pin_dir: opts.pin_root.as_ref().map(|_| dir),
        })
    }

    fn program_mut(&mut self, name: &str) -> Result<&mut Xdp> {
        xdp_program(&mut self.ebpf, name)
    }

    /// The kernel's id of the loaded `lb_xdp` program (for inspecting it, e.g. its
    /// verifier-rewritten instructions: `bpftool prog dump xlated id ID`).
    pub fn xdp_program_id(&self) -> Result<u32> {
        let info = self
            .program("lb_xdp")?
            .info()
            .map_err(program_err("reading the program info of", "lb_xdp"))?;
        Ok(info.id())
    }

    fn program(&self, name: &str) -> Result<&Xdp> {
        self.ebpf
            .program(name)
            .ok_or_else(|| DataplaneError::MissingInObject {
                kind: "program",
                name: name.into(),
            })?
            .try_into()
            .map_err(program_err("converting program", name))
    }

    /// Attaches `lb_xdp` to `iface`. With pinning, the link is pinned too
    /// (`<pin_root>/abiN/links/<iface>`) so forwarding survives lbd exiting; if a pinned link
    /// for that interface already exists, the new program replaces the old one atomically
    /// through the existing link (no gap; the link keeps its mode). Auto = native, falling back
    /// to generic with a warning.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<AttachedMode> {
        self.attach_program(PROGRAM_NAME, iface, mode)
    }

    /// Attaches the pass-through program `lb_xdp_pass` (never pinned; detached when this value
    /// is dropped). The test lab puts it on veth peers so native redirects into them work.
    pub fn attach_pass(&mut self, iface: &str, mode: XdpMode) -> Result<AttachedMode> {
        let idx = ifindex(iface)?;
        let prog = self.program_mut(PASS_PROGRAM_NAME)?;
        Self::attach_fresh(prog, iface, idx, mode).map(|(_, m)| m)
    }

    pub(super) fn attach_fresh(
        prog: &mut Xdp,
        iface: &str,
        idx: u32,
        mode: XdpMode,
    ) -> Result<(aya::programs::xdp::XdpLinkId, AttachedMode)> {
        let attempt = |prog: &mut Xdp, m: AyaXdpMode| prog.attach_to_if_index(idx, m);
        match mode {
            XdpMode::Native => attempt(prog, AyaXdpMode::Driver)
                .map(|id| (id, AttachedMode::Native))
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.into(),
                    mode: "native",
                    hint: "; use xdp_mode: generic or auto",
                    source: Box::new(source),
                }),
            XdpMode::Generic => attempt(prog, AyaXdpMode::Skb)
                .map(|id| (id, AttachedMode::Generic))
                .map_err(|source| DataplaneError::Attach {
                    iface: iface.into(),
                    mode: "generic",
                    hint: "",
                    source: Box::new(source),
                }),
            XdpMode::Auto => match attempt(prog, AyaXdpMode::Driver) {
                Ok(id) => Ok((id, AttachedMode::Native)),
                Err(e) => {
                    tracing::warn!(iface, error = %e, "native XDP refused; falling back to generic (skb) mode");
                    attempt(prog, AyaXdpMode::Skb)
                        .map(|id| (id, AttachedMode::Generic))
                        .map_err(|source| DataplaneError::Attach {
                            iface: iface.into(),
                            mode: "native and generic",
                            hint: "",
                            source: Box::new(source),
                        })
                }
            },
        }
    }

    fn attach_program(&mut self, name: &str, iface: &str, mode: XdpMode) -> Result<AttachedMode> {
        let idx = ifindex(iface)?;
        let pin_dir = self.pin_dir.clone();
        let prog = self.program_mut(name)?;
        let Some(dir) = pin_dir else {
            return Self::attach_fresh(prog, iface, idx, mode).map(|(_, m)| m);
        };
        let links = dir.join("links");
        std::fs::create_dir_all(&links).map_err(|source| DataplaneError::Fs {
            action: "creating",
            path: links.clone(),
            source,
        })?;
        let link_path = links.join(iface);
        if !link_path.exists() {
            Self::take_over_other_abi_link(&dir, iface, &link_path)?;
        }
        if link_path.exists() {
            let replaced = PinnedLink::from_pin(&link_path)
                .map_err(link_err(iface, "opening the pinned link"))
                .and_then(|pinned| {
                    XdpLink::try_from(FdLink::from(pinned))
                        .map_err(link_err(iface, "the pinned link is not an XDP link"))
                })
                .and_then(|link| {
                    prog.attach_to_link(link)
                        .map_err(link_err(iface, "replacing the program of the pinned link"))
                });
            match replaced {
                Ok(id) => {
                    // The link stays attached through its pin; dropping our fd is fine.
                    drop(prog.take_link(id));
                    let got = super::netlink::query_xdp_mode(idx)
                        .map_err(io_err(format!(
                            "{iface}: reading the XDP mode after replacing the program"
                        )))?
                        .ok_or_else(|| {
                            DataplaneError::Usage(format!(
                                "{iface}: no XDP program reported after replacing the program"
                            ))
                        })?;
                    tracing::info!(iface, mode = ?got, "replaced the program of the pinned XDP link");
                    return Ok(got);
                }
                Err(e) => {
                    // The pinned link is defunct (e.g. the interface was recreated): re-attach.
                    tracing::warn!(iface, error = %e, "stale pinned XDP link; attaching afresh");
                    let _ = std::fs::remove_file(&link_path);
                }
            }
        }
        let (id, got) = Self::attach_fresh(prog, iface, idx, mode)?;
        pin_link(prog, id, iface, &link_path)?;
        Ok(got)
    }

    /// An upgrade across an ABI change: an lbd built for another ABI version pinned its link
    /// for `iface` under `<pin_root>/abi<M>/links/`. The kernel refuses a second XDP
    /// attachment while that link lives (and auto mode's generic fallback too), so instead the
    /// link's pin moves to `link_path`, where [`Self::attach_program`] replaces its program
    /// atomically (no packet without a program); the other version's flows are not carried over
    /// (its maps have another layout). Its directory goes once no link is left in it.
    fn take_over_other_abi_link(dir: &Path, iface: &str, link_path: &Path) -> Result<()> {
        let Some(root) = dir.parent() else {
            return Ok(());
        };
        for other in other_abi_dirs(root, dir) {
            let old = other.join("links").join(iface);
            if !old.exists() {
                continue;
            }
            std::fs::rename(&old, link_path).map_err(|source| DataplaneError::Fs {
                action: "moving the pinned link of another ABI version",
                path: old.clone(),
                source,
            })?;
            tracing::warn!(
                iface,
                from = %other.display(),
                "taking over the XDP link of an lbd built for another ABI version; \
                 the flows it tracked are not carried over"
            );
            let links_left = std::fs::read_dir(other.join("links"))
                .map(|mut d| d.next().is_some())
                .unwrap_or(false);
            if !links_left {
                Self::remove_pin_dir(&other)?;
            }
            break;
        }
        Ok(())
    }

    /// Detaches every pinned link and removes the pin directory (`lbd --unload`), and those
    /// of lbd builds for other ABI versions, then the pin root itself when that is left empty
    /// and is not a mount point (a directory holding anything else, or the bpffs mount itself,
    /// stays). A missing directory is not an error.
    pub fn unload(pin_root: &Path) -> Result<()> {
        let dir = pin_root.join(format!("abi{ABI_VERSION}"));
        if dir.exists() {
            Self::remove_pin_dir(&dir)?;
        }
        for other in other_abi_dirs(pin_root, &dir) {
            Self::remove_pin_dir(&other)?;
        }
        remove_empty_root(pin_root)
    }

    fn remove_pin_dir(dir: &Path) -> Result<()> {
        let links = dir.join("links");
        if let Ok(entries) = std::fs::read_dir(&links) {
            for entry in entries.flatten() {
                let path = entry.path();
                // Force the detach (other fds may still refer to the link), then drop the pin.
                match obj_get(&path) {
                    Ok(fd) => {
                        if let Err(e) = link_detach(fd.as_fd()) {
                            tracing::warn!(path = %path.display(), error = %e, "BPF_LINK_DETACH failed");
                        }
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), error = %e, "cannot open pinned link")
                    }
                }
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Fs {
                    action: "removing",
                    path: path.clone(),
                    source,
                })?;
            }
        }
        std::fs::remove_dir_all(dir).map_err(|source| DataplaneError::Fs {
            action: "removing",
            path: dir.to_path_buf(),
            source,
        })
    }

    /// `BPF_PROG_TEST_RUN` of `lb_xdp` on `frame` (ingress ifindex optional, `repeat` >= 1):
    /// the verdict, the output frame and the kernel's mean duration per run. The ifindex is
    /// resolved in the calling thread's network namespace (enter the namespace first).
    ///
    /// With `repeat` > 1 the kernel runs the program again on the same buffer, so every run
    /// after the first sees the previous run's output (a rewritten packet is no longer addressed
    /// to the VIP); time unmodified paths (drops, passes) or read the result as a mix. The
    /// kernel refuses frames shorter than an Ethernet header (14 bytes).
    pub fn test_run(
        &self,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<TestRunResult> {
        self.run_program(PROGRAM_NAME, frame, ingress_ifindex, repeat)
    }

    /// Like [`Self::test_run`] for the `lb_xdp_pass` program: the cost of the test-run harness
    /// itself (a program that only returns `XDP_PASS`), the floor under every `lb_xdp` timing.
    pub fn test_run_pass(
        &self,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<TestRunResult> {
        self.run_program(PASS_PROGRAM_NAME, frame, ingress_ifindex, repeat)
    }

    fn run_program(
        &self,
        name: &str,
        frame: &[u8],
        ingress_ifindex: Option<u32>,
        repeat: u32,
    ) -> Result<TestRunResult> {
        test_run_xdp(self.program(name)?, name, frame, ingress_ifindex, repeat)
    }

    /// Number of possible CPUs (length of per-CPU values).
    fn nr_cpus() -> Result<usize> {
        aya::util::nr_cpus().map_err(|(what, source)| DataplaneError::Io {
            what: what.into(),
            source,
        })
    }
}

/// `BPF_PROG_TEST_RUN` of the loaded XDP program `prog` (named `name` in errors) on `frame`
/// (see [`BpfDataplane::test_run`]).
pub(super) fn test_run_xdp(
    prog: &Xdp,
    name: &str,
    frame: &[u8],
    ingress_ifindex: Option<u32>,
    repeat: u32,
) -> Result<TestRunResult> {
    if repeat == 0 {
        return Err(DataplaneError::Usage(
            "test_run: repeat must be >= 1".into(),
        ));
    }
    if frame.len() < 14 {
        return Err(DataplaneError::Usage(format!(
                "test_run: a {}-byte frame is shorter than an Ethernet header; BPF_PROG_TEST_RUN refuses it",
                frame.len()
            )));
    }
    let data_in = frame;
    // struct xdp_md { data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex }
    let ctx_words: [u32; 6] = [
        0,
        data_in.len() as u32,
        0,
        ingress_ifindex.unwrap_or(0),
        0,
        0,
    ];
    let ctx_in: Vec<u8> = ctx_words.iter().flat_map(|w| w.to_ne_bytes()).collect();
    let mut data_out = vec![0u8; data_in.len() + 256];
    let mut opts = TestRunOptions::new();
    opts.data_in = Some(data_in);
    opts.data_out = Some(&mut data_out);
    opts.ctx_in = Some(&ctx_in);
    opts.repeat = repeat;
    let res = prog
        .test_run(opts)
        .map_err(program_err("BPF_PROG_TEST_RUN of", name))?;
    let out_len = (res.data_size_out as usize).min(data_out.len());
    data_out.truncate(out_len);
    Ok(TestRunResult {
        verdict: res.return_value,
        output: data_out,
        duration_ns: res.duration.as_nanos() as u64,
    })
}

/// The `abi<N>` directories under `root` other than `own` (pins of lbd builds for other ABI
/// versions), in name order.
fn other_abi_dirs(root: &Path, own: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix("abi")
                    .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
            })
        })
        .map(|e| e.path())
        .filter(|p| p != own && p.is_dir())
        .collect();
    dirs.sort();
    dirs
}
