//! Test harnesses.

pub mod lab;
