//! Progress events and cancellation, shared by every long operation
//! (hashing, patching, erase/program/verify, transfers).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    Hash,
    Download,
    Patch,
    Erase,
    Program,
    Verify,
    Transfer,
}

impl Operation {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hash => "hash",
            Self::Download => "download",
            Self::Patch => "patch",
            Self::Erase => "erase",
            Self::Program => "program",
            Self::Verify => "verify",
            Self::Transfer => "transfer",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProgressEvent {
    pub operation: Operation,
    /// Units (bytes) done so far.
    pub done: u64,
    /// Units in all, when known.
    pub total: Option<u64>,
}

/// Receives progress. Returning an error stops the operation and returns that
/// error to its caller: this is how bindings deliver Ctrl-C or a cancel.
pub trait Progress {
    fn report(&mut self, event: ProgressEvent) -> Result<()>;
}

impl<F: FnMut(ProgressEvent) -> Result<()>> Progress for F {
    fn report(&mut self, event: ProgressEvent) -> Result<()> {
        self(event)
    }
}

/// For callers that do not watch.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn report(&mut self, _event: ProgressEvent) -> Result<()> {
        Ok(())
    }
}

/// Cancels work from another thread; long loops call [`CancelToken::check`].
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn cancel(&self) {
        self.0.store(true, Ordering::Relaxed);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }

    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            Err(Error::Cancelled)
        } else {
            Ok(())
        }
    }
}
