//! `lbctl decap ...`: lb_decap on this host (attach, detach, stats); no lbd is contacted.

use super::Output;
use crate::dataplane::decap::{self, DecapRules, Ipv4Prefix, DEFAULT_DECAP_PIN_ROOT};
use crate::dataplane::XdpMode;
use anyhow::{Context as _, Result};
use clap::Subcommand;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::PathBuf;

/// `lbctl decap ...`: the XDP program `lb_decap`, which strips lb's IPIP header on a DSR
/// backend (docs/scale-out.md, "Backend setup").
#[derive(Debug, Subcommand)]
pub enum DecapCommand {
    /// Attach lb_decap to IFACE and pin it, so it keeps working after lbctl exits (replaces an
    /// earlier attachment to IFACE, an older lbctl's included).
    Attach {
        /// The interface lb's encapsulated packets arrive on.
        iface: String,
        /// XDP mode: native (driver), generic (skb) or auto (native, else generic).
        #[arg(long, value_enum, default_value_t = XdpMode::Auto)]
        xdp_mode: XdpMode,
        /// bpffs directory for the pins (`<DIR>/lb_decap/vN/net<netns>/<IFACE>/`; an older
        /// lbctl's attachment there, also `<DIR>/abiN/...`, is taken over).
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
        /// Decapsulate IPIP addressed to ADDR (repeatable); default: IFACE's IPv4 addresses now.
        #[arg(long = "address", value_name = "ADDR")]
        addresses: Vec<Ipv4Addr>,
        /// Accept IPIP only from this outer source, ADDR or ADDR/LEN (repeatable; at least one
        /// unless --allow-any-source): lb's nodes' `dsr.source` addresses.
        #[arg(long = "allow-source", value_name = "CIDR")]
        sources: Vec<Ipv4Prefix>,
        /// Accept IPIP from any outer source (not recommended: anyone who reaches this host
        /// can then inject packets with spoofed sources to the VIPs).
        #[arg(long, conflicts_with = "sources")]
        allow_any_source: bool,
        /// Pass on only packets to this VIP (repeatable; at least one): the DSR VIPs this
        /// backend serves. Other inner destinations are dropped.
        #[arg(long = "vip", value_name = "ADDR")]
        vips: Vec<Ipv4Addr>,
    },
    /// Detach lb_decap from IFACE and remove its pins (in any lbctl version's layout).
    Detach {
        /// The interface.
        iface: String,
        /// bpffs directory of the pins.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
    },
    /// Show lb_decap's counters on IFACE (decapsulated, passed, dropped).
    Stats {
        /// The interface.
        iface: String,
        /// bpffs directory of the pins.
        #[arg(long, value_name = "DIR", default_value = DEFAULT_DECAP_PIN_ROOT)]
        pin_root: PathBuf,
    },
}

/// Runs `lbctl decap ...` on this host.
pub(super) fn run_decap(command: &DecapCommand, output: Output, out: &mut dyn Write) -> Result<()> {
    match command {
        DecapCommand::Attach {
            iface,
            xdp_mode,
            pin_root,
            addresses,
            sources,
            allow_any_source,
            vips,
        } => {
            let rules = DecapRules {
                addresses: addresses.clone(),
                sources: if *allow_any_source {
                    vec![Ipv4Prefix::ANY]
                } else {
                    sources.clone()
                },
                vips: vips.clone(),
            };
            let a = decap::attach(iface, *xdp_mode, pin_root, &rules)
                .with_context(|| format!("attaching lb_decap to {iface}"))?;
            let strings = |v: &[String]| v.join(", ");
            let addrs: Vec<String> = a.rules.addresses.iter().map(ToString::to_string).collect();
            let srcs: Vec<String> = a.rules.sources.iter().map(ToString::to_string).collect();
            let vip_strs: Vec<String> = a.rules.vips.iter().map(ToString::to_string).collect();
            if *allow_any_source {
                eprintln!("warning: lb_decap on {iface} accepts IPIP from any source (--allow-any-source)");
            }
            if output == Output::Json {
                let v = json!({
                    "iface": iface,
                    "mode": a.mode,
                    "addresses": addrs,
                    "sources": srcs,
                    "vips": vip_strs,
                    "pin_dir": a.dir.display().to_string(),
                    "link_id": a.link_id,
                    "replaced": a.replaced,
                    "adopted_from": a.adopted_from.as_ref().map(|d| d.display().to_string()),
                });
                writeln!(out, "{}", serde_json::to_string_pretty(&v)?)?;
            } else {
                writeln!(
                    out,
                    "lb_decap {} {iface} ({} mode), decapsulating IPIP to {} from {} for VIP {}; pinned at {}",
                    if a.replaced {
                        "replaced in place (no gap) on"
                    } else {
                        "attached to"
                    },
                    match a.mode {
                        crate::dataplane::AttachedMode::Native => "native",
                        crate::dataplane::AttachedMode::Generic => "generic",
                    },
                    strings(&addrs),
                    strings(&srcs),
                    strings(&vip_strs),
                    a.dir.display()
                )?;
                if let Some(old) = &a.adopted_from {
                    writeln!(
                        out,
                        "taken over from an older lbctl's attachment (pins moved from {})",
                        old.display()
                    )?;
                }
            }
        }
        DecapCommand::Detach { iface, pin_root } => {
            let removed = decap::detach(pin_root, iface)
                .with_context(|| format!("detaching lb_decap from {iface}"))?;
            if removed {
                writeln!(out, "lb_decap detached from {iface}")?;
            } else {
                writeln!(out, "no lb_decap attachment on {iface} here; nothing to do")?;
            }
        }
        DecapCommand::Stats { iface, pin_root } => {
            let c = decap::read_counters(pin_root, iface)
                .with_context(|| format!("reading lb_decap's counters on {iface}"))?;
            if output == Output::Json {
                let m: Map<String, Value> = lb_common::decap::DECAP_COUNTER_NAMES
                    .iter()
                    .zip(c)
                    .map(|(n, v)| ((*n).to_string(), json!(v)))
                    .collect();
                writeln!(out, "{}", serde_json::to_string_pretty(&Value::Object(m))?)?;
            } else {
                for (n, v) in lb_common::decap::DECAP_COUNTER_NAMES.iter().zip(c) {
                    writeln!(out, "{n:<18} {v:>12}")?;
                }
            }
        }
    }
    Ok(out.flush()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::test_support::parse;
    use crate::cli::Command;
    use std::path::Path;

    #[test]
    fn decap_attach_refuses_empty_allow_lists() {
        let p = Path::new("/nonexistent");
        let rules = DecapRules {
            addresses: vec![],
            sources: vec![],
            vips: vec![Ipv4Addr::new(192, 0, 2, 10)],
        };
        let e = decap::attach("lo", XdpMode::Auto, p, &rules)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--allow-source: at least one is required"),
            "{e}"
        );
        let rules = DecapRules {
            addresses: vec![],
            sources: vec![Ipv4Prefix::ANY],
            vips: vec![],
        };
        let e = decap::attach("lo", XdpMode::Auto, p, &rules)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--vip: at least one is required"), "{e}");
        let cli = parse(&[
            "decap",
            "attach",
            "eth0",
            "--allow-any-source",
            "--vip",
            "192.0.2.10",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Command::Decap(DecapCommand::Attach {
                allow_any_source: true,
                ..
            })
        ));
    }
}
