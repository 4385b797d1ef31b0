//! lb control plane library: configuration, Maglev, the service/backend model and its
//! reconciler, health checks, the control API server, metrics and the daemon wiring.
//!
//! Data flows one way: [`config`] (YAML -> validated [`config::Config`]) -> [`controller`]
//! (ids, health, Maglev tables via [`maglev`]) -> [`dataplane`] (typed map writers) -> BPF
//! maps; counters flow back through [`stats`] to the API and [`metrics`].

pub mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod controller;
pub mod daemon;
pub mod dataplane;
pub mod db;
pub mod digest;
pub mod health;
pub mod limits;
pub mod maglev;
pub mod metrics;
pub mod model;
pub mod passive;
pub mod snat_pool;
pub mod stats;
pub mod suspicion;
#[cfg(any(test, feature = "test-util"))]
pub mod testutil;
