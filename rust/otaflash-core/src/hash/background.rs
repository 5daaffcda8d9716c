//! SHA-256 of a stream on a second thread, one block behind its producer:
//! the applier decodes block n+1 while block n is hashed, so hashing the new
//! image costs a copy instead of a pass. Memory: one block. Between blocks
//! the thread advances a shared hash a chunk at a time ([`SharedSha256`]:
//! the old image, checked while a patch is applied), which keeps the second
//! core to the helper threads there are anyway; the blocks come first.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};

use crate::io::ReadAt;
use crate::{Error, Result};

/// SHA-256 of a source's first `size` bytes, read a chunk at a time so that
/// the work can be done in steps.
#[derive(Debug)]
pub struct SourceSha256 {
    size: u64,
    done: u64,
    hasher: Sha256,
    buf: Vec<u8>,
}

impl SourceSha256 {
    pub fn new(size: u64, chunk: usize) -> Self {
        Self {
            size,
            done: 0,
            hasher: Sha256::new(),
            buf: vec![0; chunk.max(1)],
        }
    }

    /// Bytes hashed so far.
    pub fn done(&self) -> u64 {
        self.done
    }

    /// Hashes the next chunk of `source`: the digest once all `size` bytes
    /// are in.
    pub fn step(&mut self, source: &mut dyn ReadAt) -> Result<Option<[u8; 32]>> {
        let n = (self.size - self.done).min(self.buf.len() as u64) as usize;
        source.read_exact_at(self.done, &mut self.buf[..n])?;
        self.hasher.update(&self.buf[..n]);
        self.done += n as u64;
        Ok((self.done == self.size).then(|| self.hasher.finalize_reset().into()))
    }
}

/// A source's SHA-256 that several threads advance a chunk at a time when
/// they have nothing more urgent to do (the old image, checked while a patch
/// is applied, by whichever helper thread is idle), and that the thread
/// waiting for it finishes itself.
pub struct SharedSha256 {
    state: Mutex<Shared>,
    changed: Condvar,
}

struct Shared {
    /// The source and the hash so far; None while a thread hashes a chunk,
    /// once done, or once cancelled.
    job: Option<(Box<dyn ReadAt + Send>, SourceSha256)>,
    stepping: bool,
    cancelled: bool,
    digest: Option<Result<[u8; 32]>>,
}

impl std::fmt::Debug for SharedSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedSha256").finish_non_exhaustive()
    }
}

impl SharedSha256 {
    /// The SHA-256 of `source`'s first `size` bytes, `chunk` at a time.
    pub fn new(source: Box<dyn ReadAt + Send>, size: u64, chunk: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Shared {
                job: Some((source, SourceSha256::new(size, chunk))),
                stepping: false,
                cancelled: false,
                digest: None,
            }),
            changed: Condvar::new(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        match self.state.lock() {
            Ok(state) => state,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Hashes the next chunk unless another thread is at it, or all is done
    /// (or cancelled): whether this thread should go on.
    pub fn step(&self) -> bool {
        let Some((mut source, mut job)) = ({
            let mut state = self.lock();
            let job = state.job.take();
            state.stepping = job.is_some();
            job
        }) else {
            return false;
        };
        let step = job.step(&mut *source);
        let mut state = self.lock();
        state.stepping = false;
        let more = match step {
            Ok(None) if state.cancelled => false,
            Ok(None) => {
                state.job = Some((source, job));
                true
            }
            Ok(Some(digest)) => {
                state.digest = Some(Ok(digest));
                false
            }
            Err(e) => {
                state.digest = Some(Err(e));
                false
            }
        };
        self.changed.notify_all();
        more
    }

    /// Whether the digest is there (without waiting).
    pub fn is_done(&self) -> bool {
        self.lock().digest.is_some()
    }

    /// The digest (once), hashing what is left on this thread.
    pub fn finish(&self) -> Result<[u8; 32]> {
        loop {
            let mut state = self.lock();
            if let Some(digest) = state.digest.take() {
                return digest;
            }
            if state.job.is_some() {
                drop(state);
                self.step();
            } else if state.stepping {
                drop(self.changed.wait(state));
            } else {
                return Err(Error::Cancelled);
            }
        }
    }

    /// No more work for anyone (the apply failed).
    pub fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        state.job = None;
    }
}

enum Request {
    Update(Vec<u8>),
    State,
    Finish,
}

enum Reply {
    /// The buffer of the last update, hashed and free again.
    Spare(Vec<u8>),
    State(Vec<u8>),
    Digest([u8; 32]),
}

pub struct BackgroundSha256 {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    /// The buffer to copy the next update into; None while it is being hashed.
    spare: Option<Vec<u8>>,
    worker: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for BackgroundSha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BackgroundSha256").finish_non_exhaustive()
    }
}

fn gone() -> Error {
    Error::InvalidArgument("the hashing thread stopped".into())
}

