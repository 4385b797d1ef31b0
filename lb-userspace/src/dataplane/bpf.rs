//! The real kernel data plane: loads the embedded `lb_xdp` object, pins and re-adopts its maps,
//! attaches it to interfaces, and implements [`Dataplane`] with typed map reads and writes.
//!
//! Pin layout under `<pin_root>/abi<ABI_VERSION>/`: one file per map (named after the map) and
//! `links/<iface>` per attachment. Re-adoption reuses the pinned maps as they are, so the
//! conntrack table and counters survive an `lbd` restart; the pinned XDP links keep forwarding
//! while no `lbd` runs.

use super::{
    local_bits, AttachedMode, ConntrackSweep, ConntrackSweeper, Dataplane, DataplaneError,
    EventBatch, LoadOptions, PassiveEventSource, Result, XdpMode, EBPF_OBJECT,
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
    BackendValue, FlowEntry, FlowKey, FlowStats, GlobalConfig, ServiceKey, ServiceValue, VipValue,
    ABI_VERSION, ALL_MAPS, CONFIG_ENTRIES, CONNTRACK_ENTRIES_PER_FLOW, EVENTS_RING_BYTES,
    FLOW_F_REPLY, IPPROTO_TCP, LOCAL_F_SNAT, LOCAL_F_VIP, MAP_BACKENDS, MAP_BACKEND_STATS,
    MAP_BACKEND_SUSPECT, MAP_CONFIG, MAP_CONNTRACK, MAP_CT_SYN, MAP_EVENTS, MAP_LOCAL_ADDRS,
    MAP_MAGLEV, MAP_SERVICES, MAP_SERVICE_STATS, MAP_SNAT_ADDRS, MAP_SNAT_FULL, MAP_STATS,
    MAP_TX_PORTS, MAP_VIPS, MAX_SNAT_ADDRS, MAX_TX_PORTS, NUM_COUNTERS, PROGRAM_NAME,
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

/// A shared writable mapping of the mmapable `LB_MAGLEV` array.
struct MaglevMmap {
    ptr: *mut u8,
    len: usize,
    entries: u32,
}

// SAFETY: the mapping is owned by this struct and only written through `&mut BpfDataplane`.
unsafe impl Send for MaglevMmap {}

impl Drop for MaglevMmap {
    fn drop(&mut self) {
        // SAFETY: ptr/len come from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
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
    config: Array<MapData, GlobalConfig>,
    snat_addrs: Array<MapData, u32>,
    tx_ports: DevMapHash<MapData>,
    stats: PerCpuArray<MapData, u64>,
    service_stats: PerCpuArray<MapData, FlowStats>,
    backend_stats: PerCpuArray<MapData, FlowStats>,
    suspect: Array<MapData, BackendSuspect>,
    /// `LB_SNAT_FULL`: per backend id, until when new flows search short (data plane only).
    snat_full: Array<MapData, u64>,
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

/// Expected (max_entries, key size, value size) of every map for `opts`.
fn expected_shape(name: &str, opts: &LoadOptions) -> (u32, u32, u32) {
    use std::mem::size_of;
    let sz = |n: usize| n as u32;
    match name {
        MAP_SERVICES => (
            opts.max_services,
            sz(size_of::<ServiceKey>()),
            sz(size_of::<ServiceValue>()),
        ),
        MAP_VIPS => (opts.max_services, 4, sz(size_of::<VipValue>())),
        MAP_LOCAL_ADDRS => (lb_common::local_addrs_capacity(opts.max_services), 4, 4),
        MAP_BACKENDS => (opts.max_backends, 4, sz(size_of::<BackendValue>())),
        MAP_MAGLEV => (maglev_entries(opts), 4, 4),
        MAP_CONNTRACK => (
            opts.conntrack_flows
                .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW),
            sz(size_of::<FlowKey>()),
            sz(size_of::<FlowEntry>()),
        ),
        MAP_CT_SYN => (
            opts.embryonic_flows
                .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW),
            sz(size_of::<FlowKey>()),
            sz(size_of::<FlowEntry>()),
        ),
        MAP_CONFIG => (CONFIG_ENTRIES, 4, sz(size_of::<GlobalConfig>())),
        MAP_SNAT_ADDRS => (MAX_SNAT_ADDRS, 4, 4),
        MAP_TX_PORTS => (MAX_TX_PORTS, 4, 8),
        MAP_STATS => (NUM_COUNTERS, 4, 8),
        MAP_SERVICE_STATS => (opts.max_services, 4, sz(size_of::<FlowStats>())),
        MAP_BACKEND_STATS => (opts.max_backends, 4, sz(size_of::<FlowStats>())),
        MAP_BACKEND_SUSPECT => (opts.max_backends, 4, sz(size_of::<BackendSuspect>())),
        MAP_EVENTS => (EVENTS_RING_BYTES, 0, 0),
        MAP_SNAT_FULL => (opts.max_backends, 4, 8),
        _ => unreachable!("unknown map {name}"),
    }
}

fn maglev_entries(opts: &LoadOptions) -> u32 {
    opts.max_services
        .saturating_mul(2)
        .saturating_mul(opts.maglev_table_size)
}

/// Checks that maps already pinned in `dir` have the shapes `opts` asks for.
fn check_pinned(dir: &Path, opts: &LoadOptions) -> Result<()> {
    for name in ALL_MAPS {
        let path = dir.join(name);
        if !path.exists() {
            continue;
        }
        let data = MapData::from_pin(&path).map_err(map_err(name))?;
        let info = data.info().map_err(map_err(name))?;
        let (max, key, value) = expected_shape(name, opts);
        // The kernel rounds per-CPU and devmap value sizes its own way; compare entries and keys
        // everywhere, value sizes where the kernel reports what was asked.
        let value_ok = matches!(name, n if n == MAP_TX_PORTS) || info.value_size() == value;
        if info.max_entries() != max || info.key_size() != key || !value_ok {
            return Err(DataplaneError::Limits(format!(
                "pinned map {name} at {} has max_entries {} (key {} B, value {} B) but this \
                 configuration needs max_entries {max} (key {key} B, value {value} B): the \
                 `limits` changed since the maps were pinned. Run `lbd --unload` (this drops \
                 all tracked connections) and start lbd again, or restore the old limits",
                path.display(),
                info.max_entries(),
                info.key_size(),
                info.value_size(),
            )));
        }
    }
    Ok(())
}

pub(super) fn is_bpffs(path: &Path) -> bool {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statfs into a zeroed struct with a valid C string.
    unsafe {
        let mut st: libc::statfs = std::mem::zeroed();
        libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC
    }
}

/// Removes a private pin directory when dropped (unpinned loads).
pub(super) struct TempPinDir(PathBuf);

/// A new private pin directory on bpffs for a load whose maps must not be shared: aya pins
/// every map the object declares pinned, at its default `/sys/fs/bpf` unless given a path, so
/// a load that wants private maps names this directory for them. The directory goes when the
/// guard drops; the maps live on with the loaded object.
pub(super) fn private_pin_dir(tag: &str) -> Result<(PathBuf, TempPinDir)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir =
        Path::new(BPFFS_DEFAULT).join(format!("lb-private-{tag}{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Fs {
        action: "creating the pin directory",
        path: dir.clone(),
        source,
    })?;
    Ok((dir.clone(), TempPinDir(dir)))
}

