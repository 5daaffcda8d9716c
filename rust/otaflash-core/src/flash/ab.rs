//! A/B update layout: two slots and a state record. An install writes the
//! inactive slot (the active one is never touched), verifies its SHA-256,
//! then switches the record to a trial of the new slot. A boot that is not
//! confirmed before the tries run out rolls back to the old slot.
//!
//! Every state change is one record write, and a record write is atomic
//! (see `record`), so a power cut at any moment leaves either the old state
//! or the new one.

use super::record::{Dec, Enc, ImageInfo, Layout, NextAction, RecordStore, record_region};
use super::writer::{region_digest, short_hex};
use super::{
    BlockDevice, FlashWriter, Region, RegionReader, SharedDevice, WriteOptions, WriteReport,
    good_blocks, hex,
};
use crate::io::{ImageSink, ReadAt};
use crate::progress::{CancelToken, Progress};
use crate::{Error, Result};

/// Boots a new image gets before it must be confirmed.
pub const TRIAL_TRIES: u8 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AbPhase {
    /// The active slot runs; nothing pending.
    Idle,
    /// `image` is being written into `slot` (the inactive one); its first
    /// `written` bytes were written, verified and made durable as of the last
    /// [`AbInstall::checkpoint`] (0 when nobody checkpoints).
    Writing {
        slot: u8,
        image: ImageInfo,
        written: u64,
    },
    /// `slot` holds a verified new image on trial, with `tries` boots left.
    Trial { slot: u8, tries: u8 },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AbState {
    pub slots: [Region; 2],
    /// The confirmed slot.
    pub active: u8,
    pub phase: AbPhase,
    /// What each slot holds, when known and verified.
    pub images: [Option<ImageInfo>; 2],
}

impl AbState {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.region(self.slots[0]);
        e.region(self.slots[1]);
        e.u8(self.active);
        match self.phase {
            AbPhase::Idle => e.u8(0),
            AbPhase::Writing { slot, image, .. } => {
                e.u8(1);
                e.u8(slot);
                e.image(Some(image));
            }
            AbPhase::Trial { slot, tries } => {
                e.u8(2);
                e.u8(slot);
                e.u8(tries);
            }
        }
        e.image(self.images[0]);
        e.image(self.images[1]);
        // Last, so records from before it existed still decode (as 0).
        e.u64(match self.phase {
            AbPhase::Writing { written, .. } => written,
            _ => 0,
        });
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Option<Self> {
        let slots = [d.region()?, d.region()?];
        let active = d.u8().filter(|&s| s < 2)?;
        let phase = match d.u8()? {
            0 => AbPhase::Idle,
            1 => AbPhase::Writing {
                slot: d.u8().filter(|&s| s < 2)?,
                image: d.image()??,
                written: 0,
            },
            2 => AbPhase::Trial {
                slot: d.u8().filter(|&s| s < 2)?,
                tries: d.u8()?,
            },
            _ => return None,
        };
        let images = [d.image()?, d.image()?];
        let phase = match phase {
            AbPhase::Writing { slot, image, .. } => AbPhase::Writing {
                slot,
                image,
                written: d.u64().unwrap_or(0).min(image.size),
            },
            other => other,
        };
        Some(Self {
            slots,
            active,
            phase,
            images,
        })
    }

    pub fn inactive(&self) -> u8 {
        1 - self.active
    }

    pub fn next_action(&self) -> NextAction {
        match self.phase {
            AbPhase::Idle => NextAction::Boot { slot: self.active },
            AbPhase::Writing { slot, image, .. } => NextAction::ResumeInstall { slot, image },
            AbPhase::Trial { slot, tries: 0 } => NextAction::RollBack {
                from: slot,
                to: self.active,
            },
            AbPhase::Trial { slot, tries } => NextAction::BootTrial { slot, tries },
        }
    }
}

/// What the boot hook decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootDecision {
    /// Boot this slot.
    pub slot: u8,
    /// What the record said before (and so what was done).
    pub action: NextAction,
    /// What the slot holds, per the record.
    pub image: Option<ImageInfo>,
}

#[derive(Debug)]
pub struct AbLayout<D: BlockDevice> {
    device: D,
    store: RecordStore,
    state: AbState,
}

impl<D: BlockDevice> AbLayout<D> {
    /// Two equal slots after the record blocks.
    pub fn default_slots(device: &D) -> Result<[Region; 2]> {
        let geometry = device.geometry();
        let records = record_region(&geometry);
        let blocks = (geometry.size - records.end()) / geometry.erase_size / 2;
        if blocks == 0 {
            return Err(Error::Geometry(format!(
                "{} is too small for two slots",
                device.name()
            )));
        }
        let len = blocks * geometry.erase_size;
        Ok([
            Region::new(records.end(), len),
            Region::new(records.end() + len, len),
        ])
    }

