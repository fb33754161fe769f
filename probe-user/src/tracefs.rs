//! tracefs: where it is mounted, and the `format` files that give tracepoint field offsets of the
//! running kernel (so no offset is compiled in).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

/// One field of a tracepoint record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    /// The field's name, without type or array suffix.
    pub name: String,
    /// Byte offset in the record.
    pub offset: u32,
    /// Size in bytes.
    pub size: u32,
}

/// A parsed `events/<category>/<name>/format` file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Format {
    /// The tracepoint's name.
    pub name: String,
    /// Its fields, in file order.
    pub fields: Vec<Field>,
}

impl Format {
    /// The named field, or an error naming the tracepoint and field.
    pub fn field(&self, name: &str) -> Result<&Field> {
        self.fields
            .iter()
            .find(|f| f.name == name)
            .ok_or_else(|| anyhow!("tracepoint {} has no field '{name}' on this kernel", self.name))
    }
}

/// Parses the text of a tracefs `format` file.
pub fn parse_format(text: &str) -> Result<Format> {
    let mut name = None;
    let mut fields = Vec::new();
    for line in text.lines().map(str::trim) {
        if let Some(n) = line.strip_prefix("name:") {
            name = Some(n.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("field:") {
            fields.push(parse_field(rest).with_context(|| format!("bad format line: {line}"))?);
        }
    }
    let name = name.ok_or_else(|| anyhow!("format file has no name line"))?;
    Ok(Format { name, fields })
}

fn parse_field(rest: &str) -> Result<Field> {
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next().unwrap_or_default();
    let mut offset = None;
    let mut size = None;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            offset = Some(v.parse()?);
        } else if let Some(v) = p.strip_prefix("size:") {
            size = Some(v.parse()?);
        }
    }
    let last = decl.rsplit([' ', '*']).next().unwrap_or_default();
    let name = last.split('[').next().unwrap_or_default().to_string();
    if name.is_empty() {
        bail!("no field name");
    }
    Ok(Field {
        name,
        offset: offset.ok_or_else(|| anyhow!("no offset"))?,
        size: size.ok_or_else(|| anyhow!("no size"))?,
    })
}

/// Candidate mount points, newest convention first.
const MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting it at /sys/kernel/tracing when it is not mounted yet.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = MOUNTS.iter().map(Path::new).find(|p| p.join("events").is_dir()) {
        return Ok(found.to_path_buf());
    }
    let target = Path::new(MOUNTS[0]);
    let (src, dst, fs) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: all strings are NUL-terminated literals; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 || !target.join("events").is_dir() {
        bail!(
            "tracefs is not mounted and mounting it at {} failed ({}); this kernel needs \
             CONFIG_FTRACE and tracefs",
            target.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(target.to_path_buf())
}

/// The directory of tracepoint `category:name` below `root`: there when the kernel has it.
pub fn event_dir(root: &Path, category: &str, name: &str) -> PathBuf {
    root.join("events").join(category).join(name)
}

/// Reads and parses `events/<category>/<name>/format` below `root`.
pub fn read_format(root: &Path, category: &str, name: &str) -> Result<Format> {
    let path = event_dir(root, category, name).join("format");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("tracepoint {category}:{name} is not available on this kernel ({})", path.display())
    })?;
    parse_format(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PWAIT2: &str = "name: sys_enter_epoll_pwait2\nID: 1065\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:int epfd;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:const struct __kernel_timespec * timeout;\toffset:40;\tsize:8;\tsigned:0;\n\
\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:char comm[16];\toffset:60;\tsize:16;\tsigned:0;\n\n\
print fmt: \"epfd: 0x%08lx\"\n";

    #[test]
    fn parses_names_offsets_and_sizes() {
        let f = parse_format(PWAIT2).unwrap();
        assert_eq!(f.name, "sys_enter_epoll_pwait2");
        assert_eq!(f.field("epfd").unwrap(), &Field { name: "epfd".into(), offset: 16, size: 8 });
        assert_eq!(f.field("timeout").unwrap().offset, 40);
        assert_eq!(f.field("parent_comm").unwrap().size, 4);
        assert_eq!(f.field("comm").unwrap().offset, 60);
        assert_eq!(f.field("__syscall_nr").unwrap().offset, 8);
    }

    #[test]
    fn missing_field_names_the_tracepoint() {
        let err = parse_format(PWAIT2).unwrap().field("nope").unwrap_err().to_string();
        assert!(err.contains("sys_enter_epoll_pwait2") && err.contains("nope"), "{err}");
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_format("no name here").is_err());
        assert!(parse_format("name: x\n\tfield:int a;\toffset:zz;\tsize:4;\n").is_err());
    }
}