impl Drop for TempPinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
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

fn mmap_maglev(ebpf: &Ebpf, entries: u32) -> Option<MaglevMmap> {
    let Some(Map::Array(data)) = ebpf.map(MAP_MAGLEV) else {
        return None;
    };
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    // Array elements are 8-byte aligned slots in the kernel (value_size rounded up to 8).
    let len = (entries as usize * 8).div_ceil(page) * page;
    // SAFETY: mapping a BPF array fd; the kernel checks size and flags.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            data.fd().as_fd().as_raw_fd(),
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        tracing::warn!(
            map = MAP_MAGLEV,
            error = %io::Error::last_os_error(),
            "cannot mmap the Maglev array; writing tables with one syscall per slot"
        );
        return None;
    }
    Some(MaglevMmap {
        ptr: ptr.cast(),
        len,
        entries,
    })
}

/// Removes `root` if it is an empty directory and not a mount point (its device differs from
/// its parent's). `rmdir` itself refuses a non-empty directory, so nothing else is touched.
fn remove_empty_root(root: &Path) -> Result<()> {
    use std::os::unix::fs::MetadataExt;
    let Ok(meta) = std::fs::metadata(root) else {
        return Ok(());
    };
    let parent = root.parent().unwrap_or(Path::new("/"));
    let is_mount = std::fs::metadata(parent).map_or(true, |p| p.dev() != meta.dev());
    if !meta.is_dir() || is_mount {
        return Ok(());
    }
    match std::fs::remove_dir(root) {
        Ok(()) => Ok(()),
        Err(e)
            if e.raw_os_error() == Some(libc::ENOTEMPTY) || e.kind() == io::ErrorKind::NotFound =>
        {
            Ok(())
        }
        Err(source) => Err(DataplaneError::Fs {
            action: "removing",
            path: root.to_path_buf(),
            source,
        }),
    }
}

