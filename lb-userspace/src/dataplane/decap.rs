//! The backend side of DSR without the kernel's `ipip` module: loads `lb_decap` (the IPIP
//! decapsulating XDP program of lb's object, `lb_common::decap`), attaches it to a backend's
//! interface and pins it so it keeps decapsulating after `lbctl decap attach` exits.
//!
//! Pin layout, one directory per attachment (network namespaces share bpffs, and every
//! namespace may have its own `eth0`):
//! `<pin_root>/abi<ABI_VERSION>/net<netns inode>/<iface>/` holding `link` (the XDP link),
//! `LB_DECAP_ADDRS` and `LB_DECAP_STATS`. The attachment lives as long as `link` is pinned
//! and the interface exists; `lbctl decap detach` detaches it and removes the directory.
//!
//! Loading the object creates every map it declares, `lb_xdp`'s included: those are created
//! with one entry or a few each (they are released when the loading process exits, since no
//! loaded program holds them), so attaching the decapsulator costs no balancer memory.

use super::bpf::{
    ifindex, is_bpffs, link_detach, load_program, map_err, obj_get, pin_link, private_pin_dir,
    program_err, test_run_xdp, xdp_program, BpfDataplane, TestRunResult,
};
use super::{AttachedMode, DataplaneError, Result, XdpMode, EBPF_OBJECT};
use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf, EbpfLoader,
};
use lb_common::decap::{DECAP_NUM_COUNTERS, DECAP_PROGRAM_NAME, MAP_DECAP_ADDRS, MAP_DECAP_STATS};
use lb_common::{ABI_VERSION, ALL_MAPS, MAP_EVENTS};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default pin root of `lbctl decap`.
pub const DEFAULT_DECAP_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

/// The counters of one attachment, indexed by `lb_common::decap::DECAP_*`, summed over CPUs.
pub type DecapCounters = [u64; DECAP_NUM_COUNTERS as usize];

/// A loaded `lb_decap` with its two maps.
pub struct Decap {
    ebpf: Ebpf,
    addrs: BpfHashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The attachment's pin directory.
    pub dir: PathBuf,
    /// The mode the program got.
    pub mode: AttachedMode,
    /// The addresses it decapsulates for.
    pub addresses: Vec<Ipv4Addr>,
}

impl Decap {
    /// Loads `lb_decap` from the embedded object with private (unpinned) maps.
    pub fn load() -> Result<Self> {
        Self::load_pinned(None)
    }

