//! The backend side of DSR without the kernel's `ipip` module: loads `lb_decap` (the IPIP
//! decapsulating XDP program of lb's object, `lb_common::decap`), attaches it to a backend's
//! interface and pins it so it keeps decapsulating after `lbctl decap attach` exits.
//!
//! Pin layout, one directory per attachment (network namespaces share bpffs, and every
//! namespace may have its own `eth0`):
//! `<pin_root>/lb_decap/v<DECAP_ABI_VERSION>/net<netns inode>/<iface>/` holding `link` (the
//! XDP link), `LB_DECAP_ADDRS`, `LB_DECAP_SRCS`, `LB_DECAP_VIPS` and `LB_DECAP_STATS`. The
//! attachment lives as long as `link` is pinned and the interface exists; `lbctl decap detach`
//! detaches it and removes the directory.
//!
//! The version is `lb_decap`'s own ([`DECAP_ABI_VERSION`]), not `lb_xdp`'s `ABI_VERSION`, which
//! lbctl builds before it used (`<pin_root>/abi<ABI_VERSION>/net<netns inode>/<iface>/`): a
//! balancer map change must not hide the backends' attachments. Attachments in an older layout
//! (any `abi<N>`, or `lb_decap/v<M>` below the current version) are found by every command:
//! [`attach`] takes them over (replaces the program through their pinned link, no gap, and
//! moves the pins into the current layout), [`detach`] removes them, [`read_counters`] reads
//! them. Pins of a newer layout (a newer lbctl's) are removed by [`detach`] only; [`attach`]
//! and [`read_counters`] refuse them with an error saying so.
//!
//! Loading the object creates every map it declares, `lb_xdp`'s included: those are created
//! with one entry or a few each (they are released when the loading process exits, since no
//! loaded program holds them), so attaching the decapsulator costs no balancer memory.

use super::bpf::{
    ifindex, io_err, is_bpffs, link_detach, link_err, load_program, map_err, obj_get, pin_link,
    private_pin_dir, program_err, test_run_xdp, xdp_program, BpfDataplane, TestRunResult,
};
use super::{AttachedMode, DataplaneError, Result, XdpMode, EBPF_OBJECT};
use aya::{
    maps::{
        lpm_trie::{Key as LpmKey, LpmTrie},
        HashMap as BpfHashMap, Map, MapData, PerCpuArray,
    },
    programs::{
        links::{FdLink, PinnedLink},
        xdp::XdpLink,
        Xdp,
    },
    Ebpf, EbpfLoader,
};
use lb_common::decap::{
    DECAP_ABI_VERSION, DECAP_MAX_ADDRS, DECAP_MAX_SOURCES, DECAP_MAX_VIPS, DECAP_NUM_COUNTERS,
    DECAP_PROGRAM_NAME, MAP_DECAP_ADDRS, MAP_DECAP_SOURCES, MAP_DECAP_STATS, MAP_DECAP_VIPS,
};
use lb_common::{ALL_MAPS, MAP_EVENTS};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Default pin root of `lbctl decap`.
pub const DEFAULT_DECAP_PIN_ROOT: &str = "/sys/fs/bpf/lb-decap";

/// The directory under a pin root holding `lb_decap`'s attachments, one subdirectory per
/// layout version (`v<DECAP_ABI_VERSION>`).
pub const DECAP_PIN_SUBDIR: &str = "lb_decap";

/// The counters of one attachment, indexed by `lb_common::decap::DECAP_*`, summed over CPUs.
pub type DecapCounters = [u64; DECAP_NUM_COUNTERS as usize];

/// The maps of `lb_decap` that list addresses, in the order they are pinned and filled.
const LIST_MAPS: [&str; 3] = [MAP_DECAP_ADDRS, MAP_DECAP_SOURCES, MAP_DECAP_VIPS];

/// An IPv4 prefix (`ADDR/LEN`, or a bare address for `/32`), the form of `lb_decap`'s allowed
/// outer sources. The address is kept with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Ipv4Prefix {
    /// The network address (host bits zero).
    pub addr: Ipv4Addr,
    /// The prefix length, 0 to 32.
    pub len: u8,
}

impl Ipv4Prefix {
    /// `addr/len` with the host bits of `addr` cleared (`len` above 32 is 32).
    pub fn new(addr: Ipv4Addr, len: u8) -> Self {
        let len = len.min(32);
        let mask = if len == 0 {
            0
        } else {
            u32::MAX << (32 - u32::from(len))
        };
        Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask),
            len,
        }
    }

    /// Every IPv4 address (`0.0.0.0/0`).
    pub const ANY: Self = Self {
        addr: Ipv4Addr::UNSPECIFIED,
        len: 0,
    };
}

