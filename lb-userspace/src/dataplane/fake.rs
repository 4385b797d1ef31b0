//! In-memory data plane for control-plane tests (being written).
