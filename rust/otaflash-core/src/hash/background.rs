//! SHA-256 of a stream on a second thread, one block behind its producer:
//! the applier decodes block n+1 while block n is hashed, so hashing the new
//! image costs a copy instead of a pass. Memory: one block.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use sha2::digest::common::hazmat::SerializableState;
use sha2::{Digest as _, Sha256};

use crate::{Error, Result};

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
    /// of `capacity` bytes (larger ones grow it).
    pub fn spawn(hasher: Sha256, capacity: usize) -> Result<Self> {
        let (requests, inbox) = channel::<Request>();
        let (outbox, replies) = channel::<Reply>();
        let worker = std::thread::Builder::new()
            .name("otaflash-sha256".into())
            .spawn(move || {
                let mut hasher = hasher;
                for request in inbox {
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
            })
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
        match self.replies.recv().map_err(|_| gone())? {
            Reply::Spare(buf) => {
                self.spare = Some(buf);
                Ok(None)
            }
            other => Ok(Some(other)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_inline_hashing_through_states_and_odd_sizes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
        let mut inline = Sha256::new();
        let mut background = BackgroundSha256::spawn(Sha256::new(), 1000).unwrap();
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
}
