//! BSDIFF40 patches (Colin Percival's bsdiff 4.x, Debian's `bsdiff`, PyPI
//! `bsdiff4`) through the same push-fed applier, byte-identical to `bspatch`.
//!
//! The format puts three bzip2 streams one after another (control, diff,
//! extra) that must be read in step, so the first two are held compressed
//! until the third arrives; the output still streams to the sink. The format
//! carries no hashes: the old image cannot be checked before writing.

use std::io::{Cursor, Read};

use bzip2::read::BzDecoder;
use bzip2::{Decompress, Status};
use sha2::{Digest as _, Sha256};

use super::apply::{ApplyOptions, ApplyReport};
use super::body::ReadCache;
use super::format::{MAX_IMAGE_SIZE, le_u64};
use crate::io::{ImageSink, ReadAt};
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

const CHUNK: usize = 64 << 10;
/// bzip2's decoder state for 900 kB blocks.
const BZIP2_STATE: usize = 3_700_000;

fn corrupt(what: impl Into<String>) -> Error {
    Error::PatchCorrupt(format!("BSDIFF40: {}", what.into()))
}

/// bsdiff's sign-magnitude little-endian 64-bit integer.
fn offtin(b: &[u8]) -> i64 {
    let v = le_u64(b, 0);
    let magnitude = (v & !(1 << 63)) as i64;
    if v >> 63 == 1 { -magnitude } else { magnitude }
}

struct Record {
    diff_left: u64,
    extra_left: u64,
    seek: i64,
}

pub(crate) struct BsdiffApply {
    ctrl_len: usize,
    diff_len: usize,
    new_size: u64,
    old_size: u64,
    held: Vec<u8>,
    ctrl: Option<BzDecoder<Cursor<Vec<u8>>>>,
    diff: Option<BzDecoder<Cursor<Vec<u8>>>>,
    extra: Decompress,
    extra_end: bool,
    staged: Vec<u8>,
    st_start: usize,
    st_end: usize,
    record: Option<Record>,
    old_pos: i64,
    new_pos: u64,
    out: Vec<u8>,
    tmp: Vec<u8>,
    hash: Sha256,
    cache: ReadCache,
}

impl BsdiffApply {
    pub(crate) fn new(head: &[u8], old: &dyn ReadAt, options: &ApplyOptions) -> Result<Self> {
        let ctrl_len = offtin(&head[8..16]);
        let diff_len = offtin(&head[16..24]);
        let new_size = offtin(&head[24..32]);
        for (name, v) in [
            ("control length", ctrl_len),
            ("diff length", diff_len),
            ("new size", new_size),
        ] {
            if v < 0 || v as u64 > MAX_IMAGE_SIZE {
                return Err(corrupt(format!("absurd {name} {v} in its header")));
            }
        }
        let held = (ctrl_len as u64).saturating_add(diff_len as u64);
        if held > options.legacy_buffer_limit as u64 {
            return Err(Error::PatchUnsupported(format!(
                "this BSDIFF40 patch needs {held} bytes held in memory, the limit is {}",
                options.legacy_buffer_limit
            )));
        }
        Ok(Self {
            ctrl_len: ctrl_len as usize,
            diff_len: diff_len as usize,
            new_size: new_size as u64,
            old_size: old.size(),
            held: Vec::with_capacity(held as usize),
            ctrl: None,
            diff: None,
            extra: Decompress::new(false),
            extra_end: false,
            staged: vec![0; CHUNK],
            st_start: 0,
            st_end: 0,
            record: None,
            old_pos: 0,
            new_pos: 0,
            out: Vec::with_capacity(CHUNK),
            tmp: vec![0; CHUNK],
            hash: Sha256::new(),
            cache: ReadCache::new(options.read_cache),
        })
    }

    pub(crate) fn out_pos(&self) -> u64 {
        self.new_pos
    }

    pub(crate) fn working_set(&self) -> usize {
        self.held.capacity() + 3 * BZIP2_STATE + 3 * CHUNK
    }

    pub(crate) fn feed(
        &mut self,
        mut chunk: &[u8],
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if self.ctrl.is_none() {
            let want = self.ctrl_len + self.diff_len - self.held.len();
            let take = want.min(chunk.len());
            self.held.extend_from_slice(&chunk[..take]);
            chunk = &chunk[take..];
            if self.held.len() < self.ctrl_len + self.diff_len {
                return Ok(());
            }
            let diff = self.held.split_off(self.ctrl_len);
            let ctrl = std::mem::take(&mut self.held);
            self.ctrl = Some(BzDecoder::new(Cursor::new(ctrl)));
            self.diff = Some(BzDecoder::new(Cursor::new(diff)));
        }
        while !chunk.is_empty() {
            if self.extra_end {
                // bspatch ignores what follows the extra stream; so do we.
                return Ok(());
            }
            let used = self.inflate(chunk)?;
            chunk = &chunk[used..];
            let staged = self.st_end - self.st_start;
            self.run(old, sink, progress)?;
            if used == 0 && self.st_end - self.st_start == staged && !self.extra_end {
                return Err(corrupt(
                    "its extra stream holds more than its control records use",
                ));
            }
        }
        self.run(old, sink, progress)
    }

