//! The flash writer: an [`ImageSink`] that lays a stream of bytes (a full
//! image, or the delta applier's output) onto a device region block by
//! block. Per block it compares hashes first (a block that already holds the
//! bytes is skipped, a blank one is not erased), then erases, programs and
//! reads back. On NAND it skips bad blocks as nandwrite does and, when a
//! block fails (EIO, or it will not read back), marks it bad and writes the
//! same data to the next good block (`nandwrite -m`).

use std::time::{Duration, Instant};

use super::block::{CommitOptions, commit_block_with, erased_digest};
use super::{
    BlockDevice, BlockStep, FlashKind, Geometry, Region, good_blocks, hex, is_media_failure,
};
use crate::hash::{HashAlgorithm, Hasher};
use crate::io::{ImageSink, ReadAt};
use crate::progress::{CancelToken, NoProgress, Operation, Progress, ProgressEvent};
use crate::{Error, Result};

/// Progress is reported at most this often (and always at the end).
const PROGRESS_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Do not erase a block that already reads blank.
    pub skip_blank: bool,
    /// Do not rewrite a block whose SHA-256 already matches.
    pub skip_unchanged: bool,
    /// Erase/program/verify rounds per block before it counts as failed.
    pub attempts: u32,
}

impl Default for WriteOptions {
    fn default() -> Self {
        Self {
            skip_blank: true,
            skip_unchanged: true,
            attempts: 2,
        }
    }
}

/// What a write did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    /// Image bytes written and their SHA-256.
    pub bytes: u64,
    pub sha256: [u8; 32],
    /// Erase blocks the image covers.
    pub blocks: u64,
    /// Blocks that already held the right bytes.
    pub blocks_unchanged: u64,
    pub erases: u64,
    /// Erases skipped because the block was already blank.
    pub erases_skipped: u64,
    pub bytes_programmed: u64,
    /// Blocks already marked bad that were skipped (offsets).
    pub bad_blocks_skipped: Vec<u64>,
    /// Blocks that failed during this write, were marked bad and whose data
    /// went to the next good block (offsets).
    pub blocks_relocated: Vec<u64>,
    /// Where the last block written ends (the next block offset).
    pub end: u64,
}

pub struct FlashWriter<'a, D: BlockDevice + ?Sized> {
    device: &'a mut D,
    geometry: Geometry,
    region: Region,
    next: u64,
    pending: Vec<u8>,
    block_len: usize,
    expected: Option<u64>,
    hasher: Hasher,
    progress: Box<dyn Progress + 'a>,
    cancel: Option<CancelToken>,
    options: WriteOptions,
    report: WriteReport,
    scratch: Vec<u8>,
    blank_digest: [u8; 32],
    last_event: Option<Instant>,
    finished: bool,
}

impl<D: BlockDevice + ?Sized> std::fmt::Debug for FlashWriter<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashWriter")
            .field("device", &self.device.name())
            .field("region", &self.region)
            .field("next", &self.next)
            .field("report", &self.report)
            .finish_non_exhaustive()
    }
}

impl<'a, D: BlockDevice + ?Sized> FlashWriter<'a, D> {
    /// A writer from `offset` to the end of the device. Flash that needs an
    /// erase takes only erase-block aligned offsets.
    pub fn new(device: &'a mut D, offset: u64, options: WriteOptions) -> Result<Self> {
        let geometry = device.geometry();
        let end = if geometry.kind == FlashKind::Image {
            u64::MAX
        } else {
            geometry.size
        };
        Self::within(
            device,
            Region::new(offset, end.saturating_sub(offset)),
            options,
        )
    }

    /// A writer confined to `region` (a slot).
    pub fn within(device: &'a mut D, region: Region, options: WriteOptions) -> Result<Self> {
        let geometry = device.geometry();
        if geometry.kind.needs_erase() && !region.start.is_multiple_of(geometry.erase_size) {
            return Err(Error::Geometry(format!(
                "offset {:#x} is not aligned to the {:#x}-byte erase block of {}; use a multiple of {:#x}",
                region.start,
                geometry.erase_size,
                device.name(),
                geometry.erase_size
            )));
        }
        if geometry.kind != FlashKind::Image && region.end() > geometry.size {
            return Err(Error::Geometry(format!(
                "offset {:#x} is past the end of {} ({} bytes)",
                region.start,
                device.name(),
                geometry.size
            )));
        }
        let block_len = usize::try_from(geometry.erase_size)
            .map_err(|_| Error::Geometry("erase block too large".into()))?;
        Ok(Self {
            device,
            geometry,
            region,
            next: region.start,
            pending: Vec::with_capacity(block_len),
            block_len,
            expected: None,
            hasher: Hasher::new(HashAlgorithm::Sha256),
            progress: Box::new(NoProgress),
            cancel: None,
            options,
            report: WriteReport {
                end: region.start,
                ..Default::default()
            },
            scratch: Vec::with_capacity(block_len),
            blank_digest: erased_digest(block_len),
            last_event: None,
            finished: false,
        })
    }

