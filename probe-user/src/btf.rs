//! A small reader for the kernel's raw BTF (`/sys/kernel/btf/vmlinux`), used to look up kernel
//! struct member offsets and sizes at load time.
//!
//! Rust eBPF programs have no CO-RE relocations, so every kernel struct offset the probe reads
//! must come from the running kernel; hard-coding them breaks on the next kernel. Only what that
//! needs is implemented, written from the format description in the kernel's
//! `Documentation/bpf/btf.rst`: the header, the string section and every type kind's record
//! length (so that type ids come out right), with structs and unions decoded on demand.
//!
//! Only little-endian BTF is read; big-endian BTF is rejected with an error saying so. Every read
//! is bounds-checked: truncated or garbage input gives an error, never a panic.

use std::collections::HashMap;
use std::path::Path;

use anyhow::{Context, Result, bail};

/// `magic` as a little-endian file stores it; the swapped value means big-endian BTF.
const MAGIC: u16 = 0xeb9f;
/// The only BTF version there is.
const VERSION: u8 = 1;
/// Length of the header as version 1 defines it; `hdr_len` may be larger (newer fields).
const HEADER_LEN: usize = 24;
/// Length of the common part of every type record: `name_off`, `info`, `size_or_type`.
const TYPE_LEN: usize = 12;
/// Length of one struct/union member entry: `name_off`, `type`, `offset`.
const MEMBER_LEN: usize = 12;
/// Bounds chains of typedefs/qualifiers and nesting of anonymous members, so that a reference
/// cycle in garbage input ends in an error instead of looping or overflowing the stack.
const MAX_DEPTH: usize = 64;

// Type kinds (`info` bits 24-28).
const KIND_INT: u8 = 1;
const KIND_PTR: u8 = 2;
const KIND_ARRAY: u8 = 3;
const KIND_STRUCT: u8 = 4;
const KIND_UNION: u8 = 5;
const KIND_ENUM: u8 = 6;
const KIND_FWD: u8 = 7;
const KIND_TYPEDEF: u8 = 8;
const KIND_VOLATILE: u8 = 9;
const KIND_CONST: u8 = 10;
const KIND_RESTRICT: u8 = 11;
const KIND_FUNC: u8 = 12;
const KIND_FUNC_PROTO: u8 = 13;
const KIND_VAR: u8 = 14;
const KIND_DATASEC: u8 = 15;
const KIND_FLOAT: u8 = 16;
const KIND_DECL_TAG: u8 = 17;
const KIND_TYPE_TAG: u8 = 18;
const KIND_ENUM64: u8 = 19;

/// Parsed BTF: the string section, one record per type, and a name index of structs/unions.
pub struct Btf {
    /// The type section as read; struct members are decoded from it only when asked for.
    type_data: Vec<u8>,
    /// The string section; `name_off` values index into it.
    strings: Vec<u8>,
    /// Indexed by type id; entry 0 stands for `void`, which has no record.
    types: Vec<Type>,
    /// Struct and union names to type ids, built once so lookups need not scan ~100k types.
    by_name: HashMap<String, u32>,
}

// Summarised by hand: a derived Debug would print megabytes of vmlinux data.
impl std::fmt::Debug for Btf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Btf")
            .field("types", &(self.types.len() - 1))
            .field("structs_and_unions", &self.by_name.len())
            .finish_non_exhaustive()
    }
}

/// The common part of one type record.
#[derive(Clone, Copy)]
struct Type {
    name_off: u32,
    kind: u8,
    kind_flag: bool,
    vlen: u16,
    /// Byte size for INT/STRUCT/UNION/ENUM/FLOAT, the referenced type id for PTR/TYPEDEF/etc.
    size_or_type: u32,
    /// Offset of the kind-specific data following the record, in `type_data`.
    data: usize,
}

/// One struct/union member, with the bitfield encoding already taken apart.
struct Member {
    name_off: u32,
    type_id: u32,
    bit_offset: u32,
    /// Non-zero only for bitfields recorded with `kind_flag` set.
    bitfield_size: u32,
}