/// `BPF_LINK_DETACH` of a link fd (forces the detach even if other fds refer to the link).
pub(super) fn link_detach(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
    const BPF_LINK_DETACH: libc::c_long = 34;
    let attr: [u32; 4] = [fd.as_raw_fd() as u32, 0, 0, 0];
    // SAFETY: bpf(2) with a zero-padded attr of the declared size.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_LINK_DETACH,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// `BPF_OBJ_GET` of a pinned object.
pub(super) fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd;
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // union bpf_attr { struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... } }
    let mut attr = [0u64; 3];
    attr[0] = c.as_ptr() as u64;
    // SAFETY: bpf(2) with a zero-padded attr of the declared size and a valid C string.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(rc as i32) })
}

pub(super) fn ifindex(iface: &str) -> Result<u32> {
    let c = std::ffi::CString::new(iface).map_err(|_| DataplaneError::NoInterface {
        iface: iface.into(),
    })?;
    // SAFETY: valid C string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DataplaneError::NoInterface {
            iface: iface.into(),
        });
    }
    Ok(idx)
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
            .map_max_entries(MAP_SERVICE_STATS, opts.max_services)
            .map_max_entries(MAP_BACKEND_STATS, opts.max_backends)
            .map_max_entries(MAP_BACKEND_SUSPECT, opts.max_backends)
            .map_max_entries(MAP_SNAT_FULL, opts.max_backends);
        let mut ebpf = loader.load(object).map_err(|e| DataplaneError::Load {
            source: Box::new(e),
        })?;
        for name in [PROGRAM_NAME, PASS_PROGRAM_NAME] {
            load_program(xdp_program(&mut ebpf, name)?, name)?;
        }
        let maglev_mmap = mmap_maglev(&ebpf, entries);
        Ok(Self {
            services: take(&mut ebpf, MAP_SERVICES)?,
            vips: take(&mut ebpf, MAP_VIPS)?,
            local_addrs: take(&mut ebpf, MAP_LOCAL_ADDRS)?,
            backends: take(&mut ebpf, MAP_BACKENDS)?,
            maglev: take(&mut ebpf, MAP_MAGLEV)?,
            maglev_mmap,
            conntrack: take(&mut ebpf, MAP_CONNTRACK)?,
            ct_syn: take(&mut ebpf, MAP_CT_SYN)?,
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

    /// Detaches every pinned link and removes the pin directory (`lbd --unload`), then the
    /// pin root itself when that is left empty and is not a mount point (a directory holding
    /// anything else, or the bpffs mount itself, stays). A missing directory is not an error.
    pub fn unload(pin_root: &Path) -> Result<()> {
        let dir = pin_root.join(format!("abi{ABI_VERSION}"));
        if dir.exists() {
            Self::remove_pin_dir(&dir)?;
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

    /// The raw conntrack entries of both maps, established then embryonic (for tests and
    /// `lbctl`-style inspection).
    pub fn conntrack_entries(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        let mut v: Vec<(FlowKey, FlowEntry)> = self
            .conntrack
            .iter()
            .map(|r| r.map_err(map_err(MAP_CONNTRACK)))
            .collect::<Result<_>>()?;
        for r in self.ct_syn.iter() {
            v.push(r.map_err(map_err(MAP_CT_SYN))?);
        }
        Ok(v)
    }

    /// The raw entries of the established map `LB_CONNTRACK` only.
    pub fn established_entries(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.conntrack
            .iter()
            .map(|r| r.map_err(map_err(MAP_CONNTRACK)))
            .collect()
    }

    /// The entry of `key` in `LB_CONNTRACK` and in `LB_CT_SYN` (tests: a model that keeps
    /// both maps compares each).
    pub fn conntrack_entry_in_each(
        &self,
        key: &FlowKey,
    ) -> Result<(Option<FlowEntry>, Option<FlowEntry>)> {
        let get = |map: &BpfHashMap<MapData, FlowKey, FlowEntry>, name| match map.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(name)(e)),
        };
        Ok((
            get(&self.conntrack, MAP_CONNTRACK)?,
            get(&self.ct_syn, MAP_CT_SYN)?,
        ))
    }

    /// The raw entries of the embryonic map only.
    pub fn embryonic_entries(&self) -> Result<Vec<(FlowKey, FlowEntry)>> {
        self.ct_syn
            .iter()
            .map(|r| r.map_err(map_err(MAP_CT_SYN)))
            .collect()
    }

    /// The conntrack entry of `key` in either map, if any (`LB_CONNTRACK` first, then the
    /// embryonic `LB_CT_SYN`, the data plane's lookup order; tests compare single flows).
    pub fn conntrack_entry(&self, key: &FlowKey) -> Result<Option<FlowEntry>> {
        for (map, name) in [(&self.conntrack, MAP_CONNTRACK), (&self.ct_syn, MAP_CT_SYN)] {
            match map.get(key, 0) {
                Ok(e) => return Ok(Some(e)),
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(name)(e)),
            }
        }
        Ok(None)
    }

    /// The whole Maglev array, slot by slot (tests: a model reads back what lbd wrote).
    pub fn maglev_slots(&self) -> Result<Vec<u32>> {
        self.maglev
            .iter()
            .map(|r| r.map_err(map_err(MAP_MAGLEV)))
            .collect()
    }

    /// Adds `bit` (`LOCAL_F_*`) to `addr_be` in `LB_LOCAL_ADDRS` without touching any other
    /// map (benches: a crafted conntrack entry keyed by an address that is not a VIP or a
    /// SNAT address is found only once the address passes the pre-filter).
    pub fn add_local_addr(&mut self, addr_be: u32, bit: u32) -> Result<()> {
        self.update_local(addr_be, bit, true)
    }

    /// Sets or clears `bit` of `addr_be` in `LB_LOCAL_ADDRS` ([`local_bits`]).
    fn update_local(&mut self, addr_be: u32, bit: u32, set: bool) -> Result<()> {
        let old = match self.local_addrs.get(&addr_be, 0) {
            Ok(v) => Some(v),
            Err(aya::maps::MapError::KeyNotFound) => None,
            Err(e) => return Err(map_err(MAP_LOCAL_ADDRS)(e)),
        };
        match local_bits(old, bit, set) {
            Some(v) if Some(v) == old => Ok(()),
            Some(v) => self
                .local_addrs
                .insert(addr_be, v, 0)
                .map_err(map_err(MAP_LOCAL_ADDRS)),
            None => match self.local_addrs.remove(&addr_be) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
                Err(e) => Err(map_err(MAP_LOCAL_ADDRS)(e)),
            },
        }
    }

    /// The SNAT address array, every slot (unset slots are 0).
    pub fn snat_addr_slots(&self) -> Result<Vec<u32>> {
        self.snat_addrs
            .iter()
            .map(|r| r.map_err(map_err(MAP_SNAT_ADDRS)))
            .collect()
    }

    /// Writes one conntrack entry (tests: pre-age or forge entries) into the map that holds
    /// its key: `LB_CT_SYN` if only that one does, else `LB_CONNTRACK`.
    pub fn set_conntrack_entry(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<()> {
        if self.conntrack.get(key, 0).is_err() && self.ct_syn.get(key, 0).is_ok() {
            return self
                .ct_syn
                .insert(key, entry, 0)
                .map_err(map_err(MAP_CT_SYN));
        }
        self.conntrack
            .insert(key, entry, 0)
            .map_err(map_err(MAP_CONNTRACK))
    }

    /// Writes one entry into the embryonic map `LB_CT_SYN` (tests: a handshake in progress).
    pub fn set_embryonic_entry(&mut self, key: &FlowKey, entry: &FlowEntry) -> Result<()> {
        self.ct_syn
            .insert(key, entry, 0)
            .map_err(map_err(MAP_CT_SYN))
    }

    /// Removes one conntrack entry from whichever map holds it (an absent key is an error:
    /// callers remove what they made).
    pub fn remove_conntrack_entry(&mut self, key: &FlowKey) -> Result<()> {
        // A missing key comes back as the delete syscall's ENOENT, not as `KeyNotFound`: try
        // the embryonic map on any error, and report the first error if both fail.
        match self.conntrack.remove(key) {
            Ok(()) => Ok(()),
            Err(main) => self
                .ct_syn
                .remove(key)
                .map_err(|_| map_err(MAP_CONNTRACK)(main)),
        }
    }

    /// Removes every conntrack entry (both maps).
    pub fn clear_conntrack(&mut self) -> Result<()> {
        for (map, name) in [
            (&mut self.conntrack, MAP_CONNTRACK),
            (&mut self.ct_syn, MAP_CT_SYN),
        ] {
            let keys: Vec<FlowKey> = map.keys().filter_map(|k| k.ok()).collect();
            for k in keys {
                match map.remove(&k) {
                    Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                    Err(e) => return Err(map_err(name)(e)),
                }
            }
        }
        Ok(())
    }
}

