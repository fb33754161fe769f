//! DWARF (`.eh_frame`) unwinding of the copied user stacks with framehop, from a process's saved maps.

use std::path::Path;

use framehop::{
    ExplicitModuleSectionInfo, FrameAddress, Module, Unwinder,
    x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64},
};

use super::elf::{Elfs, Section, SectionBytes};

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapEntry {
    /// First address.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Permissions, e.g. `r-xp`.
    pub perms: String,
    /// File offset of `start`.
    pub offset: u64,
    /// Path or pseudo name (`[stack]`); empty for anonymous memory.
    pub path: String,
}

/// Parses the text of a `/proc/PID/maps` file; malformed lines are skipped.
pub fn parse_maps(text: &str) -> Vec<MapEntry> {
    text.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let range = it.next()?;
            let perms = it.next()?.to_owned();
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let _inode = it.next()?;
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            let start = u64::from_str_radix(s, 16).ok()?;
            let end = u64::from_str_radix(e, 16).ok()?;
            Some(MapEntry { start, end, perms, offset, path })
        })
        .collect()
}

/// Load bias (avma − svma) of a file with LOAD segments `loads` (file offset, vaddr, file size)
/// given one of its mappings, from the segment that contains the mapping's file offset.
pub fn bias_for(loads: &[(u64, u64, u64)], map: &MapEntry) -> Option<u64> {
    let page = |x: u64| x & !0xfff;
    // The segment that starts on the mapping's page; else the last one containing its offset
    // (segments can share a page, as lld lays them out).
    loads
        .iter()
        .find(|&&(off, _, _)| page(off) == map.offset)
        .or_else(|| {
            loads.iter().rfind(|&&(off, _, size)| page(off) <= map.offset && map.offset < off + size.max(1))
        })
        .map(|&(off, vaddr, _)| map.start.wrapping_sub(map.offset).wrapping_add(off).wrapping_sub(vaddr))
}

/// An executable mapping of an ELF file in a process: its path, address range and load bias.
#[derive(Debug, Clone)]
pub struct Mapped {
    /// File path.
    pub path: String,
    /// The executable mapping's addresses.
    pub range: std::ops::Range<u64>,
    /// avma − svma.
    pub bias: u64,
}

/// The unwinder of one process.
pub struct ProcessUnwinder {
    unwinder: UnwinderX86_64<SectionBytes>,
    cache: CacheX86_64,
    /// The modules, sorted by address.
    pub modules: Vec<Mapped>,
    /// LuaJIT interpreters mapped in the process (absolute addresses).
    vms: Vec<std::ops::Range<u64>>,
    /// Executable mappings without a file: `[vdso]`, or anonymous code such as JIT output.
    pseudo: Vec<(std::ops::Range<u64>, String)>,
}

impl ProcessUnwinder {
    /// Builds one module per executable mapping of an ELF file in `maps`. Each mapping gets its
    /// own load bias: a file's text can be mapped twice (node remaps part of its text onto huge
    /// pages, far from the rest), and the gap between two mappings is not the file's.
    pub fn new(maps: &[MapEntry], elfs: &Elfs) -> Self {
        let mut unwinder = UnwinderX86_64::new();
        let (mut modules, mut vms) = (Vec::new(), Vec::new());
        for m in maps.iter().filter(|m| m.path.starts_with('/') && m.perms.contains('x')) {
            let Some(elf) = elfs.get(Path::new(&m.path)) else { continue };
            let Some(bias) = bias_for(&elf.loads, m) else { continue };
            let svma = |s: &Option<Section>| s.as_ref().map(|s| s.svma.clone());
            let bytes = |s: &Option<Section>| s.as_ref().map(|s| SectionBytes::new(&elf, s));
            let info = ExplicitModuleSectionInfo {
                base_svma: 0,
                text_svma: svma(&elf.text),
                text: bytes(&elf.text),
                got_svma: elf.got.clone(),
                eh_frame_svma: svma(&elf.eh_frame),
                eh_frame: bytes(&elf.eh_frame),
                eh_frame_hdr_svma: svma(&elf.eh_frame_hdr),
                eh_frame_hdr: bytes(&elf.eh_frame_hdr),
                stubs_svma: None,
                stub_helper_svma: None,
                unwind_info: None,
                debug_frame: None,
                text_segment_svma: None,
                text_segment: None,
            };
            if let Some(vm) = super::stripped::luajit_vm(&elf) {
                let abs = vm.start.wrapping_add(bias)..vm.end.wrapping_add(bias);
                if abs.start < m.end && m.start < abs.end {
                    vms.push(abs);
                }
            }
            unwinder.add_module(Module::new(m.path.clone(), m.start..m.end, bias, info));
            modules.push(Mapped { path: m.path.clone(), range: m.start..m.end, bias });
        }
        modules.sort_by_key(|m| m.range.start);
        let pseudo = maps
            .iter()
            .filter(|m| !m.path.starts_with('/') && m.perms.contains('x'))
            .map(|m| {
                let name = if m.path.is_empty() { "[anonymous code]".to_owned() } else { m.path.clone() };
                (m.start..m.end, name)
            })
            .collect();
        ProcessUnwinder { unwinder, cache: CacheX86_64::new(), modules, vms, pseudo }
    }