    /// Declares the image size: checks now, before anything is erased, that
    /// it fits (in the good blocks, on NAND), and sizes progress.
    pub fn expect_size(mut self, size: u64) -> Result<Self> {
        let room = self.room()?;
        if size > room {
            return Err(Error::Geometry(format!(
                "the image ({size} bytes) does not fit: {} has {room} usable bytes from offset {:#x}{}",
                self.device.name(),
                self.region.start,
                if self.region.end() < self.geometry.size {
                    format!(" to {:#x}", self.region.end())
                } else {
                    String::new()
                }
            )));
        }
        if self.geometry.kind == FlashKind::Image {
            self.device.ensure_size(self.region.start + size)?;
        }
        self.expected = Some(size);
        Ok(self)
    }

    /// Continues a write whose first `offset` bytes are already on the
    /// device (an interrupted install that recorded them): the writer moves
    /// past the blocks that hold them and hashes them from the device, so
    /// the report covers the whole image. On flash `offset` must be a whole
    /// number of erase blocks. Call before writing anything.
    pub fn continue_after(mut self, offset: u64) -> Result<Self> {
        if self.report.bytes != 0 || !self.pending.is_empty() {
            return Err(Error::InvalidArgument(
                "a write can only continue after earlier bytes before it starts".into(),
            ));
        }
        if self.expected.is_some_and(|size| offset > size) {
            return Err(Error::InvalidArgument(format!(
                "cannot continue after byte {offset}: the image is smaller"
            )));
        }
        if offset == 0 {
            return Ok(self);
        }
        let image = self.geometry.kind == FlashKind::Image;
        if !image && !offset.is_multiple_of(self.geometry.erase_size) {
            return Err(Error::Geometry(format!(
                "cannot continue after byte {offset}: not a whole number of {}-byte erase blocks",
                self.geometry.erase_size
            )));
        }
        let blocks = if image {
            Vec::new()
        } else {
            let region = Region::new(self.next, self.region.end() - self.next);
            good_blocks(self.device, region)?
        };
        let mut buf = vec![0u8; self.block_len];
        let mut done = 0u64;
        while done < offset {
            let n = (offset - done).min(self.block_len as u64) as usize;
            let chunk = &mut buf[..n];
            if image {
                self.device.read(self.region.start + done, chunk)?;
            } else {
                read_with_map(self.device, &blocks, self.geometry.erase_size, done, chunk)?;
            }
            self.hasher.update(chunk);
            done += n as u64;
            self.report.blocks += 1;
        }
        self.next = if image {
            self.region.start + offset
        } else {
            let index = usize::try_from(offset / self.geometry.erase_size).unwrap_or(usize::MAX);
            match blocks.get(index) {
                Some(&block) => block,
                None => self.region.end(),
            }
        };
        self.report.bytes = offset;
        self.report.end = self.next;
        Ok(self)
    }