fn partner_key(e: &FlowEntry) -> FlowKey {
    FlowKey {
        src_addr_be: e.new_dst_addr_be,
        dst_addr_be: e.new_src_addr_be,
        src_port_be: e.new_dst_port_be,
        dst_port_be: e.new_src_port_be,
        proto: IPPROTO_TCP,
        _pad: [0; 3],
    }
}

/// Walks `LB_CONNTRACK` and `LB_CT_SYN` through their own fds (see
/// [`Dataplane::conntrack_sweeper`]); both entries of a flow are always in the same map.
struct BpfConntrackSweeper {
    maps: [OneMapSweeper; 2],
}

impl ConntrackSweeper for BpfConntrackSweeper {
    fn sweep(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        let mut total = ConntrackSweep::default();
        for m in &mut self.maps {
            total.merge(m.sweep(now_ns, cfg)?);
        }
        Ok(total)
    }
}

/// The sweep of one conntrack map.
struct OneMapSweeper {
    map: BpfHashMap<MapData, FlowKey, FlowEntry>,
    name: &'static str,
}

impl OneMapSweeper {
    fn sweep(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        // One pass to snapshot every entry and whether its own time expired. A flow is idle
        // only when both of its entries are: the data plane writes the partner's time only
        // on every PARTNER_SYNC_REFRESHES-th refresh, so one direction's entry may be stale
        // while the other direction keeps the flow alive.
        let mut snapshot: HashMap<FlowKey, (bool, FlowEntry)> = HashMap::new();
        for item in self.map.iter() {
            let (k, e) = match item {
                Ok(kv) => kv,
                // Entries can vanish under iteration (LRU eviction, XDP): skip them.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(self.name)(e)),
            };
            snapshot.insert(k, (e.is_expired(now_ns, cfg), e));
        }
        let mut sweep = ConntrackSweep::default();
        let mut doomed = Vec::new();
        for (k, (dead, e)) in &snapshot {
            let partner_dead = match snapshot.get(&partner_key(e)) {
                Some((d, p)) => *d || partner_key(p) != *k,
                None => true,
            };
            if *dead && partner_dead {
                doomed.push(*k);
            } else if e.flags & FLOW_F_REPLY == 0 {
                *sweep.flows_by_backend.entry(e.backend_id).or_default() += 1;
                *sweep.flows_by_service.entry(e.service_id).or_default() += 1;
            } else {
                // A live reply entry is the reservation of its SNAT port.
                sweep.count_snat_port(k);
            }
        }
        for k in doomed {
            // Re-check right before deleting: the data plane may have refreshed the entry or
            // its partner meanwhile.
            let Ok(e) = self.map.get(&k, 0) else {
                continue;
            };
            let partner_live = matches!(
                self.map.get(&partner_key(&e), 0),
                Ok(p) if partner_key(&p) == k && !p.is_expired(now_ns, cfg)
            );
            if !e.is_expired(now_ns, cfg) || partner_live {
                continue;
            }
            match self.map.remove(&k) {
                Ok(()) => sweep.expired_removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(self.name)(e)),
            }
        }
        sweep.entries = snapshot.len() as u64 - sweep.expired_removed;
        Ok(sweep)
    }
}

