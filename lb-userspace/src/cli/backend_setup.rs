//! `lbctl backend-setup --dsr VIP`: the commands a backend of a DSR service needs
//! (docs/scale-out.md, "DSR"). Pure functions, so the netns lab can run exactly what an
//! operator is told to run.
//!
//! Why each command: lb sends the client's packet inside an IPIP header addressed to the
//! backend; the `tunl0` device decapsulates it; the inner packet is addressed to the VIP, so the
//! VIP must be a local address (on `lo`, a /32); the inner source is the client, which `tunl0`
//! does not route back to, so reverse-path filtering must be off on `tunl0` and in `all` (the
//! kernel uses the larger of the two); and the backend must never answer ARP for the VIP (it
//! would steal the VIP from the balancer on a shared segment): `arp_ignore=1` answers only for
//! addresses on the receiving interface, `arp_announce=2` never uses the VIP as the source of
//! its own ARP requests.

use std::net::Ipv4Addr;

/// The commands, in order, each one line for `sh -c`. Idempotent: running them twice is
/// harmless (`ip addr replace`, `sysctl -w`).
pub fn dsr_commands(vip: Ipv4Addr) -> Vec<String> {
    vec![
        "modprobe ipip".to_string(),
        "ip link set dev tunl0 up".to_string(),
        format!("ip addr replace {vip}/32 dev lo"),
        "sysctl -w net.ipv4.conf.tunl0.rp_filter=0".to_string(),
        "sysctl -w net.ipv4.conf.all.rp_filter=0".to_string(),
        "sysctl -w net.ipv4.conf.all.arp_ignore=1".to_string(),
        "sysctl -w net.ipv4.conf.all.arp_announce=2".to_string(),
    ]
}

/// The text `lbctl backend-setup --dsr VIP` prints: a shell script of [`dsr_commands`] with
/// comments, including the MSS advice (lb adds 20 bytes toward the backend).
pub fn dsr_script(vip: Ipv4Addr) -> String {
    let mut s = format!(
        "#!/bin/sh\n\
         # Backend setup for the DSR service(s) on VIP {vip} (lb, docs/scale-out.md \"DSR\").\n\
         # Run as root on every backend. lb encapsulates the client's packets in IPIP; the\n\
         # backend decapsulates them on tunl0, owns the VIP on lo and answers the client directly.\n\
         set -e\n"
    );
    for c in dsr_commands(vip) {
        s.push_str(&c);
        s.push('\n');
    }
    s.push_str(
        "# MTU: the balancer adds 20 bytes toward this backend. Advertise an MSS that leaves room\n\
         # for them, e.g. on the route to the clients (MTU 1500: 1500 - 20 - 40 = 1440):\n\
         #   ip route change default via <gateway> advmss 1440\n\
         # Larger client segments are answered by lb with ICMP fragmentation needed.\n\
         # The service's backends must listen on the VIP's port (on the VIP or on all addresses).\n",
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_for_a_vip() {
        let vip = Ipv4Addr::new(192, 0, 2, 10);
        assert_eq!(
            dsr_commands(vip),
            [
                "modprobe ipip",
                "ip link set dev tunl0 up",
                "ip addr replace 192.0.2.10/32 dev lo",
                "sysctl -w net.ipv4.conf.tunl0.rp_filter=0",
                "sysctl -w net.ipv4.conf.all.rp_filter=0",
                "sysctl -w net.ipv4.conf.all.arp_ignore=1",
                "sysctl -w net.ipv4.conf.all.arp_announce=2",
            ]
        );
        let script = dsr_script(vip);
        assert!(script.starts_with("#!/bin/sh\n"));
        // Every command appears as its own line, in order, after `set -e`.
        let lines: Vec<&str> = script.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(lines[0], "set -e");
        assert_eq!(&lines[1..], dsr_commands(vip).as_slice());
        assert!(script.contains("advmss 1440"));
    }
}
