//! `/proc/PID/stat`: the few fields every crate asks for.

/// The fields of `/proc/PID/stat` we use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    /// Process id.
    pub pid: u32,
    /// The command name (may hold spaces and parentheses).
    pub comm: String,
    /// State letter: `R`, `S`, `Z` (zombie), `X` (dead), ...
    pub state: char,
    /// Parent pid.
    pub ppid: u32,
}

impl Stat {
    /// True unless the process is a zombie or dead.
    pub fn is_alive(&self) -> bool {
        !matches!(self.state, 'Z' | 'X')
    }
}

/// Parses the text of a stat file.
pub fn parse(text: &str) -> Option<Stat> {
    let open = text.find('(')?;
    // The comm may hold `)`: the fields resume after the last one.
    let close = text.rfind(')')?;
    let pid = text[..open].trim().parse().ok()?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    Some(Stat { pid, comm, state, ppid })
}

/// Reads `/proc/PID/stat`; `None` when the process is gone.
pub fn read(pid: u32) -> Option<Stat> {
    parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_odd_comms() {
        let s = parse("42 (a) b (c)) S 7 42 42 0 -1").unwrap();
        assert_eq!(s, Stat { pid: 42, comm: "a) b (c)".into(), state: 'S', ppid: 7 });
        assert!(s.is_alive());
        assert!(!parse("1 (z) Z 0").unwrap().is_alive());
        assert_eq!(parse("garbage"), None);
    }

    #[test]
    fn reads_this_process() {
        let me = read(std::process::id()).unwrap();
        assert!(me.pid == std::process::id() && me.is_alive(), "{me:?}");
    }
}