impl Dataplane for BpfDataplane {
    fn set_global_config(&mut self, cfg: &GlobalConfig) -> Result<()> {
        self.config.set(0, cfg, 0).map_err(map_err(MAP_CONFIG))
    }

    fn set_snat_addrs(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        if addrs.len() > MAX_SNAT_ADDRS as usize {
            return Err(DataplaneError::Limits(format!(
                "snat.addresses has {} entries; at most {MAX_SNAT_ADDRS} are supported",
                addrs.len()
            )));
        }
        let new: Vec<u32> = addrs.iter().map(|a| lb_common::ipv4_to_be(*a)).collect();
        let old = self.snat_addr_slots()?;
        // Make-before-break: the new addresses pass the pre-filter before the array names
        // them; the removed ones leave it after.
        for a in &new {
            self.update_local(*a, LOCAL_F_SNAT, true)?;
        }
        for i in 0..MAX_SNAT_ADDRS {
            let v = addrs
                .get(i as usize)
                .map(|a| lb_common::ipv4_to_be(*a))
                .unwrap_or(0);
            self.snat_addrs
                .set(i, v, 0)
                .map_err(map_err(MAP_SNAT_ADDRS))?;
        }
        for a in old.into_iter().filter(|a| *a != 0 && !new.contains(a)) {
            self.update_local(a, LOCAL_F_SNAT, false)?;
        }
        Ok(())
    }

