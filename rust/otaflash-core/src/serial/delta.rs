//! The seam between the agent and a delta engine, and the engine itself.
//!
//! The agent receives a patch as a stream of chunks (whatever sizes the link
//! delivers) and needs the new image written to its slot. A [`DeltaEngine`]
//! starts a [`PatchApplier`] over the device's current image (random access,
//! never loaded whole) and the slot's writer; the agent feeds it every chunk
//! in order and calls `finish` once the patch is complete. The applier must
//! refuse a patch made for another old image before writing anything, and
//! check the new image's hash at the end; the agent reads the slot back and
//! checks it again before anything is reported as a success.
//!
//! [`PatchEngine`] is that engine: the streaming [`Applier`] of
//! [`crate::patch`] (otaflash patches and BSDIFF40).

use crate::flash::ImageInfo;
use crate::io::{ImageSink, ReadAt};
use crate::patch::{Applier, ApplyOptions, PatchSummary, head_len, inspect};
use crate::serial::hex;
use crate::{Error, Result};

/// A patch being applied, chunk by chunk.
pub trait PatchApplier: Send {
    fn feed(&mut self, chunk: &[u8]) -> Result<()>;

    /// The whole patch was fed: complete the output (and finish the sink).
    fn finish(self: Box<Self>) -> Result<()>;
}

/// Builds appliers; the agent is given one when the build has a delta engine.
pub trait DeltaEngine: Send + Sync {
    /// Starts applying a patch to `old`, writing the new image to `out`;
    /// the host announced that the patch makes `image`.
    fn start(
        &self,
        old: Box<dyn ReadAt + Send>,
        out: Box<dyn ImageSink + Send>,
        image: ImageInfo,
    ) -> Result<Box<dyn PatchApplier>>;
}

/// The delta engine of [`crate::patch`].
#[derive(Clone, Debug, Default)]
pub struct PatchEngine {
    pub options: ApplyOptions,
}

impl DeltaEngine for PatchEngine {
    fn start(
        &self,
        old: Box<dyn ReadAt + Send>,
        out: Box<dyn ImageSink + Send>,
        image: ImageInfo,
    ) -> Result<Box<dyn PatchApplier>> {
        Ok(Box::new(EngineApplier {
            applier: Applier::new(old, out, self.options.clone()),
            announced: image,
            head: Some(Vec::new()),
        }))
    }
}

struct EngineApplier {
    applier: Applier<Box<dyn ReadAt + Send>, Box<dyn ImageSink + Send>>,
    announced: ImageInfo,
    /// The patch's first bytes, held until its header is complete.
    head: Option<Vec<u8>>,
}

impl EngineApplier {
    /// The patch must make the image the host announced (and will check the
    /// read-back against): a mismatch is refused as soon as the header is
    /// in, before the old image is read or anything is written.
    fn check_header(&self, head: &[u8]) -> Result<()> {
        let (size, sha256) = match inspect(head) {
            Ok(PatchSummary::Otaflash(header)) => (header.new_size, Some(header.new_sha256)),
            // BSDIFF40 names no SHA-256 of the new image: the read-back checks it.
            Ok(PatchSummary::Bsdiff40 { new_size }) => (new_size, None),
            // VCDIFF names neither size nor hash up front: so does the read-back.
            Ok(PatchSummary::Vcdiff { .. }) => return Ok(()),
            // A damaged header is the applier's to describe.
            Err(_) => return Ok(()),
        };
        let announced = &self.announced;
        if size != announced.size || sha256.is_some_and(|sha| sha != announced.sha256) {
            return Err(Error::PatchCorrupt(format!(
                "it makes an image of {size} bytes{}, but the host announced {} bytes with \
                 sha256 {}; make the patch again or send the full image",
                sha256
                    .map(|s| format!(" with sha256 {}", hex(&s)))
                    .unwrap_or_default(),
                announced.size,
                hex(&announced.sha256)
            )));
        }
        Ok(())
    }

    /// Checks and hands over the held header bytes.
    fn release_head(&mut self) -> Result<()> {
        if let Some(head) = self.head.take() {
            self.check_header(&head)?;
            self.applier.feed(&head)?;
        }
        Ok(())
    }
}

impl PatchApplier for EngineApplier {
    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        match &mut self.head {
            Some(head) => {
                head.extend_from_slice(chunk);
                // A prefix it cannot read is the applier's to describe.
                if head.len() >= head_len(head).unwrap_or(0) {
                    self.release_head()?;
                }
                Ok(())
            }
            None => self.applier.feed(chunk),
        }
    }

    fn finish(mut self: Box<Self>) -> Result<()> {
        self.release_head()?;
        let report = self.applier.finish()?;
        if report.new_size != self.announced.size {
            return Err(Error::PatchCorrupt(format!(
                "it made an image of {} bytes, the host announced {}",
                report.new_size, self.announced.size
            )));
        }
        Ok(())
    }
}
