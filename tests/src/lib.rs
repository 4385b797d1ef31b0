//! Test harnesses.

pub mod bench;
pub mod fixture;
pub mod lab;