    fn set_backend(&mut self, id: u32, value: &BackendValue) -> Result<()> {
        if id == lb_common::BACKEND_ID_NONE {
            return Err(DataplaneError::ReservedBackendId);
        }
        self.backends
            .set(id, value, 0)
            .map_err(map_err(MAP_BACKENDS))
    }

    fn clear_backend(&mut self, id: u32) -> Result<()> {
        self.backends
            .set(id, BackendValue::default(), 0)
            .map_err(map_err(MAP_BACKENDS))
    }

    fn write_maglev(&mut self, offset: u32, table: &[u32]) -> Result<()> {
        let len = self.maglev.len();
        let end = u64::from(offset) + table.len() as u64;
        if end > u64::from(len) {
            return Err(DataplaneError::MaglevOutOfRange {
                offset,
                len: table.len(),
                size: len,
            });
        }
        if let Some(m) = &self.maglev_mmap {
            debug_assert!(end <= u64::from(m.entries));
            for (i, id) in table.iter().enumerate() {
                // SAFETY: within the mapping (checked above); slots are 8 bytes apart.
                unsafe {
                    let p = m.ptr.add((offset as usize + i) * 8).cast::<u32>();
                    std::ptr::write_volatile(p, *id);
                }
            }
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            return Ok(());
        }
        for (i, id) in table.iter().enumerate() {
            self.maglev
                .set(offset + i as u32, id, 0)
                .map_err(map_err(MAP_MAGLEV))?;
        }
        Ok(())
    }

    fn set_service(&mut self, key: &ServiceKey, value: &ServiceValue) -> Result<()> {
        self.services
            .insert(key, value, 0)
            .map_err(map_err(MAP_SERVICES))
    }