    /// Opens the A/B layout recorded on the device.
    pub fn open(mut device: D) -> Result<Self> {
        let mut store = RecordStore::for_device(&device.geometry())?;
        match store.read(&mut device)? {
            Some((_, Layout::Ab(state))) => Ok(Self {
                device,
                store,
                state,
            }),
            Some((_, Layout::Single(_))) => Err(Error::Slot(format!(
                "{} holds a single-slot (in-place) layout, not A/B",
                device.name()
            ))),
            None => Err(Error::Slot(format!(
                "{} has no update state record; create the A/B layout first",
                device.name()
            ))),
        }
    }

    /// Opens the layout, or creates it (slot 0 active, both slots empty)
    /// when the device has none.
    pub fn open_or_create(mut device: D, slots: Option<[Region; 2]>) -> Result<Self> {
        let mut store = RecordStore::for_device(&device.geometry())?;
        if store.read(&mut device)?.is_some() {
            return Self::open(device);
        }
        let slots = match slots {
            Some(slots) => slots,
            None => Self::default_slots(&device)?,
        };
        let geometry = device.geometry();
        for slot in slots {
            if !slot.start.is_multiple_of(geometry.erase_size)
                || !slot.len.is_multiple_of(geometry.erase_size)
                || slot.start < store.region().end()
                || slot.end() > geometry.size
                || slot.len == 0
            {
                return Err(Error::Geometry(format!(
                    "slot {:#x}+{:#x} must be whole erase blocks between the state records and the end of {}",
                    slot.start,
                    slot.len,
                    device.name()
                )));
            }
        }
        if slots[0].end() > slots[1].start && slots[1].end() > slots[0].start {
            return Err(Error::Geometry("the two slots overlap".into()));
        }
        let state = AbState {
            slots,
            active: 0,
            phase: AbPhase::Idle,
            images: [None, None],
        };
        store.write(&mut device, &Layout::Ab(state.clone()))?;
        Ok(Self {
            device,
            store,
            state,
        })
    }

    pub fn state(&self) -> &AbState {
        &self.state
    }

    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn into_device(self) -> D {
        self.device
    }

    fn commit(&mut self, state: AbState) -> Result<()> {
        self.store
            .write(&mut self.device, &Layout::Ab(state.clone()))?;
        self.state = state;
        Ok(())
    }

    /// The slot an install of `image` would write, checked: no trial may be
    /// pending and the image must fit the slot's good blocks. Writes nothing.
    pub fn install_slot(&mut self, image: ImageInfo) -> Result<u8> {
        let slot = match self.state.phase {
            AbPhase::Trial { slot, .. } => {
                return Err(Error::Slot(format!(
                    "slot {} is on trial and not confirmed yet; confirm it or boot (to roll back) before installing",
                    slot_name(slot)
                )));
            }
            AbPhase::Writing { slot, .. } => slot,
            AbPhase::Idle => self.state.inactive(),
        };
        let region = self.state.slots[usize::from(slot)];
        let room =
            good_blocks(&mut self.device, region)?.len() as u64 * self.device.geometry().erase_size;
        if image.size > room {
            return Err(Error::Geometry(format!(
                "the image ({} bytes) is larger than slot {} ({room} usable bytes)",
                image.size,
                slot_name(slot)
            )));
        }
        Ok(slot)
    }

    /// How many bytes of `image` an interrupted install of it left written,
    /// verified and durable (its last checkpoint); 0 for any other image.
    pub fn resumable(&self, image: ImageInfo) -> u64 {
        match self.state.phase {
            AbPhase::Writing {
                image: writing,
                written,
                ..
            } if writing == image => written,
            _ => 0,
        }
    }

    /// The slot and image of a trial that waits for its first boot.
    pub fn pending_trial(&self) -> Option<(u8, ImageInfo)> {
        match self.state.phase {
            AbPhase::Trial { slot, tries } if tries == TRIAL_TRIES => {
                self.state.images[usize::from(slot)].map(|image| (slot, image))
            }
            _ => None,
        }
    }

