//! A block's reference predictions (docs/patch-format.md section 3.2), made
//! by a second thread and the decoder at once. The decoder reads a block's
//! copies' old bytes into a spare block buffer and cuts it into pieces at
//! copy boundaries; the thread rewrites pieces as the predictions say from
//! the front while the decoder writes out the block before, then the
//! decoder takes pieces from the back until none is left. The pieces are
//! joined again (no copy) and the buffer becomes the block. Prediction is
//! a third of the decoder's instructions on large x86 images (ruff), so
//! neither side waits long for the other, however the two cores are shared.
//!
//! With no piece to predict, the thread advances a shared hash a chunk at a
//! time (the old image, checked while the patch is applied).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use bytes::BytesMut;

use super::references::ReferenceMap;
use crate::hash::background::SharedSha256;
use crate::{Error, Result};

/// Pieces aim at this many copied bytes (or a sixteenth of a block's, if
/// more), so that the last piece either side begins costs the other
/// little waiting.
const PIECE_BYTES: u64 = 8 << 10;

/// Part of a block buffer and the copies inside it.
#[derive(Debug)]
struct Piece {
    bytes: BytesMut,
    /// The block offset of `bytes[0]`.
    offset: usize,
    /// (old offset, block offset, length), in block order.
    copies: Vec<(u64, u32, u32)>,
}

impl Piece {
    fn predict(&mut self, map: &ReferenceMap, block_start: u64) {
        for &(from, at, len) in &self.copies {
            let start = at as usize - self.offset;
            let code = &mut self.bytes[start..start + len as usize];
            map.predict(code, from, block_start + u64::from(at));
        }
    }
}

/// One block's pieces as the two sides share them.
#[derive(Default)]
struct Work {
    /// The map, from the first block on.
    map: Option<Arc<ReferenceMap>>,
    block_start: u64,
    /// Not yet begun, in block order.
    waiting: VecDeque<Piece>,
    done: Vec<Piece>,
    /// Begun by the thread, not yet done.
    running: usize,
    closed: bool,
    /// The thread has ended (set even if it panicked).
    stopped: bool,
    /// A hash to advance when there is no piece to predict.
    side: Option<Arc<SharedSha256>>,
}

struct Shared {
    work: Mutex<Work>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Work>> {
        self.work.lock().map_err(|_| gone())
    }

    fn wait<'a>(&self, work: MutexGuard<'a, Work>) -> Result<MutexGuard<'a, Work>> {
        if work.stopped {
            return Err(gone());
        }
        self.changed.wait(work).map_err(|_| gone())
    }
}

/// Marks the thread stopped however it ends.
struct Stopped<'a>(&'a Shared);

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let mut work = match self.0.work.lock() {
            Ok(work) => work,
            Err(poisoned) => poisoned.into_inner(),
        };
        work.stopped = true;
        self.0.changed.notify_all();
    }
}

pub(crate) struct BackgroundPredictor {
    shared: Arc<Shared>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackgroundPredictor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundPredictor")
            .finish_non_exhaustive()
    }
}

fn gone() -> Error {
    Error::InvalidArgument("the reference prediction thread stopped".into())
}

/// The thread's loop until closed: pieces from the front, else a step of
/// the side hash.
fn serve(shared: &Shared) -> Result<()> {
    let _stopped = Stopped(shared);
    let mut work = shared.lock()?;
    loop {
        if work.closed {
            return Ok(());
        }
        if let Some(map) = work.map.clone()
            && let Some(mut piece) = work.waiting.pop_front()
        {
            work.running += 1;
            let block_start = work.block_start;
            drop(work);
            piece.predict(&map, block_start);
            work = shared.lock()?;
            work.done.push(piece);
            work.running -= 1;
            shared.changed.notify_all();
            continue;
        }
        let side = work.side.clone();
        drop(work);
        let done = match &side {
            Some(side) if side.step() => {
                // Filler work: a decoder sharing this core goes first.
                std::thread::yield_now();
                work = shared.lock()?;
                continue;
            }
            Some(side) => side.is_done(),
            None => true,
        };
        work = shared.lock()?;
        if done {
            work.side = None;
        }
        if work.closed || !work.waiting.is_empty() {
            continue;
        }
        // Nothing to do now (another thread may be at the side hash).
        work = shared.wait(work)?;
    }
}