    fn remove_service(&mut self, key: &ServiceKey) -> Result<()> {
        match self.services.remove(key) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_SERVICES)(e)),
        }
    }

    fn set_vip(&mut self, vip_be: u32, value: &VipValue) -> Result<()> {
        self.update_local(vip_be, LOCAL_F_VIP, true)?;
        self.vips
            .insert(vip_be, value, 0)
            .map_err(map_err(MAP_VIPS))
    }

    fn remove_vip(&mut self, vip_be: u32) -> Result<()> {
        match self.vips.remove(&vip_be) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(MAP_VIPS)(e)),
        }
        self.update_local(vip_be, LOCAL_F_VIP, false)
    }

    fn set_tx_port(&mut self, ifindex: u32) -> Result<()> {
        self.tx_ports
            .insert(ifindex, ifindex, None, 0)
            .map_err(|e| DataplaneError::Map {
                map: MAP_TX_PORTS,
                source: io::Error::other(e),
            })
    }

    fn remove_tx_port(&mut self, ifindex: u32) -> Result<()> {
        match self.tx_ports.remove(ifindex) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(MAP_TX_PORTS)(e)),
        }
    }

    fn global_counters(&self) -> Result<[u64; NUM_COUNTERS as usize]> {
        let mut out = [0u64; NUM_COUNTERS as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            let values = self.stats.get(&(i as u32), 0).map_err(map_err(MAP_STATS))?;
            *slot = values.iter().sum();
        }
        Ok(out)
    }

    fn service_stats(&self, service_id: u32) -> Result<FlowStats> {
        let values = self
            .service_stats
            .get(&service_id, 0)
            .map_err(map_err(MAP_SERVICE_STATS))?;
        let mut sum = FlowStats::default();
        values.iter().for_each(|v| sum.accumulate(v));
        Ok(sum)
    }

    fn backend_stats(&self, backend_id: u32) -> Result<FlowStats> {
        let values = self
            .backend_stats
            .get(&backend_id, 0)
            .map_err(map_err(MAP_BACKEND_STATS))?;
        let mut sum = FlowStats::default();
        values.iter().for_each(|v| sum.accumulate(v));
        Ok(sum)
    }

    fn reset_stats(&mut self, service_id: Option<u32>, backend_id: Option<u32>) -> Result<()> {
        let n = Self::nr_cpus()?;
        let zero = || {
            PerCpuValues::try_from(vec![FlowStats::default(); n]).map_err(|e| DataplaneError::Map {
                map: MAP_SERVICE_STATS,
                source: e,
            })
        };
        if let Some(id) = service_id {
            self.service_stats
                .set(id, zero()?, 0)
                .map_err(map_err(MAP_SERVICE_STATS))?;
        }
        if let Some(id) = backend_id {
            self.backend_stats
                .set(id, zero()?, 0)
                .map_err(map_err(MAP_BACKEND_STATS))?;
        }
        Ok(())
    }

    fn reset_backend_flows(&mut self, id: u32) -> Result<usize> {
        let mut pairs = Vec::new();
        for (key, entry) in self.conntrack_entries()? {
            if entry.flags & FLOW_F_REPLY == 0 && entry.backend_id == id {
                pairs.extend(super::tickle::flow_tickles(&key, &entry));
            }
        }
        super::tickle::send_tickles(&pairs).map_err(io_err("sending tickle ACKs"))?;
        Ok(pairs.len() / 2)
    }

    fn conntrack_sweeper(&self) -> Result<Box<dyn ConntrackSweeper>> {
        // A second fd on each kernel map: the sweeper owns its handles and can walk the maps
        // on another thread while this data plane keeps serving writes.
        let own = |m: &BpfHashMap<MapData, FlowKey, FlowEntry>, name: &'static str| {
            let fd = m
                .map()
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::Map { map: name, source })?;
            let data = MapData::from_fd(fd).map_err(map_err(name))?;
            let map = BpfHashMap::try_from(Map::LruHashMap(data)).map_err(map_err(name))?;
            Ok::<_, DataplaneError>(OneMapSweeper { map, name })
        };
        Ok(Box::new(BpfConntrackSweeper {
            maps: [
                own(&self.conntrack, MAP_CONNTRACK)?,
                own(&self.ct_syn, MAP_CT_SYN)?,
            ],
        }))
    }

    fn global_config(&self) -> Result<GlobalConfig> {
        self.config.get(&0, 0).map_err(map_err(MAP_CONFIG))
    }

    fn snat_addrs(&self) -> Result<Vec<Ipv4Addr>> {
        let mut out = Vec::new();
        for i in 0..MAX_SNAT_ADDRS {
            let v = self
                .snat_addrs
                .get(&i, 0)
                .map_err(map_err(MAP_SNAT_ADDRS))?;
            if v == 0 {
                break;
            }
            out.push(lb_common::ipv4_from_be(v));
        }
        Ok(out)
    }

    fn backend(&self, id: u32) -> Result<BackendValue> {
        self.backends.get(&id, 0).map_err(map_err(MAP_BACKENDS))
    }

    fn read_maglev(&self, offset: u32, len: usize) -> Result<Vec<u32>> {
        let size = self.maglev.len();
        if u64::from(offset) + len as u64 > u64::from(size) {
            return Err(DataplaneError::MaglevOutOfRange { offset, len, size });
        }
        if let Some(m) = &self.maglev_mmap {
            return Ok((0..len)
                .map(|i| {
                    // SAFETY: within the mapping (checked above); slots are 8 bytes apart.
                    unsafe {
                        std::ptr::read_volatile(m.ptr.add((offset as usize + i) * 8).cast::<u32>())
                    }
                })
                .collect());
        }
        (0..len as u32)
            .map(|i| {
                self.maglev
                    .get(&(offset + i), 0)
                    .map_err(map_err(MAP_MAGLEV))
            })
            .collect()
    }

    fn service(&self, key: &ServiceKey) -> Result<Option<ServiceValue>> {
        match self.services.get(key, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_SERVICES)(e)),
        }
    }

    fn vip(&self, vip_be: u32) -> Result<Option<VipValue>> {
        match self.vips.get(&vip_be, 0) {
            Ok(v) => Ok(Some(v)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_VIPS)(e)),
        }
    }

    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        self.services
            .iter()
            .map(|r| r.map_err(map_err(MAP_SERVICES)))
            .collect()
    }

    fn backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        let mut out = Vec::new();
        for (i, v) in self.backends.iter().enumerate() {
            let v = v.map_err(map_err(MAP_BACKENDS))?;
            if v != BackendValue::default() {
                out.push((i as u32, v));
            }
        }
        Ok(out)
    }

    fn vips(&self) -> Result<Vec<(u32, VipValue)>> {
        self.vips
            .iter()
            .map(|r| r.map_err(map_err(MAP_VIPS)))
            .collect()
    }

    fn local_addrs(&self) -> Result<BTreeMap<u32, u32>> {
        self.local_addrs
            .iter()
            .map(|r| r.map_err(map_err(MAP_LOCAL_ADDRS)))
            .collect()
    }

    fn backend_suspect(&self, id: u32) -> Result<BackendSuspect> {
        self.suspect
            .get(&id, 0)
            .map_err(map_err(MAP_BACKEND_SUSPECT))
    }

    fn set_backend_suspect(&mut self, id: u32, value: &BackendSuspect) -> Result<()> {
        self.suspect
            .set(id, *value, 0)
            .map_err(map_err(MAP_BACKEND_SUSPECT))
    }

    fn take_passive_events(&mut self) -> Result<Option<Box<dyn PassiveEventSource>>> {
        let taken = self.events.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(ring) = taken else {
            return Ok(None);
        };
        // SAFETY: the AsyncFd owns the ring buffer, which owns the map's file descriptor, so
        // the descriptor stays open for as long as it is registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE)
        }
        .map_err(|e| DataplaneError::Io {
            what: format!("registering the {MAP_EVENTS} ring buffer"),
            source: io::Error::from(e),
        })?;
        Ok(Some(Box::new(RingEvents { fd })))
    }
}