    /// The module containing `addr`.
    pub fn module_of(&self, addr: u64) -> Option<&Mapped> {
        let i = self.modules.partition_point(|m| m.range.start <= addr);
        self.modules[..i].last().filter(|m| addr < m.range.end)
    }

    /// The name of the file-less executable mapping containing `addr` (`[vdso]`,
    /// `[anonymous code]`).
    pub fn pseudo_of(&self, addr: u64) -> Option<&str> {
        self.pseudo.iter().find(|(r, _)| r.contains(&addr)).map(|(_, n)| n.as_str())
    }

    /// Unwinds one sample: returns lookup addresses (return addresses minus one), leaf first.
    /// `stack` is the copy of the user stack starting at `sp`; reads outside it fail.
    pub fn unwind(&mut self, ip: u64, sp: u64, bp: u64, stack: &[u8], max_frames: usize) -> Vec<u64> {
        let mut read_stack = |addr: u64| -> Result<u64, ()> {
            let off = addr.checked_sub(sp).ok_or(())? as usize;
            let b = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_le_bytes(b.try_into().map_err(|_| ())?))
        };
        let mut out = Vec::new();
        let (mut ip, mut sp_now) = (ip, sp);
        // LuaJIT's VM `call`s leaf helpers inside its own code (lj_vm_modi for `%`, …), which its
        // one FDE does not describe. In such a helper the top of the stack is a return address
        // into the VM (in the VM proper it holds interpreter state, never VM code): step over it.
        let in_vm = |a: u64| self.vms.iter().any(|r| r.contains(&a));
        if in_vm(ip)
            && let Ok(ra) = read_stack(sp)
            && in_vm(ra)
        {
            out.push(ip);
            (ip, sp_now) = (ra, sp + 8);
        }
        let regs = UnwindRegsX86_64::new(ip, sp_now, bp);
        let mut it = self.unwinder.iter_frames(ip, regs, &mut self.cache, &mut read_stack);
        while out.len() < max_frames {
            match it.next() {
                Ok(Some(f)) => out.push(lookup(f)),
                _ => break,
            }
        }
        out
    }
}