impl From<Ipv4Addr> for Ipv4Prefix {
    fn from(addr: Ipv4Addr) -> Self {
        Self::new(addr, 32)
    }
}

impl std::fmt::Display for Ipv4Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.len == 32 {
            write!(f, "{}", self.addr)
        } else {
            write!(f, "{}/{}", self.addr, self.len)
        }
    }
}

impl std::str::FromStr for Ipv4Prefix {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (a, l) = s.split_once('/').unwrap_or((s, "32"));
        let addr: Ipv4Addr = a
            .parse()
            .map_err(|_| format!("\"{s}\" is not an IPv4 address or ADDR/LEN prefix"))?;
        let len: u8 = l
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("\"{s}\": the prefix length must be 0 to 32"))?;
        let p = Self::new(addr, len);
        if p.addr != addr {
            return Err(format!("\"{s}\" has host bits set; did you mean {p}?"));
        }
        Ok(p)
    }
}

/// What `lb_decap` accepts on one attachment: IPIP addressed to one of `addresses`, from one
/// of `sources`, carrying a packet to one of `vips`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DecapRules {
    /// The backend's addresses (outer destination); empty in [`attach`]: the interface's.
    pub addresses: Vec<Ipv4Addr>,
    /// The lb nodes' `dsr.source` addresses or prefixes (outer source). Never empty in
    /// [`attach`]: [`Ipv4Prefix::ANY`] is the explicit "any source".
    pub sources: Vec<Ipv4Prefix>,
    /// The DSR VIPs this backend serves (inner destination). Never empty in [`attach`].
    pub vips: Vec<Ipv4Addr>,
}

/// A loaded `lb_decap` with its four maps.
pub struct Decap {
    ebpf: Ebpf,
    addrs: BpfHashMap<MapData, u32, u32>,
    sources: LpmTrie<MapData, u32, u32>,
    vips: BpfHashMap<MapData, u32, u32>,
    stats: PerCpuArray<MapData, u64>,
}

/// What [`attach`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    /// The attachment's pin directory.
    pub dir: PathBuf,
    /// The mode the program got.
    pub mode: AttachedMode,
    /// The addresses it decapsulates for, the sources and VIPs it accepts.
    pub rules: DecapRules,
    /// The kernel's id of the pinned XDP link (unchanged when an attachment is replaced).
    pub link_id: u32,
    /// Whether an existing attachment's program was replaced through its link (no gap).
    pub replaced: bool,
    /// The pin directory of an older layout whose attachment was taken over (replaced through
    /// its link, its pins moved to [`Self::dir`]).
    pub adopted_from: Option<PathBuf>,
}

/// Replaces the keys of the hash set `map` with `new`: only keys that leave are removed (first,
/// so the map never holds more than its capacity); a key that stays is never absent.
fn replace_set(
    map: &mut BpfHashMap<MapData, u32, u32>,
    name: &'static str,
    new: &[u32],
) -> Result<()> {
    let old: Vec<u32> = map.keys().filter_map(|k| k.ok()).collect();
    for k in old.into_iter().filter(|k| !new.contains(k)) {
        let _ = map.remove(&k);
    }
    for k in new {
        map.insert(*k, 0, 0).map_err(map_err(name))?;
    }
    Ok(())
}

fn check_len(what: &str, n: usize, max: u32) -> Result<()> {
    if n > max as usize {
        return Err(DataplaneError::Usage(format!(
            "{n} {what}; at most {max} fit"
        )));
    }
    Ok(())
}

fn be(a: Ipv4Addr) -> u32 {
    u32::from_ne_bytes(a.octets())
}

impl Decap {
    /// Loads `lb_decap` from the embedded object with private (unpinned) maps.
    pub fn load() -> Result<Self> {
        Self::load_pinned(None)
    }

    /// Loads `lb_decap`; with `pin_dir`, its two maps are pinned there (re-adopted if pinned
    /// already).
    fn load_pinned(pin_dir: Option<&Path>) -> Result<Self> {
        Self::load_pinned_stats(pin_dir, None)
    }

