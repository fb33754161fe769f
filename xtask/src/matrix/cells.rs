//! The matrix's cells: one combination of the axes' values, named for its directory, shown in the
//! table, and turned into the `cargo xtask run` options that build it.

use std::fmt;

use serde::Serialize;

use crate::stack::{Behaviour, JsPdk, PyPdk};

/// A CPU limit, or none.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(transparent)]
pub struct CpuLimit(pub Option<f64>);

/// The word for no limit on the command line and in the table.
pub const NO_LIMIT: &str = "none";

impl CpuLimit {
    /// `none`, or a CPU count above 0.
    pub fn parse(s: &str) -> Result<Self, String> {
        if s == NO_LIMIT {
            return Ok(CpuLimit(None));
        }
        match s.parse::<f64>() {
            Ok(c) if c > 0.0 && c.is_finite() => Ok(CpuLimit(Some(c))),
            _ => Err(format!("'{s}' is neither `{NO_LIMIT}` nor a number of CPUs above 0")),
        }
    }
}

impl fmt::Display for CpuLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str(NO_LIMIT),
            Some(c) => write!(f, "{c}"),
        }
    }
}

/// The axes a matrix spans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Axis {
    Behaviour,
    JsPdk,
    PythonPdk,
    CpuLimit,
}

impl Axis {
    /// Every axis, in the table's column order.
    pub const ALL: [Axis; 4] = [Axis::Behaviour, Axis::JsPdk, Axis::PythonPdk, Axis::CpuLimit];

    /// The table's column header.
    pub fn header(self) -> &'static str {
        match self {
            Axis::Behaviour => "behaviour",
            Axis::JsPdk => "js pdk",
            Axis::PythonPdk => "python pdk",
            Axis::CpuLimit => "CPU limit",
        }
    }
}

/// One combination of the axes' values.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cell {
    pub behaviour: Behaviour,
    pub js_pdk: JsPdk,
    pub python_pdk: PyPdk,
    pub cpu_limit: CpuLimit,
}

impl Cell {
    /// The value of one axis, as the table prints it.
    pub fn value(&self, axis: Axis) -> String {
        match axis {
            Axis::Behaviour => self.behaviour.name().to_string(),
            Axis::JsPdk => self.js_pdk.version().to_string(),
            Axis::PythonPdk => self.python_pdk.version().to_string(),
            Axis::CpuLimit => self.cpu_limit.to_string(),
        }
    }

    /// One axis' value in a sentence: `kong-2.7`, `JS kong-pdk 0.5.0`, `a 0.15-CPU limit`.
    pub fn phrase(&self, axis: Axis) -> String {
        match axis {
            Axis::Behaviour => self.behaviour.name().to_string(),
            Axis::JsPdk => format!("JS kong-pdk {}", self.js_pdk.version()),
            Axis::PythonPdk => format!("Python kong-pdk {}", self.python_pdk.version()),
            Axis::CpuLimit => match self.cpu_limit.0 {
                None => "no CPU limit".to_string(),
                Some(c) => format!("a {c}-CPU limit"),
            },
        }
    }

    /// The cell's directory name, e.g. `kong-2.7_js-0.5.0_py-0.36_cpu-none`.
    pub fn dir_name(&self) -> String {
        format!(
            "{}_js-{}_py-{}_cpu-{}",
            self.behaviour.name(),
            self.js_pdk.version(),
            self.python_pdk.version(),
            self.cpu_limit
        )
    }

    /// `kong-2.7 · js 0.5.0 · python 0.36 · cpu none`, for progress lines.
    pub fn label(&self) -> String {
        format!(
            "{} · js {} · python {} · cpu {}",
            self.behaviour.name(),
            self.js_pdk.version(),
            self.python_pdk.version(),
            self.cpu_limit
        )
    }

    /// The `cargo xtask run` options that build this cell (besides the load's).
    pub fn run_args(&self) -> Vec<String> {
        let mut args = vec![
            "--behaviour".to_string(),
            self.behaviour.name().to_string(),
            "--js-pdk".to_string(),
            self.js_pdk.version().to_string(),
            "--python-pdk".to_string(),
            self.python_pdk.version().to_string(),
        ];
        if let Some(c) = self.cpu_limit.0 {
            args.extend(["--cpu-limit".to_string(), c.to_string()]);
        }
        args
    }
}

/// The values of every axis.
#[derive(Clone, Debug)]
pub struct Axes {
    pub behaviour: Vec<Behaviour>,
    pub js_pdk: Vec<JsPdk>,
    pub python_pdk: Vec<PyPdk>,
    pub cpu_limit: Vec<CpuLimit>,
}

impl Axes {
    /// Every combination, the first axis slowest.
    pub fn cells(&self) -> Vec<Cell> {
        let mut cells = Vec::new();
        for &behaviour in &self.behaviour {
            for &js_pdk in &self.js_pdk {
                for &python_pdk in &self.python_pdk {
                    for &cpu_limit in &self.cpu_limit {
                        cells.push(Cell { behaviour, js_pdk, python_pdk, cpu_limit });
                    }
                }
            }
        }
        cells
    }

    /// Fails on an axis given the same value twice.
    pub fn check(&self) -> Result<(), String> {
        fn unique<T: PartialEq + fmt::Debug>(
            flag: &str,
            values: &[T],
            show: impl Fn(&T) -> String,
        ) -> Result<(), String> {
            for (i, v) in values.iter().enumerate() {
                if values[..i].contains(v) {
                    return Err(format!("--{flag} lists {} twice", show(v)));
                }
            }
            Ok(())
        }
        unique("behaviour", &self.behaviour, |b| b.name().to_string())?;
        unique("js-pdk", &self.js_pdk, |p| p.version().to_string())?;
        unique("python-pdk", &self.python_pdk, |p| p.version().to_string())?;
        unique("cpu-limit", &self.cpu_limit, CpuLimit::to_string)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_span_every_combination_and_name_their_directories() {
        let axes = Axes {
            behaviour: vec![Behaviour::Kong27, Behaviour::Fixed],
            js_pdk: vec![JsPdk::V050],
            python_pdk: vec![PyPdk::V030, PyPdk::V036],
            cpu_limit: vec![CpuLimit(None), CpuLimit(Some(0.15))],
        };
        let cells = axes.cells();
        assert_eq!(cells.len(), 8);
        assert_eq!(cells[0].dir_name(), "kong-2.7_js-0.5.0_py-0.30_cpu-none");
        assert_eq!(cells[7].dir_name(), "fixed_js-0.5.0_py-0.36_cpu-0.15");
        assert_eq!(
            cells[1].run_args().join(" "),
            "--behaviour kong-2.7 --js-pdk 0.5.0 --python-pdk 0.30 --cpu-limit 0.15"
        );
        assert!(!cells[0].run_args().contains(&"--cpu-limit".to_string()));
        assert_eq!(cells[1].phrase(Axis::CpuLimit), "a 0.15-CPU limit");
        assert_eq!(axes.check(), Ok(()));
        let twice = Axes { cpu_limit: vec![CpuLimit(None), CpuLimit(None)], ..axes };
        assert_eq!(twice.check().unwrap_err(), "--cpu-limit lists none twice");
    }

    #[test]
    fn cpu_limits_parse_as_none_or_a_positive_number() {
        assert_eq!(CpuLimit::parse("none"), Ok(CpuLimit(None)));
        assert_eq!(CpuLimit::parse("0.15"), Ok(CpuLimit(Some(0.15))));
        for bad in ["0", "-1", "lots", "inf", ""] {
            assert!(CpuLimit::parse(bad).is_err(), "{bad}");
        }
    }
}
