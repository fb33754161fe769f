//! Names for unwound addresses: blazesym on the ELF files (symtab, dynsym, DWARF, debug links) and
//! kallsyms; where a stripped file has no symbol, the fallbacks of [`super::stripped`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use blazesym::symbolize::{
    Input, Symbolized, Symbolizer,
    source::{Elf, Kernel, Source},
};

use super::{
    fold::{Frame, FrameKind},
    stripped::Fallback,
};

/// Caching symbolizer for user addresses (per file and virtual offset) and kernel addresses.
pub struct Names {
    symbolizer: Symbolizer,
    user: HashMap<(PathBuf, u64), String>,
    kernel: HashMap<u64, String>,
    fallback: HashMap<PathBuf, Fallback>,
}

impl Default for Names {
    fn default() -> Self {
        Self::new()
    }
}

impl Names {
    /// A symbolizer with demangling on.
    pub fn new() -> Self {
        Names {
            symbolizer: Symbolizer::new(),
            user: HashMap::new(),
            kernel: HashMap::new(),
            fallback: HashMap::new(),
        }
    }

    /// Symbolizes `svmas` (addresses as they appear in the file, i.e. address − load bias) of one file
    /// in one batch, filling the cache.
    pub fn prefetch_user(&mut self, path: &Path, svmas: &[u64]) {
        let missing: Vec<u64> = {
            let mut v: Vec<u64> =
                svmas.iter().copied().filter(|a| !self.user.contains_key(&(path.to_owned(), *a))).collect();
            v.sort_unstable();
            v.dedup();
            v
        };
        if missing.is_empty() {
            return;
        }
        let names =
            names(&self.symbolizer, &Source::Elf(Elf::new(path)), Input::VirtOffset(&missing), missing.len());
        for (a, n) in missing.into_iter().zip(names) {
            let n = n.or_else(|| {
                let fallback = self.fallback.entry(path.to_owned()).or_insert_with(|| Fallback::load(path));
                fallback.name(a)
            });
            self.user.insert((path.to_owned(), a), n.unwrap_or_else(|| format!("{a:#x}")));
        }
    }

    /// The frame of a user address in file `path` at virtual offset `svma`.
    pub fn user_frame(&mut self, path: &Path, svma: u64) -> Frame {
        self.prefetch_user(path, &[svma]);
        let func = self.user[&(path.to_owned(), svma)].clone();
        let module = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        Frame { kind: FrameKind::User, func, module }
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
