//! Embeds the eBPF object built by `cargo xtask build-ebpf`.
//!
//! When the object is missing (e.g. `cargo clippy` before the first `cargo xtask build`), an
//! empty file is embedded instead and `lbd` refuses to start with a message saying how to build.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let object = manifest.join("../target/bpfel-unknown-none/release/lb-ebpf");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("lb-ebpf.o");
    println!("cargo:rerun-if-changed={}", object.display());
    match std::fs::read(&object) {
        Ok(bytes) => std::fs::write(&out, bytes).unwrap(),
        Err(_) => std::fs::write(&out, []).unwrap(),
    }
}
