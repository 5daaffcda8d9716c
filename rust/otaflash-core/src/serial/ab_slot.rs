//! The agent's storage on a flash target (`sim:`, `mtd:`): the flash layer's
//! A/B layout.
//!
//! A new image goes to the inactive slot through [`AbLayout::begin_install`]
//! (blocks that already hold the right bytes are skipped); a delta reads the
//! old image from the active slot meanwhile (the device is a
//! [`SharedDevice`]). Finishing the writer verifies the slot and switches the
//! record to a trial boot of it, as `otaflash flash --layout ab` does; from
//! there `otaflash slot boot` / `confirm` work as for any A/B device. A
//! checkpoint records in the state record how many whole erase blocks are
//! written and durable, and an interrupted transfer of the same image
//! continues after them; one whose end the host missed finds its image
//! complete (on trial, not booted yet) and is done at once.
//!
//! The install borrows its layout, and the agent keeps a writer across many
//! calls, so each install runs on a thread of its own that owns that borrow;
//! every writer call is a round trip to it (one per frame, nothing queued),
//! so errors come back on the call that caused them.

use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread::JoinHandle;

use super::slot::{Slot, SlotWriter};
use crate::flash::{
    AbLayout, AbPhase, BlockDevice, ImageInfo, RegionReader, SharedDevice, WriteOptions,
};
use crate::io::{ImageSink, ReadAt};
use crate::{Error, Result};

/// An A/B layout on a flash device, as the agent's [`Slot`].
pub struct AbSlot<D: BlockDevice + Send + 'static> {
    device: SharedDevice<D>,
    uri: String,
    options: WriteOptions,
}

impl<D: BlockDevice + Send + 'static> std::fmt::Debug for AbSlot<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbSlot").field("uri", &self.uri).finish()
    }
}

impl<D: BlockDevice + Send + 'static> AbSlot<D> {
    /// The A/B layout on `device` (named `uri` in messages), created with
    /// two equal slots when the device has no layout yet.
    pub fn new(device: D, uri: impl Into<String>) -> Result<Self> {
        let device = SharedDevice::new(device);
        AbLayout::open_or_create(device.clone(), None)?;
        Ok(Self {
            device,
            uri: uri.into(),
            options: WriteOptions::default(),
        })
    }

    /// The layout as the flash records it now. Opened afresh each time: the
    /// record store must be scanned again after another handle wrote to it.
    fn layout(&self) -> Result<AbLayout<SharedDevice<D>>> {
        AbLayout::open(self.device.clone())
    }
}

impl<D: BlockDevice + Send + 'static> Slot for AbSlot<D> {
    fn describe(&self) -> String {
        format!("{} (A/B slots)", self.uri)
    }

    fn open_current(&mut self) -> Result<Box<dyn ReadAt + Send>> {
        let layout = self.layout()?;
        Ok(Box::new(layout.image_reader(layout.state().active)?))
    }

    fn resume_point(&mut self, id: &[u8; 32], size: u64) -> Result<u64> {
        let image = ImageInfo { size, sha256: *id };
        let layout = self.layout()?;
        // Installed already, and the host did not hear (a cut after END):
        // the whole image is there, on trial.
        if layout
            .pending_trial()
            .is_some_and(|(_, on_trial)| on_trial == image)
        {
            return Ok(size);
        }
        Ok(layout.resumable(image))
    }

    fn open_writer(
        &mut self,
        id: &[u8; 32],
        size: u64,
        offset: u64,
    ) -> Result<Box<dyn SlotWriter>> {
        let image = ImageInfo { size, sha256: *id };
        if offset == size
            && self
                .layout()?
                .pending_trial()
                .is_some_and(|(_, on_trial)| on_trial == image)
        {
            return Ok(Box::new(Installed));
        }
        let (commands, command_rx) = channel();
        let (reply_tx, replies) = channel();
        let device = self.device.clone();
        let options = self.options;
        let worker = std::thread::Builder::new()
            .name("otaflash-agent-install".into())
            .spawn(move || install_worker(device, image, offset, options, &command_rx, &reply_tx))
            .map_err(|e| Error::Slot(format!("cannot start the install thread: {e}")))?;
        let mut writer = AbSlotWriter {
            commands: Some(commands),
            replies,
            worker: Some(worker),
        };
        writer.wait()?; // the checks before anything is written
        Ok(Box::new(writer))
    }

    fn open_written(&mut self) -> Result<Box<dyn ReadAt + Send>> {
        let layout = self.layout()?;
        let state = layout.state();
        let (slot, size) = match state.phase {
            AbPhase::Writing { slot, image, .. } => (slot, image.size),
            AbPhase::Trial { slot, .. } => match state.images[usize::from(slot)] {
                Some(image) => (slot, image.size),
                None => return Err(nothing_written(&self.uri)),
            },
            AbPhase::Idle => return Err(nothing_written(&self.uri)),
        };
        Ok(Box::new(RegionReader::new(
            self.device.clone(),
            state.slots[usize::from(slot)],
            size,
        )?))
    }

    /// The install's finish already verified the slot and switched to a
    /// trial of it; this checks that it did.
    fn commit(&mut self) -> Result<()> {
        match self.layout()?.state().phase {
            AbPhase::Trial { .. } => Ok(()),
            _ => Err(Error::Slot(format!(
                "{}: the new image was not switched to (no trial pending)",
                self.uri
            ))),
        }
    }

    fn discard(&mut self) -> Result<()> {
        self.layout()?.abandon()
    }
}