    /// [`Self::load_pinned`], with the counters pinned (or adopted) at `stats_pin` instead of
    /// in `pin_dir` when given.
    fn load_pinned_stats(pin_dir: Option<&Path>, stats_pin: Option<&Path>) -> Result<Self> {
        if EBPF_OBJECT.is_empty() {
            return Err(DataplaneError::NoObject);
        }
        let mut loader = EbpfLoader::new();
        // lb_xdp's maps: as small as the kernel allows (the ring buffer needs a page), and
        // private: the object declares them pinned by name, which without a path would pin
        // (or adopt) them in the bpffs root, shared with any other load.
        // On the bpffs the pins go to (the default one for unpinned loads): `/sys/fs/bpf` may
        // not be bpffs at all when `--pin-root` names another mount.
        let (private, _private_guard) = private_pin_dir("decap-", pin_dir.and_then(Path::parent))?;
        let private_paths: Vec<(&str, PathBuf)> =
            ALL_MAPS.iter().map(|n| (*n, private.join(n))).collect();
        for (name, path) in &private_paths {
            let entries = if *name == MAP_EVENTS { 4096 } else { 8 };
            loader.map_max_entries(name, entries);
            loader.map_pin_path(name, path.as_path());
        }
        let mut paths: Vec<(&str, PathBuf)> = match pin_dir {
            Some(dir) => LIST_MAPS
                .iter()
                .chain(&[MAP_DECAP_STATS])
                .map(|n| (*n, dir.join(n)))
                .collect(),
            None => Vec::new(),
        };
        if let Some(stats) = stats_pin {
            paths.retain(|(n, _)| *n != MAP_DECAP_STATS);
            paths.push((MAP_DECAP_STATS, stats.to_path_buf()));
        }
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
        let sources = take_map(&mut ebpf, MAP_DECAP_SOURCES)?;
        let vips = take_map(&mut ebpf, MAP_DECAP_VIPS)?;
        let stats = take_map(&mut ebpf, MAP_DECAP_STATS)?;
        Ok(Self {
            ebpf,
            addrs: BpfHashMap::try_from(addrs).map_err(map_err(MAP_DECAP_ADDRS))?,
            sources: LpmTrie::try_from(sources).map_err(map_err(MAP_DECAP_SOURCES))?,
            vips: BpfHashMap::try_from(vips).map_err(map_err(MAP_DECAP_VIPS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_DECAP_STATS))?,
        })
    }

    /// Replaces the accepted outer sources with `sources` (prefixes; [`Ipv4Prefix::ANY`]
    /// accepts every source). A prefix that stays is never absent.
    pub fn set_sources(&mut self, sources: &[Ipv4Prefix]) -> Result<()> {
        check_len("allowed sources", sources.len(), DECAP_MAX_SOURCES)?;
        let key = |p: &Ipv4Prefix| LpmKey::new(u32::from(p.len), be(p.addr));
        let new: Vec<(u32, u32)> = sources
            .iter()
            .map(|p| (u32::from(p.len), be(p.addr)))
            .collect();
        let old: Vec<LpmKey<u32>> = self.sources.keys().filter_map(|k| k.ok()).collect();
        for k in old
            .into_iter()
            .filter(|k| !new.contains(&(k.prefix_len(), k.data())))
        {
            let _ = self.sources.remove(&k);
        }
        for p in sources {
            self.sources
                .insert(&key(p), 0, 0)
                .map_err(map_err(MAP_DECAP_SOURCES))?;
        }
        Ok(())
    }

    /// Replaces the accepted inner destinations (the VIPs) with `vips`. One that stays is never
    /// absent.
    pub fn set_vips(&mut self, vips: &[Ipv4Addr]) -> Result<()> {
        check_len("VIPs", vips.len(), DECAP_MAX_VIPS)?;
        let new: Vec<u32> = vips.iter().copied().map(be).collect();
        replace_set(&mut self.vips, MAP_DECAP_VIPS, &new)
    }

    /// Sets all three lists of `rules` (addresses, sources, VIPs), after checking that each
    /// fits, so a list that does not fit changes nothing.
    pub fn set_rules(&mut self, rules: &DecapRules) -> Result<()> {
        check_len(
            "decapsulation addresses",
            rules.addresses.len(),
            DECAP_MAX_ADDRS,
        )?;
        check_len("allowed sources", rules.sources.len(), DECAP_MAX_SOURCES)?;
        check_len("VIPs", rules.vips.len(), DECAP_MAX_VIPS)?;
        self.set_addresses(&rules.addresses)?;
        self.set_sources(&rules.sources)?;
        self.set_vips(&rules.vips)
    }