    /// Loads `lb_decap`; with `pin_dir`, its two maps are pinned there (re-adopted if pinned
    /// already).
    fn load_pinned(pin_dir: Option<&Path>) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        // lb_xdp's maps: as small as the kernel allows (the ring buffer needs a page), and
        // private: the object declares them pinned by name, which without a path would pin
        // (or adopt) them in the bpffs root, shared with any other load.
        let (private, _private_guard) = private_pin_dir("decap-")?;
        let private_paths: Vec<(&str, PathBuf)> =
            ALL_MAPS.iter().map(|n| (*n, private.join(n))).collect();
        for (name, path) in &private_paths {
            let entries = if *name == MAP_EVENTS { 4096 } else { 8 };
            loader.map_max_entries(name, entries);
            loader.map_pin_path(name, path.as_path());
        }
        let paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => [MAP_DECAP_ADDRS, MAP_DECAP_STATS]
                .iter()
                .map(|n| (*n, dir.join(n)))
                .collect(),
            None => Vec::new(),
        };
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(EBPF_OBJECT).map_err(|e| DataplaneError::Load {
            source: Box::new(e),
        })?;
        load_program(
            xdp_program(&mut ebpf, DECAP_PROGRAM_NAME)?,
            DECAP_PROGRAM_NAME,
        )?;
        let addrs = take_map(&mut ebpf, MAP_DECAP_ADDRS)?;
        let stats = take_map(&mut ebpf, MAP_DECAP_STATS)?;
        Ok(Self {
            ebpf,
            addrs: BpfHashMap::try_from(addrs).map_err(map_err(MAP_DECAP_ADDRS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_DECAP_STATS))?,
        })
    }

    /// Replaces the decapsulation addresses with `addrs`.
    pub fn set_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        if addrs.len() > lb_common::decap::DECAP_MAX_ADDRS as usize {
            return Err(DataplaneError::Usage(format!(
                "{} decapsulation addresses; at most {} fit",
                addrs.len(),
                lb_common::decap::DECAP_MAX_ADDRS
            )));
        }
        // Only the addresses that leave the set are removed (first, so the map never holds
        // more than the limit); one that stays is never absent, so its IPIP packets keep
        // being decapsulated while the set changes.
        let new: Vec<u32> = addrs
            .iter()
            .map(|a| u32::from_ne_bytes(a.octets()))
            .collect();
        let old: Vec<u32> = self.addrs.keys().filter_map(|k| k.ok()).collect();
        for k in old.into_iter().filter(|k| !new.contains(k)) {
            let _ = self.addrs.remove(&k);
        }
        for a in addrs {
            self.addrs
                .insert(u32::from_ne_bytes(a.octets()), 0, 0)
                .map_err(map_err(MAP_DECAP_ADDRS))?;
        }
        Ok(())
    }

    /// The counters, summed over CPUs.
    pub fn counters(&self) -> Result<DecapCounters> {
        sum_counters(&self.stats)
    }

    /// `BPF_PROG_TEST_RUN` of `lb_decap` on `frame` (as [`super::bpf::BpfDataplane::test_run`]).
    pub fn test_run(&self, frame: &[u8]) -> Result<TestRunResult> {
        self.test_run_repeat(frame, 1)
    }

    /// [`Self::test_run`] with `repeat` runs in one call: the kernel runs the program again
    /// on the frame the previous run left (the benchmark chains nested outer headers this
    /// way); `duration_ns` is the mean per run.
    pub fn test_run_repeat(&self, frame: &[u8], repeat: u32) -> Result<TestRunResult> {
        let prog: &Xdp = self
            .ebpf
            .program(DECAP_PROGRAM_NAME)
            .ok_or_else(|| DataplaneError::MissingInObject {
                kind: "program",
                name: DECAP_PROGRAM_NAME.into(),
            })?
            .try_into()
            .map_err(program_err("converting program", DECAP_PROGRAM_NAME))?;
        test_run_xdp(prog, DECAP_PROGRAM_NAME, frame, None, repeat)
    }
}

fn take_map(ebpf: &mut Ebpf, name: &'static str) -> Result<Map> {
    ebpf.take_map(name)
        .ok_or_else(|| DataplaneError::MissingInObject {
            kind: "map",
            name: name.into(),
        })
}

fn sum_counters(stats: &PerCpuArray<MapData, u64>) -> Result<DecapCounters> {
    let mut out = [0u64; DECAP_NUM_COUNTERS as usize];
    for (i, slot) in out.iter_mut().enumerate() {
        let values = stats
            .get(&(i as u32), 0)
            .map_err(map_err(MAP_DECAP_STATS))?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

/// The pin directory of the attachment to `iface` in the calling thread's network namespace.
pub fn attachment_dir(pin_root: &Path, iface: &str) -> Result<PathBuf> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Err(DataplaneError::NoInterface {
            iface: iface.into(),
        });
    }
    let ns =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| DataplaneError::Io {
            what: "reading /proc/thread-self/ns/net".into(),
            source,
        })?;
    Ok(pin_root
        .join(format!("abi{ABI_VERSION}"))
        .join(format!("net{}", ns.ino()))
        .join(iface))
}

