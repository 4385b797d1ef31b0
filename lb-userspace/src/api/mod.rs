//! The control API: the wire protocol ([`proto`]) and a blocking client ([`client`]).
//!
//! Created by the lbctl engineer so `lbctl` builds; the lbd engineer adds `pub mod server;`.

pub mod client;
pub mod proto;
