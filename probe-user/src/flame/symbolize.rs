//! Names for unwound addresses: blazesym on each file's debug file where one is found
//! ([`super::debuginfo`]: build-id directories, debug links, debuginfod), then on the file itself
//! (symtab, dynsym, DWARF), and kallsyms; where a stripped file has no symbol, the fallbacks of
//! [`super::stripped`].

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    path::{Path, PathBuf},
    rc::Rc,
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use super::{
    debuginfo::{DebugFiles, Origin, Sources},
    elf::Elfs,
    fold::{Frame, FrameKind},
    stripped::Fallback,
};

/// Caching symbolizer for user addresses (per file and virtual offset) and kernel addresses.
pub struct Names {
    symbolizer: Symbolizer,
    /// By file, then virtual offset: one shared copy of each name, as a function's many
    /// addresses share it.
    user: HashMap<PathBuf, HashMap<u64, Rc<str>>>,
    user_names: HashSet<Rc<str>>,
    kernel: HashMap<u64, String>,
    fallback: HashMap<PathBuf, Fallback>,
    elfs: Rc<Elfs>,
    debug: DebugFiles,
    named_from: BTreeMap<String, Origin>,
}

impl Names {
    /// A symbolizer with demangling on, looking for debug files in `sources`; the files are read
    /// through `elfs`.
    pub fn new(sources: Sources, elfs: Rc<Elfs>) -> Self {
        Names {
            // Function names only: the graphs show no file or line, and a debug file's line tables
            // and inlined functions cost tens of MB to parse.
            symbolizer: Symbolizer::builder().enable_code_info(false).enable_inlined_fns(false).build(),
            user: HashMap::new(),
            user_names: HashSet::new(),
            kernel: HashMap::new(),
            fallback: HashMap::new(),
            elfs,
            debug: DebugFiles::new(sources),
            named_from: BTreeMap::new(),
        }
    }

    /// The modules that got names from a debug file, and from where.
    pub fn named_from_debug_info(&self) -> &BTreeMap<String, Origin> {
        &self.named_from
    }

    /// What went wrong while looking for debug files (one line each).
    pub fn debug_notes(&self) -> &[String] {
        &self.debug.notes
    }

    /// Symbolizes `svmas` (addresses as they appear in the file, i.e. address − load bias) of one file
    /// in one batch, filling the cache.
    pub fn prefetch_user(&mut self, path: &Path, svmas: &[u64]) {
        let missing: Vec<u64> = {
            let known = self.user.get(path);
            let mut v: Vec<u64> =
                svmas.iter().copied().filter(|a| !known.is_some_and(|k| k.contains_key(a))).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if missing.is_empty() {
            return;
        }
        // The debug file keeps the binary's addresses: the same virtual offsets resolve there.
        let elf = self.elfs.get(path);
        let mut found = vec![None; missing.len()];
        if let Some((debug_file, origin)) = elf.as_ref().and_then(|e| self.debug.lookup(e)) {
            found = names(
                &self.symbolizer,
                &Source::Elf(Elf::new(&debug_file)),
                Input::VirtOffset(&missing),
                missing.len(),
            );
            if found.iter().any(Option::is_some) {
                self.named_from.insert(module_name(path), origin);
            }
        }
        let rest: Vec<u64> =
            missing.iter().zip(&found).filter(|(_, n)| n.is_none()).map(|(a, _)| *a).collect();
        if !rest.is_empty() {
            let mut own =
                names(&self.symbolizer, &Source::Elf(Elf::new(path)), Input::VirtOffset(&rest), rest.len())
                    .into_iter();
            for n in found.iter_mut().filter(|n| n.is_none()) {
                *n = own.next().flatten();
            }
        }
        let mut named = Vec::with_capacity(missing.len());
        for (a, n) in missing.into_iter().zip(found) {
            let n = n.or_else(|| {
                let fallback = self
                    .fallback
                    .entry(path.to_owned())
                    .or_insert_with(|| elf.clone().map_or_else(Fallback::default, Fallback::new));
                fallback.name(a)
            });
            let n = n.unwrap_or_else(|| format!("{a:#x}"));
            let shared = match self.user_names.get(n.as_str()) {
                Some(s) => s.clone(),
                None => {
                    let s: Rc<str> = n.into();
                    self.user_names.insert(s.clone());
                    s
                }
            };
            named.push((a, shared));
        }
        self.user.entry(path.to_owned()).or_default().extend(named);
    }

    /// The frame of a user address in file `path` at virtual offset `svma`.
    pub fn user_frame(&mut self, path: &Path, svma: u64) -> Frame {
        self.prefetch_user(path, &[svma]);
        let func = self.user[path][&svma].to_string();
        Frame { kind: FrameKind::User, func, module: module_name(path) }
    }

    /// Symbolizes kernel addresses through kallsyms in one batch (hex when that fails, e.g. without
    /// root, where kallsyms shows zeros).
    pub fn prefetch_kernel(&mut self, addrs: &[u64]) {
        let mut missing: Vec<u64> = addrs.iter().copied().filter(|a| !self.kernel.contains_key(a)).collect();
        missing.sort_unstable();
        missing.dedup();
        if missing.is_empty() {
            return;
        }
        let names = names(
            &self.symbolizer,
            &Source::Kernel(Kernel::default()),
            Input::AbsAddr(&missing),
            missing.len(),
        );
        for (a, n) in missing.into_iter().zip(names) {
            self.kernel.insert(a, n.unwrap_or_else(|| format!("{a:#x}")));
        }
    }

    /// The frame of a kernel address.
    pub fn kernel_frame(&mut self, addr: u64) -> Frame {
        self.prefetch_kernel(&[addr]);
        Frame { kind: FrameKind::Kernel, func: self.kernel[&addr].clone(), module: String::new() }
    }
}

/// A file's module name in frames: its file name.
fn module_name(path: &Path) -> String {
    path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
}

/// One name per address of a batch of `n`; `None` where it has none or the batch fails.
fn names(symbolizer: &Symbolizer, src: &Source<'_>, input: Input<&[u64]>, n: usize) -> Vec<Option<String>> {
    match symbolizer.symbolize(src, input) {
        Ok(syms) => syms
            .into_iter()
            .map(|s| match s {
                Symbolized::Sym(sym) => Some(sym.name.into_owned()),
                Symbolized::Unknown(_) => None,
            })
            .collect(),
        Err(_) => vec![None; n],
    }
}