fn lookup(f: FrameAddress) -> u64 {
    f.address_for_lookup()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a2a000 r--p 00000000 fe:00 1234                       /usr/sbin/nginx
55d0c0a2a000-55d0c0b1f000 r-xp 0002a000 fe:00 1234                       /usr/sbin/nginx
7ffd1c000000-7ffd1c021000 rw-p 00000000 00:00 0                          [stack]
7f0000000000-7f0000001000 rw-p 00000000 00:00 0 
7f0000001000-7f0000002000 r-xp 00001000 fe:00 99                         /tmp/with space/lib.so
garbage line
";

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps(MAPS);
        assert_eq!(m.len(), 5);
        assert_eq!(m[1].start, 0x55d0c0a2a000);
        assert_eq!(m[1].end, 0x55d0c0b1f000);
        assert_eq!(m[1].perms, "r-xp");
        assert_eq!(m[1].offset, 0x2a000);
        assert_eq!(m[1].path, "/usr/sbin/nginx");
        assert_eq!(m[2].path, "[stack]");
        assert_eq!(m[3].path, "");
        assert_eq!(m[4].path, "/tmp/with space/lib.so");
    }

    #[test]
    fn bias_from_load_segment() {
        // A PIE whose text LOAD segment is at file offset 0x2a000, vaddr 0x2b000 (gap of one page).
        let loads = [(0, 0, 0x29000), (0x2a000, 0x2b000, 0xf5000)];
        let m = &parse_maps(MAPS)[1];
        assert_eq!(bias_for(&loads, m), Some(0x55d0c0a2a000 - 0x2b000));
        let m0 = &parse_maps(MAPS)[0];
        assert_eq!(bias_for(&loads, m0), Some(0x55d0c0a00000));
        // lld: the text segment shares the page of the end of the first one (burn's layout).
        let lld = [(0, 0, 0x17160), (0x17160, 0x18160, 0x402a0)];
        let m = MapEntry {
            start: 0x55a096858000,
            end: 0x55a096899000,
            perms: "r-xp".into(),
            offset: 0x17000,
            path: String::new(),
        };
        assert_eq!(bias_for(&lld, &m), Some(0x55a096858000 - 0x17000 + 0x17160 - 0x18160));
    }

    #[test]
    fn read_outside_copy_fails_and_unknown_ip_gives_one_frame() {
        let mut u = ProcessUnwinder::new(&[], &Elfs::default());
        assert!(u.module_of(5).is_none());
        let frames = u.unwind(0x1000, 0x7000, 0, &[0u8; 16], 64);
        assert_eq!(frames.first(), Some(&0x1000));
    }

    #[test]
    fn luajit_vm_helper_leaf_steps_to_its_return_address() {
        let mut u = ProcessUnwinder::new(&[], &Elfs::default());
        u.vms.push(0x1000..0x2000);
        // In a helper: the top of the stack returns into the VM.
        let mut stack = [0u8; 16];
        stack[..8].copy_from_slice(&0x1800u64.to_le_bytes());
        assert_eq!(u.unwind(0x1100, 0x7000, 0, &stack, 64)[..2], [0x1100, 0x1800]);
        // In the VM proper: the top of the stack is interpreter state.
        stack[..8].copy_from_slice(&0x5555u64.to_le_bytes());
        assert_ne!(u.unwind(0x1100, 0x7000, 0, &stack, 64).get(1), Some(&0x5555));
    }

    #[test]
    fn each_executable_mapping_is_a_module_with_its_own_bias() {
        // This test binary's biggest LOAD segment, mapped twice far apart (as node remaps part of
        // its text onto huge pages): two modules, and nothing in between.
        let exe = std::env::current_exe().unwrap();
        let elf = crate::flame::elf::ElfFile::load(&exe).unwrap();
        let &(off, vaddr, _) = elf.loads.iter().max_by_key(|l| l.2).unwrap();
        let page = off & !0xfff;
        let line = |start: u64, offset: u64| {
            format!("{start:x}-{:x} r-xp {offset:08x} fe:00 1 {}\n", start + 0x1000, exe.display())
        };
        let maps = parse_maps(&(line(0x1000_0000, page) + &line(0x7f00_0000_0000, page + 0x1000)));
        let u = ProcessUnwinder::new(&maps, &Elfs::default());
        assert_eq!(u.modules.len(), 2);
        let bias = |a: u64| u.module_of(a).map(|m| m.bias);
        assert_eq!(bias(0x1000_0010), Some(0x1000_0000 - page + off - vaddr));
        assert_eq!(bias(0x7f00_0000_0010), Some(0x7f00_0000_0000 - (page + 0x1000) + off - vaddr));
        assert_eq!(bias(0x4000_0000), None, "the gap between two mappings is not the file's");
    }

    #[test]
    fn file_less_code_is_named_by_its_mapping() {
        let maps = parse_maps(
            "7ffd1c1f0000-7ffd1c1f2000 r-xp 00000000 00:00 0                  [vdso]\n\
             7f0000000000-7f0000010000 r-xp 00000000 00:00 0 \n\
             7f1000000000-7f1000010000 rw-p 00000000 00:00 0 \n",
        );
        let u = ProcessUnwinder::new(&maps, &Elfs::default());
        assert_eq!(u.pseudo_of(0x7ffd1c1f0100), Some("[vdso]"));
        assert_eq!(u.pseudo_of(0x7f0000000100), Some("[anonymous code]"));
        assert_eq!(u.pseudo_of(0x7f1000000100), None, "data is not code");
    }
}
