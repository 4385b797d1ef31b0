//! The Maglev table digest: one 64-bit number that is equal on two nodes exactly when they
//! send every flow of every service to the same backend (docs/scale-out.md, "Same table on
//! every node").
//!
//! What decides a flow's backend, and so what the digest covers: the flow-hash seed
//! (`maglev.seed`), the table size (`limits.maglev_table_size`), and per service (by VIP,
//! port and protocol) the table itself, each slot written as the backend's identity (its
//! address and port) rather than its data-plane id, which differs between nodes. The table
//! is built and hashed slot by slot, so two lbd versions whose Maglev code differs get
//! different digests even from the same configuration.
//!
//! Two digests are kept:
//! - **configured** ([`configured`]): the tables with every backend healthy (primaries that
//!   are not drained; the backups when there are none; for a database service its members).
//!   It depends on the configuration only, so it can be written into the configuration
//!   (`maglev.expected_digest`) and compared across nodes at any time.
//! - **live** ([`live`]): the tables as written now, after health checks; equal across
//!   nodes only while they agree on health.

use crate::config::{Config, ServiceConfig};
use crate::maglev::{self, MaglevBackend, MaglevError};
use crate::model::ServiceState;

/// One service as the digest sees it: its key and the (identity, weight) pairs in its table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DigestInput {
    /// `VIP:port/proto`.
    pub key: String,
    /// The backends in the table, as (identity, weight).
    pub backends: Vec<(String, u32)>,
}

/// Streaming 64-bit FNV-1a with a splitmix64 finish (the same mix as the Maglev hash).
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    fn u32(&mut self, v: u32) {
        self.bytes(&v.to_le_bytes());
    }
    fn str(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.bytes(s.as_bytes());
    }
    fn finish(self) -> u64 {
        let mut h = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h ^ (h >> 31)
    }
}

/// The digest of `services` with flow-hash `seed` and table `size` (a prime). The order of
/// `services` and of their backends does not matter.
pub fn digest(seed: u32, size: u32, services: &[DigestInput]) -> Result<u64, MaglevError> {
    let mut sorted: Vec<&DigestInput> = services.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut h = Fnv::new();
    h.str("lb maglev digest v1");
    h.u32(seed);
    h.u32(size);
    h.u32(sorted.len() as u32);
    for svc in sorted {
        h.str(&svc.key);
        let mut backends = svc.backends.clone();
        backends.sort();
        h.u32(backends.len() as u32);
        for (identity, weight) in &backends {
            h.str(identity);
            h.u32(*weight);
        }
        if backends.is_empty() {
            continue; // no table: every flow of the service is refused
        }
        // Slot values are 1-based indexes into the sorted backends: node-independent.
        let mb: Vec<MaglevBackend> = backends
            .iter()
            .zip(1u32..)
            .map(|((identity, weight), id)| MaglevBackend {
                identity: identity.clone(),
                weight: *weight,
                id,
            })
            .collect();
        for slot in maglev::build_table(&mb, size)? {
            h.u32(slot);
        }
    }
    Ok(h.finish())
}

/// The digest as printed and configured: 16 lowercase hex digits.
pub fn format(d: u64) -> String {
    format!("{d:016x}")
}

fn key(svc: &ServiceConfig) -> String {
    format!("{}:{}/tcp", svc.vip, svc.port)
}

/// The configured digest of `config`: every backend healthy.
pub fn configured(config: &Config) -> Result<u64, MaglevError> {
    let inputs: Vec<DigestInput> = config
        .expanded_services()
        .iter()
        .map(|svc| {
            let usable = |backup: bool| {
                svc.backends
                    .iter()
                    .filter(move |b| b.backup == backup && !b.drain)
                    .map(|b| (b.address.to_string(), b.weight))
                    .collect::<Vec<_>>()
            };
            let primaries = usable(false);
            DigestInput {
                key: key(svc),
                backends: if primaries.is_empty() {
                    usable(true)
                } else {
                    primaries
                },
            }
        })
        .collect();
    digest(config.maglev.seed, config.limits.maglev_table_size, &inputs)
}

/// The live digest: the tables as the controller last wrote them.
pub fn live(config: &Config, services: &[ServiceState]) -> Result<u64, MaglevError> {
    live_inputs(config, services).digest()
}

/// What [`live`] hashes, copied out of the controller's state: taken under the controller's
/// lock (cheap: the backend lists), hashed after it is released (building every table is
/// the slow part, and large tables would stall health updates and the announcer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveInputs {
    seed: u32,
    size: u32,
    services: Vec<DigestInput>,
}

impl LiveInputs {
    /// The digest of these inputs.
    pub fn digest(&self) -> Result<u64, MaglevError> {
        digest(self.seed, self.size, &self.services)
    }
}

