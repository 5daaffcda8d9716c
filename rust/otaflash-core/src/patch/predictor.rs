//! A block's reference predictions (docs/patch-format.md section 3.2) on a
//! second thread. Once a block's copies are read from the old image, the
//! decoder hands the thread a snapshot of them and goes on decoding the
//! block's differences and literals; the thread turns the snapshot into
//! the bytes the predictions add, which the decoder adds before the block
//! goes out (addition mod 256 commutes with the differences'). On large
//! x86 images prediction is a third of the decoder's instructions (ruff).

use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::references::ReferenceMap;
use crate::{Error, Result};

/// One block's work, sent to the thread and back.
#[derive(Debug)]
pub(crate) struct Job {
    /// Sent: the block's bytes with its copies' old bytes in place;
    /// returned: over each copy, what the predictions add to those bytes.
    pub(crate) bytes: Vec<u8>,
    /// The block's copies: (old offset, block offset, length).
    pub(crate) copies: Vec<(u64, u32, u32)>,
    /// The new-image offset of the block's first byte.
    pub(crate) block_start: u64,
}

pub(crate) struct BackgroundPredictor {
    requests: Option<Sender<Job>>,
    replies: Receiver<Job>,
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

impl BackgroundPredictor {
    pub(crate) fn spawn(map: Arc<ReferenceMap>) -> Result<Self> {
        let (requests, inbox) = channel::<Job>();
        let (outbox, replies) = channel::<Job>();
        let worker = std::thread::Builder::new()
            .name("otaflash-predict".into())
            .spawn(move || {
                for mut job in inbox {
                    for &(from, at, len) in &job.copies {
                        let (at, end) = (at as usize, at as usize + len as usize);
                        let start = job.block_start + at as u64;
                        map.predict_changes(&mut job.bytes[at..end], from, start);
                    }
                    if outbox.send(job).is_err() {
                        return;
                    }
                }
            })
            .map_err(|e| {
                Error::InvalidArgument(format!("cannot start the prediction thread: {e}"))
            })?;
        Ok(Self {
            requests: Some(requests),
            replies,
            worker: Some(worker),
        })
    }

    pub(crate) fn send(&self, job: Job) -> Result<()> {
        self.requests
            .as_ref()
            .ok_or_else(gone)?
            .send(job)
            .map_err(|_| gone())
    }

    /// The oldest job sent, done.
    pub(crate) fn receive(&self) -> Result<Job> {
        self.replies.recv().map_err(|_| gone())
    }
}

impl Drop for BackgroundPredictor {
    fn drop(&mut self) {
        // Closing the requests ends the thread's loop.
        self.requests = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}
