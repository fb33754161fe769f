//! Pure folding: frames of one sample → a folded-stack line (`comm;root;…;leaf count`).

use std::collections::BTreeMap;
use std::io::Write;
use std::rc::Rc;

/// Where a frame comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FrameKind {
    /// A native user-space frame (ELF function in some module).
    User,
    /// A kernel frame (from the stack map, named through kallsyms).
    Kernel,
    /// A Lua function, from the kernel's walk of the Lua stack.
    Lua,
}

/// One symbolized frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// What kind of frame.
    pub kind: FrameKind,
    /// Function name (demangled), or a hex address when unknown.
    pub func: String,
    /// Module basename (`nginx`, `libc.so.6`); empty for kernel frames.
    pub module: String,
}

impl Frame {
    /// The label used in folded stacks: `func [module]` for user frames, `func_[k]` for the kernel,
    /// `func [lua]` for Lua. Semicolons and spaces inside names would break the folded format and are
    /// replaced.
    pub fn label(&self) -> String {
        let func = self.func.replace(';', ":").replace(' ', "_");
        match self.kind {
            FrameKind::Kernel => format!("{func}_[k]"),
            FrameKind::User if self.module.is_empty() => func,
            FrameKind::User => format!("{func} [{}]", self.module.replace(';', ":").replace(' ', "_")),
            // `name file.lua:12`: the space is part of the name (folded lines split at the last one).
            FrameKind::Lua => format!("{} [lua]", self.func.replace(';', ":")),
        }
    }
}

/// The folded stack (without count) of one sample. `user` and `kernel` are leaf first, as unwound.
pub fn fold_stack(comm: &str, user: &[Frame], kernel: &[Frame]) -> String {
    let mut parts = Vec::with_capacity(1 + user.len() + kernel.len());
    parts.push(comm.replace(';', ":").replace(' ', "_"));
    parts.extend(user.iter().rev().map(Frame::label));
    parts.extend(kernel.iter().rev().map(Frame::label));
    parts.join(";")
}

/// Counts of folded stacks. A sample's stack goes into several graphs (its process, its
/// generation, before or after the reload): they share one copy of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Folded(pub BTreeMap<Rc<str>, u64>);

impl Folded {
    /// Adds one sample of `stack`.
    pub fn add(&mut self, stack: &Rc<str>) {
        match self.0.get_mut(stack) {
            Some(c) => *c += 1,
            None => {
                self.0.insert(stack.clone(), 1);
            }
        }
    }

    /// Writes the folded lines `stack count`, sorted by stack.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        for (s, c) in &self.0 {
            writeln!(w, "{s} {c}")?;
        }
        w.flush()
    }

    /// Total samples.
    pub fn total(&self) -> u64 {
        self.0.values().sum()
    }

    /// True when there is no sample.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Samples whose stack has a frame (`func [module]` label) for which `pred` holds.
    pub fn samples_with(&self, pred: impl Fn(&str) -> bool) -> u64 {
        self.0.iter().filter(|(s, _)| s.split(';').skip(1).any(&pred)).map(|(_, c)| c).sum()
    }

    /// The stack with the most samples (ties: the first in order).
    pub fn heaviest(&self) -> Option<(&str, u64)> {
        let mut best: Option<(&str, u64)> = None;
        for (s, &c) in &self.0 {
            if best.is_none_or(|(_, b)| c > b) {
                best = Some((s, c));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(f: &str, m: &str) -> Frame {
        Frame { kind: FrameKind::User, func: f.into(), module: m.into() }
    }

    fn kernel(f: &str) -> Frame {
        Frame { kind: FrameKind::Kernel, func: f.into(), module: String::new() }
    }

    #[test]
    fn folds_user_root_first_then_kernel_root_first() {
        let u = [user("c", "burn"), user("b", "burn"), user("main", "burn")];
        let k = [kernel("do_epoll_wait"), kernel("entry_SYSCALL_64")];
        assert_eq!(
            fold_stack("burn", &u, &k),
            "burn;main [burn];b [burn];c [burn];entry_SYSCALL_64_[k];do_epoll_wait_[k]"
        );
    }

    #[test]
    fn sanitizes_separators() {
        let u = [user("operator;x y", "my lib")];
        assert_eq!(fold_stack("a b", &u, &[]), "a_b;operator:x_y [my_lib]");
        assert_eq!(
            Frame { kind: FrameKind::Lua, func: "h".into(), module: String::new() }.label(),
            "h [lua]"
        );
    }

    #[test]
    fn counts_and_heaviest() {
        let mut f = Folded::default();
        assert!(f.is_empty());
        assert_eq!(f.heaviest(), None);
        f.add(&"x;a".into());
        f.add(&"x;b".into());
        f.add(&"x;b".into());
        assert_eq!(f.total(), 3);
        assert_eq!(f.heaviest(), Some(("x;b", 2)));
        let mut out = Vec::new();
        f.write_to(&mut out).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "x;a 1\nx;b 2\n");
        // The command name is not a frame.
        f.add(&"a;c".into());
        assert_eq!(f.samples_with(|fr| fr == "b"), 2);
        assert_eq!(f.samples_with(|fr| fr == "a"), 1);
    }
}