    /// Starts (or resumes, for the same image) writing `image` into the
    /// inactive slot. Feed the returned sink the image bytes, then `finish`
    /// it: that verifies the slot and switches to a trial of it.
    pub fn begin_install(
        &mut self,
        image: ImageInfo,
        options: WriteOptions,
    ) -> Result<AbInstall<'_, D>> {
        let slot = self.install_slot(image)?;
        let region = self.state.slots[usize::from(slot)];
        let same = matches!(
            self.state.phase,
            AbPhase::Writing { slot: s, image: i, .. } if s == slot && i == image
        );
        if !same {
            let mut next = self.state.clone();
            next.phase = AbPhase::Writing {
                slot,
                image,
                written: 0,
            };
            next.images[usize::from(slot)] = None;
            self.commit(next)?;
        }
        let Self {
            device,
            store,
            state,
        } = self;
        let writer = FlashWriter::within(device, region, options)?.expect_size(image.size)?;
        Ok(AbInstall {
            writer,
            store,
            state,
            slot,
            image,
        })
    }

    /// Drops a pending install or an unconfirmed trial: the slot it wrote is
    /// forgotten and the active slot stays what boots.
    pub fn abandon(&mut self) -> Result<()> {
        let slot = match self.state.phase {
            AbPhase::Idle => return Ok(()),
            AbPhase::Writing { slot, .. } | AbPhase::Trial { slot, .. } => slot,
        };
        let mut next = self.state.clone();
        next.phase = AbPhase::Idle;
        next.images[usize::from(slot)] = None;
        self.commit(next)
    }

    /// Installs the whole image from `source` (see [`Self::begin_install`]).
    pub fn install(
        &mut self,
        source: &mut dyn ReadAt,
        image: ImageInfo,
        options: WriteOptions,
        progress: &mut dyn Progress,
        cancel: Option<CancelToken>,
    ) -> Result<WriteReport> {
        if source.size() != image.size {
            return Err(Error::InvalidArgument(format!(
                "the image source has {} bytes, {} were announced",
                source.size(),
                image.size
            )));
        }
        let mut install = self.begin_install(image, options)?;
        install.writer = install.writer.with_progress(|e| progress.report(e));
        if let Some(cancel) = cancel {
            install.writer = install.writer.with_cancel(cancel);
        }
        let mut buf = vec![0u8; 1 << 16];
        let mut at = 0;
        while at < image.size {
            let n = (image.size - at).min(buf.len() as u64) as usize;
            source.read_exact_at(at, &mut buf[..n])?;
            install.write(&buf[..n])?;
            at += n as u64;
        }
        install.finish()?;
        Ok(install.into_report())
    }

    /// The boot hook: reads the record and acts on it. A pending trial uses
    /// up one try and boots the new slot; a trial with no tries left rolls
    /// back; an interrupted install boots the old slot (resume it with
    /// [`Self::install`]).
    pub fn boot(&mut self) -> Result<BootDecision> {
        let action = self.state.next_action();
        let slot = match action {
            NextAction::BootTrial { slot, tries } => {
                let mut next = self.state.clone();
                next.phase = AbPhase::Trial {
                    slot,
                    tries: tries - 1,
                };
                self.commit(next)?;
                slot
            }
            NextAction::RollBack { to, .. } => {
                let mut next = self.state.clone();
                next.phase = AbPhase::Idle;
                self.commit(next)?;
                to
            }
            _ => self.state.active,
        };
        Ok(BootDecision {
            slot,
            action,
            image: self.state.images[usize::from(slot)],
        })
    }

    /// The slot the last boot decision runs (without changing anything).
    pub fn running_slot(&self) -> u8 {
        match self.state.phase {
            AbPhase::Trial { slot, .. } => slot,
            _ => self.state.active,
        }
    }

    /// The running image is good: a trial becomes the active slot.
    /// Confirming with no trial pending does nothing.
    pub fn confirm(&mut self) -> Result<Option<u8>> {
        let AbPhase::Trial { slot, .. } = self.state.phase else {
            return Ok(None);
        };
        let mut next = self.state.clone();
        next.phase = AbPhase::Idle;
        next.active = slot;
        self.commit(next)?;
        Ok(Some(slot))
    }

    /// SHA-256 of the `size` bytes at the start of `slot`.
    pub fn slot_digest(&mut self, slot: u8, size: u64) -> Result<[u8; 32]> {
        let region = self.state.slots[usize::from(slot & 1)];
        let blocks = good_blocks(&mut self.device, region)?;
        let erase = self.device.geometry().erase_size;
        region_digest(&mut self.device, &blocks, erase, size)
    }

    /// Reads logical bytes of a slot (bad blocks skipped on NAND).
    pub fn read_slot(&mut self, slot: u8, offset: u64, buf: &mut [u8]) -> Result<()> {
        let region = self.state.slots[usize::from(slot & 1)];
        super::read_mapped(&mut self.device, region, offset, buf)
    }
}