/// The writer for an image that is already installed (on trial): there is
/// nothing left to write, and the agent's read-back checks what is there.
struct Installed;

impl ImageSink for Installed {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        if data.is_empty() {
            return Ok(());
        }
        Err(Error::InvalidArgument(
            "the image is complete on the device; no more bytes fit".into(),
        ))
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

impl SlotWriter for Installed {
    fn checkpoint(&mut self) -> Result<()> {
        Ok(())
    }
}

fn nothing_written(uri: &str) -> Error {
    Error::Slot(format!(
        "{uri}: no install is pending, nothing to read back"
    ))
}

enum Command {
    Write(Vec<u8>),
    Checkpoint,
    Finish,
}

struct AbSlotWriter {
    commands: Option<Sender<Command>>,
    replies: Receiver<Result<()>>,
    worker: Option<JoinHandle<()>>,
}

impl AbSlotWriter {
    fn wait(&mut self) -> Result<()> {
        self.replies.recv().unwrap_or_else(|_| {
            Err(Error::Slot(
                "the install thread stopped after an earlier error".into(),
            ))
        })
    }

    fn call(&mut self, command: Command) -> Result<()> {
        let sent = self
            .commands
            .as_ref()
            .is_some_and(|commands| commands.send(command).is_ok());
        if !sent {
            return Err(Error::Slot(
                "the install thread stopped after an earlier error".into(),
            ));
        }
        self.wait()
    }
}

impl ImageSink for AbSlotWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.call(Command::Write(data.to_vec()))
    }

    fn finish(&mut self) -> Result<()> {
        self.call(Command::Finish)
    }
}

impl SlotWriter for AbSlotWriter {
    fn checkpoint(&mut self) -> Result<()> {
        self.call(Command::Checkpoint)
    }
}

impl Drop for AbSlotWriter {
    /// Stops the install where it is (the record keeps its last checkpoint)
    /// and waits, so nothing else writes the state record meanwhile.
    fn drop(&mut self) {
        self.commands = None;
        if let Some(worker) = self.worker.take() {
            let _ = worker.join();
        }
    }
}

/// Runs one install: the checks, a "ready" reply, then one reply per command.
/// Nothing is written before the first command, so a patch refused at its
/// header leaves the flash (and its record) as it was.
fn install_worker<D: BlockDevice>(
    device: SharedDevice<D>,
    image: ImageInfo,
    offset: u64,
    options: WriteOptions,
    commands: &Receiver<Command>,
    replies: &Sender<Result<()>>,
) {
    let ready = AbLayout::open(device).and_then(|mut layout| {
        layout.install_slot(image)?;
        let recorded = layout.resumable(image);
        if offset > recorded {
            return Err(Error::Slot(format!(
                "cannot resume at byte {offset}: the slot records {recorded} bytes written"
            )));
        }
        Ok(layout)
    });
    let mut layout = match ready {
        Ok(layout) => layout,
        Err(error) => {
            let _ = replies.send(Err(error));
            return;
        }
    };
    if replies.send(Ok(())).is_err() {
        return;
    }
    let Ok(mut command) = commands.recv() else {
        return;
    };
    let mut install = match layout
        .begin_install(image, options)
        .and_then(|install| install.resume_from(offset))
    {
        Ok(install) => install,
        Err(error) => {
            let _ = replies.send(Err(error));
            return;
        }
    };
    loop {
        let result = match command {
            Command::Write(data) => install.write(&data),
            Command::Checkpoint => install.checkpoint().map(drop),
            Command::Finish => install.finish(),
        };
        if replies.send(result).is_err() {
            return;
        }
        match commands.recv() {
            Ok(next) => command = next,
            Err(_) => return,
        }
    }
}
