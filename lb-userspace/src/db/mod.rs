//! The database tier: lb in front of a PostgreSQL streaming-replication cluster, with a write
//! service that follows the primary and a read service over the replicas (docs/database.md).
//!
//! Data flows one way: the check layer probes every member once per round
//! ([`observation::MemberProbe`]), [`decide::decide`] turns the probes and the previous state
//! into roles, read eligibility and events (pure, unit-tested), the controller applies the
//! resulting gates to the services' backends
//! ([`crate::controller::Controller::db_apply`]), and [`supervisor`] runs the rounds in lbd,
//! keeps the event log and runs the optional promote hook.

pub mod decide;
pub mod observation;
pub mod supervisor;

pub use decide::{decide, ClusterState, DbEventKind, Decision, MemberRole, Now};
pub use observation::{MemberObservation, MemberProbe};
pub use supervisor::{MemberProber, ProbeFuture, RoleProber};
