//! The in-place kind: the new image overwrites the old one in its own slot,
//! one erase block per step, resumable after a power cut at any moment.
//!
//! Two phases, numbered as one sequence of steps:
//! 1. *shift*: the old image moves up by `shift` bytes, top block first. A
//!    move reads only blocks below the one it writes, which later steps of
//!    this phase overwrite, so a repeated move reads intact data.
//! 2. *patch*: new block j is decoded and replaces slot block j. The diff
//!    only lets block j copy from shifted old bytes at or above block j + 1,
//!    which no step so far (this one included) has touched.
//!
//! Before step 0 the patch body and the old image are verified; after the
//! last step the new image is read back and verified.

use std::cell::RefCell;

use sha2::{Digest as _, Sha256};

use super::apply::{ApplyOptions, ApplyReport, hex, verify_old};
use super::body::{self, BodyDecoder, Position};
use super::format::{FrameHeader, Header, Kind, MAX_FRAME_HEADER_LEN, PREFIX_LEN, header_len};
use crate::inplace::InPlaceTarget;
use crate::io::ReadAt;
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

const PIECE: usize = 64 << 10;

/// (shift steps, patch steps) of an in-place patch.
pub fn in_place_steps(header: &Header) -> (u64, u64) {
    let bs = u64::from(header.block_size);
    let shift_steps = if header.shift == 0 || header.old_size == 0 {
        0
    } else {
        (header.shift + header.old_size).div_ceil(bs) - header.shift / bs
    };
    (shift_steps, header.new_size.div_ceil(bs))
}

/// The old image as seen after the shift: offsets moved up by `shift`.
struct Shifted<'a, T> {
    target: &'a RefCell<&'a mut T>,
    shift: u64,
    size: u64,
}

impl<T: InPlaceTarget> ReadAt for Shifted<'_, T> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let mut target = self
            .target
            .try_borrow_mut()
            .map_err(|_| Error::InvalidArgument("in-place target is busy".into()))?;
        target.read_exact_at(self.shift + offset, buf)
    }
}

fn read_patch(patch: &mut dyn ReadAt, offset: u64, len: usize) -> Result<Vec<u8>> {
    if offset.saturating_add(len as u64) > patch.size() {
        return Err(Error::PatchCorrupt(format!(
            "it is truncated: it has {} bytes, {} are needed",
            patch.size(),
            offset + len as u64
        )));
    }
    let mut buf = vec![0u8; len];
    patch.read_exact_at(offset, &mut buf)?;
    Ok(buf)
}

