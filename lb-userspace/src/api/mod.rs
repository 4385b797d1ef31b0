//! The control API: the wire protocol ([`proto`]), the client `lbctl` uses ([`client`]), the
//! server inside `lbd` ([`server`]) and the request handlers ([`handlers`]), which reach lbd
//! through the [`handlers::ApiContext`] trait.

pub mod client;
pub mod handlers;
pub mod proto;
pub mod server;
