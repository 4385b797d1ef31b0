//! rtnetlink queries of the data plane, through the `netlink-packet-route` crate (no
//! hand-parsed attributes).

use super::AttachedMode;
use netlink_packet_core::{
    NetlinkHeader, NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_REQUEST,
};
use netlink_packet_route::{
    link::{LinkAttribute, LinkMessage, LinkXdp, XdpAttached},
    RouteNetlinkMessage,
};
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};
use std::io;

/// The XDP mode the program attached to interface `ifindex` runs in (`IFLA_XDP_ATTACHED` of an
/// `RTM_GETLINK` answer); `None` when no program is attached or the mode is another one
/// (offloaded, several).
pub fn query_xdp_mode(ifindex: u32) -> io::Result<Option<AttachedMode>> {
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket.connect(&SocketAddr::new(0, 0))?;
    let mut msg = LinkMessage::default();
    msg.header.index = ifindex;
    let mut req = NetlinkMessage::new(
        NetlinkHeader::default(),
        NetlinkPayload::from(RouteNetlinkMessage::GetLink(msg)),
    );
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
    req.header.sequence_number = 1;
    req.finalize();
    let mut buf = vec![0u8; req.buffer_len()];
    req.serialize(&mut buf);
    socket.send(&buf, 0)?;

    let mut rx = vec![0u8; 65536];
    loop {
        let n = socket.recv(&mut &mut rx[..], 0)?;
        let mut off = 0;
        while off < n {
            let m: NetlinkMessage<RouteNetlinkMessage> =
                NetlinkMessage::deserialize(&rx[off..n])
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            let len = m.header.length as usize;
            match m.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                    return Ok(xdp_mode(&link));
                }
                NetlinkPayload::Error(e) => {
                    return Err(e.to_io());
                }
                NetlinkPayload::Done(_) => return Ok(None),
                _ => {}
            }
            if len == 0 {
                break;
            }
            off += len;
        }
    }
}

/// The XDP mode a link message reports.
fn xdp_mode(link: &LinkMessage) -> Option<AttachedMode> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::Xdp(xdp) => xdp.iter().find_map(|x| match x {
            LinkXdp::Attached(XdpAttached::Driver) => Some(AttachedMode::Native),
            LinkXdp::Attached(XdpAttached::SocketBuffer) => Some(AttachedMode::Generic),
            _ => None,
        }),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link_with(x: Vec<LinkXdp>) -> LinkMessage {
        let mut l = LinkMessage::default();
        l.attributes.push(LinkAttribute::Xdp(x));
        l
    }

    #[test]
    fn xdp_mode_reads_the_attached_attribute() {
        assert_eq!(
            xdp_mode(&link_with(vec![
                LinkXdp::ProgId(7),
                LinkXdp::Attached(XdpAttached::Driver)
            ])),
            Some(AttachedMode::Native)
        );
        assert_eq!(
            xdp_mode(&link_with(vec![LinkXdp::Attached(
                XdpAttached::SocketBuffer
            )])),
            Some(AttachedMode::Generic)
        );
        assert_eq!(
            xdp_mode(&link_with(vec![LinkXdp::Attached(XdpAttached::None)])),
            None
        );
        assert_eq!(xdp_mode(&LinkMessage::default()), None);
    }

    #[test]
    fn loopback_has_no_program() {
        // ifindex 1 is the loopback of every network namespace; nothing attaches to it here.
        assert_eq!(query_xdp_mode(1).unwrap(), None);
    }

    #[test]
    fn a_missing_interface_is_an_error() {
        assert!(query_xdp_mode(u32::MAX - 1).is_err());
    }
}