    pub fn with_progress(mut self, progress: impl Progress + 'a) -> Self {
        self.progress = Box::new(progress);
        self
    }

    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.cancel = Some(cancel);
        self
    }

    /// Usable bytes in the region (good blocks only, on NAND).
    fn room(&mut self) -> Result<u64> {
        if self.geometry.kind == FlashKind::Image {
            return Ok(u64::MAX - self.region.start);
        }
        let start = self.next;
        let region = Region::new(start, self.region.end() - start);
        Ok(good_blocks(self.device, region)?.len() as u64 * self.geometry.erase_size)
    }

    /// The device, for work after the stream (verifying a slot).
    pub fn device_mut(&mut self) -> &mut D {
        self.device
    }

    /// The report so far (complete after `finish`).
    pub fn report(&self) -> &WriteReport {
        &self.report
    }

    pub fn into_report(self) -> WriteReport {
        self.report
    }

    fn commit_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        if let Some(cancel) = &self.cancel {
            cancel.check()?;
        }
        let data_len = self.pending.len() as u64;
        if self.geometry.kind.needs_erase() {
            self.pending.resize(self.block_len, 0xFF);
        }
        let nand = self.geometry.kind.has_bad_blocks();
        let options = CommitOptions {
            skip_blank: self.options.skip_blank,
            skip_unchanged: self.options.skip_unchanged,
            attempts: self.options.attempts,
        };
        loop {
            let at = self.next;
            if at >= self.region.end() {
                return Err(Error::Geometry(format!(
                    "{} ran out of room at {at:#x} after {} image bytes ({} bad blocks skipped, {} relocated); the image does not fit the good blocks",
                    self.device.name(),
                    self.report.bytes,
                    self.report.bad_blocks_skipped.len(),
                    self.report.blocks_relocated.len()
                )));
            }
            if self.geometry.kind == FlashKind::Image {
                self.device.ensure_size(at + self.pending.len() as u64)?;
            }
            if nand && self.device.is_bad(at)? {
                self.report.bad_blocks_skipped.push(at);
                self.next += self.geometry.erase_size;
                continue;
            }
            match commit_block_with(
                self.device,
                at,
                &self.pending,
                &self.blank_digest,
                &mut self.scratch,
                options,
            ) {
                Ok(step) => {
                    self.count(step);
                    break;
                }
                Err(error)
                    if nand
                        && (is_media_failure(&error) || matches!(error, Error::Verify { .. })) =>
                {
                    self.device.mark_bad(at)?;
                    self.report.blocks_relocated.push(at);
                    self.next += self.geometry.erase_size;
                }
                Err(error) => return Err(error),
            }
        }
        let advance = if self.geometry.kind == FlashKind::Image {
            self.pending.len() as u64
        } else {
            self.geometry.erase_size
        };
        self.next += advance;
        self.report.end = self.next;
        self.report.blocks += 1;
        self.report.bytes += data_len;
        self.pending.clear();
        self.report_progress(false)
    }

    fn count(&mut self, step: BlockStep) {
        match step {
            BlockStep::Unchanged => self.report.blocks_unchanged += 1,
            BlockStep::Written { erased, programmed } => {
                if erased {
                    self.report.erases += 1;
                } else if self.geometry.kind.needs_erase() {
                    self.report.erases_skipped += 1;
                }
                self.report.bytes_programmed += programmed;
            }
        }
    }

    fn report_progress(&mut self, last: bool) -> Result<()> {
        let now = Instant::now();
        if !last
            && self
                .last_event
                .is_some_and(|at| now - at < PROGRESS_INTERVAL)
        {
            return Ok(());
        }
        self.last_event = Some(now);
        let total = self.expected.or(last.then_some(self.report.bytes));
        for operation in [Operation::Erase, Operation::Program, Operation::Verify] {
            self.progress.report(ProgressEvent {
                operation,
                done: self.report.bytes,
                total,
            })?;
        }
        Ok(())
    }
}

