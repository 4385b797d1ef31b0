//! The control API: the wire protocol ([`proto`]), the client `lbctl` uses ([`client`]) and
//! the server inside `lbd` ([`server`]).

pub mod client;
pub mod proto;
pub mod server;
