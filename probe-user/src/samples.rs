//! `samples.bin.gz`: the CPU samples' user-stack copies. This module owns the file: the recorder
//! appends with [`Writer`], the flamegraphs read with [`Reader`].
//!
//! The copies form one logical byte stream; a `cpu_sample` event points into it by offset and
//! length. On disk the stream is cut into blocks of about [`BLOCK`] bytes, each its own gzip
//! member: a thread's stack changes little between samples and the copies end in unused stack,
//! so deflate at its fastest level shrinks them about 12 times (4.9 MB in 8 s of the gateway
//! bench became 0.40 MB; the default level gave 15 times but was the recorder's largest cost), a
//! recording cut short loses at most its last block, and `gunzip` gives the plain stream back.
//! Traces from before compression hold the plain `samples.bin`; the reader takes either.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use flate2::Compression;
use flate2::read::MultiGzDecoder;
use flate2::write::GzEncoder;

/// The file's name in a trace directory.
pub const FILE: &str = "samples.bin.gz";
/// The uncompressed file of older traces.
const PLAIN: &str = "samples.bin";
/// Bytes of stack copies per gzip member: large enough for deflate's 32 KiB window to find the
/// repeats, small enough that little is lost if the recorder dies.
const BLOCK: usize = 1 << 20;

/// Appends stack copies to `samples.bin.gz`.
pub struct Writer {
    file: BufWriter<File>,
    block: Vec<u8>,
    len: u64,
    written: u64,
}

impl Writer {
    /// Creates the file in `dir`.
    pub fn create(dir: &Path) -> Result<Self> {
        let path = dir.join(FILE);
        let file = File::create(&path).with_context(|| format!("cannot write {}", path.display()))?;
        Ok(Writer { file: BufWriter::new(file), block: Vec::with_capacity(BLOCK), len: 0, written: 0 })
    }

    /// Appends one copy; returns its offset in the logical stream.
    pub fn append(&mut self, stack: &[u8]) -> Result<u64> {
        let at = self.len;
        self.block.extend_from_slice(stack);
        self.len += stack.len() as u64;
        if self.block.len() >= BLOCK {
            self.flush_block()?;
        }
        Ok(at)
    }

    fn flush_block(&mut self) -> Result<()> {
        if self.block.is_empty() {
            return Ok(());
        }
        let mut gz = GzEncoder::new(Vec::with_capacity(self.block.len() / 8), Compression::fast());
        gz.write_all(&self.block)?;
        let member = gz.finish()?;
        self.file.write_all(&member)?;
        self.written += member.len() as u64;
        self.block.clear();
        Ok(())
    }

    /// Writes what is left and flushes; returns (bytes of stack copies, bytes on disk).
    pub fn finish(mut self) -> Result<(u64, u64)> {
        self.flush_block()?;
        self.file.flush()?;
        Ok((self.len, self.written))
    }
}

/// Reads stack copies by offset, in increasing order (the order they were written): memory holds
/// one copy at a time, whatever the file's size. Going back reopens the file.
pub struct Reader {
    path: Option<PathBuf>,
    source: Option<Box<dyn Read>>,
    pos: u64,
    buf: Vec<u8>,
}

impl Reader {
    /// Opens the copies of the trace in `dir` (none when it has neither file).
    pub fn open(dir: &Path) -> Self {
        let path = [FILE, PLAIN].iter().map(|f| dir.join(f)).find(|p| p.exists());
        Reader { path, source: None, pos: 0, buf: Vec::new() }
    }

    fn reopen(&mut self) -> Option<()> {
        let path = self.path.as_ref()?;
        let file = BufReader::new(File::open(path).ok()?);
        self.source =
            Some(if path.ends_with(FILE) { Box::new(MultiGzDecoder::new(file)) } else { Box::new(file) });
        self.pos = 0;
        Some(())
    }

    /// The `len` bytes at `offset` of the logical stream; `None` past its end or when unreadable.
    pub fn get(&mut self, offset: u64, len: usize) -> Option<&[u8]> {
        if self.source.is_none() || offset < self.pos {
            self.reopen()?;
        }
        let source = self.source.as_mut()?;
        let skip = offset - self.pos;
        let skipped = std::io::copy(&mut source.by_ref().take(skip), &mut std::io::sink()).ok()?;
        self.pos += skipped;
        if skipped < skip {
            return None;
        }
        self.buf.resize(len, 0);
        if source.read_exact(&mut self.buf).is_err() {
            self.source = None; // the stream's end, or a block cut short: start over next time
            return None;
        }
        self.pos += len as u64;
        Some(&self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Stack-like copies: mostly the same bytes from sample to sample, a few that change.
    fn copies(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let mut c = vec![0u8; 4096 + (i % 3) * 512];
                for (j, b) in c.iter_mut().enumerate().take(1024) {
                    *b = (j * 7 % 251) as u8;
                }
                c[8..16].copy_from_slice(&(i as u64).to_le_bytes());
                c
            })
            .collect()
    }

    #[test]
    fn copies_come_back_by_offset_across_blocks_and_compressed() {
        let dir = tempfile::tempdir().unwrap();
        let all = copies(600);
        let mut w = Writer::create(dir.path()).unwrap();
        let offsets: Vec<u64> = all.iter().map(|c| w.append(c).unwrap()).collect();
        let (len, on_disk) = w.finish().unwrap();
        assert_eq!(len, all.iter().map(|c| c.len() as u64).sum::<u64>());
        assert!(len > 2 * BLOCK as u64, "the test spans several blocks");
        assert_eq!(std::fs::metadata(dir.path().join(FILE)).unwrap().len(), on_disk);
        assert!(on_disk * 10 < len, "{on_disk} bytes on disk for {len}");
        let mut r = Reader::open(dir.path());
        // In order, skipping some; then back to the start, which reopens.
        for i in (0..all.len()).step_by(7) {
            assert_eq!(r.get(offsets[i], all[i].len()), Some(&all[i][..]), "copy {i}");
        }
        assert_eq!(r.get(offsets[1], all[1].len()), Some(&all[1][..]));
        assert_eq!(r.get(len, 1), None, "past the end");
        assert_eq!(r.get(offsets[2], all[2].len()), Some(&all[2][..]), "and again after the end");
    }

    #[test]
    fn the_plain_file_of_older_traces_and_a_cut_off_file_are_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PLAIN), [1, 2, 3, 4, 5]).unwrap();
        let mut r = Reader::open(dir.path());
        assert_eq!(r.get(1, 3), Some(&[2, 3, 4][..]));
        assert_eq!(Reader::open(&dir.path().join("absent")).get(0, 1), None);
        // A recording that died mid-block: the whole blocks before it still read.
        let dir = tempfile::tempdir().unwrap();
        let all = copies(400);
        let mut w = Writer::create(dir.path()).unwrap();
        let offsets: Vec<u64> = all.iter().map(|c| w.append(c).unwrap()).collect();
        w.finish().unwrap();
        let path = dir.path().join(FILE);
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
        let mut r = Reader::open(dir.path());
        assert_eq!(r.get(offsets[0], all[0].len()), Some(&all[0][..]));
        assert_eq!(r.get(offsets[399], all[399].len()), None, "the last block is cut");
    }
}
