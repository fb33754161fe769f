use super::*;
use crate::luajit::memory::Image;

const BASE: u64 = 0x10000;
const CHUNK: u64 = 0x10000;
const NAME: u64 = 0x10100;
const PT: u64 = 0x11000;

fn put(img: &mut [u8], at: u64, bytes: &[u8]) {
    let o = (at - BASE) as usize;
    img[o..o + bytes.len()].copy_from_slice(bytes);
}

fn gcstr(img: &mut [u8], at: u64, text: &str) {
    let mut h = [0u8; 0x18];
    h[OFF_GCT] = GCT_STR;
    h[0x14..0x18].copy_from_slice(&(text.len() as u32).to_le_bytes());
    put(img, at, &h);
    put(img, at + 0x18, text.as_bytes());
}

fn ins(op: u8, a: u8, d: u16) -> u32 {
    op as u32 | (a as u32) << 8 | (d as u32) << 16
}

/// A prototype `function spin() <get> 0; 0() end` at line 10 of `@/srv/lfp/spinmod.lua`, where
/// `<get>` is `get` (GGET or UGET of constant/upvalue 0), with upvalue names `uv`.
fn image(get: u8, uv: &str) -> Image {
    let mut img = vec![0u8; 0x2000];
    gcstr(&mut img, CHUNK, "@/srv/lfp/spinmod.lua");
    gcstr(&mut img, NAME, "burn");
    let code = [ins(89, 2, 0), ins(get, 0, 0), ins(op::CALLM + 1, 0, 0x0201), ins(75, 0, 1)];
    let bc = PT + PROTO_SIZE;
    let kgc = bc + 16;
    let k = kgc + 8;
    let lineinfo = k;
    let uvinfo = lineinfo + 4;
    let varinfo = uvinfo + uv.len() as u64 + 1;
    let sizept = (varinfo + 8 - PT) as u32;
    let mut h = [0u8; PROTO_SIZE as usize];
    h[OFF_GCT] = GCT_PROTO;
    h[off::SIZEBC..off::SIZEBC + 4].copy_from_slice(&4u32.to_le_bytes());
    h[off::K..off::K + 8].copy_from_slice(&k.to_le_bytes());
    h[off::SIZEKGC..off::SIZEKGC + 4].copy_from_slice(&1u32.to_le_bytes());
    h[off::SIZEPT..off::SIZEPT + 4].copy_from_slice(&sizept.to_le_bytes());
    h[off::SIZEUV] = uv.split('\0').filter(|s| !s.is_empty()).count() as u8;
    h[off::CHUNKNAME..off::CHUNKNAME + 8].copy_from_slice(&(CHUNK | 0xfffd_8000_0000_0000).to_le_bytes());
    h[off::FIRSTLINE..off::FIRSTLINE + 4].copy_from_slice(&10u32.to_le_bytes());
    h[off::NUMLINE..off::NUMLINE + 4].copy_from_slice(&3u32.to_le_bytes());
    h[off::LINEINFO..off::LINEINFO + 8].copy_from_slice(&lineinfo.to_le_bytes());
    h[off::UVINFO..off::UVINFO + 8].copy_from_slice(&uvinfo.to_le_bytes());
    h[off::VARINFO..off::VARINFO + 8].copy_from_slice(&varinfo.to_le_bytes());
    put(&mut img, PT, &h);
    for (i, w) in code.iter().enumerate() {
        put(&mut img, bc + 4 * i as u64, &w.to_le_bytes());
    }
    put(&mut img, kgc, &NAME.to_le_bytes());
    put(&mut img, lineinfo, &[1, 2, 3]);
    put(&mut img, uvinfo, uv.as_bytes());
    Image { base: BASE, bytes: img }
}

#[test]
fn names_a_global_callee_and_its_lines() {
    let mem = image(op::GGET, "");
    let pt = Proto::read(&mem, PT).unwrap();
    assert_eq!((pt.file().as_str(), pt.firstline, pt.numline), ("spinmod.lua", 10, 3));
    assert_eq!(
        [0, 1, 2, 3, 4].map(|pos| pt.line(&mem, pos)),
        [Some(10), Some(11), Some(12), Some(13), Some(13)]
    );
    assert_eq!(pt.line(&mem, 5), None);
    assert_eq!(callee_name(&mem, &pt, 2).as_deref(), Some("burn"));
    // Not a call instruction.
    assert_eq!(callee_name(&mem, &pt, 1), None);
}

#[test]
fn names_an_upvalue_callee() {
    let mem = image(op::UGET, "wait_for_claim\0");
    let pt = Proto::read(&mem, PT).unwrap();
    assert_eq!(callee_name(&mem, &pt, 2).as_deref(), Some("wait_for_claim"));
}

#[test]
fn a_wrong_type_byte_or_a_bad_pointer_is_no_prototype() {
    let mut mem = image(op::GGET, "");
    assert!(Proto::read(&mem, PT + 8).is_none());
    assert!(Proto::read(&mem, 0).is_none());
    assert!(Proto::read(&mem, 0xdead_0000).is_none());
    mem.bytes[(PT - BASE) as usize + OFF_GCT] = GCT_STR;
    assert!(Proto::read(&mem, PT).is_none());
}

/// A tiny deterministic generator (xorshift), so a failure names its seed.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// Corrupted heaps: random bytes of the prototype, its strings and its debug info are
/// overwritten, including pointers and sizes. Every answer must come back, bounded, without a
/// panic; whatever is returned must still be plausible text.
#[test]
fn corrupted_memory_never_panics_or_reads_without_bound() {
    let clean = image(op::UGET, "wait_for_claim\0");
    for seed in 1..20_000u64 {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut mem = Image { base: clean.base, bytes: clean.bytes.clone() };
        for _ in 0..1 + next(&mut state) % 8 {
            let region =
                if next(&mut state).is_multiple_of(2) { CHUNK..CHUNK + 0x140 } else { PT..PT + 0xb0 };
            let at = region.start + next(&mut state) % (region.end - region.start);
            let byte = match next(&mut state) % 4 {
                0 => 0,
                1 => 0xff,
                2 => 0x80,
                _ => next(&mut state) as u8,
            };
            mem.bytes[(at - BASE) as usize] = byte;
        }
        let Some(pt) = Proto::read(&mem, PT) else { continue };
        assert!(pt.chunk.len() <= MAX_CHUNKNAME as usize * 3, "seed {seed}");
        for pos in 0..6 {
            if let Some(line) = pt.line(&mem, pos) {
                assert!(line <= pt.firstline + pt.numline, "seed {seed}: line {line}");
            }
            if let Some(name) = callee_name(&mem, &pt, pos) {
                assert!(name.len() <= MAX_READ, "seed {seed}");
            }
        }
    }
}
