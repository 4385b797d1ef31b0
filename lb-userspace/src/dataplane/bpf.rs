//! Loader and map writers for the real kernel data plane (being written).