impl BackgroundPredictor {
    /// The thread, advancing `side` while it has no piece to predict.
    pub(crate) fn spawn(side: Option<Arc<SharedSha256>>) -> Result<Arc<Self>> {
        let shared = Arc::new(Shared {
            work: Mutex::new(Work {
                side,
                ..Work::default()
            }),
            changed: Condvar::new(),
        });
        let thread_shared = Arc::clone(&shared);
        let worker = std::thread::Builder::new()
            .name("otaflash-predict".into())
            .spawn(move || {
                let _ = serve(&thread_shared);
            })
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot start the prediction thread: {e}"))
            })?;
        Ok(Arc::new(Self {
            shared,
            worker: Some(worker),
        }))
    }

    /// Hands the thread `bytes` (a block buffer holding the old bytes of
    /// `copies`, in block order, at the new-image offset `block_start`),
    /// cut into pieces. [`Self::finish`] before the next block.
    pub(crate) fn start(
        &self,
        map: &Arc<ReferenceMap>,
        mut bytes: BytesMut,
        copies: &[(u64, u32, u32)],
        block_start: u64,
    ) -> Result<()> {
        let copied: u64 = copies.iter().map(|c| u64::from(c.2)).sum();
        let aim = PIECE_BYTES.max(copied / 16);
        let mut work = self.shared.lock()?;
        if !work.waiting.is_empty() || !work.done.is_empty() || work.running > 0 {
            return Err(gone());
        }
        if work.map.is_none() {
            work.map = Some(Arc::clone(map));
        }
        work.block_start = block_start;
        let (mut first, mut offset, mut filled) = (0, 0, 0);
        for (i, &(_, _, len)) in copies.iter().enumerate() {
            filled += u64::from(len);
            let Some(&(_, next, _)) = copies.get(i + 1) else {
                break;
            };
            if filled >= aim {
                let piece = bytes.split_to(next as usize - offset);
                work.waiting.push_back(Piece {
                    bytes: piece,
                    offset,
                    copies: copies[first..=i].to_vec(),
                });
                (first, offset, filled) = (i + 1, next as usize, 0);
            }
        }
        work.waiting.push_back(Piece {
            bytes,
            offset,
            copies: copies[first..].to_vec(),
        });
        self.shared.changed.notify_all();
        Ok(())
    }

    /// Predicts the pieces the thread has not begun, from the back, waits
    /// for those it has, and joins them: the block buffer, predicted.
    pub(crate) fn finish(&self, map: &ReferenceMap) -> Result<BytesMut> {
        let mut work = self.shared.lock()?;
        loop {
            if let Some(mut piece) = work.waiting.pop_back() {
                let block_start = work.block_start;
                drop(work);
                piece.predict(map, block_start);
                work = self.shared.lock()?;
                work.done.push(piece);
            } else if work.running > 0 {
                work = self.shared.wait(work)?;
            } else {
                break;
            }
        }
        let mut pieces = std::mem::take(&mut work.done);
        drop(work);
        pieces.sort_unstable_by_key(|p| p.offset);
        let mut pieces = pieces.into_iter();
        let mut joined = pieces.next().ok_or_else(gone)?.bytes;
        for piece in pieces {
            joined.unsplit(piece.bytes);
        }
        Ok(joined)
    }
}

impl Drop for BackgroundPredictor {
    fn drop(&mut self) {
        if let Ok(mut work) = self.shared.work.lock() {
            work.closed = true;
            self.shared.changed.notify_all();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::references::{Absolute, Rules};

    #[test]
    fn pieces_predicted_on_both_sides_join_into_the_inline_prediction() {
        let len = 256 << 10;
        let mut rng = fastrand::Rng::with_seed(7);
        // x86-like bytes: CALLs and conditional jumps among random ones.
        let old: Vec<u8> = (0..len)
            .map(|_| match rng.u8(..8) {
                0 => 0xE8,
                1 => 0x0F,
                2 => 0x85,
                _ => rng.u8(..),
            })
            .collect();
        let moves = (0..(len >> 7)).map(|_| rng.u32(..4096)).collect();
        let rules = Rules {
            x86: true,
            thumb: false,
            absolute: Absolute::new(0x1000, len as u64),
        };
        let map = Arc::new(ReferenceMap::new(7, moves, len as u64, rules));
        let predictor = BackgroundPredictor::spawn(None).unwrap();
        for round in 0..20u64 {
            // Copies of 1 byte to 40 KiB with literal gaps between them.
            let mut copies = Vec::new();
            let mut at = rng.usize(..100);
            while at < len {
                let n = rng.usize(1..(40 << 10)).min(len - at);
                copies.push((rng.u64(..(len - n) as u64), at as u32, n as u32));
                at += n + rng.usize(..300);
            }
            let mut bytes = BytesMut::zeroed(len);
            for &(from, at, n) in &copies {
                let (from, at, n) = (from as usize, at as usize, n as usize);
                bytes[at..at + n].copy_from_slice(&old[from..from + n]);
            }
            let mut inline = bytes.clone();
            let block_start = round * 1000;
            for &(from, at, n) in &copies {
                let code = &mut inline[at as usize..(at + n) as usize];
                map.predict(code, from, block_start + u64::from(at));
            }
            predictor.start(&map, bytes, &copies, block_start).unwrap();
            let predicted = predictor.finish(&map).unwrap();
            assert_eq!(predicted.len(), len);
            assert!(predicted == inline, "round {round}");
        }
    }
}
