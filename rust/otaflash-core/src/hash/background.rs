//! SHA-256 of a stream on a second thread, one block behind its producer:
//! the applier decodes block n+1 while block n is hashed, so hashing the new
//! image costs a copy instead of a pass. Memory: one block. Between blocks
//! the thread may hash a second source a chunk at a time (the old image,
//! checked while a patch is applied): one thread for both hashes keeps the
//! second core to two threads, and the blocks always come first.

use std::sync::mpsc::{Receiver, Sender, TryRecvError, channel};
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

/// A second source for the thread to hash between blocks.
pub type SideSource = (Box<dyn ReadAt + Send>, SourceSha256);

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
    /// The side source's digest.
    Side(Result<[u8; 32]>),
}

pub struct BackgroundSha256 {
    requests: Sender<Request>,
    replies: Receiver<Reply>,
    /// The buffer to copy the next update into; None while it is being hashed.
    spare: Option<Vec<u8>>,
    /// The side source's digest once the thread sent it (None: none yet,
    /// or no side source).
    side: Option<Result<[u8; 32]>>,
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
    /// of `capacity` bytes (larger ones grow it). With a `side` source, the
    /// thread hashes it whenever no update waits ([`Self::side_digest`]).
    pub fn spawn(hasher: Sha256, capacity: usize, side: Option<SideSource>) -> Result<Self> {
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
            side: None,
            worker: Some(worker),
        })
    }

    /// The next reply that is not the spare buffer coming back (which it
    /// keeps); None when it was.
    fn next_reply(&mut self) -> Result<Option<Reply>> {
        let reply = self.replies.recv().map_err(|_| gone())?;
        Ok(self.keep(reply))
    }

    /// Keeps a spare buffer or the side digest; returns any other reply.
    fn keep(&mut self, reply: Reply) -> Option<Reply> {
        match reply {
            Reply::Spare(buf) => self.spare = Some(buf),
            Reply::Side(digest) => self.side = Some(digest),
            other => return Some(other),
        }
        None
    }

    /// Whether the side source's digest has come (without waiting).
    pub fn side_ready(&mut self) -> bool {
        while self.side.is_none() {
            match self.replies.try_recv() {
                // Only spares and the side digest come unasked.
                Ok(reply) => {
                    let _ = self.keep(reply);
                }
                Err(_) => break,
            }
        }
        self.side.is_some()
    }

    /// The side source's digest, waiting for it (once).
    pub fn side_digest(&mut self) -> Result<[u8; 32]> {
        loop {
            if let Some(digest) = self.side.take() {
                return digest;
            }
            if self.next_reply()?.is_some() {
                return Err(gone());
            }
        }
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

/// The thread: updates and requests as they come, the side source's chunks
/// while none waits.
fn serve(
    mut hasher: Sha256,
    mut side: Option<SideSource>,
    inbox: &Receiver<Request>,
    outbox: &Sender<Reply>,
) {
    loop {
        let request = match side.as_mut() {
            Some((source, job)) => match inbox.try_recv() {
                Ok(request) => request,
                Err(TryRecvError::Empty) => {
                    let digest = match job.step(&mut **source) {
                        Ok(None) => {
                            // Filler work: a decoder sharing this core goes first.
                            std::thread::yield_now();
                            continue;
                        }
                        Ok(Some(digest)) => Ok(digest),
                        Err(e) => Err(e),
                    };
                    side = None;
                    if outbox.send(Reply::Side(digest)).is_err() {
                        return;
                    }
                    continue;
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
    fn a_side_source_is_hashed_between_updates() {
        let side: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
        let want: [u8; 32] = Sha256::digest(&side).into();
        let data = vec![7u8; 100_000];
        let source: Box<dyn ReadAt + Send> = Box::new(side.clone());
        let job = SourceSha256::new(side.len() as u64, 4096);
        let mut background =
            BackgroundSha256::spawn(Sha256::new(), 1000, Some((source, job))).unwrap();
        for piece in data.chunks(5000) {
            background.update(piece).unwrap();
        }
        assert_eq!(background.side_digest().unwrap(), want);
        assert!(!background.side_ready(), "the digest is given once");
        let new: [u8; 32] = Sha256::digest(&data).into();
        assert_eq!(background.finalize().unwrap(), new);
        // A source shorter than it was said to be: the read error comes back.
        let short: Box<dyn ReadAt + Send> = Box::new(vec![0u8; 10]);
        let mut background =
            BackgroundSha256::spawn(Sha256::new(), 1000, Some((short, SourceSha256::new(11, 4))))
                .unwrap();
        assert!(background.side_digest().is_err());
    }
}
