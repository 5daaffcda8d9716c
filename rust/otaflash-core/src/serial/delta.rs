//! The seam between the agent and a delta engine.
//!
//! The agent receives a patch as a stream of chunks (whatever sizes the link
//! delivers) and needs the new image written to its slot. A [`DeltaEngine`]
//! starts a [`PatchApplier`] over the device's current image (random access,
//! never loaded whole) and the slot's writer; the agent feeds it every chunk
//! in order and calls `finish` once the patch is complete. The applier must
//! refuse a patch made for another old image before writing anything, and
//! check the new image's hash at the end; the agent reads the slot back and
//! checks it again before anything is reported as a success.

use crate::Result;
use crate::io::{ImageSink, ReadAt};

/// A patch being applied, chunk by chunk.
pub trait PatchApplier: Send {
    fn feed(&mut self, chunk: &[u8]) -> Result<()>;

    /// The whole patch was fed: complete the output (and finish the sink).
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Builds appliers; the agent is given one when the build has a delta engine.
pub trait DeltaEngine: Send + Sync {
    /// Starts applying a patch to `old`, writing the new image to `out`
    /// (`new_size` bytes are expected).
    fn start(
        &self,
        old: Box<dyn ReadAt + Send>,
        out: Box<dyn ImageSink + Send>,
        new_size: u64,
    ) -> Result<Box<dyn PatchApplier>>;
}
