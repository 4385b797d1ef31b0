//! [`Dataplane`] for the kernel maps: typed reads and writes, the mmapped Maglev array and
//! the SNAT-full window slots.

use super::*;

/// A shared writable mapping of the mmapable `LB_MAGLEV` array.
pub(super) struct MaglevMmap {
    pub(super) map: ArrayMapping,
    pub(super) entries: u32,
}

/// A shared writable mapping of `LB_MAGLEV` (`None`, with a warning, when the kernel refuses:
/// tables are then written one slot per syscall).
pub(super) fn mmap_maglev(ebpf: &Ebpf, entries: u32) -> Option<MaglevMmap> {
    match ArrayMapping::of(ebpf, MAP_MAGLEV, entries as usize * 8) {
        Ok(map) => Some(MaglevMmap { map, entries }),
        Err(e) => {
            tracing::warn!(
                map = MAP_MAGLEV,
                error = %e,
                "cannot mmap the Maglev array; writing tables with one syscall per slot"
            );
            None
        }
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
                    let p = m.map.ptr().add((offset as usize + i) * 8).cast::<u32>();
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
        self.update_local(vip_be, LOCAL_F_DSR_ONLY, value.flags & VIP_F_DSR_ONLY != 0)?;
        self.vips
            .insert(vip_be, value, 0)
            .map_err(map_err(MAP_VIPS))
    }

    fn remove_vip(&mut self, vip_be: u32) -> Result<()> {
        match self.vips.remove(&vip_be) {
            Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
            Err(e) => return Err(map_err(MAP_VIPS)(e)),
        }
        self.update_local(vip_be, LOCAL_F_VIP | LOCAL_F_DSR_ONLY, false)
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
                pairs.extend(crate::dataplane::tickle::flow_tickles(&key, &entry));
            }
        }
        crate::dataplane::tickle::send_tickles(&pairs).map_err(io_err("sending tickle ACKs"))?;
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
        let dsr = {
            let fd = self
                .ct_dsr
                .map()
                .fd()
                .as_fd()
                .try_clone_to_owned()
                .map_err(|source| DataplaneError::Map {
                    map: MAP_CT_DSR,
                    source,
                })?;
            let data = MapData::from_fd(fd).map_err(map_err(MAP_CT_DSR))?;
            BpfHashMap::try_from(Map::LruHashMap(data)).map_err(map_err(MAP_CT_DSR))?
        };
        Ok(Box::new(BpfConntrackSweeper {
            maps: [
                own(&self.conntrack, MAP_CONNTRACK)?,
                own(&self.ct_syn, MAP_CT_SYN)?,
            ],
            dsr: DsrSweeper { map: dsr },
            filter: self.ct_filter.clone(),
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
                        std::ptr::read_volatile(
                            m.map.ptr().add((offset as usize + i) * 8).cast::<u32>(),
                        )
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
}
