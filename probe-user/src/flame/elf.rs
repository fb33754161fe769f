//! The ELF files of one flame run, each read from disk once: [`Elfs`] caches an [`ElfFile`] per
//! path, shared (`Rc`) by the unwinder ([`super::unwind`]), the debug-file lookup
//! ([`super::debuginfo`]) and the name fallbacks ([`super::stripped`]). What they need is
//! extracted at load; the `.eh_frame` FDEs are parsed on first use, once.

use std::{
    cell::{Cell, OnceCell, RefCell},
    collections::HashMap,
    ops::{Deref, Range},
    path::{Path, PathBuf},
    rc::Rc,
};

use gimli::{BaseAddresses, CieOrFde, EhFrame, LittleEndian, UnwindSection};
use object::{Object, ObjectSection, ObjectSegment};

/// One function's extent from `.eh_frame`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fde {
    /// First address (svma).
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    /// Whether its CIE names a personality routine.
    pub personality: bool,
}

/// A section: its addresses (svma) and where its bytes are in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    /// Its addresses.
    pub svma: Range<u64>,
    bytes: Range<usize>,
}

/// The FDEs of a file, parsed once.
#[derive(Debug, Default)]
struct Fdes {
    /// Sorted by start.
    sorted: Vec<Fde>,
    /// The first FDE in section order whose CIE names a personality routine.
    first_with_personality: Option<Fde>,
}

impl Fdes {
    /// From the FDEs in section order.
    fn new(mut fdes: Vec<Fde>) -> Self {
        let first_with_personality = fdes.iter().copied().find(|f| f.personality);
        fdes.sort_by_key(|f| f.start);
        Fdes { sorted: fdes, first_with_personality }
    }
}

/// A file's bytes: mapped read-only (a large library costs no copy), or none in tests.
enum Bytes {
    Mapped(memmap2::Mmap),
    #[cfg(test)]
    Empty,
}

impl Deref for Bytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Mapped(m) => m,
            #[cfg(test)]
            Bytes::Empty => &[],
        }
    }
}

/// One ELF file, read once.
pub struct ElfFile {
    /// The path it was read from.
    pub path: PathBuf,
    data: Bytes,
    /// LOAD segments: (file offset, vaddr, file size).
    pub loads: Vec<(u64, u64, u64)>,
    /// `.text`.
    pub text: Option<Section>,
    /// `.eh_frame`.
    pub eh_frame: Option<Section>,
    /// `.eh_frame_hdr`.
    pub eh_frame_hdr: Option<Section>,
    /// `.got`'s addresses.
    pub got: Option<Range<u64>>,
    fdes: OnceCell<Fdes>,
}

impl ElfFile {
    /// Maps and parses `path`.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let file = std::fs::File::open(path)?;
        // SAFETY: a private read-only mapping of a binary or library; nothing here writes it.
        // Were the file rewritten while mapped, names and unwinding could come out wrong for
        // this run, which is the same as reading a file that changed between reads.
        let data = Bytes::Mapped(unsafe { memmap2::Mmap::map(&file)? });
        let obj = object::File::parse(&*data)?;
        let section = |name: &str| {
            let s = obj.section_by_name(name)?;
            // Where the section's data is in the file (object hands out slices of it).
            let d = s.data().ok()?;
            let start =
                if d.is_empty() { 0 } else { (d.as_ptr() as usize).checked_sub(data.as_ptr() as usize)? };
            let bytes = start..start + d.len();
            // Inside the file, at the slice's address: the same bytes.
            data.get(bytes.clone())?;
            Some(Section { svma: s.address()..s.address() + s.size(), bytes })
        };
        let loads = obj
            .segments()
            .map(|s| {
                let (off, size) = s.file_range();
                (off, s.address(), size)
            })
            .collect();
        let (text, eh_frame, eh_frame_hdr) =
            (section(".text"), section(".eh_frame"), section(".eh_frame_hdr"));
        let got = obj.section_by_name(".got").map(|s| s.address()..s.address() + s.size());
        Ok(ElfFile {
            path: path.to_owned(),
            data,
            loads,
            text,
            eh_frame,
            eh_frame_hdr,
            got,
            fdes: OnceCell::new(),
        })
    }

    /// The file parsed (headers only; cheap), `None` when it no longer parses.
    pub fn object(&self) -> Option<object::File<'_>> {
        object::File::parse(&*self.data).ok()
    }

    /// A section's bytes.
    pub fn bytes(&self, s: &Section) -> &[u8] {
        self.data.get(s.bytes.clone()).unwrap_or(&[])
    }

    /// The FDE covering `svma`.
    pub fn fde_at(&self, svma: u64) -> Option<Fde> {
        let fdes = &self.fdes().sorted;
        let i = fdes.partition_point(|f| f.start <= svma).checked_sub(1)?;
        Some(fdes[i]).filter(|f| svma < f.end)
    }

    /// The first FDE in section order whose CIE names a personality routine.
    pub fn first_fde_with_personality(&self) -> Option<Fde> {
        self.fdes().first_with_personality
    }

    fn fdes(&self) -> &Fdes {
        self.fdes.get_or_init(|| Fdes::new(self.parse_fdes()))
    }

    /// Every FDE of `.eh_frame`, in section order; stops at the first entry gimli cannot parse.
    fn parse_fdes(&self) -> Vec<Fde> {
        let Some(eh) = &self.eh_frame else { return Vec::new() };
        let mut bases = BaseAddresses::default().set_eh_frame(eh.svma.start);
        if let Some(t) = &self.text {
            bases = bases.set_text(t.svma.start);
        }
        if let Some(g) = &self.got {
            bases = bases.set_got(g.start);
        }
        let section = EhFrame::new(self.bytes(eh), LittleEndian);
        let mut entries = section.entries(&bases);
        let mut out = Vec::new();
        while let Ok(Some(entry)) = entries.next() {
            if let CieOrFde::Fde(partial) = entry {
                let Ok(fde) = partial.parse(|s, b, o| s.cie_from_offset(b, o)) else { break };
                out.push(Fde {
                    start: fde.initial_address(),
                    end: fde.initial_address() + fde.len(),
                    personality: fde.personality().is_some(),
                });
            }
        }
        out
    }

    /// A file that is only `fdes` (tests of what is built on them).
    #[cfg(test)]
    pub(super) fn with_fdes(path: &str, fdes: Vec<Fde>) -> Self {
        ElfFile {
            path: path.into(),
            data: Bytes::Empty,
            loads: Vec::new(),
            text: None,
            eh_frame: None,
            eh_frame_hdr: None,
            got: None,
            fdes: OnceCell::from(Fdes::new(fdes)),
        }
    }
}