/// The IPv4 addresses of `iface` (in the calling thread's network namespace).
pub fn interface_addresses(iface: &str) -> Result<Vec<Ipv4Addr>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(DataplaneError::Io {
            what: "getifaddrs".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned; its strings and addresses are valid
        // until freeifaddrs.
        unsafe {
            let ifa = &*cur;
            let name = std::ffi::CStr::from_ptr(ifa.ifa_name);
            if !ifa.ifa_addr.is_null()
                && i32::from((*ifa.ifa_addr).sa_family) == libc::AF_INET
                && name.to_bytes() == iface.as_bytes()
            {
                let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                let a = Ipv4Addr::from(sin.sin_addr.s_addr.to_ne_bytes());
                if !out.contains(&a) {
                    out.push(a);
                }
            }
            cur = ifa.ifa_next;
        }
    }
    // SAFETY: the list from getifaddrs, freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}

/// Attaches `lb_decap` to `iface` in `mode` and pins it (link and maps) under `pin_root`, so
/// it persists after this process exits. It decapsulates IPIP addressed to `addresses`, or,
/// when that is empty, to the IPv4 addresses `iface` has now. An existing attachment to the
/// same interface is detached first (running the command twice is harmless; the counters
/// start from zero).
pub fn attach(
    iface: &str,
    mode: XdpMode,
    pin_root: &Path,
    addresses: &[Ipv4Addr],
) -> Result<Attached> {
    let idx = ifindex(iface).map_err(|_| {
        DataplaneError::Usage(format!(
            "interface {iface:?} does not exist in this network namespace"
        ))
    })?;
    let addrs = if addresses.is_empty() {
        interface_addresses(iface)?
    } else {
        addresses.to_vec()
    };
    if addrs.is_empty() {
        return Err(DataplaneError::Usage(format!(
            "interface {iface} has no IPv4 address to decapsulate for; give the backend's address with --address"
        )));
    }
    let dir = attachment_dir(pin_root, iface)?;
    if dir.exists() {
        detach_dir(&dir)?;
    }
    std::fs::create_dir_all(&dir).map_err(|source| DataplaneError::Fs {
        action: "creating the pin directory",
        path: dir.clone(),
        source,
    })?;
    if !is_bpffs(&dir) {
        let _ = std::fs::remove_dir(&dir);
        return Err(DataplaneError::Usage(format!(
            "{} is not on a bpffs mount; mount one (`mount -t bpf bpf /sys/fs/bpf`) or pass --pin-root under one",
            dir.display()
        )));
    }
    let result = (|| {
        let mut decap = Decap::load_pinned(Some(&dir))?;
        decap.set_addresses(&addrs)?;
        let prog = xdp_program(&mut decap.ebpf, DECAP_PROGRAM_NAME)?;
        let (id, got) = BpfDataplane::attach_fresh(prog, iface, idx, mode)?;
        pin_link(prog, id, iface, &dir.join("link"))?;
        Ok(got)
    })();
    match result {
        Ok(mode) => Ok(Attached {
            dir,
            mode,
            addresses: addrs,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Detaches the attachment to `iface` (in the calling thread's network namespace) and removes
/// its pin directory; `false` when there was none.
pub fn detach(pin_root: &Path, iface: &str) -> Result<bool> {
    let dir = attachment_dir(pin_root, iface)?;
    if !dir.exists() {
        return Ok(false);
    }
    detach_dir(&dir)?;
    // The namespace's and the ABI's directories when left empty (never the root).
    for parent in dir.ancestors().skip(1).take(2) {
        if std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
    Ok(true)
}

/// Forces the detach of the link pinned in `dir` and removes `dir`.
fn detach_dir(dir: &Path) -> Result<()> {
    let link = dir.join("link");
    if link.exists() {
        match obj_get(&link) {
            Ok(fd) => {
                if let Err(e) = link_detach(fd.as_fd()) {
                    tracing::warn!(path = %link.display(), error = %e, "BPF_LINK_DETACH failed");
                }
            }
            Err(e) => tracing::warn!(path = %link.display(), error = %e, "cannot open pinned link"),
        }
    }
    std::fs::remove_dir_all(dir).map_err(|source| DataplaneError::Fs {
        action: "removing",
        path: dir.to_path_buf(),
        source,
    })
}

/// The counters of the attachment to `iface` (in the calling thread's network namespace).
pub fn read_counters(pin_root: &Path, iface: &str) -> Result<DecapCounters> {
    let dir = attachment_dir(pin_root, iface)?;
    let path = dir.join(MAP_DECAP_STATS);
    if !path.exists() {
        return Err(DataplaneError::Usage(format!(
            "no decapsulator is attached to {iface} in this network namespace ({} does not exist); run `lbctl decap attach {iface}`",
            dir.display()
        )));
    }
    let data = MapData::from_pin(&path).map_err(map_err(MAP_DECAP_STATS))?;
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(MAP_DECAP_STATS))?;
    sum_counters(&stats)
}