impl<D: BlockDevice + ?Sized> ImageSink for FlashWriter<'_, D> {
    fn write(&mut self, mut data: &[u8]) -> Result<()> {
        if self.finished {
            return Err(Error::InvalidArgument("write after finish".into()));
        }
        while !data.is_empty() {
            let room = self.block_len - self.pending.len();
            let (now, rest) = data.split_at(room.min(data.len()));
            if let Some(expected) = self.expected {
                let incoming = self.report.bytes + self.pending.len() as u64 + now.len() as u64;
                if incoming > expected {
                    return Err(Error::Geometry(format!(
                        "more data than the announced {expected} bytes"
                    )));
                }
            }
            self.hasher.update(now);
            self.pending.extend_from_slice(now);
            data = rest;
            if self.pending.len() == self.block_len {
                self.commit_pending()?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        self.commit_pending()?;
        if let Some(expected) = self.expected
            && self.report.bytes != expected
        {
            return Err(Error::Geometry(format!(
                "the image ended after {} of the announced {expected} bytes",
                self.report.bytes
            )));
        }
        self.device.sync()?;
        self.report
            .sha256
            .copy_from_slice(self.hasher.finalize().as_bytes());
        self.finished = true;
        self.report_progress(true)
    }
}

/// Reads `buf.len()` logical bytes at `offset` of the image laid into
/// `region` (bad blocks skipped on NAND, as the writer laid it).
pub fn read_mapped<D: BlockDevice + ?Sized>(
    device: &mut D,
    region: Region,
    offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    let geometry = device.geometry();
    if !geometry.kind.has_bad_blocks() {
        return device.read(region.start + offset, buf);
    }
    let blocks = good_blocks(device, region)?;
    read_with_map(device, &blocks, geometry.erase_size, offset, buf)
}

pub(crate) fn read_with_map<D: BlockDevice + ?Sized>(
    device: &mut D,
    blocks: &[u64],
    erase_size: u64,
    offset: u64,
    buf: &mut [u8],
) -> Result<()> {
    let mut done = 0usize;
    while done < buf.len() {
        let logical = offset + done as u64;
        let index = usize::try_from(logical / erase_size).unwrap_or(usize::MAX);
        let Some(&block) = blocks.get(index) else {
            return Err(Error::Geometry(format!(
                "{}: logical offset {logical:#x} is past the good blocks of the region",
                device.name()
            )));
        };
        let within = logical % erase_size;
        let n = ((erase_size - within) as usize).min(buf.len() - done);
        device.read(block + within, &mut buf[done..done + n])?;
        done += n;
    }
    Ok(())
}

/// Compares the device from `offset` with `image` (bad blocks skipped on
/// NAND) and returns the SHA-256 of what the device holds there; a
/// difference is an [`Error::Verify`] naming the first differing offset.
pub fn verify_image<D: BlockDevice + ?Sized>(
    device: &mut D,
    offset: u64,
    image: &mut dyn ReadAt,
    progress: &mut dyn Progress,
) -> Result<[u8; 32]> {
    let geometry = device.geometry();
    let size = image.size();
    if geometry.kind.needs_erase() && !offset.is_multiple_of(geometry.erase_size) {
        return Err(Error::Geometry(format!(
            "offset {offset:#x} is not aligned to the {:#x}-byte erase block of {}",
            geometry.erase_size,
            device.name()
        )));
    }
    let region = Region::new(offset, geometry.size.saturating_sub(offset));
    let blocks = if geometry.kind.has_bad_blocks() {
        good_blocks(device, region)?
    } else {
        Vec::new()
    };
    let room = if geometry.kind.has_bad_blocks() {
        blocks.len() as u64 * geometry.erase_size
    } else {
        region.len
    };
    if size > room {
        return Err(Error::Verify {
            subject: device.name().to_string(),
            what: "size".into(),
            expected: format!("{size} bytes from {offset:#x}"),
            actual: format!("{room} bytes available"),
        });
    }
    let chunk = usize::try_from(geometry.erase_size.max(1 << 16)).unwrap_or(1 << 16);
    let mut want = vec![0u8; chunk];
    let mut have = vec![0u8; chunk];
    let mut hasher = Hasher::new(HashAlgorithm::Sha256);
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(chunk as u64) as usize;
        image.read_exact_at(at, &mut want[..n])?;
        if geometry.kind.has_bad_blocks() {
            read_with_map(device, &blocks, geometry.erase_size, at, &mut have[..n])?;
        } else {
            device.read(offset + at, &mut have[..n])?;
        }
        hasher.update(&have[..n]);
        if want[..n] != have[..n] {
            let first = want[..n]
                .iter()
                .zip(&have[..n])
                .position(|(a, b)| a != b)
                .unwrap_or(0);
            let bad = at + first as u64;
            return Err(Error::Verify {
                subject: format!("{} from {offset:#x}", device.name()),
                what: format!("content at image offset {bad:#x}"),
                expected: format!("{:#04x}", want[first]),
                actual: format!("{:#04x}", have[first]),
            });
        }
        at += n as u64;
        progress.report(ProgressEvent {
            operation: Operation::Verify,
            done: at,
            total: Some(size),
        })?;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finalize().as_bytes());
    Ok(digest)
}

/// SHA-256 of `size` logical bytes of `region` (as [`read_mapped`] reads them).
pub(crate) fn region_digest<D: BlockDevice + ?Sized>(
    device: &mut D,
    blocks: &[u64],
    erase_size: u64,
    size: u64,
) -> Result<[u8; 32]> {
    let mut hasher = Hasher::new(HashAlgorithm::Sha256);
    let chunk = usize::try_from(erase_size).unwrap_or(1 << 16);
    let mut buf = vec![0u8; chunk];
    let mut at = 0u64;
    while at < size {
        let n = (size - at).min(chunk as u64) as usize;
        read_with_map(device, blocks, erase_size, at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let mut digest = [0u8; 32];
    digest.copy_from_slice(hasher.finalize().as_bytes());
    Ok(digest)
}

pub(crate) fn short_hex(digest: &[u8; 32]) -> String {
    hex(&digest[..8])
}
