//! Test harnesses.

pub mod fixture;
pub mod lab;
pub mod bench;
