//! The pin directory: expected map shapes, checks of maps pinned earlier, private pin
//! directories for unpinned loads, and the few `bpf(2)` calls aya does not wrap.

use super::*;

/// Expected (max_entries, key size, value size) of every map for `opts`.
pub(super) fn expected_shape(name: &str, opts: &LoadOptions) -> (u32, u32, u32) {
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
        MAP_CT_DSR => (
            lb_common::dsr_flows_capacity(opts.conntrack_flows),
            sz(size_of::<FlowKey>()),
            sz(size_of::<DsrEntry>()),
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
        lb_common::MAP_CT_FILTER => (
            lb_common::ct_filter_map_entries(
                opts.conntrack_flows
                    .saturating_mul(CONNTRACK_ENTRIES_PER_FLOW),
            ),
            4,
            8,
        ),
        lb_common::MAP_CT_FILTER_CTL => (1, 4, 8),
        _ => unreachable!("unknown map {name}"),
    }
}

pub(super) fn maglev_entries(opts: &LoadOptions) -> u32 {
    opts.max_services
        .saturating_mul(2)
        .saturating_mul(opts.maglev_table_size)
}

/// Checks that maps already pinned in `dir` have the shapes `opts` asks for.
pub(super) fn check_pinned(dir: &Path, opts: &LoadOptions) -> Result<()> {
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

pub(in crate::dataplane) fn is_bpffs(path: &Path) -> bool {
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
pub(in crate::dataplane) struct TempPinDir(pub(super) PathBuf);

/// A new private pin directory on bpffs, in `under` (a directory on a bpffs mount; `None`:
/// `/sys/fs/bpf`), for a load whose maps must not be shared: aya pins every map the object
/// declares pinned, at its default `/sys/fs/bpf` unless given a path, so a load that wants
/// private maps names this directory for them. The directory goes when the guard drops; the
/// maps live on with the loaded object.
pub(in crate::dataplane) fn private_pin_dir(
    tag: &str,
    under: Option<&Path>,
) -> Result<(PathBuf, TempPinDir)> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let dir = under
        .unwrap_or(Path::new(BPFFS_DEFAULT))
        .join(format!("lb-private-{tag}{}-{nanos}", std::process::id()));
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

/// Removes `root` if it is an empty directory and not a mount point (its device differs from
/// its parent's). `rmdir` itself refuses a non-empty directory, so nothing else is touched.
pub(super) fn remove_empty_root(root: &Path) -> Result<()> {
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
pub(in crate::dataplane) fn link_detach(fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()> {
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
pub(in crate::dataplane) fn obj_get(path: &Path) -> io::Result<std::os::fd::OwnedFd> {
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

pub(in crate::dataplane) fn ifindex(iface: &str) -> Result<u32> {
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

/// Calls `each` with every key of the hash map `fd` (keys of `key_size`, values of
/// `value_size` bytes), through `BPF_MAP_LOOKUP_BATCH`. The kernel walks the buckets by index
/// and copies each bucket under its lock, so a key present in the map throughout the walk is
/// always returned. (`bpf_map_get_next_key`, which aya's iterators use, follows the found
/// element's next pointer; in an LRU map that element may meanwhile have been reused in
/// another bucket, and the walk then skips the buckets in between.)
pub(in crate::dataplane) fn for_each_key_batched(
    fd: std::os::fd::BorrowedFd<'_>,
    key_size: usize,
    value_size: usize,
    mut each: impl FnMut(&[u8]),
) -> io::Result<()> {
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    // union bpf_attr, the batch commands' struct.
    #[repr(C)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }
    let mut chunk = 4096usize;
    let mut keys = vec![0u8; chunk * key_size];
    let mut values = vec![0u8; chunk * value_size];
    // The hash map's batch token is a bucket index (u32).
    let mut in_batch = 0u32;
    let mut out_batch = 0u32;
    let mut first = true;
    loop {
        let mut attr = BatchAttr {
            in_batch: if first {
                0
            } else {
                &in_batch as *const u32 as u64
            },
            out_batch: &mut out_batch as *mut u32 as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: chunk as u32,
            map_fd: fd.as_raw_fd() as u32,
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: bpf(2) with the batch attr; the buffers hold `count` keys and values.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                std::mem::size_of::<BatchAttr>(),
            )
        };
        let err = (rc < 0).then(io::Error::last_os_error);
        if err.as_ref().and_then(io::Error::raw_os_error) == Some(libc::ENOSPC) {
            // One bucket holds more than `chunk` elements: retry it with room for them.
            chunk *= 2;
            keys.resize(chunk * key_size, 0);
            values.resize(chunk * value_size, 0);
            continue;
        }
        let n = (attr.count as usize).min(chunk);
        for k in keys[..n * key_size].chunks_exact(key_size) {
            each(k);
        }
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
            Some(e) => return Err(e),
        }
        in_batch = out_batch;
        first = false;
    }
}
