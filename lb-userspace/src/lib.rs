//! lb control plane library.
