//! The network-namespace lab: a client, a balancer running the real `lbd`, and N backends,
//! each in its own network namespace, wired with veth pairs (see `docs/lab.md`).
//!
//! ```text
//!  [client ns]            [balancer ns]                          [backend i ns]
//!  c0 172.30.0.2/24 ---- pub0 172.30.0.1/24
//!  192.0.2.0/24 via .1     bk<i> 10.1.<i>.1/24 ------------------ e0 10.1.<i>.2/24
//!                          XDP lb_xdp on pub0, bk1..bkN           default via 10.1.<i>.1
//! ```
//!
//! Layout:
//! - [`sys`]: commands, namespaces and spawned processes, each a guard that cleans up on drop;
//! - [`topology`]: [`topology::Lab`], which builds the namespaces and owns everything started
//!   in them;
//! - [`lbd`]: the `lbd` process, its config file and its JSON API (also through `lbctl`);
//! - [`http`], [`testsrv`]: the minimal HTTP/1.1 both sides speak and the backend server;
//! - [`client`]: running async client code inside the client namespace, load helpers;
//! - [`failover`]: connections at a fixed rate with per-connection connect times, and long
//!   transfers whose end (complete, reset, hung) is recorded;
//! - [`bgp`]: a router namespace running BIRD with ECMP, and BIRD on balancer nodes;
//! - [`scale_out`]: the three-node lab (router, three nodes with BIRD and lbd, backends,
//!   client behind the router), and [`longconn`]: long-lived connections driven in rounds;
//! - [`packet`]: hand-built frames (truncated, fragments, IP options, ...) sent with
//!   `AF_PACKET` from the client namespace.
//!
//! Nothing is ever created in the root namespace: veth pairs are created with both ends
//! directly in their namespaces (`ip -n A link add X type veth peer name Y netns B`).

pub mod bgp;
pub mod client;
pub mod failover;
pub mod http;
pub mod lbd;
pub mod longconn;
pub mod packet;
pub mod postgres;
pub mod scale_out;
pub mod sys;
pub mod testsrv;
pub mod topology;

pub use topology::{Lab, LabOptions, Mode};

use std::net::{Ipv4Addr, SocketAddrV4};

/// The service's virtual IP (not assigned to any interface).
pub const VIP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 10);
/// The service's port.
pub const VIP_PORT: u16 = 80;
/// The balancer's SNAT address (not assigned anywhere; backends reach it by default route).
pub const SNAT_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 255, 1);
/// The client's address.
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 2);
/// The balancer's address on the client side.
pub const BALANCER_PUBLIC_ADDR: Ipv4Addr = Ipv4Addr::new(172, 30, 0, 1);
/// Port the test servers listen on.
pub const BACKEND_PORT: u16 = 8080;

/// `VIP:VIP_PORT`.
pub fn vip() -> SocketAddrV4 {
    SocketAddrV4::new(VIP, VIP_PORT)
}

/// Address of backend `i` (1-based): `10.1.<i>.2`.
pub fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, u8::try_from(i).expect("at most 254 backends"), 2)
}

/// Listening address of backend `i` (1-based).
pub fn backend_addr(i: usize) -> SocketAddrV4 {
    SocketAddrV4::new(backend_ip(i), BACKEND_PORT)
}

/// The balancer's address toward backend `i` (1-based): `10.1.<i>.1`.
pub fn balancer_private_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 1, u8::try_from(i).expect("at most 254 backends"), 1)
}

/// Name the test server of backend `i` answers `GET /id` with.
pub fn backend_name(i: usize) -> String {
    format!("b{i}")
}

/// Errors of the lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command exited unsuccessfully.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Its exit status.
        status: String,
        /// Its standard error, trimmed.
        stderr: String,
    },
    /// An I/O error with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// lbd's API answered with an error or an unexpected shape.
    #[error("lbd API: {0}")]
    Api(String),
    /// The lab cannot run here (not root, missing tool, missing binary).
    #[error("{0}")]
    Unavailable(String),
    /// An HTTP exchange went wrong.
    #[error("http: {0}")]
    Http(String),
}

/// Result of lab operations.
pub type Result<T, E = LabError> = std::result::Result<T, E>;

impl LabError {
    /// Wraps an I/O error with a description of what was being done.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}