impl Btf {
    /// Parses raw BTF bytes.
    pub fn parse(bytes: &[u8]) -> Result<Btf> {
        let magic_bytes = bytes.get(..2).context("BTF is truncated: shorter than its magic number")?;
        let magic = u16::from_le_bytes([magic_bytes[0], magic_bytes[1]]);
        if magic == MAGIC.swap_bytes() {
            bail!("BTF is big-endian (magic {magic:#06x}); only little-endian BTF is supported");
        }
        if magic != MAGIC {
            bail!("not BTF: magic is {magic:#06x}, expected {MAGIC:#06x}");
        }
        let header = bytes
            .get(..HEADER_LEN)
            .with_context(|| format!("BTF is truncated: {} bytes, header needs {HEADER_LEN}", bytes.len()))?;
        let version = header[2];
        if version != VERSION {
            bail!("unsupported BTF version {version} (only version {VERSION} is known)");
        }
        let field = |i: usize| read_u32(header, 4 + 4 * i).map(|v| v as usize);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(0)?, field(1)?, field(2)?, field(3)?, field(4)?);
        if hdr_len < HEADER_LEN {
            bail!("BTF hdr_len {hdr_len} is smaller than the {HEADER_LEN}-byte header");
        }
        // Section offsets count from the end of the header, whatever its length.
        let body = bytes.get(hdr_len..).with_context(|| {
            format!("BTF is truncated: hdr_len {hdr_len} exceeds the {} bytes", bytes.len())
        })?;
        let type_data = section(body, type_off, type_len, "type")?;
        let strings = section(body, str_off, str_len, "string")?;
        // The spec makes offset 0 the empty string, which anonymous types rely on.
        if strings.first() != Some(&0) {
            bail!("BTF string section does not start with the empty string");
        }

