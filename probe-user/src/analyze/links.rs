//! The failed requests' links, in time order, in bounded memory.
//!
//! A long run fails hundreds of thousands of requests, each with a sentence of a few hundred
//! bytes. Past [`IN_MEMORY`] links they all move to a spill file, and each later one is written
//! there as it is made. What the report reads stays in memory: one [`Brief`] per link (the
//! reload windows count them), the examples of each [`LinkClass`], and the first [`FIRST`] links
//! in full (the timeline's instants). `report.json` streams the spill file back.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::sync::Arc;

use serde::ser::{Error as _, SerializeSeq};
use serde::{Serialize, Serializer};

use super::correlate::{Link, LinkClass};
use super::fit::CauseKind;

/// Links kept in memory before they move to the spill file.
pub const IN_MEMORY: usize = 20_000;
/// Links kept in full from the start, whatever the count (the timeline's instants).
pub const FIRST: usize = 3_000;
/// Examples kept per link class.
pub const EXAMPLES: usize = 10;

/// What the report counts of a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Brief {
    /// Start (s from zero).
    pub start_s: f64,
    /// How it was explained.
    pub link: LinkClass,
    /// By what, when explained.
    pub kind: Option<CauseKind>,
}

/// The spill file, removed when the last holder drops it.
#[derive(Debug)]
struct Spill {
    path: tempfile::TempPath,
    writer: Option<BufWriter<File>>,
    error: Option<String>,
}

/// Every failed request's link, in the order they were added.
#[derive(Debug, Clone, Default)]
pub struct Links {
    briefs: Vec<Brief>,
    /// Every link while there are few; empty once spilled.
    kept: Vec<Link>,
    first: Vec<Link>,
    examples: BTreeMap<LinkClass, Vec<Link>>,
    /// The earliest of each class, to fill the examples up.
    earliest: BTreeMap<LinkClass, Vec<Link>>,
    spill: Option<Arc<std::sync::Mutex<Spill>>>,
}

impl Links {
    /// Adds the next link (in time order).
    pub fn push(&mut self, l: Link) {
        self.briefs.push(Brief { start_s: l.start_s, link: l.link, kind: l.kind });
        if self.first.len() < FIRST {
            self.first.push(l.clone());
        }
        let examples = self.examples.entry(l.link).or_default();
        // One example per explanation, endpoint and worker first; the earliest fill up.
        if examples.len() < EXAMPLES
            && !examples
                .iter()
                .any(|x| x.kind == l.kind && x.endpoint == l.endpoint && x.worker_pid == l.worker_pid)
        {
            examples.push(l.clone());
        }
        let earliest = self.earliest.entry(l.link).or_default();
        if earliest.len() < EXAMPLES {
            earliest.push(l.clone());
        }
        match &self.spill {
            Some(s) => write_line(&mut s.lock().unwrap_or_else(|p| p.into_inner()), &l),
            None => {
                self.kept.push(l);
                if self.kept.len() > IN_MEMORY {
                    self.spill_kept();
                }
            }
        }
    }

    fn spill_kept(&mut self) {
        let mut spill = match tempfile::Builder::new().prefix("reloadscope-links").tempfile() {
            Ok(f) => {
                let (file, path) = f.into_parts();
                Spill { path, writer: Some(BufWriter::new(file)), error: None }
            }
            // Without a temporary directory the links stay in memory.
            Err(_) => return,
        };
        for l in self.kept.drain(..) {
            write_line(&mut spill, &l);
        }
        self.spill = Some(Arc::new(std::sync::Mutex::new(spill)));
    }

    /// Number of links.
    pub fn len(&self) -> usize {
        self.briefs.len()
    }

    /// True when there is none.
    pub fn is_empty(&self) -> bool {
        self.briefs.is_empty()
    }

    /// One brief per link, in order.
    pub fn briefs(&self) -> &[Brief] {
        &self.briefs
    }

    /// The first [`FIRST`] links, in order.
    pub fn first(&self) -> &[Link] {
        &self.first
    }

    /// Up to [`EXAMPLES`] links of a class: one per explanation, endpoint and worker first, then
    /// the earliest.
    pub fn examples(&self, class: LinkClass) -> Vec<&Link> {
        let mut shown: Vec<&Link> = self.examples.get(&class).map(|v| v.iter().collect()).unwrap_or_default();
        for l in self.earliest.get(&class).into_iter().flatten() {
            if shown.len() >= EXAMPLES {
                break;
            }
            if !shown.iter().any(|x| x.request_id == l.request_id) {
                shown.push(l);
            }
        }
        shown
    }

