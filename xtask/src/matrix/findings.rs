//! The sentences under the matrix's table, derived from its numbers alone: for each sign of the
//! bug, in which runs it appeared and which axis value (or pair of values) decides it; for each
//! endpoint, which axis moves its failure rate most; and how much of it the kernel explained.

use shared::verdict::{Clean, Verdict};

use super::cells::{Axis, Cell};
use super::table::{CellResult, fmt_count, fmt_percent, median};

/// A sign of Kong #8531 a run can show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sign {
    Spinning,
    CrashLoop,
    Sigkill,
    Orphan,
    FailedConnect,
    StillFailing,
}

impl Sign {
    pub const ALL: [Sign; 6] = [
        Sign::Spinning,
        Sign::CrashLoop,
        Sign::Sigkill,
        Sign::Orphan,
        Sign::FailedConnect,
        Sign::StillFailing,
    ];

    /// Whether a run showed it.
    pub fn shows(self, v: &Verdict) -> bool {
        match self {
            Sign::Spinning => !v.spinning_workers.is_empty(),
            Sign::CrashLoop => !v.crash_loops.is_empty(),
            Sign::Sigkill => v.sigkills > 0,
            Sign::Orphan => v.orphans > 0,
            Sign::FailedConnect => v.failed_connects > 0,
            Sign::StillFailing => v.clean == Clean::StillFailing,
        }
    }

    /// The subject of its sentence.
    fn name(self) -> &'static str {
        match self {
            Sign::Spinning => "A worker spinning in `epoll_wait(…, 0)`",
            Sign::CrashLoop => "A plugin server's crash/respawn loop",
            Sign::Sigkill => "A SIGKILL of a plugin server",
            Sign::Orphan => "An orphaned plugin server",
            Sign::FailedConnect => "A refused or missing plugin socket",
            Sign::StillFailing => "A load still failing when it ended",
        }
    }
}

/// One run's verdict and the cell it belongs to.
struct Sample<'a> {
    cell: &'a Cell,
    verdict: &'a Verdict,
}

/// `4/6`.
fn ratio(part: usize, whole: usize) -> String {
    format!("{part}/{whole}")
}

/// The distinct values of `axis` among the samples, in first-seen order, each with a cell that
/// has it (for its phrase).
fn values<'a>(samples: &[Sample<'a>], axis: Axis) -> Vec<(String, &'a Cell)> {
    let mut out: Vec<(String, &Cell)> = Vec::new();
    for s in samples {
        let v = s.cell.value(axis);
        if !out.iter().any(|(seen, _)| *seen == v) {
            out.push((v, s.cell));
        }
    }
    out
}