        let mut btf = Btf {
            type_data: type_data.to_vec(),
            strings: strings.to_vec(),
            // Typical vmlinux records average ~40 bytes; reserving avoids most regrowth.
            types: Vec::with_capacity(type_data.len() / 32 + 1),
            by_name: HashMap::new(),
        };
        btf.types.push(Type { name_off: 0, kind: 0, kind_flag: false, vlen: 0, size_or_type: 0, data: 0 });
        let mut pos = 0;
        while pos < type_data.len() {
            let id = btf.types.len();
            let record = type_data
                .get(pos..pos + TYPE_LEN)
                .with_context(|| format!("BTF type section is truncated in the record of type id {id}"))?;
            let info = read_u32(record, 4)?;
            let t = Type {
                name_off: read_u32(record, 0)?,
                kind: ((info >> 24) & 0x1f) as u8,
                kind_flag: info >> 31 != 0,
                vlen: info as u16,
                size_or_type: read_u32(record, 8)?,
                data: pos + TYPE_LEN,
            };
            let vlen = usize::from(t.vlen);
            // Every kind's trailing data must be skipped exactly, or all later ids shift.
            let extra = match t.kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION | KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                k => bail!("BTF type id {id} has unknown kind {k}"),
            };
            pos = t.data + extra;
            if pos > type_data.len() {
                bail!("BTF type section is truncated in the data of type id {id} ({})", kind_name(t.kind));
            }
            if (t.kind == KIND_STRUCT || t.kind == KIND_UNION) && t.name_off != 0 {
                let name = str_at(strings, t.name_off)?;
                let id = u32::try_from(id).context("BTF has more than 2^32 types")?;
                // A name can appear more than once (e.g. an empty declaration-only copy); keep
                // the first one with members so lookups see the real layout.
                match btf.by_name.get_mut(name) {
                    Some(prev) => {
                        if btf.types[*prev as usize].vlen == 0 && t.vlen > 0 {
                            *prev = id;
                        }
                    }
                    None => {
                        btf.by_name.insert(name.to_owned(), id);
                    }
                }
            }
            btf.types.push(t);
        }
        Ok(btf)
    }

    /// Reads and parses a raw BTF file such as /sys/kernel/btf/vmlinux.
    pub fn from_file(path: &Path) -> Result<Btf> {
        let bytes = std::fs::read(path).with_context(|| format!("reading BTF from {}", path.display()))?;
        Btf::parse(&bytes).with_context(|| format!("parsing BTF from {}", path.display()))
    }

    /// Byte offset of a dotted member path inside a struct or union, e.g.
    /// ("sock", "__sk_common.skc_family") or ("pid", "numbers"), descending into anonymous
    /// struct/union members and following typedef/const/volatile/type_tag to the member's struct
    /// type for each further path component. Errors name the struct and the missing member.
    /// A bitfield member is an error (we only read whole fields).
    pub fn member_offset(&self, type_name: &str, path: &str) -> Result<u32> {
        let mut id = self.lookup(type_name)?;
        let mut bits: u64 = 0;
        // Where we are, for error messages: "sock", then "sock.__sk_common", ...
        let mut walked = type_name.to_owned();
        for (i, component) in path.split('.').enumerate() {
            if component.is_empty() {
                bail!("empty component in member path `{path}` of `{type_name}`");
            }
            if i > 0 {
                // Only the struct/union itself has members; typedefs and qualifiers lead to it.
                id = self.resolve(id)?;
                let t = self.get(id)?;
                if t.kind != KIND_STRUCT && t.kind != KIND_UNION {
                    bail!(
                        "`{walked}` is a {}, not a struct or union, so it has no member \
                         `{component}`",
                        kind_name(t.kind)
                    );
                }
            }
            let container = self.describe(id)?;
            let (member_bits, member) = self
                .find_member(id, component, 0)?
                .with_context(|| format!("{container} (at `{walked}`) has no member `{component}`"))?;
            walked.push('.');
            walked.push_str(component);
            if self.is_bitfield(&member)? || member_bits % 8 != 0 {
                bail!("`{walked}` is a bitfield; only whole, byte-aligned members can be read");
            }
            bits += member_bits;
            id = member.type_id;
        }
        u32::try_from(bits / 8).with_context(|| format!("offset of `{walked}` overflows u32"))
    }

    /// Size in bytes of a named struct or union (the tests check the parser with it).
    #[cfg(test)]
    pub fn size_of(&self, type_name: &str) -> Result<u32> {
        Ok(self.get(self.lookup(type_name)?)?.size_or_type)
    }

    /// The id of the struct or union with this name.
    fn lookup(&self, type_name: &str) -> Result<u32> {
        self.by_name
            .get(type_name)
            .copied()
            .with_context(|| format!("no struct or union named `{type_name}` in BTF"))
    }

    /// The record of a type id; 0 (void) and ids past the end are errors.
    fn get(&self, id: u32) -> Result<&Type> {
        match self.types.get(id as usize) {
            Some(t) if id != 0 => Ok(t),
            _ => bail!("BTF refers to type id {id}, which does not exist"),
        }
    }

    /// The NUL-terminated string at `off` in the string section.
    fn name(&self, off: u32) -> Result<&str> {
        str_at(&self.strings, off)
    }

    /// "struct sock", "union <anonymous>" and the like, for error messages.
    fn describe(&self, id: u32) -> Result<String> {
        let t = self.get(id)?;
        let name = self.name(t.name_off)?;
        let name = if name.is_empty() { "<anonymous>" } else { name };
        Ok(format!("{} {name}", kind_name(t.kind)))
    }

    /// Follows typedefs and qualifiers to the type they name.
    fn resolve(&self, mut id: u32) -> Result<u32> {
        for _ in 0..MAX_DEPTH {
            let t = self.get(id)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.size_or_type
                }
                _ => return Ok(id),
            }
        }
        bail!("BTF type id {id}: typedef/qualifier chain longer than {MAX_DEPTH}");
    }

    /// The members of a struct or union.
    fn members(&self, t: &Type) -> Result<Vec<Member>> {
        let len = usize::from(t.vlen) * MEMBER_LEN;
        let raw = self
            .type_data
            .get(t.data..t.data + len)
            .context("BTF struct members run past the type section")?;
        let (entries, _) = raw.as_chunks::<MEMBER_LEN>();
        Ok(entries
            .iter()
            .map(|e| {
                let offset = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
                // With kind_flag, offset packs the bitfield size above a 24-bit bit offset.
                let (bit_offset, bitfield_size) =
                    if t.kind_flag { (offset & 0x00ff_ffff, offset >> 24) } else { (offset, 0) };
                Member {
                    name_off: u32::from_le_bytes([e[0], e[1], e[2], e[3]]),
                    type_id: u32::from_le_bytes([e[4], e[5], e[6], e[7]]),
                    bit_offset,
                    bitfield_size,
                }
            })
            .collect())
    }

    /// Finds a named member of struct/union `id`, looking inside anonymous struct/union members
    /// as C does; returns its bit offset from the start of `id` and the member.
    fn find_member(&self, id: u32, name: &str, depth: usize) -> Result<Option<(u64, Member)>> {
        if depth > MAX_DEPTH {
            bail!("BTF anonymous members nest deeper than {MAX_DEPTH}");
        }
        let t = self.get(id)?;
        for m in self.members(t)? {
            if m.name_off != 0 {
                if self.name(m.name_off)? == name {
                    return Ok(Some((u64::from(m.bit_offset), m)));
                }
                continue;
            }
            // Anonymous: a nested struct/union whose members belong to this one in C.
            let inner = self.resolve(m.type_id)?;
            let kind = self.get(inner)?.kind;
            if (kind == KIND_STRUCT || kind == KIND_UNION)
                && let Some((bits, found)) = self.find_member(inner, name, depth + 1)?
            {
                return Ok(Some((u64::from(m.bit_offset) + bits, found)));
            }
        }
        Ok(None)
    }

    /// Whether a member is a bitfield, in either of BTF's two encodings: a size in the member's
    /// offset (kind_flag set) or an INT type narrower than its storage or shifted inside it.
    fn is_bitfield(&self, m: &Member) -> Result<bool> {
        if m.bitfield_size != 0 {
            return Ok(true);
        }
        if m.type_id == 0 {
            return Ok(false);
        }
        let t = self.get(self.resolve(m.type_id)?)?;
        if t.kind != KIND_INT {
            return Ok(false);
        }
        let encoding = read_u32(&self.type_data, t.data)?;
        let (nr_bits, int_offset) = (encoding & 0xff, (encoding >> 16) & 0xff);
        Ok(int_offset != 0 || u64::from(nr_bits) != u64::from(t.size_or_type) * 8)
    }
}

