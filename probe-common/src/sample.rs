//! CPU samples: kernel stack id, user registers and a copy of the top of the user stack, so user
//! space can unwind binaries without frame pointers (Debian's nginx has none).

use crate::{COMM_LEN, EventHeader, lua::LuaStack};

/// Bytes of user stack copied per sample (perf's default for `--call-graph dwarf`).
pub const USER_STACK_LEN: usize = 8192;

/// One CPU sample of a target thread.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuSample {
    /// `kind` is [`crate::kind::CPU_SAMPLE`].
    pub hdr: EventHeader,
    /// The thread's comm.
    pub comm: [u8; COMM_LEN],
    /// Kernel stack in the `STACKS` map, or negative when the sample hit user mode.
    pub kstack_id: i64,
    /// Frame-pointer user stack in the `STACKS` map, or negative.
    pub ustack_id: i64,
    /// User instruction pointer.
    pub ip: u64,
    /// User stack pointer.
    pub sp: u64,
    /// User frame pointer register (rbp), a general register in code without frame pointers.
    pub bp: u64,
    /// Bytes of `stack` that hold the copy, starting at `sp`.
    pub stack_len: u32,
    /// 1 when the sample interrupted user mode, 0 when it hit the kernel.
    pub user_mode: u32,
    /// The Lua stack, when the process runs a LuaJIT VM ([`crate::lua`]).
    pub lua: LuaStack,
    /// The user stack from `sp` upwards.
    pub stack: [u8; USER_STACK_LEN],
}

use core::mem::size_of;
const _: () = assert!(size_of::<CpuSample>() == 88 + size_of::<LuaStack>() + USER_STACK_LEN);
