//! LuaJIT 2.1 GC64 prototypes read from a live process: chunk name, lines, and the name a
//! caller's bytecode gives its callee (as LuaJIT's own `debug.getinfo` derives it: a local,
//! global, field, method or upvalue name).
//!
//! Everything is read from hostile memory: each object is validated before a pointer in it is
//! followed, each read is bounded, and anything odd gives `None`.

use super::memory::{MAX_READ, Memory, read_u64, read_vec};
use probe_common::lua::layout::{GCT_PROTO, GCT_STR, OFF_GCT, PROTO_SIZE};

/// `GCproto` fields (GC64).
mod off {
    pub const SIZEBC: usize = 0x0c;
    pub const K: usize = 0x20;
    pub const SIZEKGC: usize = 0x30;
    pub const SIZEPT: usize = 0x38;
    pub const SIZEUV: usize = 0x3c;
    pub const CHUNKNAME: usize = 0x40;
    pub const FIRSTLINE: usize = 0x48;
    pub const NUMLINE: usize = 0x4c;
    pub const LINEINFO: usize = 0x50;
    pub const UVINFO: usize = 0x58;
    pub const VARINFO: usize = 0x60;
    /// `GCstr.len`; the bytes follow the header.
    pub const STR_LEN: u64 = 0x14;
    pub const STR_DATA: u64 = 0x18;
}

/// Longest bytecode LuaJIT allows (`LJ_MAX_BCINS`).
const MAX_BC: u32 = 1 << 26;
/// Longest chunk name we read.
const MAX_CHUNKNAME: u32 = 1024;
/// Longest constant string read as a name.
const MAX_NAME: u32 = 256;
/// The GC64 TValue pointer mask.
const GCVMASK: u64 = (1 << 47) - 1;
/// `VARNAME__MAX`: a varinfo byte below it is an internal name (or the end, 0).
const VARNAME_MAX: u8 = 7;

/// Opcodes the naming needs (`lj_bc.h`, LuaJIT 2.1).
mod op {
    pub const MOV: u8 = 18;
    pub const KNIL: u8 = 44;
    pub const UGET: u8 = 45;
    pub const GGET: u8 = 54;
    pub const TGETS: u8 = 57;
    pub const CALLM: u8 = 65;
    pub const ITERC: u8 = 69;
    pub const ITERN: u8 = 70;
}

/// Whether an opcode's A operand is a destination slot.
fn a_is_dst(op: u8) -> bool {
    matches!(op, 12 | 13 | 18..=43 | 45 | 51..=54 | 56..=59)
}

/// Whether an opcode's A operand is a base (it may clobber every slot from A up).
fn a_is_base(op: u8) -> bool {
    matches!(op, 44 | 63 | 65..=73 | 77..=84)
}

fn a(ins: u32) -> u32 {
    (ins >> 8) & 0xff
}
fn c(ins: u32) -> u32 {
    (ins >> 16) & 0xff
}
fn d(ins: u32) -> u32 {
    ins >> 16
}

fn u32_at(h: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(h[off..off + 4].try_into().unwrap_or_default())
}
fn u64_at(h: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(h[off..off + 8].try_into().unwrap_or_default())
}

/// A validated prototype.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proto {
    /// Its address.
    pub addr: u64,
    /// The chunk name as LuaJIT keeps it (`@/path/file.lua`, `=content_by_lua(...)`).
    pub chunk: String,
    /// Line of its `function` keyword (0 for a main chunk).
    pub firstline: u32,
    /// Lines it spans.
    pub numline: u32,
    sizebc: u32,
    sizept: u32,
    k: u64,
    sizekgc: u32,
    sizeuv: u8,
    lineinfo: u64,
    uvinfo: u64,
    varinfo: u64,
}