/// The inputs of [`live`], to hash later with [`LiveInputs::digest`].
pub fn live_inputs(config: &Config, services: &[ServiceState]) -> LiveInputs {
    LiveInputs {
        seed: config.maglev.seed,
        size: config.limits.maglev_table_size,
        services: services
            .iter()
            .map(|s| DigestInput {
                key: key(&s.cfg),
                backends: s
                    .table_inputs
                    .iter()
                    .flatten()
                    .map(|(identity, weight, _)| (identity.clone(), *weight))
                    .collect(),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u32 = 1009;

    fn svc(key: &str, backends: &[(&str, u32)]) -> DigestInput {
        DigestInput {
            key: key.into(),
            backends: backends.iter().map(|(i, w)| (i.to_string(), *w)).collect(),
        }
    }

    fn two() -> Vec<DigestInput> {
        vec![
            svc(
                "192.0.2.10:80/tcp",
                &[("10.1.1.2:80", 1), ("10.1.2.2:80", 2)],
            ),
            svc("192.0.2.11:443/tcp", &[("10.2.1.2:443", 1)]),
        ]
    }

    /// A pinned value: the digest must not change between builds or lbd versions unless the
    /// tables do (a change here means nodes of different versions disagree: say so in the
    /// release notes).
    #[test]
    fn digest_is_stable() {
        let d = digest(0x5eed_1b01, M, &two()).unwrap();
        assert_eq!(
            format(d),
            "2b446bc2ef4f2593",
            "digest changed: {}",
            format(d)
        );
    }

    #[test]
    fn order_does_not_matter() {
        let a = two();
        let mut b = two();
        b.reverse();
        b[1].backends.reverse();
        assert_eq!(digest(7, M, &a).unwrap(), digest(7, M, &b).unwrap());
    }

    #[test]
    fn every_input_changes_the_digest() {
        let base = digest(7, M, &two()).unwrap();
        let mut seen = vec![base];
        let mut variants: Vec<(&str, u64)> = vec![
            ("seed", digest(8, M, &two()).unwrap()),
            ("table size", digest(7, 1013, &two()).unwrap()),
        ];
        let mut weight = two();
        weight[0].backends[1].1 = 3;
        variants.push(("weight", digest(7, M, &weight).unwrap()));
        let mut backend = two();
        backend[0].backends.pop();
        variants.push(("backend removed", digest(7, M, &backend).unwrap()));
        let mut address = two();
        address[1].backends[0].0 = "10.2.1.3:443".into();
        variants.push(("backend address", digest(7, M, &address).unwrap()));
        let mut vip = two();
        vip[1].key = "192.0.2.12:443/tcp".into();
        variants.push(("service key", digest(7, M, &vip).unwrap()));
        let mut empty = two();
        empty[1].backends.clear();
        variants.push(("service without backends", digest(7, M, &empty).unwrap()));
        variants.push(("service removed", digest(7, M, &two()[..1]).unwrap()));
        for (what, d) in variants {
            assert!(!seen.contains(&d), "{what} did not change the digest");
            seen.push(d);
        }
    }

    #[test]
    fn configured_digest_follows_the_configuration_not_the_ids() {
        let text = |seed: u32, order: &str| {
            format!(
                "interfaces: [lo]\nsnat: {{addresses: [10.0.255.1]}}\nmaglev: {{seed: {seed}}}\n\
                 limits: {{maglev_table_size: 1009}}\nservices:\n  - name: web\n    vip: 192.0.2.10\n    port: 80\n    backends: {order}\n"
            )
        };
        let a = "[{address: 10.1.1.2:80}, {address: 10.1.2.2:80}, {address: 10.1.3.2:80, backup: true}]";
        let b = "[{address: 10.1.3.2:80, backup: true}, {address: 10.1.2.2:80}, {address: 10.1.1.2:80}]";
        let load = |t: String| Config::from_yaml_str(&t, "t").unwrap();
        let da = configured(&load(text(1, a))).unwrap();
        assert_eq!(da, configured(&load(text(1, b))).unwrap());
        assert_ne!(da, configured(&load(text(2, a))).unwrap());
        // The configured digest ignores the backup (the primaries are usable) ...
        let direct = digest(
            1,
            M,
            &[svc(
                "192.0.2.10:80/tcp",
                &[("10.1.1.2:80", 1), ("10.1.2.2:80", 1)],
            )],
        )
        .unwrap();
        assert_eq!(da, direct);
        // ... and a drained backend.
        let drained = "[{address: 10.1.1.2:80}, {address: 10.1.2.2:80, drain: true}, {address: 10.1.9.2:80, drain: true}]";
        let one = digest(1, M, &[svc("192.0.2.10:80/tcp", &[("10.1.1.2:80", 1)])]).unwrap();
        assert_eq!(configured(&load(text(1, drained))).unwrap(), one);
    }
}
