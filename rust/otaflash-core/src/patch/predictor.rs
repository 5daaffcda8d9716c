//! A block's reference predictions (docs/patch-format.md section 3.2) on a
//! second thread. The decoder reads a block's copies' old bytes into a
//! spare block buffer and hands it to the thread, which rewrites them as the
//! predictions say while the decoder writes out the block before; the
//! buffer then becomes the block, and the differences are added to it. On
//! large x86 images prediction is a third of the decoder's instructions
//! (ruff), and the write of a block about as long.

use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use super::references::ReferenceMap;
use crate::{Error, Result};

/// One block's work, sent to the thread and back.
#[derive(Debug)]
pub(crate) struct Job {
    /// A block buffer with the copies' old bytes in place, returned with
    /// them rewritten as predicted.
    pub(crate) bytes: Vec<u8>,
    /// The block's copies: (old offset, block offset, length).
    pub(crate) copies: Vec<(u64, u32, u32)>,
    /// The new-image offset of the block's first byte.
    pub(crate) block_start: u64,
}

impl Job {
    fn run(&mut self, map: &ReferenceMap) {
        for &(from, at, len) in &self.copies {
            let (at, end) = (at as usize, at as usize + len as usize);
            map.predict(&mut self.bytes[at..end], from, self.block_start + at as u64);
        }
    }
}

/// Where the one job out stands.
#[derive(Debug)]
enum Slot {
    Empty,
    /// Sent and not yet taken up by the thread.
    Waiting(Job),
    /// The thread is on it.
    Running,
    Done(Job),
    /// The decoder is gone: the thread ends.
    Closed,
}

#[derive(Debug)]
struct Shared {
    slot: Mutex<Slot>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> Result<MutexGuard<'_, Slot>> {
        self.slot.lock().map_err(|_| gone())
    }
}

/// The thread takes up a job while the decoder goes on with the block; a
/// job it has not begun when the decoder needs it, the decoder runs itself,
/// so a thread slow to be scheduled (on two cores, beside the hashing
/// threads) costs the prediction's time rather than the wait for a core.
pub(crate) struct BackgroundPredictor {
    map: Arc<ReferenceMap>,
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

/// The thread's loop: takes up each waiting job until the slot closes.
fn serve(map: &ReferenceMap, shared: &Shared) -> Result<()> {
    let mut slot = shared.lock()?;
    loop {
        match std::mem::replace(&mut *slot, Slot::Running) {
            Slot::Waiting(mut job) => {
                drop(slot);
                job.run(map);
                slot = shared.lock()?;
                if matches!(*slot, Slot::Closed) {
                    return Ok(());
                }
                *slot = Slot::Done(job);
                shared.changed.notify_all();
            }
            Slot::Closed => return Ok(()),
            idle => {
                *slot = idle;
                slot = shared.changed.wait(slot).map_err(|_| gone())?;
            }
        }
    }
}

impl BackgroundPredictor {
    pub(crate) fn spawn(map: Arc<ReferenceMap>) -> Result<Self> {
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot::Empty),
            changed: Condvar::new(),
        });
        let (thread_map, thread_shared) = (Arc::clone(&map), Arc::clone(&shared));
        let worker = std::thread::Builder::new()
            .name("otaflash-predict".into())
            .spawn(move || {
                let _ = serve(&thread_map, &thread_shared);
            })
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot start the prediction thread: {e}"))
            })?;
        Ok(Self {
            map,
            shared,
            worker: Some(worker),
        })
    }

    /// Hands the thread a job; one at a time ([`Self::receive`] before the next).
    pub(crate) fn send(&self, job: Job) -> Result<()> {
        let mut slot = self.shared.lock()?;
        if !matches!(*slot, Slot::Empty) {
            return Err(gone());
        }
        *slot = Slot::Waiting(job);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The job sent, done: by the thread, or here if it had not begun it.
    pub(crate) fn receive(&self) -> Result<Job> {
        let mut slot = self.shared.lock()?;
        loop {
            match std::mem::replace(&mut *slot, Slot::Empty) {
                Slot::Done(job) => return Ok(job),
                Slot::Waiting(mut job) => {
                    drop(slot);
                    job.run(&self.map);
                    return Ok(job);
                }
                Slot::Running => {
                    *slot = Slot::Running;
                    slot = self.shared.changed.wait(slot).map_err(|_| gone())?;
                }
                Slot::Empty | Slot::Closed => return Err(gone()),
            }
        }
    }
}

impl Drop for BackgroundPredictor {
    fn drop(&mut self) {
        if let Ok(mut slot) = self.shared.slot.lock() {
            *slot = Slot::Closed;
            self.shared.changed.notify_all();
        }
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
