//! The real kernel data plane: loads the embedded `lb_xdp` object, pins and re-adopts its maps,
//! attaches it to interfaces, and implements [`Dataplane`] with typed map reads and writes.

use super::{
    AttachedMode, ConntrackSweep, Dataplane, DataplaneError, LoadOptions, Result, XdpMode,
};
use lb_common::{
    BackendValue, FlowStats, GlobalConfig, ServiceKey, ServiceValue, VipValue, NUM_COUNTERS,
};
use std::net::Ipv4Addr;
use std::path::Path;

/// What one `BPF_PROG_TEST_RUN` of `lb_xdp` returned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunResult {
    /// The XDP action (`XDP_DROP` = 1, `XDP_PASS` = 2, `XDP_TX` = 3, `XDP_REDIRECT` = 4).
    pub verdict: u32,
    /// The frame as the program left it (after rewrites and head/tail adjustments).
    pub output: Vec<u8>,
    /// Kernel-reported mean duration of one run, in nanoseconds.
    pub duration_ns: u64,
}

/// The loaded XDP program and its maps.
pub struct BpfDataplane {
    _private: (),
}

impl BpfDataplane {
    /// Loads the embedded object (EBPF_OBJECT; DataplaneError::NoObject if empty) with map sizes
    /// from `opts`, pinning maps under `<pin_root>/abi<ABI_VERSION>/` and re-adopting maps
    /// already pinned there (sizes that differ from the pinned maps -> an error telling the
    /// operator to run `lbd --unload`).
    pub fn load(_opts: &LoadOptions) -> Result<Self> {
        Err(DataplaneError::Other(
            "BpfDataplane::load: being written".into(),
        ))
    }

    /// Attaches `lb_xdp` to `iface`. With pinning, the link is pinned too
    /// (`<pin_root>/abiN/links/<iface>`) so forwarding survives lbd exiting; if a pinned link
    /// for that interface already exists, the new program replaces the old one atomically
    /// through the existing link. Auto = native, falling back to generic with a warning.
    pub fn attach(&mut self, _iface: &str, _mode: XdpMode) -> Result<AttachedMode> {
        Err(DataplaneError::Other(
            "BpfDataplane::attach: being written".into(),
        ))
    }

    /// Detaches every pinned link and removes the pin directory (`lbd --unload`).
    pub fn unload(_pin_root: &Path) -> Result<()> {
        Err(DataplaneError::Other(
            "BpfDataplane::unload: being written".into(),
        ))
    }

    /// `BPF_PROG_TEST_RUN` of `lb_xdp` on `frame` (ingress ifindex optional, `repeat` >= 1).
    pub fn test_run(
        &self,
        _frame: &[u8],
        _ingress_ifindex: Option<u32>,
        _repeat: u32,
    ) -> Result<TestRunResult> {
        Err(DataplaneError::Other(
            "BpfDataplane::test_run: being written".into(),
        ))
    }
}

fn unfinished<T>() -> Result<T> {
    Err(DataplaneError::Other("BpfDataplane: being written".into()))
}

impl Dataplane for BpfDataplane {
    fn set_global_config(&mut self, _cfg: &GlobalConfig) -> Result<()> {
        unfinished()
    }
    fn set_snat_addrs(&mut self, _addrs: &[Ipv4Addr]) -> Result<()> {
        unfinished()
    }
    fn set_backend(&mut self, _id: u32, _value: &BackendValue) -> Result<()> {
        unfinished()
    }
    fn clear_backend(&mut self, _id: u32) -> Result<()> {
        unfinished()
    }
    fn write_maglev(&mut self, _offset: u32, _table: &[u32]) -> Result<()> {
        unfinished()
    }
    fn set_service(&mut self, _key: &ServiceKey, _value: &ServiceValue) -> Result<()> {
        unfinished()
    }
    fn remove_service(&mut self, _key: &ServiceKey) -> Result<()> {
        unfinished()
    }
    fn set_vip(&mut self, _vip_be: u32, _value: &VipValue) -> Result<()> {
        unfinished()
    }
    fn remove_vip(&mut self, _vip_be: u32) -> Result<()> {
        unfinished()
    }
    fn set_tx_port(&mut self, _ifindex: u32) -> Result<()> {
        unfinished()
    }
    fn remove_tx_port(&mut self, _ifindex: u32) -> Result<()> {
        unfinished()
    }
    fn global_counters(&self) -> Result<[u64; NUM_COUNTERS as usize]> {
        unfinished()
    }
    fn service_stats(&self, _service_id: u32) -> Result<FlowStats> {
        unfinished()
    }
    fn backend_stats(&self, _backend_id: u32) -> Result<FlowStats> {
        unfinished()
    }
    fn reset_stats(&mut self, _service_id: Option<u32>, _backend_id: Option<u32>) -> Result<()> {
        unfinished()
    }
    fn sweep_conntrack(&mut self, _now_ns: u64, _cfg: &GlobalConfig) -> Result<ConntrackSweep> {
        unfinished()
    }
    fn services(&self) -> Result<Vec<(ServiceKey, ServiceValue)>> {
        unfinished()
    }
    fn backends(&self) -> Result<Vec<(u32, BackendValue)>> {
        unfinished()
    }
    fn vips(&self) -> Result<Vec<(u32, VipValue)>> {
        unfinished()
    }
}