impl BackgroundSha256 {
    /// Continues `hasher` on a new thread; updates are copied into a buffer
    /// of `capacity` bytes (larger ones grow it). With a `side` hash, the
    /// thread advances it whenever no update waits.
    pub fn spawn(hasher: Sha256, capacity: usize, side: Option<Arc<SharedSha256>>) -> Result<Self> {
        let (requests, inbox) = channel::<Request>();
        let (outbox, replies) = channel::<Reply>();
        let worker = std::thread::Builder::new()
            .name("otaflash-sha256".into())
            .spawn(move || serve(hasher, side, &inbox, &outbox))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the hashing thread: {e}")))?;
        Ok(Self {
            requests,
            replies,
            spare: Some(Vec::with_capacity(capacity)),
            worker: Some(worker),
        })
    }

    /// The next reply that is not the spare buffer coming back (which it
    /// keeps); None when it was.
    fn next_reply(&mut self) -> Result<Option<Reply>> {
        let reply = self.replies.recv().map_err(|_| gone())?;
        Ok(self.keep(reply))
    }

    /// Keeps a spare buffer; returns any other reply.
    fn keep(&mut self, reply: Reply) -> Option<Reply> {
        match reply {
            Reply::Spare(buf) => self.spare = Some(buf),
            other => return Some(other),
        }
        None
    }

    /// Hashes a copy of `data` on the thread, after the previous update.
    pub fn update(&mut self, data: &[u8]) -> Result<()> {
        while self.spare.is_none() {
            if self.next_reply()?.is_some() {
                return Err(gone());
            }
        }
        let mut buf = self.spare.take().ok_or_else(gone)?;
        buf.clear();
        buf.extend_from_slice(data);
        self.requests.send(Request::Update(buf)).map_err(|_| gone())
    }

    /// The hash state after every update so far (for a checkpoint).
    pub fn state(&mut self) -> Result<Vec<u8>> {
        self.requests.send(Request::State).map_err(|_| gone())?;
        loop {
            if let Some(Reply::State(state)) = self.next_reply()? {
                return Ok(state);
            }
        }
    }

    pub fn finalize(mut self) -> Result<[u8; 32]> {
        self.requests.send(Request::Finish).map_err(|_| gone())?;
        let digest = loop {
            if let Some(Reply::Digest(digest)) = self.next_reply()? {
                break digest;
            }
        };
        if let Some(worker) = self.worker.take() {
            worker.join().map_err(|_| gone())?;
        }
        Ok(digest)
    }
}

/// The thread: updates and requests as they come, the side hash's chunks
/// while none waits.
fn serve(
    mut hasher: Sha256,
    mut side: Option<Arc<SharedSha256>>,
    inbox: &Receiver<Request>,
    outbox: &Sender<Reply>,
) {
    loop {
        let request = match side.clone() {
            Some(shared) => match inbox.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => {
                    if shared.step() {
                        // Filler work: a decoder sharing this core goes first.
                        std::thread::yield_now();
                        continue;
                    }
                    // Done, or another thread is at it.
                    if shared.is_done() {
                        side = None;
                    }
                    match inbox.recv() {
                        Ok(request) => request,
                        Err(_) => return,
                    }
                }
                Err(TryRecvError::Disconnected) => return,
            },
            None => match inbox.recv() {
                Ok(request) => request,
                Err(_) => return,
            },
        };
        let reply = match request {
            Request::Update(buf) => {
                hasher.update(&buf);
                Reply::Spare(buf)
            }
            Request::State => Reply::State(hasher.serialize().to_vec()),
            Request::Finish => {
                let _ = outbox.send(Reply::Digest(hasher.finalize().into()));
                return;
            }
        };
        if outbox.send(reply).is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_inline_hashing_through_states_and_odd_sizes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut inline = Sha256::new();
        let mut background = BackgroundSha256::spawn(Sha256::new(), 1000, None).unwrap();
        for (i, piece) in data.chunks(7919).enumerate() {
            inline.update(piece);
            background.update(piece).unwrap();
            if i % 5 == 0 {
                assert_eq!(background.state().unwrap(), inline.serialize().to_vec());
            }
        }
        let want: [u8; 32] = inline.finalize().into();
        assert_eq!(background.finalize().unwrap(), want);
    }

    #[test]
    fn a_shared_hash_is_advanced_between_updates_and_finished_by_its_waiter() {
        let side: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let want: [u8; 32] = Sha256::digest(&side).into();
        let data = vec![7u8; 100_000];
        let shared = SharedSha256::new(Box::new(side.clone()), side.len() as u64, 4096);
        let mut background =
            BackgroundSha256::spawn(Sha256::new(), 1000, Some(Arc::clone(&shared))).unwrap();
        for piece in data.chunks(5000) {
            background.update(piece).unwrap();
        }
        assert_eq!(shared.finish().unwrap(), want);
        assert!(shared.finish().is_err(), "the digest is given once");
        let new: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(background.finalize().unwrap(), new);
        // A source shorter than it was said to be: the read error comes back.
        let short = SharedSha256::new(Box::new(vec![0u8; 10]), 11, 4);
        while short.step() {}
        assert!(short.is_done());
        assert!(short.finish().is_err());
        // Cancelled: nothing more is hashed and the waiter is told.
        let cancelled = SharedSha256::new(Box::new(side), 1_000_000, 4096);
        assert!(cancelled.step());
        cancelled.cancel();
        assert!(!cancelled.step());
        assert!(matches!(cancelled.finish(), Err(Error::Cancelled)));
    }
}