/// Applies an in-place patch to `target`, or continues one a power cut
/// interrupted. The patch is read at offsets (it is read twice: once to
/// verify it whole before the first write, once to apply it).
pub fn apply_in_place<T: InPlaceTarget>(
    target: &mut T,
    patch: &mut dyn ReadAt,
    options: &ApplyOptions,
    progress: &mut dyn Progress,
) -> Result<ApplyReport> {
    let len = header_len(&read_patch(patch, 0, PREFIX_LEN)?)?;
    let header = Header::decode(&read_patch(patch, 0, len)?)?;
    let body_start = len as u64;
    if header.kind != Kind::InPlace {
        return Err(Error::PatchUnsupported(
            "this is a sequential patch: it writes a new image elsewhere, not in place".into(),
        ));
    }
    let bs = u64::from(header.block_size);
    if target.block_size() != bs {
        return Err(Error::PatchUnsupported(format!(
            "this patch was made for {bs}-byte blocks, the slot's blocks are {} bytes",
            target.block_size()
        )));
    }
    if target.size() < header.slot_size {
        return Err(Error::PatchUnsupported(format!(
            "this patch needs a slot of {} bytes, the slot has {}",
            header.slot_size,
            target.size()
        )));
    }
    let need = body::working_set(&header, options.read_cache);
    if need > options.max_working_set {
        return Err(Error::PatchUnsupported(format!(
            "this patch needs {} KiB of working memory, the limit is {} KiB",
            need.div_ceil(1024),
            options.max_working_set / 1024
        )));
    }
    let total_len = body_start + header.body_size;
    if patch.size() != total_len {
        return Err(Error::PatchCorrupt(format!(
            "the patch has {} bytes, its header says {total_len}",
            patch.size()
        )));
    }
    verify_body(patch, &header, body_start)?;

    let id = header.patch_id();
    let (shift_steps, patch_steps) = in_place_steps(&header);
    let total_steps = shift_steps + patch_steps;
    let mut done = target.completed_steps(&id)?;
    if done > total_steps {
        return Err(Error::InvalidArgument(format!(
            "the slot records {done} steps of this update, it has only {total_steps}"
        )));
    }
    if done == 0 {
        verify_old(target, &header, progress)?;
    }
    let report = |p: &mut dyn Progress, done: u64| {
        p.report(ProgressEvent {
            operation: Operation::Patch,
            done,
            total: Some(total_steps),
        })
    };

    // Phase 1: move the old image up, top block first.
    let top = (header.shift + header.old_size).div_ceil(bs);
    let mut buf = vec![0u8; bs as usize];
    while done < shift_steps {
        let k = top - 1 - done;
        let src = k * bs - header.shift;
        let len = bs.min(header.old_size - src) as usize;
        target.read_exact_at(src, &mut buf[..len])?;
        target.replace_block(k * bs, &buf[..len])?;
        done += 1;
        target.record_steps(&id, done)?;
        report(progress, done)?;
    }
    drop(buf);

    // Phase 2: decode new blocks in order, from the frame holding the first
    // block not yet done.
    let first = done - shift_steps;
    if first < patch_steps {
        let pos = find_frame(patch, &header, body_start, first * bs)?;
        let cell = RefCell::new(&mut *target);
        let mut old = Shifted {
            target: &cell,
            shift: header.shift,
            size: header.old_size,
        };
        let mut body = BodyDecoder::new(&header, options.read_cache, pos, None)?;
        let mut step = done;
        let mut failure: Option<Error> = None;
        {
            let mut emit = |offset: u64, block: &[u8]| -> Result<()> {
                if offset < first * bs {
                    return Ok(()); // done before the cut
                }
                let mut t = cell
                    .try_borrow_mut()
                    .map_err(|_| Error::InvalidArgument("in-place target is busy".into()))?;
                t.replace_block(offset, block)?;
                step += 1;
                t.record_steps(&id, step)?;
                drop(t);
                report(progress, step)
            };
            let mut at = body_start + pos.body_pos;
            let mut piece = vec![0u8; PIECE];
            while at < total_len {
                let n = (total_len - at).min(PIECE as u64) as usize;
                patch.read_exact_at(at, &mut piece[..n])?;
                if let Err(e) = body.push(&piece[..n], &mut old, &mut emit) {
                    failure = Some(e);
                    break;
                }
                at += n as u64;
            }
        }
        if let Some(e) = failure {
            return Err(e);
        }
        if !body.is_complete() {
            return Err(Error::PatchCorrupt(
                "the patch ends before its last block".into(),
            ));
        }
    }

    // Read back and verify the new image.
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut at = 0u64;
    while at < header.new_size {
        let n = (header.new_size - at).min(PIECE as u64) as usize;
        target.read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    if got != header.new_sha256 {
        return Err(Error::Verify {
            subject: "slot after in-place update".into(),
            what: "sha256".into(),
            expected: hex(&header.new_sha256),
            actual: hex(&got),
        });
    }
    Ok(ApplyReport {
        format: "otaflash",
        new_size: header.new_size,
        new_sha256: got,
        patch_size: total_len,
    })
}

fn verify_body(patch: &mut dyn ReadAt, header: &Header, body_start: u64) -> Result<()> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; PIECE];
    let mut at = body_start;
    let end = body_start + header.body_size;
    while at < end {
        let n = (end - at).min(PIECE as u64) as usize;
        patch.read_exact_at(at, &mut buf[..n])?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    let got: [u8; 32] = hasher.finalize().into();
    if Some(got) != header.body_sha256 {
        return Err(Error::PatchCorrupt(
            "its body does not match the SHA-256 in its header; nothing was written".into(),
        ));
    }
    Ok(())
}

/// The position of the frame holding output offset `out`.
fn find_frame(
    patch: &mut dyn ReadAt,
    header: &Header,
    body_start: u64,
    out: u64,
) -> Result<Position> {
    let mut pos = Position {
        body_pos: 0,
        out_pos: 0,
        frame_index: 0,
    };
    loop {
        let at = body_start + pos.body_pos;
        let len = (patch.size().saturating_sub(at)).min(MAX_FRAME_HEADER_LEN as u64) as usize;
        let raw = read_patch(patch, at, len)?;
        let out_left = header.new_size - pos.out_pos;
        let Some((fh, _, fh_len)) = FrameHeader::decode(&raw, pos.frame_index, header, out_left)?
        else {
            return Err(Error::PatchCorrupt(format!(
                "frame {} header is truncated",
                pos.frame_index
            )));
        };
        if out < pos.out_pos + u64::from(fh.out_len) {
            return Ok(pos);
        }
        pos.body_pos += fh_len as u64 + u64::from(fh.comp_len);
        pos.out_pos += u64::from(fh.out_len);
        pos.frame_index += 1;
    }
}
