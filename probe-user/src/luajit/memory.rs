//! Bounded reads of a traced process's memory. That memory is hostile input: every read has a
//! fixed upper size, and a failed read is an answer ("unknown"), never an error to retry.

use std::fs::File;
use std::os::unix::fs::FileExt;

/// Bytes one read may ask for at most.
pub const MAX_READ: usize = 64 * 1024;

/// Something addresses can be read from.
pub trait Memory {
    /// Fills `buf` from `addr`; false when any byte is unreadable.
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool;
}

/// Reads a little-endian integer.
pub fn read_u64(mem: &dyn Memory, addr: u64) -> Option<u64> {
    let mut b = [0u8; 8];
    mem.read(addr, &mut b).then(|| u64::from_le_bytes(b))
}

/// Reads `len` bytes (at most [`MAX_READ`]).
pub fn read_vec(mem: &dyn Memory, addr: u64, len: usize) -> Option<Vec<u8>> {
    if len > MAX_READ {
        return None;
    }
    let mut v = vec![0u8; len];
    mem.read(addr, &mut v).then_some(v)
}

/// A live process's memory through `/proc/PID/mem`.
pub struct ProcMem(File);

impl ProcMem {
    /// Opens `pid`'s memory; `None` when it is gone or not ours to read.
    pub fn open(pid: u32) -> Option<Self> {
        File::open(format!("/proc/{pid}/mem")).ok().map(ProcMem)
    }
}

impl Memory for ProcMem {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        buf.len() <= MAX_READ
            && addr.checked_add(buf.len() as u64).is_some()
            && self.0.read_exact_at(buf, addr).is_ok()
    }
}

/// A memory image: bytes at a base address (tests, and corrupted heaps in them).
#[cfg(test)]
pub struct Image {
    /// Address of `bytes[0]`.
    pub base: u64,
    /// The contents.
    pub bytes: Vec<u8>,
}

#[cfg(test)]
impl Memory for Image {
    fn read(&self, addr: u64, buf: &mut [u8]) -> bool {
        let Some(lo) = addr.checked_sub(self.base) else { return false };
        let Some(src) =
            usize::try_from(lo).ok().and_then(|lo| self.bytes.get(lo..lo.checked_add(buf.len())?))
        else {
            return false;
        };
        buf.copy_from_slice(src);
        true
    }
}