    /// Replaces the decapsulation addresses with `addrs`.
    pub fn set_addresses(&mut self, addrs: &[Ipv4Addr]) -> Result<()> {
        check_len("decapsulation addresses", addrs.len(), DECAP_MAX_ADDRS)?;
        // Only the addresses that leave the set are removed; one that stays is never absent,
        // so its IPIP packets keep being decapsulated while the set changes.
        let new: Vec<u32> = addrs.iter().copied().map(be).collect();
        replace_set(&mut self.addrs, MAP_DECAP_ADDRS, &new)
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

/// The counters of `stats` summed over CPUs; counters past the map's end (an older layout's
/// map, which had fewer) read 0.
fn sum_counters(stats: &PerCpuArray<MapData, u64>) -> Result<DecapCounters> {
    let mut out = [0u64; DECAP_NUM_COUNTERS as usize];
    let len = stats.len() as usize;
    for (i, slot) in out.iter_mut().enumerate().take(len) {
        let values = stats
            .get(&(i as u32), 0)
            .map_err(map_err(MAP_DECAP_STATS))?;
        *slot = values.iter().sum();
    }
    Ok(out)
}

/// The name of the calling thread's network namespace's directory in a pin layout
/// (`net<inode>`).
fn netns_dir_name() -> Result<String> {
    let ns =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(|source| DataplaneError::Io {
            what: "reading /proc/thread-self/ns/net".into(),
            source,
        })?;
    Ok(format!("net{}", ns.ino()))
}

fn check_iface(iface: &str) -> Result<()> {
    if iface.is_empty() || iface.contains('/') || iface == "." || iface == ".." {
        return Err(DataplaneError::NoInterface {
            iface: iface.into(),
        });
    }
    Ok(())
}

/// The pin directory of the attachment to `iface` in the calling thread's network namespace,
/// in the current layout: `<pin_root>/lb_decap/v<DECAP_ABI_VERSION>/net<inode>/<iface>`.
pub fn attachment_dir(pin_root: &Path, iface: &str) -> Result<PathBuf> {
    check_iface(iface)?;
    Ok(pin_root
        .join(DECAP_PIN_SUBDIR)
        .join(format!("v{DECAP_ABI_VERSION}"))
        .join(netns_dir_name()?)
        .join(iface))
}

/// The subdirectories of `dir` named `<prefix><decimal number>`, with their numbers.
fn versioned_subdirs(dir: &Path, prefix: &str) -> Vec<(u32, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let v = name.to_str()?.strip_prefix(prefix)?;
            if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            Some((v.parse().ok()?, e.path()))
        })
        .filter(|(_, p)| p.is_dir())
        .collect()
}

/// The pin directories of attachments to one interface in other layouts than the current one.
#[derive(Debug, Default, PartialEq, Eq)]
struct OtherLayouts {
    /// Older layouts, newest first: `lb_decap/v<M>` with `M` below [`DECAP_ABI_VERSION`] (by
    /// `M`, descending), then the `abi<N>` layout of lbctl builds before it (by `N`,
    /// descending).
    older: Vec<PathBuf>,
    /// `lb_decap/v<M>` with `M` above [`DECAP_ABI_VERSION`] (a newer lbctl's), with `M`.
    newer: Vec<(u32, PathBuf)>,
}

/// The attachments to `iface` in the calling thread's network namespace under `pin_root` in
/// layouts other than the current one ([`attachment_dir`]).
fn other_layouts(pin_root: &Path, iface: &str) -> Result<OtherLayouts> {
    check_iface(iface)?;
    let net = netns_dir_name()?;
    let in_layout = |root: &Path| {
        let dir = root.join(&net).join(iface);
        dir.is_dir().then_some(dir)
    };
    let mut own = versioned_subdirs(&pin_root.join(DECAP_PIN_SUBDIR), "v");
    own.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut legacy = versioned_subdirs(pin_root, "abi");
    legacy.sort_by_key(|d| std::cmp::Reverse(d.0));
    let mut out = OtherLayouts::default();
    for (v, root) in own {
        if let Some(dir) = in_layout(&root) {
            match v.cmp(&DECAP_ABI_VERSION) {
                std::cmp::Ordering::Less => out.older.push(dir),
                std::cmp::Ordering::Greater => out.newer.push((v, dir)),
                std::cmp::Ordering::Equal => {}
            }
        }
    }
    out.older
        .extend(legacy.iter().filter_map(|(_, root)| in_layout(root)));
    Ok(out)
}