impl<D: BlockDevice> AbLayout<SharedDevice<D>> {
    /// Reads the image `slot` holds (per the record) while the device stays
    /// shared: a delta applied from the active slot reads through this while
    /// the install writes the inactive one.
    pub fn image_reader(&self, slot: u8) -> Result<RegionReader<SharedDevice<D>>> {
        let slot = slot & 1;
        let image = self.state.images[usize::from(slot)].ok_or_else(|| {
            Error::Slot(format!(
                "slot {} of {} holds no recorded image for a patch to apply to; install a \
                 full image first",
                slot_name(slot),
                self.device.name()
            ))
        })?;
        RegionReader::new(
            self.device.clone(),
            self.state.slots[usize::from(slot)],
            image.size,
        )
    }
}

/// An install in progress: an [`ImageSink`] over the inactive slot.
pub struct AbInstall<'a, D: BlockDevice> {
    writer: FlashWriter<'a, D>,
    store: &'a mut RecordStore,
    state: &'a mut AbState,
    slot: u8,
    image: ImageInfo,
}

impl<D: BlockDevice> std::fmt::Debug for AbInstall<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbInstall")
            .field("slot", &self.slot)
            .field("image", &self.image)
            .field("writer", &self.writer)
            .finish()
    }
}

impl<'a, D: BlockDevice> AbInstall<'a, D> {
    pub fn with_progress(mut self, progress: impl Progress + 'a) -> Self {
        self.writer = self.writer.with_progress(progress);
        self
    }

    pub fn with_cancel(mut self, cancel: CancelToken) -> Self {
        self.writer = self.writer.with_cancel(cancel);
        self
    }

    pub fn slot(&self) -> u8 {
        self.slot
    }

    /// Continues an interrupted install after its first `offset` bytes,
    /// which must be within what its last checkpoint recorded (see
    /// [`AbLayout::resumable`]): feed the image from `offset` on.
    pub fn resume_from(mut self, offset: u64) -> Result<Self> {
        let recorded = match self.state.phase {
            AbPhase::Writing { image, written, .. } if image == self.image => written,
            _ => 0,
        };
        if offset > recorded {
            return Err(Error::Slot(format!(
                "cannot resume the install into slot {} at byte {offset}: only {recorded} bytes \
                 were recorded as written",
                slot_name(self.slot)
            )));
        }
        self.writer = self.writer.continue_after(offset)?;
        Ok(self)
    }

    /// Makes the blocks written so far durable and records their count in
    /// the state record, so an interrupted install can continue after them
    /// ([`AbInstall::resume_from`]). Returns that count. Bytes short of a
    /// whole erase block wait in memory and are not counted.
    pub fn checkpoint(&mut self) -> Result<u64> {
        let written = self.writer.report().bytes;
        let recorded = match self.state.phase {
            AbPhase::Writing { image, written, .. } if image == self.image => written,
            _ => return Ok(0), // finished (on trial): nothing to resume
        };
        if written <= recorded {
            return Ok(recorded);
        }
        let device = self.writer.device_mut();
        device.sync()?;
        let mut next = self.state.clone();
        next.phase = AbPhase::Writing {
            slot: self.slot,
            image: self.image,
            written,
        };
        self.store.write(device, &Layout::Ab(next.clone()))?;
        device.sync()?;
        *self.state = next;
        Ok(written)
    }

    pub fn report(&self) -> &WriteReport {
        self.writer.report()
    }

    pub fn into_report(self) -> WriteReport {
        self.writer.into_report()
    }
}

impl<D: BlockDevice> ImageSink for AbInstall<'_, D> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.writer.write(data)
    }

    /// Finishes the slot, checks its SHA-256 against the image, and switches
    /// the record to a trial of the new slot.
    fn finish(&mut self) -> Result<()> {
        if self.state.phase
            == (AbPhase::Trial {
                slot: self.slot,
                tries: TRIAL_TRIES,
            })
        {
            return Ok(());
        }
        self.writer.finish()?;
        let region = self.state.slots[usize::from(self.slot)];
        let device = self.writer.device_mut();
        let erase = device.geometry().erase_size;
        let blocks = good_blocks(device, region)?;
        let digest = region_digest(device, &blocks, erase, self.image.size)?;
        if digest != self.image.sha256 {
            return Err(Error::Verify {
                subject: format!("slot {} of {}", slot_name(self.slot), device.name()),
                what: "sha256".into(),
                expected: hex(&self.image.sha256),
                actual: hex(&digest),
            });
        }
        let mut next = self.state.clone();
        next.phase = AbPhase::Trial {
            slot: self.slot,
            tries: TRIAL_TRIES,
        };
        next.images[usize::from(self.slot)] = Some(self.image);
        self.store.write(device, &Layout::Ab(next.clone()))?;
        *self.state = next;
        Ok(())
    }
}

pub(crate) fn slot_name(slot: u8) -> char {
    if slot == 0 { 'A' } else { 'B' }
}

impl std::fmt::Display for ImageInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} bytes, sha256 {}…",
            self.size,
            short_hex(&self.sha256)
        )
    }
}