/// A string object's text, validated.
fn read_str(mem: &dyn Memory, addr: u64, max: u32) -> Option<String> {
    let mut h = [0u8; off::STR_DATA as usize];
    if addr == 0 || !mem.read(addr, &mut h) || h[OFF_GCT] != GCT_STR {
        return None;
    }
    let len = u32_at(&h, off::STR_LEN as usize);
    if len == 0 || len > max {
        return None;
    }
    let bytes = read_vec(mem, addr + off::STR_DATA, len as usize)?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

impl Proto {
    /// Reads and validates the prototype at `addr`.
    pub fn read(mem: &dyn Memory, addr: u64) -> Option<Self> {
        let mut h = [0u8; PROTO_SIZE as usize];
        if addr == 0 || !mem.read(addr, &mut h) || h[OFF_GCT] != GCT_PROTO {
            return None;
        }
        let sizebc = u32_at(&h, off::SIZEBC);
        let sizept = u32_at(&h, off::SIZEPT);
        let firstline = u32_at(&h, off::FIRSTLINE);
        let numline = u32_at(&h, off::NUMLINE);
        let end = addr.checked_add(sizept as u64)?;
        let inside = |p: u64| p == 0 || (addr + PROTO_SIZE <= p && p <= end);
        let k = u64_at(&h, off::K);
        let sizekgc = u32_at(&h, off::SIZEKGC);
        let p = Proto {
            addr,
            chunk: read_str(mem, u64_at(&h, off::CHUNKNAME) & GCVMASK, MAX_CHUNKNAME)?,
            firstline,
            numline,
            sizebc,
            sizept,
            k,
            sizekgc,
            sizeuv: h[off::SIZEUV],
            lineinfo: u64_at(&h, off::LINEINFO),
            uvinfo: u64_at(&h, off::UVINFO),
            varinfo: u64_at(&h, off::VARINFO),
        };
        let sane = sizebc > 0
            && sizebc <= MAX_BC
            && (sizept as u64) >= PROTO_SIZE + 4 * sizebc as u64
            && firstline <= i32::MAX as u32
            && numline <= i32::MAX as u32
            && inside(p.lineinfo)
            && inside(p.uvinfo)
            && inside(p.varinfo)
            && k >= addr + PROTO_SIZE + 4 * sizebc as u64
            && k <= end
            && (sizekgc as u64) * 8 <= k - addr - PROTO_SIZE - 4 * sizebc as u64;
        sane.then_some(p)
    }

    /// The chunk's file name without directories, or the chunk name for inline code.
    pub fn file(&self) -> String {
        match self.chunk.strip_prefix('@') {
            Some(path) => path.rsplit('/').next().unwrap_or(path).to_owned(),
            None => self.chunk.strip_prefix('=').unwrap_or(&self.chunk).to_owned(),
        }
    }

    /// Instruction `pos`.
    fn ins(&self, mem: &dyn Memory, pos: u32) -> Option<u32> {
        if pos >= self.sizebc {
            return None;
        }
        let mut w = [0u8; 4];
        mem.read(self.addr + PROTO_SIZE + 4 * pos as u64, &mut w).then(|| u32::from_le_bytes(w))
    }

    /// The source line of bytecode position `pos`, when the bytecode carries lines.
    pub fn line(&self, mem: &dyn Memory, pos: u32) -> Option<u32> {
        if pos == 0 {
            return Some(self.firstline);
        }
        if pos == self.sizebc {
            return self.firstline.checked_add(self.numline);
        }
        if pos > self.sizebc || self.lineinfo == 0 {
            return None;
        }
        let width: u64 = if self.numline < 256 {
            1
        } else if self.numline < 65536 {
            2
        } else {
            4
        };
        let at = self.lineinfo.checked_add((pos as u64 - 1) * width)?;
        if at + width > self.addr + self.sizept as u64 {
            return None;
        }
        let mut w = [0u8; 4];
        if !mem.read(at, &mut w[..width as usize]) {
            return None;
        }
        let delta = u32::from_le_bytes(w);
        (delta <= self.numline).then(|| self.firstline + delta)
    }

    /// A GC constant's string (`idx` as the instruction holds it).
    fn kstr(&self, mem: &dyn Memory, idx: u32) -> Option<String> {
        if idx >= self.sizekgc {
            return None;
        }
        let r = read_u64(mem, self.k - 8 * (idx as u64 + 1))?;
        read_str(mem, r & GCVMASK, MAX_NAME)
    }

    /// The bytes from `start` to the end of the object (the debug info lives there).
    fn tail(&self, mem: &dyn Memory, start: u64) -> Option<Vec<u8>> {
        let end = self.addr + self.sizept as u64;
        if start == 0 || start >= end {
            return None;
        }
        read_vec(mem, start, ((end - start) as usize).min(MAX_READ))
    }

    /// Upvalue `idx`'s name.
    fn upvalue_name(&self, mem: &dyn Memory, idx: u32) -> Option<String> {
        if idx >= self.sizeuv as u32 {
            return None;
        }
        let bytes = self.tail(mem, self.uvinfo)?;
        let name = bytes.split(|&b| b == 0).nth(idx as usize)?;
        (!name.is_empty()).then(|| String::from_utf8_lossy(name).into_owned())
    }

    /// The local variable in `slot` at `pos`, from the varinfo records.
    fn local_name(&self, mem: &dyn Memory, pos: u32, mut slot: u32) -> Option<String> {
        let bytes = self.tail(mem, self.varinfo)?;
        let mut p = 0usize;
        let mut last = 0u32;
        loop {
            // A record: a NUL-terminated name or one byte of internal name, then two ULEB128s.
            let first = *bytes.get(p)?;
            let name = if first == 0 {
                return None;
            } else if first < VARNAME_MAX {
                p += 1;
                None
            } else {
                let len = bytes[p..].iter().position(|&b| b == 0)?;
                let name = &bytes[p..p + len];
                p += len + 1;
                Some(name)
            };
            let start = last.checked_add(uleb128(&bytes, &mut p)?)?;
            last = start;
            if start > pos {
                return None;
            }
            let end = start.checked_add(uleb128(&bytes, &mut p)?)?;
            if pos < end {
                if slot == 0 {
                    // An internal name ("(for index)") never holds a function worth naming.
                    return name.map(|n| String::from_utf8_lossy(n).into_owned());
                }
                slot -= 1;
            }
        }
    }
}

/// Reads one ULEB128 number at `*p`.
fn uleb128(bytes: &[u8], p: &mut usize) -> Option<u32> {
    let mut v: u32 = 0;
    for shift in (0..35).step_by(7) {
        let byte = *bytes.get(*p)?;
        *p += 1;
        v |= ((byte & 0x7f) as u32).checked_shl(shift)?;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The name the caller's bytecode gives the function it calls at `pos` (a CALL instruction),
/// as `debug.getinfo` would: `None` where LuaJIT could not name it either.
pub fn callee_name(mem: &dyn Memory, caller: &Proto, pos: u32) -> Option<String> {
    let call = caller.ins(mem, pos)?;
    let code = (call & 0xff) as u8;
    if !(op::CALLM..=op::ITERN).contains(&code) {
        return None;
    }
    let mut slot = a(call);
    if code == op::ITERC {
        slot = slot.checked_sub(3)?;
    }
    // Read the bytecode before the call once (bounded), then scan it backwards.
    let n = pos.min((MAX_READ / 4) as u32);
    let first = pos - n;
    let raw = read_vec(mem, caller.addr + PROTO_SIZE + 4 * first as u64, 4 * n as usize)?;
    let ins = |i: u32| -> u32 {
        let o = 4 * (i - first) as usize;
        u32::from_le_bytes(raw[o..o + 4].try_into().unwrap_or_default())
    };
    let mut at = pos;
    'restart: loop {
        if let Some(name) = caller.local_name(mem, at, slot) {
            return Some(name);
        }
        while at > first + 1 {
            at -= 1;
            let i = ins(at);
            let code = (i & 0xff) as u8;
            let ra = a(i);
            if a_is_base(code) {
                if slot >= ra && (code != op::KNIL || slot <= d(i)) {
                    return None;
                }
            } else if a_is_dst(code) && ra == slot {
                return match code {
                    op::MOV => {
                        slot = d(i);
                        continue 'restart;
                    }
                    op::GGET => caller.kstr(mem, d(i)),
                    op::TGETS => {
                        let name = caller.kstr(mem, c(i))?;
                        // `obj:m()` is `MOV A+2, obj; TGETS A, obj, "m"`: a method, named alike.
                        Some(name)
                    }
                    op::UGET => caller.upvalue_name(mem, d(i)),
                    _ => None,
                };
            }
        }
        return None;
    }
}

#[cfg(test)]
mod tests;