/// The `len` bytes at `off` of the data following the header, or an error naming the section.
fn section<'a>(body: &'a [u8], off: usize, len: usize, what: &str) -> Result<&'a [u8]> {
    off.checked_add(len).and_then(|end| body.get(off..end)).with_context(|| {
        format!(
            "BTF is truncated: {what} section ({len} bytes at {off}) exceeds the {} bytes \
                 after the header",
            body.len()
        )
    })
}

/// The NUL-terminated string at `off` in a string section.
fn str_at(strings: &[u8], off: u32) -> Result<&str> {
    let tail =
        strings.get(off as usize..).with_context(|| format!("BTF string offset {off} is out of range"))?;
    let len = tail
        .iter()
        .position(|&b| b == 0)
        .with_context(|| format!("BTF string at offset {off} is not NUL-terminated"))?;
    std::str::from_utf8(&tail[..len]).with_context(|| format!("BTF string at offset {off} is not UTF-8"))
}

/// A little-endian u32 at `off`, or an error if it runs past the end.
fn read_u32(buf: &[u8], off: usize) -> Result<u32> {
    let b = buf
        .get(off..off.saturating_add(4))
        .with_context(|| format!("BTF is truncated: no u32 at offset {off}"))?;
    Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// The kind's name as btf.rst spells it, for error messages.
fn kind_name(kind: u8) -> &'static str {
    match kind {
        0 => "void",
        KIND_INT => "int",
        KIND_PTR => "pointer",
        KIND_ARRAY => "array",
        KIND_STRUCT => "struct",
        KIND_UNION => "union",
        KIND_ENUM => "enum",
        KIND_FWD => "forward declaration",
        KIND_TYPEDEF => "typedef",
        KIND_VOLATILE => "volatile",
        KIND_CONST => "const",
        KIND_RESTRICT => "restrict",
        KIND_FUNC => "function",
        KIND_FUNC_PROTO => "function prototype",
        KIND_VAR => "variable",
        KIND_DATASEC => "data section",
        KIND_FLOAT => "float",
        KIND_DECL_TAG => "decl tag",
        KIND_TYPE_TAG => "type tag",
        KIND_ENUM64 => "enum64",
        _ => "unknown kind",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds BTF blobs by hand: a string section and type records, ids handed out in order.
    struct Builder {
        strings: Vec<u8>,
        types: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Builder { strings: vec![0], types: Vec::new(), next_id: 1 }
        }

        fn str(&mut self, s: &str) -> u32 {
            if s.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(s.as_bytes());
            self.strings.push(0);
            off
        }

        fn record(&mut self, name: &str, kind: u8, kind_flag: bool, vlen: u16, sot: u32) -> u32 {
            let name_off = self.str(name);
            let info = (u32::from(kind_flag) << 31) | (u32::from(kind) << 24) | u32::from(vlen);
            for v in [name_off, info, sot] {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
            self.next_id += 1;
            self.next_id - 1
        }

        fn u32s(&mut self, vals: &[u32]) {
            for v in vals {
                self.types.extend_from_slice(&v.to_le_bytes());
            }
        }

        fn int(&mut self, name: &str, size: u32) -> u32 {
            let id = self.record(name, KIND_INT, false, 0, size);
            self.u32s(&[size * 8]);
            id
        }

        /// An INT whose encoding declares `bits` bits, as old-style bitfield members use.
        fn int_bits(&mut self, name: &str, size: u32, bits: u32) -> u32 {
            let id = self.record(name, KIND_INT, false, 0, size);
            self.u32s(&[bits]);
            id
        }

        fn typedef(&mut self, name: &str, ty: u32) -> u32 {
            self.record(name, KIND_TYPEDEF, false, 0, ty)
        }

        fn modifier(&mut self, kind: u8, ty: u32) -> u32 {
            self.record("", kind, false, 0, ty)
        }

        fn array(&mut self, elem: u32, index: u32, n: u32) -> u32 {
            let id = self.record("", KIND_ARRAY, false, 0, 0);
            self.u32s(&[elem, index, n]);
            id
        }

        /// A struct or union; members are (name, type, bit offset, bitfield size). A non-zero
        /// bitfield size anywhere sets kind_flag, as the kernel encodes it.
        fn composite(&mut self, kind: u8, name: &str, size: u32, m: &[(&str, u32, u32, u32)]) -> u32 {
            let kind_flag = m.iter().any(|x| x.3 != 0);
            let id = self.record(name, kind, kind_flag, m.len() as u16, size);
            for &(mname, ty, off, bits) in m {
                let name_off = self.str(mname);
                let offset = if kind_flag { (bits << 24) | off } else { off };
                self.u32s(&[name_off, ty, offset]);
            }
            id
        }

        fn fwd(&mut self, name: &str) -> u32 {
            self.record(name, KIND_FWD, false, 0, 0)
        }

        fn build(&self) -> Vec<u8> {
            let mut out = Vec::new();
            out.extend_from_slice(&MAGIC.to_le_bytes());
            out.extend_from_slice(&[VERSION, 0]);
            let type_len = self.types.len() as u32;
            let str_len = self.strings.len() as u32;
            for v in [HEADER_LEN as u32, 0, type_len, type_len, str_len] {
                out.extend_from_slice(&v.to_le_bytes());
            }
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    /// A miniature `struct sock`/`struct pid` world:
    ///
    /// ```c
    /// struct sock_common {
    ///     int skc_x; short skc_family; union { int a; struct { int b; int c; }; };
    /// };
    /// typedef struct sock_common sock_common_t;
    /// struct sock {
    ///     long pad; const sock_common_t __sk_common; unsigned flags:3, other:5; int tail;
    /// };
    /// struct upid { int nr; void *ns; };
    /// struct pid { int count; struct upid numbers[1]; };
    /// union oldbits { unsigned bits:3; unsigned whole; }; // bitfield without kind_flag
    /// ```
    fn sample() -> Vec<u8> {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let short = b.int("short", 2);
        let long = b.int("long", 8);
        let uint = b.int("unsigned int", 4);
        let void_ptr = b.record("", KIND_PTR, false, 0, 0);
        // Anonymous struct { int b; int c; } inside an anonymous union.
        let inner = b.composite(KIND_STRUCT, "", 8, &[("b", int, 0, 0), ("c", int, 32, 0)]);
        let anon_union = b.composite(KIND_UNION, "", 8, &[("a", int, 0, 0), ("", inner, 0, 0)]);
        let sock_common = b.composite(
            KIND_STRUCT,
            "sock_common",
            16,
            &[("skc_x", int, 0, 0), ("skc_family", short, 32, 0), ("", anon_union, 64, 0)],
        );
        let td = b.typedef("sock_common_t", sock_common);
        let const_td = b.modifier(KIND_CONST, td);
        // A forward declaration and an empty copy of the name must not hide the real struct.
        b.fwd("sock");
        b.composite(KIND_STRUCT, "sock", 0, &[]);
        b.composite(
            KIND_STRUCT,
            "sock",
            32,
            &[
                ("pad", long, 0, 0),
                ("__sk_common", const_td, 64, 0),
                ("flags", uint, 192, 3),
                ("other", uint, 195, 5),
                ("tail", int, 224, 0),
            ],
        );
        let upid = b.composite(KIND_STRUCT, "upid", 16, &[("nr", int, 0, 0), ("ns", void_ptr, 64, 0)]);
        let numbers = b.array(upid, int, 1);
        b.composite(KIND_STRUCT, "pid", 24, &[("count", int, 0, 0), ("numbers", numbers, 64, 0)]);
        // Old-style bitfield: no kind_flag, the INT's encoding says 3 bits.
        let three_bits = b.int_bits("unsigned int", 4, 3);
        b.composite(KIND_UNION, "oldbits", 4, &[("bits", three_bits, 0, 0), ("whole", uint, 0, 0)]);
        b.build()
    }

    #[test]
    fn nested_anonymous_members() -> Result<()> {
        let btf = Btf::parse(&sample())?;
        assert_eq!(btf.member_offset("sock_common", "skc_family")?, 4);
        assert_eq!(btf.member_offset("sock_common", "a")?, 8);
        assert_eq!(btf.member_offset("sock_common", "b")?, 8);
        assert_eq!(btf.member_offset("sock_common", "c")?, 12);
        assert_eq!(btf.member_offset("pid", "numbers")?, 8);
        assert_eq!(btf.member_offset("upid", "nr")?, 0);
        assert_eq!(btf.member_offset("oldbits", "whole")?, 0);
        Ok(())
    }

    #[test]
    fn dotted_path_through_typedef_and_const() -> Result<()> {
        let btf = Btf::parse(&sample())?;
        assert_eq!(btf.member_offset("sock", "__sk_common")?, 8);
        assert_eq!(btf.member_offset("sock", "__sk_common.skc_family")?, 12);
        assert_eq!(btf.member_offset("sock", "__sk_common.c")?, 8 + 12);
        assert_eq!(btf.member_offset("sock", "tail")?, 28);
        // The non-empty `sock` wins over the forward declaration and the empty copy.
        assert_eq!(btf.size_of("sock")?, 32);
        assert_eq!(btf.size_of("sock_common")?, 16);
        Ok(())
    }

    #[test]
    fn bitfields_refused() -> Result<()> {
        let btf = Btf::parse(&sample())?;
        for (ty, path) in [("sock", "flags"), ("sock", "other"), ("oldbits", "bits")] {
            let err = btf.member_offset(ty, path).unwrap_err().to_string();
            assert!(err.contains("bitfield") && err.contains(path), "{err}");
        }
        Ok(())
    }

    #[test]
    fn missing_member_and_type_errors() -> Result<()> {
        let btf = Btf::parse(&sample())?;
        let err = btf.member_offset("sock", "__sk_common.skc_nope").unwrap_err().to_string();
        assert_eq!(err, "struct sock_common (at `sock.__sk_common`) has no member `skc_nope`");
        let err = btf.member_offset("sock", "nope").unwrap_err().to_string();
        assert_eq!(err, "struct sock (at `sock`) has no member `nope`");
        let err = btf.member_offset("sock", "tail.x").unwrap_err().to_string();
        assert!(err.contains("`sock.tail` is a int, not a struct or union"), "{err}");
        let err = btf.member_offset("sock", "pad..x").unwrap_err().to_string();
        assert!(err.contains("empty component"), "{err}");
        let err = btf.size_of("no_such").unwrap_err().to_string();
        assert_eq!(err, "no struct or union named `no_such` in BTF");
        // Typedef names are not struct names.
        assert!(btf.size_of("sock_common_t").is_err());
        Ok(())
    }

    #[test]
    fn truncated_input_errors() {
        let blob = sample();
        assert!(Btf::parse(&blob).is_ok());
        // The header states both section lengths, so every shorter prefix is an error.
        for n in 0..blob.len() {
            assert!(Btf::parse(&blob[..n]).is_err(), "prefix of {n} bytes parsed");
        }
        // A type section that ends inside a record, with a header that agrees with it.
        let mut b = Builder::new();
        b.int("int", 4);
        b.types.truncate(b.types.len() - 2);
        let err = Btf::parse(&b.build()).unwrap_err().to_string();
        assert!(err.contains("truncated in the data of type id 1"), "{err}");
        // An unknown kind cannot be skipped, so it is an error rather than shifting later ids.
        let mut b = Builder::new();
        b.record("x", 31, false, 0, 0);
        let err = Btf::parse(&b.build()).unwrap_err().to_string();
        assert!(err.contains("unknown kind 31"), "{err}");
    }

    #[test]
    fn garbage_never_panics() {
        let blob = sample();
        // Deterministic pseudo-random byte corruptions, then every query on whatever parses.
        let mut seed: u32 = 0x1234_5678;
        for _ in 0..20_000 {
            let mut bad = blob.clone();
            for _ in 0..3 {
                seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                let i = (seed >> 8) as usize % bad.len();
                bad[i] = (seed >> 24) as u8;
            }
            if let Ok(btf) = Btf::parse(&bad) {
                for (ty, path) in [("sock", "__sk_common.c"), ("pid", "numbers"), ("oldbits", "bits")] {
                    let _ = btf.member_offset(ty, path);
                    let _ = btf.size_of(ty);
                }
            }
        }
    }

    #[test]
    fn wrong_magic() {
        let mut blob = sample();
        blob.swap(0, 1);
        let err = Btf::parse(&blob).unwrap_err().to_string();
        assert!(err.contains("big-endian"), "{err}");
        blob[0] = 0x7f;
        let err = Btf::parse(&blob).unwrap_err().to_string();
        assert!(err.starts_with("not BTF: magic is"), "{err}");
        let mut blob = sample();
        blob[2] = 2;
        let err = Btf::parse(&blob).unwrap_err().to_string();
        assert!(err.contains("unsupported BTF version 2"), "{err}");
    }

    /// The running kernel's BTF; CI kernels always have CONFIG_DEBUG_INFO_BTF, so a missing file
    /// is a failure, not a skip.
    #[test]
    fn real_vmlinux() -> Result<()> {
        let path = Path::new("/sys/kernel/btf/vmlinux");
        if !path.exists() {
            panic!(
                "{} is missing: this kernel lacks CONFIG_DEBUG_INFO_BTF, which reloadscope needs",
                path.display()
            );
        }
        let start = std::time::Instant::now();
        let btf = Btf::from_file(path)?;
        println!("parsed {} BTF types from {} in {:?}", btf.types.len() - 1, path.display(), start.elapsed());

        let pid = btf.member_offset("task_struct", "pid")?;
        let tgid = btf.member_offset("task_struct", "tgid")?;
        // Both pid_t and declared next to each other in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert_eq!(
            btf.member_offset("sock", "__sk_common.skc_family")?,
            btf.member_offset("sock_common", "skc_family")?
        );
        assert!(btf.size_of("unix_sock")? > btf.size_of("sock")?);
        assert_eq!(btf.member_offset("unix_sock", "sk")?, 0);
        Ok(())
    }
}
