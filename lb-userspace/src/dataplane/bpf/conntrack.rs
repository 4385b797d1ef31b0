//! Conntrack access for tests and inspection, and the sweep of both conntrack maps.

use super::*;

impl BpfDataplane {
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
    pub(super) fn update_local(&mut self, addr_be: u32, bit: u32, set: bool) -> Result<()> {
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
        // The key filter learns every key before `LB_CONNTRACK` holds it.
        if let Some(f) = &self.ct_filter {
            f.mark(key);
        }
        self.conntrack
            .insert(key, entry, 0)
            .map_err(map_err(MAP_CONNTRACK))
    }

    /// The key filter in front of `LB_CONNTRACK`, if mapped (tests).
    pub fn ct_filter(&self) -> Option<&CtFilter> {
        self.ct_filter.as_deref()
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

    /// The raw entries of `LB_CT_DSR` (tests and inspection).
    pub fn dsr_entries(&self) -> Result<Vec<(FlowKey, DsrEntry)>> {
        self.ct_dsr
            .iter()
            .map(|r| r.map_err(map_err(MAP_CT_DSR)))
            .collect()
    }

    /// The `LB_CT_DSR` entry of `key`, if any.
    pub fn dsr_entry(&self, key: &FlowKey) -> Result<Option<DsrEntry>> {
        match self.ct_dsr.get(key, 0) {
            Ok(e) => Ok(Some(e)),
            Err(aya::maps::MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(map_err(MAP_CT_DSR)(e)),
        }
    }

    /// Writes one `LB_CT_DSR` entry (tests: pre-age or forge entries).
    pub fn set_dsr_entry(&mut self, key: &FlowKey, entry: &DsrEntry) -> Result<()> {
        self.ct_dsr
            .insert(key, entry, 0)
            .map_err(map_err(MAP_CT_DSR))
    }

    /// Removes the `LB_CT_DSR` entry of `key` (absent: an error, as for conntrack entries).
    pub fn remove_dsr_entry(&mut self, key: &FlowKey) -> Result<()> {
        self.ct_dsr.remove(key).map_err(map_err(MAP_CT_DSR))
    }

    /// Removes every `LB_CT_DSR` entry.
    pub fn clear_dsr(&mut self) -> Result<()> {
        let keys: Vec<FlowKey> = self.ct_dsr.keys().filter_map(|k| k.ok()).collect();
        for k in keys {
            match self.ct_dsr.remove(&k) {
                Ok(()) | Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_CT_DSR)(e)),
            }
        }
        Ok(())
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

/// Walks `LB_CONNTRACK`, `LB_CT_SYN` and `LB_CT_DSR` through their own fds (see
/// [`Dataplane::conntrack_sweeper`]); both entries of a full-NAT flow are always in the same
/// map.
pub(super) struct BpfConntrackSweeper {
    /// `LB_CONNTRACK`, then `LB_CT_SYN`.
    pub(super) maps: [OneMapSweeper; 2],
    pub(super) dsr: DsrSweeper,
    /// The key filter in front of `LB_CONNTRACK`, rebuilt one step per sweep.
    pub(super) filter: Option<std::sync::Arc<CtFilter>>,
}

impl ConntrackSweeper for BpfConntrackSweeper {
    fn sweep(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        let mut total = ConntrackSweep::default();
        // A sweep either clears the filter's inactive generation or, a grace time after
        // that, fills it from its scan of `LB_CONNTRACK` and switches to it.
        let fill = self.filter.as_ref().and_then(|f| f.begin_sweep());
        let [main, embryonic] = &mut self.maps;
        // The embryonic map first: a flow promoted during the sweep (inserted into
        // `LB_CONNTRACK`, then removed from `LB_CT_SYN`) is seen in at least one of the two
        // walks, so the live full-NAT flow counts (the DSR-only bit waits for them) never miss
        // it; one seen in both is counted twice, which only keeps the bit off a sweep longer.
        total.merge(embryonic.sweep(now_ns, cfg)?);
        total.merge(main.sweep(now_ns, cfg)?);
        if let (Some(f), Some(token)) = (self.filter.as_deref(), fill) {
            // Its own walk, by bucket index (`for_each_key_batched`): a key-by-key walk can
            // skip buckets when an LRU element it stands on is reused, and a skipped key
            // would lose its bit.
            let fd = main.map.map().fd().as_fd();
            let (ks, vs) = (size_of::<FlowKey>(), size_of::<FlowEntry>());
            let walked = for_each_key_batched(fd, ks, vs, |k| {
                // SAFETY: `k` holds the bytes of one `FlowKey` (plain old data).
                let key = unsafe { std::ptr::read_unaligned(k.as_ptr().cast::<FlowKey>()) };
                f.fill_key(token.gen, &key);
            });
            match walked {
                Ok(()) => f.switch_to(token),
                // No switch (the generation may lack keys): the filter keeps the one it has,
                // a superset, and the next sweep tries again. The sweep itself goes on.
                Err(e) => tracing::warn!(
                    error = %e,
                    "conntrack key filter: BPF_MAP_LOOKUP_BATCH of LB_CONNTRACK failed; rebuild postponed"
                ),
            }
        }
        total.merge(self.dsr.sweep(now_ns, cfg)?);
        // Without a mapped filter the data plane makes every lookup: report it off.
        total.ct_filter = Some(
            self.filter
                .as_ref()
                .map_or_else(CtFilterStatus::default, |f| f.status()),
        );
        Ok(total)
    }
}

/// The sweep of `LB_CT_DSR`: expired entries deleted, live ones counted as flows of their
/// backend and service (so a removed backend keeps its id, address and flows until they end,
/// as for full NAT under `on_backend_down: keep`).
pub(super) struct DsrSweeper {
    pub(super) map: BpfHashMap<MapData, FlowKey, DsrEntry>,
}

impl DsrSweeper {
    fn sweep(&mut self, now_ns: u64, cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        let mut entries = Vec::new();
        for item in self.map.iter() {
            match item {
                Ok(kv) => entries.push(kv),
                // Entries can vanish under iteration (LRU eviction, XDP): skip them.
                Err(aya::maps::MapError::KeyNotFound) => continue,
                Err(e) => return Err(map_err(MAP_CT_DSR)(e)),
            }
        }
        let mut sweep = ConntrackSweep::default();
        for (k, e) in entries {
            // Re-read before deleting: the data plane may have refreshed the entry meanwhile
            // (or re-pinned it to another backend: count what it holds now).
            let current = if e.is_expired(now_ns, cfg) {
                match self.map.get(&k, 0) {
                    Ok(now) if !now.is_expired(now_ns, cfg) => Some(now),
                    Ok(_) => None,
                    Err(_) => continue,
                }
            } else {
                Some(e)
            };
            if let Some(live) = current {
                sweep.count_dsr_flow(&live);
                continue;
            }
            match self.map.remove(&k) {
                Ok(()) => sweep.expired_removed += 1,
                Err(aya::maps::MapError::KeyNotFound) => {}
                Err(e) => return Err(map_err(MAP_CT_DSR)(e)),
            }
        }
        Ok(sweep)
    }
}

/// The sweep of one conntrack map.
pub(super) struct OneMapSweeper {
    pub(super) map: BpfHashMap<MapData, FlowKey, FlowEntry>,
    pub(super) name: &'static str,
}

impl OneMapSweeper {
    /// Sweeps this map.
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
                let dest = std::net::SocketAddrV4::new(
                    lb_common::ipv4_from_be(k.dst_addr_be),
                    lb_common::port_from_be(k.dst_port_be),
                );
                *sweep.nat_flows_by_dest.entry(dest).or_default() += 1;
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