    /// Decompresses extra-stream bytes into the staging buffer; returns the
    /// input bytes used.
    fn inflate(&mut self, input: &[u8]) -> Result<usize> {
        if self.st_start == self.st_end {
            self.st_start = 0;
            self.st_end = 0;
        }
        if self.st_end == self.staged.len() {
            return Ok(0);
        }
        let before_in = self.extra.total_in();
        let before_out = self.extra.total_out();
        let status = self
            .extra
            .decompress(input, &mut self.staged[self.st_end..])
            .map_err(|e| corrupt(format!("its extra stream does not decode ({e})")))?;
        self.st_end += (self.extra.total_out() - before_out) as usize;
        if matches!(status, Status::StreamEnd) {
            self.extra_end = true;
        }
        Ok((self.extra.total_in() - before_in) as usize)
    }

    fn run(
        &mut self,
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        loop {
            if self.record.is_none() {
                if self.new_pos >= self.new_size {
                    return Ok(());
                }
                self.record = Some(self.next_record()?);
            }
            let Some(rec) = self.record.as_mut() else {
                return Ok(());
            };
            if rec.diff_left > 0 {
                let n = rec.diff_left.min(CHUNK as u64) as usize;
                rec.diff_left -= n as u64;
                self.diff_chunk(n, old)?;
                self.flush_if_full(sink, progress)?;
                continue;
            }
            if rec.extra_left > 0 {
                let avail = self.st_end - self.st_start;
                if avail == 0 {
                    return Ok(());
                }
                let n = (rec.extra_left.min(avail as u64)) as usize;
                rec.extra_left -= n as u64;
                self.out
                    .extend_from_slice(&self.staged[self.st_start..self.st_start + n]);
                self.st_start += n;
                self.new_pos += n as u64;
                self.flush_if_full(sink, progress)?;
                continue;
            }
            self.old_pos = self.old_pos.saturating_add(rec.seek);
            self.record = None;
        }
    }

    fn next_record(&mut self) -> Result<Record> {
        let mut buf = [0u8; 24];
        let ctrl = self
            .ctrl
            .as_mut()
            .ok_or_else(|| corrupt("no control stream"))?;
        ctrl.read_exact(&mut buf)
            .map_err(|e| corrupt(format!("its control stream is damaged or short ({e})")))?;
        let (x, y, z) = (
            offtin(&buf[0..8]),
            offtin(&buf[8..16]),
            offtin(&buf[16..24]),
        );
        let left = self.new_size - self.new_pos;
        if x < 0 || y < 0 || x as u64 > left || y as u64 > left - x as u64 {
            return Err(corrupt(format!(
                "a control record ({x}, {y}) runs past the new image's {} bytes",
                self.new_size
            )));
        }
        Ok(Record {
            diff_left: x as u64,
            extra_left: y as u64,
            seek: z,
        })
    }

    /// `n` bytes of diff plus the old bytes under them (bspatch adds only
    /// where the old position is inside the old image).
    fn diff_chunk(&mut self, n: usize, old: &mut dyn ReadAt) -> Result<()> {
        let start = self.out.len();
        self.out.resize(start + n, 0);
        let diff = self
            .diff
            .as_mut()
            .ok_or_else(|| corrupt("no diff stream"))?;
        diff.read_exact(&mut self.out[start..])
            .map_err(|e| corrupt(format!("its diff stream is damaged or short ({e})")))?;
        let lo = self.old_pos.max(0);
        let hi = (self.old_pos.saturating_add(n as i64)).min(self.old_size as i64);
        if lo < hi {
            let len = (hi - lo) as usize;
            let off = (lo - self.old_pos) as usize;
            self.cache.read(old, lo as u64, &mut self.tmp[..len])?;
            for (d, o) in self.out[start + off..start + off + len]
                .iter_mut()
                .zip(&self.tmp[..len])
            {
                *d = d.wrapping_add(*o);
            }
        }
        self.old_pos = self.old_pos.saturating_add(n as i64);
        self.new_pos += n as u64;
        Ok(())
    }

    fn flush_if_full(
        &mut self,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        if self.out.len() >= CHUNK {
            self.flush(sink, progress)?;
        }
        Ok(())
    }

    fn flush(&mut self, sink: &mut dyn ImageSink, progress: &mut dyn Progress) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        self.hash.update(&self.out);
        sink.write(&self.out)?;
        self.out.clear();
        progress.report(ProgressEvent {
            operation: Operation::Patch,
            done: self.new_pos,
            total: Some(self.new_size),
        })
    }

    pub(crate) fn finish(
        &mut self,
        old: &mut dyn ReadAt,
        sink: &mut dyn ImageSink,
        progress: &mut dyn Progress,
    ) -> Result<ApplyReport> {
        if self.ctrl.is_none() {
            return Err(corrupt("it is truncated inside its control or diff stream"));
        }
        // Drain what the extra decoder still holds.
        loop {
            self.run(old, sink, progress)?;
            if self.extra_end || self.new_pos >= self.new_size {
                break;
            }
            let before = self.st_end;
            self.inflate(&[])?;
            if self.st_end == before {
                break;
            }
        }
        self.run(old, sink, progress)?;
        // bspatch stops reading once it has its bytes; a patch cut inside
        // the extra stream's trailer would pass there. It is truncated.
        if self.new_pos != self.new_size || self.record.is_some() || !self.extra_end {
            return Err(corrupt(format!(
                "it is truncated: it made {} of {} bytes",
                self.new_pos, self.new_size
            )));
        }
        self.flush(sink, progress)?;
        Ok(ApplyReport {
            format: "bsdiff40",
            new_size: self.new_size,
            new_sha256: self.hash.clone().finalize().into(),
            patch_size: 0,
        })
    }
}