/// Runs with `value` of `axis`, and of them those that show `sign`.
fn split(samples: &[Sample<'_>], sign: Sign, axis: Axis, value: &str) -> (usize, usize) {
    let with: Vec<&Sample<'_>> = samples.iter().filter(|s| s.cell.value(axis) == value).collect();
    (with.iter().filter(|s| sign.shows(s.verdict)).count(), with.len())
}

/// How one axis bounds a sign: the values that show it, and those that never do.
struct Bound {
    axis: Axis,
    on_values: Vec<String>,
    /// Their phrases.
    on: Vec<String>,
    off: Vec<String>,
    on_shown: usize,
    on_runs: usize,
    off_runs: usize,
}

/// The bound `axis` puts on `sign`, when some of its values never show it.
fn bound(samples: &[Sample<'_>], sign: Sign, axis: Axis) -> Option<Bound> {
    let mut b =
        Bound { axis, on_values: vec![], on: vec![], off: vec![], on_shown: 0, on_runs: 0, off_runs: 0 };
    for (v, c) in values(samples, axis) {
        let (p, t) = split(samples, sign, axis, &v);
        if p > 0 {
            b.on_values.push(v);
            b.on.push(c.phrase(axis));
            b.on_shown += p;
            b.on_runs += t;
        } else {
            b.off.push(c.phrase(axis));
            b.off_runs += t;
        }
    }
    (!b.off.is_empty() && !b.on.is_empty()).then_some(b)
}

/// Joins phrases with `and`.
fn and(phrases: &[String]) -> String {
    match phrases {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// Joins phrases with `or`.
fn either(phrases: &[String]) -> String {
    match phrases {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} or {last}", init.join(", ")),
    }
}

/// The sentence for one sign.
fn sign_sentence(samples: &[Sample<'_>], axes: &[Axis], sign: Sign) -> String {
    let n = samples.len();
    let shown = samples.iter().filter(|s| sign.shows(s.verdict)).count();
    let name = sign.name();
    if shown == 0 {
        return format!("{name} appears in no run (0/{n}).");
    }
    if shown == n {
        return format!("{name} appears in every run ({n}/{n}).");
    }
    // An axis bounds it when some of its values never show it. One such axis is said as is;
    // several bound it together: it shows only where each has one of its showing values.
    let bounding: Vec<Bound> = axes.iter().filter_map(|&axis| bound(samples, sign, axis)).collect();
    match bounding.as_slice() {
        [] => {}
        [one] => {
            return format!(
                "{name} appears only with {} ({}) and never with {} ({}).",
                either(&one.on),
                ratio(one.on_shown, one.on_runs),
                either(&one.off),
                ratio(0, one.off_runs)
            );
        }
        several => {
            let inside: Vec<&Sample<'_>> = samples
                .iter()
                .filter(|s| several.iter().all(|b| b.on_values.contains(&s.cell.value(b.axis))))
                .collect();
            // A group of values in parentheses, so `and` does not read across it.
            let phrases: Vec<String> = several
                .iter()
                .map(|b| if b.on.len() > 1 { format!("({})", either(&b.on)) } else { either(&b.on) })
                .collect();
            return format!(
                "{name} appears only with {} together ({}), and in no other run ({}).",
                and(&phrases),
                ratio(shown, inside.len()),
                ratio(0, n - inside.len())
            );
        }
    }
    // Else the axis whose values differ most in how often they show it.
    let rate = |(p, t): (usize, usize)| if t == 0 { 0.0 } else { p as f64 / t as f64 };
    let best = axes.iter().copied().max_by(|&x, &y| {
        let width = |axis: Axis| {
            let r: Vec<f64> =
                values(samples, axis).iter().map(|(v, _)| rate(split(samples, sign, axis, v))).collect();
            r.iter().copied().fold(f64::MIN, f64::max) - r.iter().copied().fold(f64::MAX, f64::min)
        };
        width(x).total_cmp(&width(y))
    });
    let mut s = format!("{name} appears in {} runs", ratio(shown, n));
    if let Some(axis) = best {
        let parts: Vec<String> = values(samples, axis)
            .iter()
            .map(|(v, c)| {
                let (p, t) = split(samples, sign, axis, v);
                format!("{} in {}", c.phrase(axis), ratio(p, t))
            })
            .collect();
        s.push_str(&format!(", with every value of every axis; by {}: {}", axis.header(), parts.join(", ")));
    }
    s.push('.');
    s
}

/// The sentence for one endpoint's failure rate.
fn rate_sentence(samples: &[Sample<'_>], axes: &[Axis], endpoint: &str) -> Option<String> {
    let rate = |s: &Sample<'_>| s.verdict.endpoints.get(endpoint).map(|c| c.failed_percent());
    let mut all: Vec<f64> = samples.iter().filter_map(rate).collect();
    let overall = median(&mut all)?;
    let top = all.last().copied().unwrap_or_default();
    // The axis whose values' medians lie furthest apart.
    let by_axis: Vec<(Axis, Vec<(String, f64)>)> = axes
        .iter()
        .map(|&axis| {
            let meds = values(samples, axis)
                .into_iter()
                .filter_map(|(v, c)| {
                    let mut r: Vec<f64> =
                        samples.iter().filter(|s| s.cell.value(axis) == v).filter_map(rate).collect();
                    Some((c.phrase(axis), median(&mut r)?))
                })
                .collect();
            (axis, meds)
        })
        .collect();
    let width = |m: &[(String, f64)]| {
        m.iter().map(|x| x.1).fold(f64::MIN, f64::max) - m.iter().map(|x| x.1).fold(f64::MAX, f64::min)
    };
    let best = by_axis.iter().max_by(|x, y| width(&x.1).total_cmp(&width(&y.1)));
    match best {
        Some((axis, meds)) if width(meds) >= MIN_RATE_GAP => {
            let parts: Vec<String> =
                meds.iter().map(|(p, m)| format!("{} with {p}", fmt_percent(*m))).collect();
            // Ties: every other axis whose medians lie as far apart.
            let tied: Vec<&str> = by_axis
                .iter()
                .filter(|(a, m)| a != axis && (width(m) - width(meds)).abs() < f64::EPSILON * 100.0)
                .map(|(a, _)| a.header())
                .collect();
            let rest = if tied.is_empty() {
                "no other axis moves it as far".to_string()
            } else {
                format!("{} moves it as far", tied.join(" and "))
            };
            Some(format!("`{endpoint}`: the median failure rate is {}; {rest}.", parts.join(" against ")))
        }
        _ if axes.is_empty() => Some(format!(
            "`{endpoint}`: median failure rate {}, highest {}; no axis varies here to compare.",
            fmt_percent(overall),
            fmt_percent(top)
        )),
        _ => Some(format!(
            "`{endpoint}`: no axis moves its failure rate by {MIN_RATE_GAP} points or more (median {}, highest {}).",
            fmt_percent(overall),
            fmt_percent(top)
        )),
    }
}

/// Percentage points below which two medians count as the same.
const MIN_RATE_GAP: f64 = 0.1;

/// Every sentence, in the order printed.
pub fn derive(cells: &[CellResult], axes: &[Axis]) -> Vec<String> {
    let samples: Vec<Sample<'_>> = cells
        .iter()
        .flat_map(|c| c.verdicts().map(move |verdict| Sample { cell: &c.cell, verdict }))
        .collect();
    let runs: usize = cells.iter().map(|c| c.runs.len()).sum();
    let mut out = Vec::new();
    if samples.len() < runs {
        out.push(format!(
            "{} of {runs} runs did not complete and are left out (each has its `run.log`).",
            runs - samples.len()
        ));
    }
    if samples.is_empty() {
        out.push("No run completed: there is nothing to compare.".into());
        return out;
    }
    // Only axes with a contrast can decide anything.
    let axes: Vec<Axis> = axes.iter().copied().filter(|&a| values(&samples, a).len() > 1).collect();
    for sign in Sign::ALL {
        out.push(sign_sentence(&samples, &axes, sign));
    }
    let mut endpoints: Vec<&String> = samples.iter().flat_map(|s| s.verdict.endpoints.keys()).collect();
    endpoints.sort();
    endpoints.dedup();
    out.extend(endpoints.into_iter().filter_map(|e| rate_sentence(&samples, &axes, e)));
    let failed: u64 = samples.iter().map(|s| s.verdict.reload_failed).sum();
    let exact: u64 = samples.iter().map(|s| s.verdict.exact).sum();
    if failed > 0 {
        out.push(format!(
            "Of the {} failures a reload can cause, over all runs, {} were linked exactly through \
             the worker that served them ({}), from the kernel's evidence alone.",
            fmt_count(failed),
            fmt_count(exact),
            fmt_percent(100.0 * exact as f64 / failed as f64)
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::matrix::table::tests::{cell, result, verdict};
    use crate::stack::{Behaviour, JsPdk};

    #[test]
    fn a_sign_tied_to_one_axis_value_is_said_so_with_its_counts() {
        // Crash loops with 0.5.0 only; spinning with kong-2.7 and 0.5.0 together.
        let cells = vec![
            result(cell(Behaviour::Kong27, JsPdk::V050), vec![Ok(verdict(50, 2, 4)), Ok(verdict(30, 1, 5))]),
            result(cell(Behaviour::Kong27, JsPdk::V060), vec![Ok(verdict(2, 0, 0)), Ok(verdict(0, 0, 0))]),
            result(cell(Behaviour::Fixed, JsPdk::V050), vec![Ok(verdict(20, 0, 3)), Ok(verdict(10, 0, 2))]),
            result(cell(Behaviour::Fixed, JsPdk::V060), vec![Ok(verdict(0, 0, 0)), Err("boom".into())]),
        ];
        let f = derive(&cells, &Axis::ALL);
        assert_eq!(f[0], "1 of 8 runs did not complete and are left out (each has its `run.log`).");
        assert_eq!(
            f[1],
            "A worker spinning in `epoll_wait(…, 0)` appears only with kong-2.7 and JS kong-pdk 0.5.0 \
             together (2/2), and in no other run (0/5)."
        );
        assert_eq!(
            f[2],
            "A plugin server's crash/respawn loop appears only with JS kong-pdk 0.5.0 (4/4) and never \
             with JS kong-pdk 0.6.0 (0/3)."
        );
        assert_eq!(f[3], "A SIGKILL of a plugin server appears in every run (7/7).");
        assert_eq!(f[4], "An orphaned plugin server appears in no run (0/7).");
        assert_eq!(
            f[7],
            "`/js`: the median failure rate is 2.5% with JS kong-pdk 0.5.0 against 0.0% with JS kong-pdk \
             0.6.0; no other axis moves it as far."
        );
        assert!(f[8].starts_with("`/python`: no axis moves its failure rate"), "{}", f[8]);
        assert!(f[9].starts_with("Of the 112 failures a reload can cause"), "{}", f[9]);
    }

    #[test]
    fn two_axes_that_split_the_runs_alike_are_both_named() {
        // The two cells differ on both axes: the runs cannot tell which one matters.
        let cells = vec![
            result(cell(Behaviour::Kong27, JsPdk::V050), vec![Ok(verdict(50, 0, 4))]),
            result(cell(Behaviour::Fixed, JsPdk::V060), vec![Ok(verdict(0, 0, 0))]),
        ];
        let f = derive(&cells, &Axis::ALL);
        assert_eq!(
            f[1],
            "A plugin server's crash/respawn loop appears only with kong-2.7 and JS kong-pdk 0.5.0 \
             together (1/1), and in no other run (0/1)."
        );
        assert!(f[6].ends_with("; behaviour moves it as far."), "{}", f[6]);
    }

    #[test]
    fn a_sign_some_values_never_show_is_bounded_by_them_even_when_it_is_a_race() {
        let cells = vec![
            result(cell(Behaviour::Kong27, JsPdk::V050), vec![Ok(verdict(5, 1, 0)), Ok(verdict(5, 0, 0))]),
            result(cell(Behaviour::Fixed, JsPdk::V050), vec![Ok(verdict(5, 0, 0)), Ok(verdict(5, 0, 0))]),
        ];
        let f = derive(&cells, &Axis::ALL);
        assert_eq!(
            f[0],
            "A worker spinning in `epoll_wait(…, 0)` appears only with kong-2.7 (1/2) and never with fixed (0/2)."
        );
    }

    #[test]
    fn a_sign_every_value_shows_at_times_names_the_widest_split() {
        let cells = vec![
            result(cell(Behaviour::Kong27, JsPdk::V050), vec![Ok(verdict(5, 1, 0)), Ok(verdict(5, 1, 0))]),
            result(cell(Behaviour::Fixed, JsPdk::V050), vec![Ok(verdict(5, 1, 0)), Ok(verdict(5, 0, 0))]),
        ];
        let f = derive(&cells, &Axis::ALL);
        assert_eq!(
            f[0],
            "A worker spinning in `epoll_wait(…, 0)` appears in 3/4 runs, with every value of every axis; by \
             behaviour: kong-2.7 in 2/2, fixed in 1/2."
        );
    }
}