/// The error for an attachment pinned by a newer lbctl (layout `v<version>` in `dir`).
fn newer_layout_error(iface: &str, version: u32, dir: &Path) -> DataplaneError {
    DataplaneError::Usage(format!(
        "lb_decap on {iface} was attached by a newer lbctl (pin layout v{version} at {}; this lbctl uses v{DECAP_ABI_VERSION}): use that lbctl, or run `lbctl decap detach {iface}` first (IPIP to {iface} is not decapsulated until the next attach)",
        dir.display()
    ))
}

/// Detaches the attachment pinned in `dir` (under `pin_root`), removes `dir` and then its
/// parents that are left empty, up to (not including) `pin_root`.
fn remove_attachment(pin_root: &Path, dir: &Path) -> Result<()> {
    detach_dir(dir)?;
    remove_empty_parents(pin_root, dir);
    Ok(())
}

/// Removes the parents of `dir` that are empty, nearest first, up to (not including)
/// `pin_root`.
fn remove_empty_parents(pin_root: &Path, dir: &Path) {
    for parent in dir.ancestors().skip(1) {
        if parent == pin_root || !parent.starts_with(pin_root) {
            break;
        }
        if std::fs::remove_dir(parent).is_err() {
            break;
        }
    }
}

/// Moves the pins of an attachment from the older layout's `from` to `to` (the current
/// layout's directory, which does not exist), then removes `from`'s emptied parents up to
/// `pin_root`.
fn move_pins(pin_root: &Path, from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|source| DataplaneError::Fs {
            action: "creating the pin directory",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    std::fs::rename(from, to).map_err(|source| DataplaneError::Fs {
        action: "moving the attachment's pins to the current layout",
        path: from.to_path_buf(),
        source,
    })?;
    remove_empty_parents(pin_root, from);
    Ok(())
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
/// it persists after this process exits. An attachment that exists is replaced without a gap:
/// a new program with new lists is loaded and swapped in through the pinned link
/// (`BPF_LINK_UPDATE`, atomic: every packet meets the old program or the new one); the link,
/// its mode and the counters stay. If anything fails before the swap, the old attachment is
/// left as it was. Only a defunct link (the interface was recreated) is attached afresh. An
/// attachment pinned in an older layout (an older lbctl's, see the module docs) is replaced
/// the same way and its pins then move to the current layout ([`Attached::adopted_from`]);
/// one pinned in a newer layout is refused. It decapsulates IPIP addressed to `rules.addresses`,
/// or, when that is empty, to the IPv4 addresses `iface` has now, from `rules.sources` to
/// `rules.vips` (neither may be empty: an empty allow-list would accept nothing, and "any"
/// must be asked for, as [`Ipv4Prefix::ANY`]).
pub fn attach(iface: &str, mode: XdpMode, pin_root: &Path, rules: &DecapRules) -> Result<Attached> {
    if rules.sources.is_empty() {
        return Err(DataplaneError::Usage(
            "--allow-source: at least one is required: the address (or prefix) lb's nodes send IPIP from, their dsr.source; --allow-any-source accepts any (not recommended)".into(),
        ));
    }
    if rules.vips.is_empty() {
        return Err(DataplaneError::Usage(
            "--vip: at least one is required: the DSR VIP(s) this backend serves (lb_decap passes only packets to them)".into(),
        ));
    }
    let idx = ifindex(iface).map_err(|_| {
        DataplaneError::Usage(format!(
            "interface {iface:?} does not exist in this network namespace"
        ))
    })?;
    let mut rules = rules.clone();
    if rules.addresses.is_empty() {
        rules.addresses = interface_addresses(iface)?;
    }
    if rules.addresses.is_empty() {
        return Err(DataplaneError::Usage(format!(
            "interface {iface} has no IPv4 address to decapsulate for; give the backend's address with --address"
        )));
    }
    check_len(
        "decapsulation addresses",
        rules.addresses.len(),
        DECAP_MAX_ADDRS,
    )?;
    check_len("allowed sources", rules.sources.len(), DECAP_MAX_SOURCES)?;
    check_len("VIPs", rules.vips.len(), DECAP_MAX_VIPS)?;
    let dir = attachment_dir(pin_root, iface)?;
    let others = other_layouts(pin_root, iface)?;
    if let Some((version, newer)) = others.newer.first() {
        return Err(newer_layout_error(iface, *version, newer));
    }
    // The current layout's attachment first, then the older layouts' (newest first). At most
    // one of them is live (an interface holds one XDP program); the first whose link takes
    // the new program is kept, and the others' pins (of defunct links) are removed.
    let mut kept: Option<(PathBuf, AttachedMode, u32)> = None;
    for found in std::iter::once(dir.clone()).chain(others.older) {
        if !found.exists() {
            continue;
        }
        if kept.is_some() || !found.join("link").exists() {
            // A defunct leftover, or pins without a link (an interrupted attach): nothing is
            // attached through them.
            remove_attachment(pin_root, &found)?;
            continue;
        }
        match replace(&found, iface, idx, mode, &rules) {
            Ok((mode, link_id)) => kept = Some((found, mode, link_id)),
            Err(Replace::Failed(e)) => return Err(e),
            Err(Replace::Stale(why)) => {
                // Nothing decapsulates through this link any more: attach afresh.
                tracing::warn!(iface, reason = %why, "stale lb_decap attachment; attaching afresh");
                remove_attachment(pin_root, &found)?;
            }
        }
    }
    if let Some((found, mode, link_id)) = kept {
        let adopted_from = if found == dir {
            None
        } else {
            // The new program runs through the old layout's link: its pins join the current
            // layout, where the next detach, stats or attach looks first.
            move_pins(pin_root, &found, &dir).map_err(|e| {
                DataplaneError::Usage(format!(
                    "lb_decap on {iface} was replaced in place through the link pinned in {} (it decapsulates with the new lists), but its pins could not move to {}: {e}; `lbctl decap detach {iface}` removes it",
                    found.display(),
                    dir.display()
                ))
            })?;
            Some(found)
        };
        return Ok(Attached {
            dir,
            mode,
            rules,
            link_id,
            replaced: true,
            adopted_from,
        });
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
        decap.set_rules(&rules)?;
        let prog = xdp_program(&mut decap.ebpf, DECAP_PROGRAM_NAME)?;
        let (id, got) = BpfDataplane::attach_fresh(prog, iface, idx, mode)?;
        pin_link(prog, id, iface, &dir.join("link"))?;
        Ok((got, pinned_link_id(&dir.join("link"), iface)?))
    })();
    match result {
        Ok((mode, link_id)) => Ok(Attached {
            dir,
            mode,
            rules,
            link_id,
            replaced: false,
            adopted_from: None,
        }),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Why [`replace`] did not replace.
enum Replace {
    /// The pinned link no longer attaches anything (its interface is gone): attach afresh.
    Stale(String),
    /// A real failure: the old attachment is left as it was.
    Failed(DataplaneError),
}

/// The kernel's id of the link pinned at `path`.
fn pinned_link_id(path: &Path, iface: &str) -> Result<u32> {
    let pinned = PinnedLink::from_pin(path).map_err(link_err(iface, "opening the pinned link"))?;
    let link = FdLink::from(pinned);
    let info = link
        .info()
        .map_err(link_err(iface, "reading the pinned link's info"))?;
    Ok(info.id())
}

/// Replaces the program of the live attachment pinned in `dir` by a new `lb_decap` with
/// `rules`, through the pinned link (no gap). The new lists are built in maps of their own
/// (pinned in `dir/next/` until the swap, then moved over the old pins); the counters are
/// kept (the new program adopts the pinned counter map when its shape fits). Returns the
/// link's mode and id.
fn replace(
    dir: &Path,
    iface: &str,
    idx: u32,
    mode: XdpMode,
    rules: &DecapRules,
) -> std::result::Result<(AttachedMode, u32), Replace> {
    let link_path = dir.join("link");
    let pinned = PinnedLink::from_pin(&link_path)
        .map_err(|e| Replace::Stale(format!("cannot open {}: {e}", link_path.display())))?;
    let current = super::netlink::query_xdp_mode(idx)
        .map_err(|e| Replace::Failed(io_err(format!("{iface}: reading the XDP mode"))(e)))?
        .ok_or_else(|| Replace::Stale(format!("no XDP program is attached to {iface}")))?;
    let wanted = match mode {
        XdpMode::Native => Some(AttachedMode::Native),
        XdpMode::Generic => Some(AttachedMode::Generic),
        XdpMode::Auto => None,
    };
    if wanted.is_some_and(|w| w != current) {
        return Err(Replace::Failed(DataplaneError::Usage(format!(
            "lb_decap is attached to {iface} in {} mode; the mode cannot change in place: run `lbctl decap detach {iface}` first (IPIP is not decapsulated until the new attach)",
            match current {
                AttachedMode::Native => "native",
                AttachedMode::Generic => "generic",
            }
        ))));
    }
    let next = dir.join("next");
    let _ = std::fs::remove_dir_all(&next);
    std::fs::create_dir_all(&next).map_err(|source| {
        Replace::Failed(DataplaneError::Fs {
            action: "creating the pin directory",
            path: next.clone(),
            source,
        })
    })?;
    let result = (|| {
        // The counters carry over when the pinned map has the shape this build counts in.
        let stats_path = dir.join(MAP_DECAP_STATS);
        let keep_stats = MapData::from_pin(&stats_path)
            .ok()
            .and_then(|m| m.info().ok())
            .is_some_and(|i| i.max_entries() == DECAP_NUM_COUNTERS && i.key_size() == 4);
        let stats_pin = if keep_stats {
            stats_path
        } else {
            next.join(MAP_DECAP_STATS)
        };
        let mut decap =
            Decap::load_pinned_stats(Some(&next), Some(&stats_pin)).map_err(Replace::Failed)?;
        decap.set_rules(rules).map_err(Replace::Failed)?;
        let prog = xdp_program(&mut decap.ebpf, DECAP_PROGRAM_NAME).map_err(Replace::Failed)?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| {
            Replace::Failed(link_err(iface, "the pinned link is not an XDP link")(e))
        })?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // The link stays attached through its pin; dropping our fd is fine.
                drop(prog.take_link(id));
            }
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::ENOLINK) =>
            {
                return Err(Replace::Stale(format!(
                    "the pinned link is defunct: {}",
                    e.io_error
                )));
            }
            Err(e) => {
                return Err(Replace::Failed(link_err(
                    iface,
                    "replacing the program of the pinned link",
                )(e)))
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_dir_all(&next);
        return Err(e);
    }
    // The new program runs: its maps take the old maps' names (the old maps go with the old
    // program, which nothing holds any more).
    for name in LIST_MAPS.iter().chain(&[MAP_DECAP_STATS]) {
        let from = next.join(name);
        if from.exists() {
            std::fs::rename(&from, dir.join(name)).map_err(|source| {
                Replace::Failed(DataplaneError::Fs {
                    action: "moving the new map's pin into place",
                    path: from.clone(),
                    source,
                })
            })?;
        }
    }
    let _ = std::fs::remove_dir(&next);
    let id = pinned_link_id(&link_path, iface).map_err(Replace::Failed)?;
    Ok((current, id))
}

/// Detaches the attachment to `iface` (in the calling thread's network namespace) and removes
/// its pin directory, in whichever layout it is pinned (the current one, an older or a newer
/// lbctl's; all of them if several are), then the parents left empty (never `pin_root`);
/// `false` when there was none.
pub fn detach(pin_root: &Path, iface: &str) -> Result<bool> {
    let dir = attachment_dir(pin_root, iface)?;
    let others = other_layouts(pin_root, iface)?;
    let mut removed = false;
    for found in std::iter::once(dir)
        .chain(others.older)
        .chain(others.newer.into_iter().map(|(_, d)| d))
    {
        if found.exists() {
            remove_attachment(pin_root, &found)?;
            removed = true;
        }
    }
    Ok(removed)
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

/// The counters of the attachment to `iface` (in the calling thread's network namespace), in
/// the current layout or else the newest older one (counters an older layout lacks read 0).
pub fn read_counters(pin_root: &Path, iface: &str) -> Result<DecapCounters> {
    let dir = attachment_dir(pin_root, iface)?;
    let others = other_layouts(pin_root, iface)?;
    let Some(path) = std::iter::once(dir.clone())
        .chain(others.older)
        .map(|d| d.join(MAP_DECAP_STATS))
        .find(|p| p.exists())
    else {
        if let Some((version, newer)) = others.newer.first() {
            return Err(newer_layout_error(iface, *version, newer));
        }
        return Err(DataplaneError::Usage(format!(
            "no decapsulator is attached to {iface} in this network namespace ({} does not exist); run `lbctl decap attach {iface}`",
            dir.display()
        )));
    };
    let data = MapData::from_pin(&path).map_err(map_err(MAP_DECAP_STATS))?;
    let stats: PerCpuArray<MapData, u64> =
        PerCpuArray::try_from(Map::PerCpuArray(data)).map_err(map_err(MAP_DECAP_STATS))?;
    sum_counters(&stats)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// Creates `root/rel` (a directory) with a regular file `LB_DECAP_STATS` in it, the shape
    /// of an attachment's pins without a kernel (no bpffs, no link).
    fn fake_pins(root: &Path, rel: &str) -> PathBuf {
        let dir = root.join(rel);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(MAP_DECAP_STATS), b"").unwrap();
        dir
    }

    #[test]
    fn attachment_dir_is_lb_decaps_own_layout() {
        let net = netns_dir_name().unwrap();
        assert_eq!(
            attachment_dir(Path::new("/pins"), "eth0").unwrap(),
            PathBuf::from(format!("/pins/lb_decap/v{DECAP_ABI_VERSION}/{net}/eth0"))
        );
        for bad in ["", ".", "..", "a/b"] {
            assert!(attachment_dir(Path::new("/pins"), bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn other_layouts_lists_older_newest_first_and_newer() {
        let t = TempDir::new("decap-layouts");
        let root = t.path();
        let net = netns_dir_name().unwrap();
        let cur = DECAP_ABI_VERSION;
        let abi6 = fake_pins(root, &format!("abi6/{net}/eth0"));
        let abi7 = fake_pins(root, &format!("abi7/{net}/eth0"));
        let abi12 = fake_pins(root, &format!("abi12/{net}/eth0"));
        let own_old = fake_pins(root, &format!("lb_decap/v{}/{net}/eth0", cur - 1));
        fake_pins(root, &format!("lb_decap/v{cur}/{net}/eth0"));
        let newer = fake_pins(root, &format!("lb_decap/v{}/{net}/eth0", cur + 1));
        // Not attachments to eth0 in this namespace's layouts: another namespace, another
        // interface, lbd's own pins, names that are no layout.
        fake_pins(root, "abi7/net1/eth0");
        fake_pins(root, &format!("abi7/{net}/eth1"));
        fake_pins(root, "abi7/links");
        fake_pins(root, &format!("abix/{net}/eth0"));
        fake_pins(root, &format!("lb_decap/w3/{net}/eth0"));
        assert_eq!(
            other_layouts(root, "eth0").unwrap(),
            OtherLayouts {
                older: vec![own_old, abi12, abi7, abi6],
                newer: vec![(cur + 1, newer)],
            }
        );
        assert_eq!(
            other_layouts(&root.join("missing"), "eth0").unwrap(),
            OtherLayouts::default()
        );
    }

    /// An attachment pinned by an lbctl built for another lb_xdp ABI version (`abi<N>/`) is
    /// found and removed by `detach`, with the directories it leaves empty; lbd's pins in the
    /// same `abi<N>` directory and other interfaces' stay.
    #[test]
    fn detach_removes_older_layouts() {
        let t = TempDir::new("decap-detach");
        let root = t.path();
        let net = netns_dir_name().unwrap();
        fake_pins(root, &format!("abi6/{net}/eth0"));
        fake_pins(root, &format!("abi7/{net}/eth0"));
        fake_pins(root, &format!("abi7/{net}/eth1"));
        fake_pins(root, "abi5/links");
        fake_pins(root, &format!("abi5/{net}/eth0"));
        fake_pins(
            root,
            &format!("lb_decap/v{}/{net}/eth0", DECAP_ABI_VERSION + 1),
        );
        assert!(detach(root, "eth0").unwrap());
        let mut left: Vec<String> = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let rel = e.path().strip_prefix(root).unwrap().display().to_string();
                left.push(rel);
                if e.path().is_dir() {
                    stack.push(e.path());
                }
            }
        }
        left.sort();
        assert_eq!(
            left,
            [
                "abi5".to_string(),
                "abi5/links".into(),
                format!("abi5/links/{MAP_DECAP_STATS}"),
                "abi7".into(),
                format!("abi7/{net}"),
                format!("abi7/{net}/eth1"),
                format!("abi7/{net}/eth1/{MAP_DECAP_STATS}"),
            ]
        );
        assert!(!detach(root, "eth0").unwrap(), "nothing left to detach");
    }

    /// `stats` reads an older layout's counters; with only a newer layout's pins it refuses,
    /// naming the way out.
    #[test]
    fn counters_of_a_newer_layout_are_refused() {
        let t = TempDir::new("decap-newer");
        let root = t.path();
        let net = netns_dir_name().unwrap();
        fake_pins(
            root,
            &format!("lb_decap/v{}/{net}/lo", DECAP_ABI_VERSION + 1),
        );
        let e = read_counters(root, "lo").unwrap_err().to_string();
        assert!(
            e.contains("attached by a newer lbctl") && e.contains("lbctl decap detach lo"),
            "{e}"
        );
        let rules = DecapRules {
            addresses: vec![],
            sources: vec![Ipv4Prefix::ANY],
            vips: vec![Ipv4Addr::new(192, 0, 2, 10)],
        };
        let e = attach("lo", XdpMode::Auto, root, &rules)
            .unwrap_err()
            .to_string();
        assert!(e.contains("attached by a newer lbctl"), "{e}");
    }
}