    /// Every link, in order (read back from the spill file once spilled).
    pub fn iter(&self) -> Box<dyn Iterator<Item = Link> + '_> {
        let Some(spill) = &self.spill else { return Box::new(self.kept.iter().cloned()) };
        let mut s = spill.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(w) = s.writer.as_mut()
            && let Err(e) = w.flush()
        {
            s.error.get_or_insert(e.to_string());
        }
        match File::open(&s.path) {
            Ok(f) => Box::new(
                BufReader::new(f)
                    .lines()
                    .map_while(Result::ok)
                    .filter_map(|line| serde_json::from_str::<Link>(&line).ok()),
            ),
            Err(_) => Box::new(std::iter::empty()),
        }
    }

    /// Every link, in a vector (tests and small runs).
    pub fn all(&self) -> Vec<Link> {
        self.iter().collect()
    }

    /// Why the spill file lost links, when it did.
    pub fn error(&self) -> Option<String> {
        self.spill.as_ref().and_then(|s| s.lock().unwrap_or_else(|p| p.into_inner()).error.clone())
    }
}

fn write_line(s: &mut Spill, l: &Link) {
    let Some(w) = s.writer.as_mut() else { return };
    let r = serde_json::to_writer(&mut *w, l).map_err(std::io::Error::from).and_then(|()| w.write_all(b"\n"));
    if let Err(e) = r {
        s.error.get_or_insert(e.to_string());
    }
}

impl FromIterator<Link> for Links {
    fn from_iter<I: IntoIterator<Item = Link>>(iter: I) -> Self {
        let mut links = Links::default();
        for l in iter {
            links.push(l);
        }
        links
    }
}

impl PartialEq for Links {
    fn eq(&self, other: &Self) -> bool {
        self.briefs == other.briefs && self.iter().eq(other.iter())
    }
}

impl Serialize for Links {
    fn serialize<S: Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        let mut seq = ser.serialize_seq(Some(self.len()))?;
        let mut n = 0;
        for l in self.iter() {
            seq.serialize_element(&l)?;
            n += 1;
        }
        if n != self.len() {
            return Err(S::Error::custom(format!(
                "{} of {} links could not be read back: {}",
                self.len() - n,
                self.len(),
                self.error().unwrap_or_default()
            )));
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(i: usize, class: LinkClass) -> Link {
        Link {
            request_id: format!("r-{i}"),
            endpoint: if i.is_multiple_of(2) { "/js".into() } else { "/python".into() },
            start_s: i as f64 / 1000.0,
            link: class,
            kind: (class == LinkClass::Exact).then_some(CauseKind::FailedConnect),
            worker_pid: Some(10 + (i % 3) as u32),
            sentence: format!("request r-{i} failed"),
            ..Link::default()
        }
    }

    #[test]
    fn many_links_spill_and_read_back_in_order() {
        let n = IN_MEMORY + 5_000;
        let links: Links = (0..n)
            .map(|i| link(i, if i.is_multiple_of(10) { LinkClass::Window } else { LinkClass::Exact }))
            .collect();
        assert!(links.spill.is_some() && links.kept.is_empty(), "past the bound they are on disk");
        assert_eq!((links.len(), links.briefs().len(), links.first().len()), (n, n, FIRST));
        let back = links.all();
        assert_eq!(back.len(), n);
        assert!(back.iter().enumerate().all(|(i, l)| l.request_id == format!("r-{i}")));
        assert_eq!(back[7], link(7, LinkClass::Exact), "a link survives the round trip whole");
        let json = serde_json::to_value(&links).unwrap();
        assert_eq!(json.as_array().unwrap().len(), n);
        assert_eq!(json[0]["link"], "window");
        assert_eq!(json[0]["kind"], "", "no cause is written as an empty kind, as before");
        assert_eq!(json[1]["kind"], "failed_connect");
    }

    #[test]
    fn examples_are_distinct_first_then_earliest() {
        let links: Links = (0..100).map(|i| link(i, LinkClass::Exact)).collect();
        let ex = links.examples(LinkClass::Exact);
        // 2 endpoints x 3 workers give 6 distinct examples (r-0..r-5); the earliest fill up to 10.
        let ids: Vec<&str> = ex.iter().map(|l| l.request_id.as_str()).collect();
        assert_eq!(ids, ["r-0", "r-1", "r-2", "r-3", "r-4", "r-5", "r-6", "r-7", "r-8", "r-9"]);
        assert!(links.examples(LinkClass::Window).is_empty());
        assert!(links.spill.is_none(), "a short run stays in memory");
    }
}
