//! Advice on a valid configuration: settings that work but will hurt under load. Unlike
//! [`Config::validate`]'s errors these never refuse a configuration; `lbd --check` prints
//! them, and lbd logs them at start and on every reload (`lbctl reload` shows them too).

use super::*;

/// One piece of advice: the field(s) it concerns and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advice {
    /// Key path of the setting to change.
    pub field: String,
    pub message: String,
}

impl fmt::Display for Advice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl Config {
    /// Source ports one backend endpoint can be given: a SNAT port is unique per (backend
    /// address:port, SNAT address), so each endpoint has `snat.addresses x port range`.
    pub fn snat_pool_per_backend(&self) -> u64 {
        let range = u64::from(self.snat.port_max.saturating_sub(self.snat.port_min)) + 1;
        self.snat.addresses.len() as u64 * range
    }

    /// Advice on this (valid) configuration; empty when there is none.
    pub fn advice(&self) -> Vec<Advice> {
        let mut v = Vec::new();
        // SNAT capacity: conntrack admits `conntrack_flows` flows; spread evenly over the
        // distinct backend endpoints, each holds its share, and each needs a source port of
        // its own from the pool. A pool below the share runs dry first: new flows to that
        // backend are dropped (`drop_snat_exhausted`) while conntrack still has room.
        // Only full-NAT services take SNAT ports: a DSR flow keeps the client's addresses.
        let endpoints: HashSet<SocketAddrV4> = self
            .expanded_services()
            .iter()
            .filter(|s| s.forwarding == Forwarding::Nat)
            .flat_map(|s| self.service_backends(s))
            .map(|b| b.address)
            .collect();
        if !endpoints.is_empty() {
            let pool = self.snat_pool_per_backend();
            let flows = u64::from(self.limits.conntrack_flows);
            let share = flows.div_ceil(endpoints.len() as u64);
            if pool < share {
                let addrs_needed =
                    share.div_ceil(pool.max(1) / self.snat.addresses.len().max(1) as u64);
                v.push(Advice {
                    field: "snat.addresses".into(),
                    message: format!(
                        "{} address(es) x ports {}-{} give each backend {pool} source ports, fewer than the {share} flows each of the {} backends may hold (limits.conntrack_flows {flows} / {} backends): under load a backend runs out of ports before conntrack fills (new flows to it are dropped, drop_snat_exhausted). Use about {addrs_needed} SNAT addresses, widen snat.port_min..port_max, or lower limits.conntrack_flows",
                        self.snat.addresses.len(),
                        self.snat.port_min,
                        self.snat.port_max,
                        endpoints.len(),
                        endpoints.len(),
                    ),
                });
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addresses: usize, port_max: u16, flows: u32, backends: usize) -> Config {
        let addrs: Vec<String> = (1..=addresses).map(|i| format!("10.0.255.{i}")).collect();
        let bes: Vec<String> = (1..=backends)
            .map(|i| format!("      - address: 10.0.1.{i}:8080"))
            .collect();
        let yaml = format!(
            "interfaces: [eth0]\nsnat:\n  addresses: [{}]\n  port_min: 1024\n  port_max: {port_max}\nlimits:\n  conntrack_flows: {flows}\nservices:\n  - name: web\n    vip: 192.0.2.10\n    port: 80\n    backends:\n{}\n",
            addrs.join(", "),
            bes.join("\n")
        );
        Config::from_yaml_str(&yaml, "test.yaml").unwrap()
    }

    #[test]
    fn a_snat_pool_below_the_flows_per_backend_is_advised_against() {
        // 1 x 31744 ports, 1M flows over 3 backends = 349526 each.
        let c = config(1, 32767, 1 << 20, 3);
        assert_eq!(c.snat_pool_per_backend(), 31744);
        let a = c.advice();
        assert_eq!(a.len(), 1, "{a:?}");
        assert_eq!(a[0].field, "snat.addresses");
        for part in [
            "31744 source ports",
            "349526 flows",
            "3 backends",
            "about 12 SNAT addresses",
        ] {
            assert!(a[0].message.contains(part), "{part:?} missing in {}", a[0]);
        }
    }

    #[test]
    fn a_pool_covering_the_share_gets_no_advice() {
        // 2 x 64512 ports = 129024 >= 131072 / 2 = 65536.
        assert_eq!(config(2, 65535, 131072, 2).advice(), vec![]);
        // Exactly the share: fine.
        let c = config(1, 2047, 2048, 2);
        assert_eq!(c.snat_pool_per_backend(), 1024);
        assert_eq!(c.advice(), vec![]);
        // One port short.
        assert_eq!(config(1, 2046, 2048, 2).advice().len(), 1);
    }

    /// DSR services take no SNAT port: a DSR-only config gets no SNAT advice (before, `lbctl
    /// reload` of the scale-out lab's DSR config warned about SNAT ports), and a mixed one
    /// counts its full-NAT endpoints only.
    #[test]
    fn dsr_backends_need_no_snat_ports() {
        let dsr = "  - name: d\n    vip: 192.0.2.20\n    port: 80\n    forwarding: dsr\n    dsr_source: 10.0.0.1\n    backends:\n      - address: 10.0.2.1:80\n      - address: 10.0.2.2:80\n      - address: 10.0.2.3:80\n";
        let head = "interfaces: [eth0]\nsnat:\n  addresses: [10.0.255.1]\n  port_min: 1024\n  port_max: 2047\nlimits:\n  conntrack_flows: 2048\nservices:\n";
        let c = Config::from_yaml_str(&format!("{head}{dsr}"), "test.yaml").unwrap();
        assert_eq!(c.advice(), vec![]);
        // One full-NAT endpoint next to them: 2048 flows / 2 endpoints would be 1024 (fine);
        // 2048 / 1 is 2048 > 1024 ports: advised, naming 1 backend.
        let nat = "  - name: web\n    vip: 192.0.2.10\n    port: 80\n    backends:\n      - address: 10.0.1.1:8080\n";
        let c = Config::from_yaml_str(&format!("{head}{dsr}{nat}"), "test.yaml").unwrap();
        let a = c.advice();
        assert_eq!(a.len(), 1, "{a:?}");
        assert!(
            a[0].message.contains("2048 flows each of the 1 backends"),
            "{}",
            a[0]
        );
    }

    #[test]
    fn one_endpoint_in_two_services_counts_once() {
        let yaml = "interfaces: [eth0]\nsnat:\n  addresses: [10.0.255.1]\n  port_min: 1024\n  port_max: 2047\nlimits:\n  conntrack_flows: 2048\nservices:\n  - name: a\n    vip: 192.0.2.10\n    port: 80\n    backends:\n      - address: 10.0.1.1:8080\n      - address: 10.0.1.2:8080\n  - name: b\n    vip: 192.0.2.10\n    port: 81\n    backends:\n      - address: 10.0.1.1:8080\n";
        let c = Config::from_yaml_str(yaml, "test.yaml").unwrap();
        // Two endpoints: 2048 / 2 = 1024 = the pool (three backend entries, two endpoints).
        assert_eq!(c.advice(), vec![]);
    }
}
