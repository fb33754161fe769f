//! Reading one field of a read-only global. `Global::load` reads the whole struct, a volatile
//! load per field (dozens for `KOFFSETS`), on every call: the hot paths read only what they use.

/// One field of a `Global<$ty>` static.
macro_rules! global_field {
    ($global:path, $ty:ty, $field:ident) => {
        // SAFETY: `Global<T>` is repr(transparent) over an always-initialised T; a volatile read
        // of one of its fields, which the loader set before any program ran.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*(&raw const $global).cast::<$ty>()).$field)) }
    };
}

/// One field of `CONFIG`.
macro_rules! config {
    ($field:ident) => {
        global_field!(crate::CONFIG, probe_common::ProbeConfig, $field)
    };
}

/// One field of `KOFFSETS`.
macro_rules! koffset {
    ($field:ident) => {
        global_field!(crate::KOFFSETS, probe_common::KernelOffsets, $field)
    };
}