/// The [`MAP_EVENTS`] ring buffer as a [`PassiveEventSource`] (epoll-driven).
struct RingEvents {
    fd: tokio::io::unix::AsyncFd<RingBuf<MapData>>,
}

/// Decodes one ring-buffer record (a short one, which the data plane never writes, is skipped).
fn decode_event(bytes: &[u8]) -> Option<PassiveEvent> {
    if bytes.len() < std::mem::size_of::<PassiveEvent>() {
        return None;
    }
    // SAFETY: PassiveEvent is Pod and the slice is long enough; read_unaligned copes with
    // any alignment.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<PassiveEvent>()) })
}

impl RingEvents {
    /// Every record available now.
    fn drain(&mut self) -> Vec<PassiveEvent> {
        let ring = self.fd.get_mut();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode_event(&item) {
                out.push(e);
            }
        }
        out
    }
}

impl PassiveEventSource for RingEvents {
    fn next_batch(&mut self) -> EventBatch<'_> {
        Box::pin(async move {
            loop {
                let batch = self.drain();
                if !batch.is_empty() {
                    return Ok(batch);
                }
                let mut guard = self
                    .fd
                    .readable_mut()
                    .await
                    .map_err(io_err(format!("waiting on the {MAP_EVENTS} ring buffer")))?;
                guard.clear_ready();
            }
        })
    }
}

impl BpfDataplane {
    /// Backend `id`'s slot of `LB_SNAT_FULL`: until when (coarse-clock ns) new flows to it
    /// try only `SNAT_PORT_ATTEMPTS_SHORT` SNAT ports (tests and measurements).
    pub fn snat_full_until(&self, id: u32) -> Result<u64> {
        self.snat_full.get(&id, 0).map_err(map_err(MAP_SNAT_FULL))
    }

    /// Sets backend `id`'s slot of `LB_SNAT_FULL` (tests: end or open a short-search window
    /// without waiting for the clock).
    pub fn set_snat_full_until(&mut self, id: u32, until_ns: u64) -> Result<()> {
        self.snat_full
            .set(id, until_ns, 0)
            .map_err(map_err(MAP_SNAT_FULL))
    }

    /// Clears every slot of `LB_SNAT_FULL` (tests: a case starts with no short-search window
    /// left over from an earlier one, whatever the time between them).
    pub fn clear_snat_full(&mut self) -> Result<()> {
        for id in 0..self.snat_full.len() {
            self.set_snat_full_until(id, 0)?;
        }
        Ok(())
    }

    /// Events in the ring buffer now, without waiting (tests; `None` once the source was
    /// taken).
    pub fn pending_events(&self) -> Option<Vec<PassiveEvent>> {
        let mut guard = self.events.lock().unwrap_or_else(|e| e.into_inner());
        let ring = guard.as_mut()?;
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            if let Some(e) = decode_event(&item) {
                out.push(e);
            }
        }
        Some(out)
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
