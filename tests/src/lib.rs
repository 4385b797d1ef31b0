//! Test harnesses.

pub mod lab;
pub mod bench;
