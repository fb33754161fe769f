//! The eBPF object built by build.rs from the `probe-ebpf` crate, embedded in the binary.

/// The object's bytes; empty when this binary was built without the eBPF toolchain.
pub static BYTES: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/probe-ebpf.o"));
