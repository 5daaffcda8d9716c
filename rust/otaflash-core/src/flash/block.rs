//! Replacing one erase block: the step the writer and both update layouts
//! share. Hash first (skip a block that already holds the bytes, skip the
//! erase of a blank one), then erase, program the pages that are not blank,
//! read back and compare.

use super::{BlockDevice, Geometry, hex, sha256};
use crate::{Error, Result};

/// What replacing a block took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BlockStep {
    /// The block already held the bytes (same SHA-256): nothing written.
    Unchanged,
    /// Written and read back identical.
    Written { erased: bool, programmed: u64 },
}

/// SHA-256 of `len` erased (0xFF) bytes: what a blank block hashes to.
pub fn erased_digest(len: usize) -> [u8; 32] {
    sha256(&vec![0xFF; len])
}

/// Per-call knobs of [`commit_block`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct CommitOptions {
    pub skip_blank: bool,
    pub skip_unchanged: bool,
    /// Full erase/program/verify rounds before giving up on the block.
    pub attempts: u32,
}

/// Makes the block at `at` (erase-block aligned) hold `desired` (a whole
/// block on flash that needs erasing; any length on RAM-like devices).
///
/// Errors from the device come back as they are (EIO for a bad block, so
/// the caller can relocate); a block that keeps reading back wrong after
/// `attempts` rounds is an [`Error::Verify`].
pub fn commit_block<D: BlockDevice + ?Sized>(
    device: &mut D,
    at: u64,
    desired: &[u8],
    blank_digest: &[u8; 32],
    scratch: &mut Vec<u8>,
) -> Result<BlockStep> {
    commit_block_with(
        device,
        at,
        desired,
        blank_digest,
        scratch,
        CommitOptions {
            skip_blank: true,
            skip_unchanged: true,
            attempts: 2,
        },
    )
}

pub(crate) fn commit_block_with<D: BlockDevice + ?Sized>(
    device: &mut D,
    at: u64,
    desired: &[u8],
    blank_digest: &[u8; 32],
    scratch: &mut Vec<u8>,
    options: CommitOptions,
) -> Result<BlockStep> {
    let geometry = device.geometry();
    let erase = geometry.kind.needs_erase();
    let mut blank = false;
    if options.skip_unchanged || options.skip_blank {
        let have = device.digest(at, desired.len(), scratch)?;
        if options.skip_unchanged && have == sha256(desired) {
            return Ok(BlockStep::Unchanged);
        }
        blank = options.skip_blank
            && desired.len() as u64 == geometry.erase_size
            && have == *blank_digest;
    }
    let mut erased = false;
    let mut programmed = 0;
    let mut attempt = 0;
    loop {
        attempt += 1;
        if erase && !(blank && attempt == 1) {
            device.erase(at, geometry.erase_size)?;
            erased = true;
        }
        programmed += program_pages(device, &geometry, at, desired)?;
        if reads_back(device, at, desired, scratch)? {
            return Ok(BlockStep::Written { erased, programmed });
        }
        if attempt >= options.attempts.max(1) {
            let actual = sha256(scratch);
            return Err(Error::Verify {
                subject: format!("{} block at {at:#x}", device.name()),
                what: "read-back sha256".into(),
                expected: hex(&sha256(desired)),
                actual: hex(&actual),
            });
        }
    }
}

/// Programs the non-blank pages of `data` (all of it on RAM-like devices),
/// a run of consecutive pages per call. Returns the bytes programmed.
fn program_pages<D: BlockDevice + ?Sized>(
    device: &mut D,
    geometry: &Geometry,
    at: u64,
    data: &[u8],
) -> Result<u64> {
    if !geometry.kind.needs_erase() {
        device.program(at, data)?;
        return Ok(data.len() as u64);
    }
    let page = usize::try_from(geometry.page_size).unwrap_or(usize::MAX);
    let mut programmed = 0u64;
    let mut run_start: Option<usize> = None;
    let mut offset = 0usize;
    for chunk in data.chunks(page) {
        let blank = chunk.iter().all(|&b| b == 0xFF);
        match (blank, run_start) {
            (false, None) => run_start = Some(offset),
            (true, Some(start)) => {
                device.program(at + start as u64, &data[start..offset])?;
                programmed += (offset - start) as u64;
                run_start = None;
            }
            _ => {}
        }
        offset += chunk.len();
    }
    if let Some(start) = run_start {
        // The tail may be shorter than a page; it is still write-unit aligned
        // because blocks are padded to the erase size.
        device.program(at + start as u64, &data[start..])?;
        programmed += (data.len() - start) as u64;
    }
    Ok(programmed)
}

/// Reads the block back; a mismatch is read a second time, so a transient
/// bit flip on the read path does not cost a rewrite.
fn reads_back<D: BlockDevice + ?Sized>(
    device: &mut D,
    at: u64,
    desired: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<bool> {
    scratch.resize(desired.len(), 0);
    for _ in 0..2 {
        device.read(at, scratch)?;
        if scratch.as_slice() == desired {
            return Ok(true);
        }
    }
    Ok(false)
}