impl std::fmt::Debug for ElfFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Not the bytes.
        f.debug_struct("ElfFile")
            .field("path", &self.path)
            .field("len", &self.data.len())
            .finish_non_exhaustive()
    }
}

/// A section's bytes kept alive by the file they are in: what the unwinder reads.
#[derive(Debug, Clone)]
pub struct SectionBytes {
    file: Rc<ElfFile>,
    section: Section,
}

impl SectionBytes {
    /// `section` of `file`.
    pub fn new(file: &Rc<ElfFile>, section: &Section) -> Self {
        SectionBytes { file: file.clone(), section: section.clone() }
    }
}

impl Deref for SectionBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.file.bytes(&self.section)
    }
}

/// The ELF files of one run, each read once per path (a file that cannot be read or parsed is
/// tried once too).
#[derive(Debug, Default)]
pub struct Elfs {
    files: RefCell<HashMap<PathBuf, Option<Rc<ElfFile>>>>,
    reads: Cell<usize>,
}

impl Elfs {
    /// The file at `path`, or `None` when it cannot be read or parsed.
    pub fn get(&self, path: &Path) -> Option<Rc<ElfFile>> {
        if let Some(f) = self.files.borrow().get(path) {
            return f.clone();
        }
        self.reads.set(self.reads.get() + 1);
        let f = ElfFile::load(path).ok().map(Rc::new);
        self.files.borrow_mut().insert(path.to_owned(), f.clone());
        f
    }

    /// How many files were read from disk.
    pub fn reads(&self) -> usize {
        self.reads.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_file_is_read_and_its_fdes_parsed_once() {
        let exe = std::env::current_exe().unwrap();
        let elfs = Elfs::default();
        let a = elfs.get(&exe).unwrap();
        let b = elfs.get(&exe).unwrap();
        assert!(Rc::ptr_eq(&a, &b));
        assert_eq!(elfs.reads(), 1);
        // The FDEs are parsed on first use and then shared.
        let text = a.text.as_ref().unwrap().svma.clone();
        let f = (text.start..text.end).step_by(0x100).find_map(|x| a.fde_at(x)).expect("an FDE in .text");
        assert_eq!(b.fde_at(f.start), Some(f));
        assert!(std::ptr::eq(a.fdes(), b.fdes()));
        // A missing file is tried once.
        assert!(elfs.get(Path::new("/nonexistent/reloadscope")).is_none());
        assert!(elfs.get(Path::new("/nonexistent/reloadscope")).is_none());
        assert_eq!(elfs.reads(), 2);
    }

    #[test]
    fn the_unwinder_the_debug_lookup_and_the_fallback_share_one_read() {
        use crate::flame::{debuginfo::Sources, stripped::Fallback, symbolize::Names, unwind};
        let exe = std::env::current_exe().unwrap();
        let elfs = Rc::new(Elfs::default());
        let elf = elfs.get(&exe).unwrap();
        let &(off, _, _) = elf.loads.iter().max_by_key(|l| l.2).unwrap();
        let maps = format!("10000000-10001000 r-xp {:08x} fe:00 1 {}\n", off & !0xfff, exe.display());
        let u = unwind::ProcessUnwinder::new(&unwind::parse_maps(&maps), &elfs);
        assert_eq!(u.modules.len(), 1);
        let start = elf.text.as_ref().unwrap().svma.start;
        let mut names = Names::new(Sources::none(), elfs.clone());
        assert_eq!(names.user_frame(&exe, start).module, exe.file_name().unwrap().to_string_lossy());
        let fallback = Fallback::new(elfs.get(&exe).unwrap());
        assert!(fallback.name(start).is_some());
        assert_eq!(elfs.reads(), 1);
    }

    #[test]
    fn section_bytes_are_the_sections_data() {
        let exe = std::env::current_exe().unwrap();
        let elf = Rc::new(ElfFile::load(&exe).unwrap());
        let obj = elf.object().unwrap();
        let eh = elf.eh_frame.as_ref().unwrap();
        let expected = obj.section_by_name(".eh_frame").unwrap().data().unwrap();
        assert_eq!(&*SectionBytes::new(&elf, eh), expected);
        assert_eq!(eh.svma.start, obj.section_by_name(".eh_frame").unwrap().address());
    }
}
