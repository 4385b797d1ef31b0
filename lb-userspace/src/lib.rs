//! lb control plane library.

pub mod dataplane;
