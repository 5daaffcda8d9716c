//! Single-slot, in-place update layout: one slot and a state record that
//! doubles as the journal. An update is a numbered sequence of block
//! replacements ([`InPlaceTarget`]); the record says which update is under
//! way and how many steps are durably done, so a run cut short resumes where
//! it stopped and finishes the job. Unlike A/B there is no old image to go
//! back to once the first step ran: the guarantee is that the resumed run
//! ends with exactly the new image.
//!
//! On NAND, a block that fails during an update is marked bad and its data
//! goes to one of a few spare blocks reserved at the end of the slot; the
//! record keeps the remap, so every other block stays where it was (a
//! nandwrite-style shift would move data the update still has to read).

use super::block::{commit_block, erased_digest};
use super::record::{Dec, Enc, ImageInfo, Layout, NextAction, RecordStore, record_region};
use super::writer::region_digest;
use super::{BlockDevice, Region, hex, is_media_failure};
use crate::inplace::InPlaceTarget;
use crate::io::ReadAt;
use crate::progress::{CancelToken, Operation, Progress, ProgressEvent};
use crate::{Error, Result};

/// Blocks marked bad when the layout was created that it can skip.
const MAX_BAD: usize = 32;
/// Spare blocks kept at the end of a NAND slot for blocks that go bad.
const NAND_SPARES: u64 = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InPlacePhase {
    Idle,
    Updating {
        update_id: [u8; 32],
        image: ImageInfo,
        completed: u64,
    },
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SingleState {
    pub slot: Region,
    /// What the slot holds (when idle and known).
    pub image: Option<ImageInfo>,
    pub phase: InPlacePhase,
    /// Slot blocks (relative index) that were bad when the layout was made.
    pub bad: Vec<u32>,
    /// Logical block -> spare block (relative index), for blocks gone bad.
    pub remap: Vec<(u32, u32)>,
    /// Spare blocks at the end of the slot.
    pub spares: u32,
}

impl SingleState {
    pub(crate) fn encode(&self, e: &mut Enc) {
        e.region(self.slot);
        e.image(self.image);
        match self.phase {
            InPlacePhase::Idle => e.u8(0),
            InPlacePhase::Updating {
                update_id,
                image,
                completed,
            } => {
                e.u8(1);
                e.bytes(&update_id);
                e.image(Some(image));
                e.u64(completed);
            }
        }
        e.u32(self.spares);
        e.u8(self.bad.len() as u8);
        self.bad.iter().for_each(|&b| e.u32(b));
        e.u8(self.remap.len() as u8);
        for &(logical, spare) in &self.remap {
            e.u32(logical);
            e.u32(spare);
        }
    }

    pub(crate) fn decode(d: &mut Dec<'_>) -> Option<Self> {
        let slot = d.region()?;
        let image = d.image()?;
        let phase = match d.u8()? {
            0 => InPlacePhase::Idle,
            1 => InPlacePhase::Updating {
                update_id: d.hash()?,
                image: d.image()??,
                completed: d.u64()?,
            },
            _ => return None,
        };
        let spares = d.u32()?;
        let bad = (0..d.u8()?).map(|_| d.u32()).collect::<Option<Vec<_>>>()?;
        let remap = (0..d.u8()?)
            .map(|_| Some((d.u32()?, d.u32()?)))
            .collect::<Option<Vec<_>>>()?;
        Some(Self {
            slot,
            image,
            phase,
            bad,
            remap,
            spares,
        })
    }

    pub fn next_action(&self) -> NextAction {
        match self.phase {
            InPlacePhase::Idle => NextAction::Boot { slot: 0 },
            InPlacePhase::Updating {
                update_id,
                image,
                completed,
            } => NextAction::ResumeInPlace {
                update_id,
                image,
                completed,
            },
        }
    }

    /// Physical offsets of the slot's logical blocks, and of its spares.
    fn map(&self, erase: u64) -> (Vec<u64>, Vec<u64>) {
        let blocks = self.slot.len / erase;
        let base: Vec<u64> = (0..blocks)
            .filter(|i| !self.bad.iter().any(|&b| u64::from(b) == *i))
            .map(|i| self.slot.start + i * erase)
            .collect();
        let usable = base.len().saturating_sub(self.spares as usize);
        let (logical, spares) = base.split_at(usable);
        let mut logical = logical.to_vec();
        for &(l, s) in &self.remap {
            if let Some(slot) = logical.get_mut(l as usize) {
                *slot = self.slot.start + u64::from(s) * erase;
            }
        }
        (logical, spares.to_vec())
    }
}

#[derive(Debug)]
pub struct SingleSlot<D: BlockDevice> {
    device: D,
    store: RecordStore,
    state: SingleState,
}

impl<D: BlockDevice> SingleSlot<D> {
    pub fn open(mut device: D) -> Result<Self> {
        let mut store = RecordStore::for_device(&device.geometry())?;
        match store.read(&mut device)? {
            Some((_, Layout::Single(state))) => Ok(Self {
                device,
                store,
                state,
            }),
            Some((_, Layout::Ab(_))) => Err(Error::Slot(format!(
                "{} holds an A/B layout, not a single slot",
                device.name()
            ))),
            None => Err(Error::Slot(format!(
                "{} has no update state record; create the single-slot layout first",
                device.name()
            ))),
        }
    }

    /// Opens the layout, or creates it over `slot` (default: everything
    /// after the record blocks), noting the blocks already bad there.
    pub fn open_or_create(mut device: D, slot: Option<Region>) -> Result<Self> {
        let geometry = device.geometry();
        let mut store = RecordStore::for_device(&geometry)?;
        if store.read(&mut device)?.is_some() {
            return Self::open(device);
        }
        let records = record_region(&geometry);
        let slot = slot.unwrap_or(Region::new(records.end(), geometry.size - records.end()));
        if !slot.start.is_multiple_of(geometry.erase_size)
            || !slot.len.is_multiple_of(geometry.erase_size)
            || slot.start < records.end()
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
        let mut bad = Vec::new();
        if geometry.kind.has_bad_blocks() {
            for index in 0..slot.len / geometry.erase_size {
                if device.is_bad(slot.start + index * geometry.erase_size)? {
                    bad.push(u32::try_from(index).unwrap_or(u32::MAX));
                }
            }
        }
        if bad.len() > MAX_BAD {
            return Err(Error::Slot(format!(
                "{} has {} bad blocks in the slot, more than the {MAX_BAD} a single-slot layout tracks",
                device.name(),
                bad.len()
            )));
        }
        let spares = if geometry.kind.has_bad_blocks() {
            NAND_SPARES.min(slot.len / geometry.erase_size / 4)
        } else {
            0
        };
        let state = SingleState {
            slot,
            image: None,
            phase: InPlacePhase::Idle,
            bad,
            remap: Vec::new(),
            spares: spares as u32,
        };
        store.write(&mut device, &Layout::Single(state.clone()))?;
        Ok(Self {
            device,
            store,
            state,
        })
    }

    pub fn state(&self) -> &SingleState {
        &self.state
    }

    pub fn device(&mut self) -> &mut D {
        &mut self.device
    }

    pub fn into_device(self) -> D {
        self.device
    }

    /// Usable bytes of the slot.
    pub fn capacity(&self) -> u64 {
        let erase = self.device.geometry().erase_size;
        self.state.map(erase).0.len() as u64 * erase
    }

    /// Starts `update_id` (which will leave `image` in the slot), or resumes
    /// it when it is the one under way. `None`: the slot already holds
    /// `image`, there is nothing to do. Another update half done is an error:
    /// it must be finished first, the slot holds neither image.
    pub fn begin(
        &mut self,
        update_id: [u8; 32],
        image: ImageInfo,
    ) -> Result<Option<InPlaceSession<'_, D>>> {
        let erase = self.device.geometry().erase_size;
        match self.state.phase {
            InPlacePhase::Updating {
                update_id: current,
                image: target,
                ..
            } if current != update_id || target != image => {
                return Err(Error::Slot(format!(
                    "{}: another in-place update ({}…, to {target}) is half done; resume it first, the slot holds neither image now",
                    self.device.name(),
                    hex(&current[..8])
                )));
            }
            InPlacePhase::Updating { .. } => {}
            InPlacePhase::Idle => {
                if self.state.image == Some(image) && self.slot_digest(image.size)? == image.sha256
                {
                    return Ok(None);
                }
                if image.size > self.capacity() {
                    return Err(Error::Geometry(format!(
                        "the image ({} bytes) is larger than the slot ({} usable bytes)",
                        image.size,
                        self.capacity()
                    )));
                }
                let mut next = self.state.clone();
                next.phase = InPlacePhase::Updating {
                    update_id,
                    image,
                    completed: 0,
                };
                self.store
                    .write(&mut self.device, &Layout::Single(next.clone()))?;
                self.state = next;
            }
        }
        let (logical, spares) = self.state.map(erase);
        let Self {
            device,
            store,
            state,
        } = self;
        Ok(Some(InPlaceSession {
            device,
            store,
            state,
            update_id,
            image,
            logical,
            spares,
            scratch: Vec::new(),
            blank: erased_digest(usize::try_from(erase).unwrap_or(0)),
        }))
    }

    /// Writes a whole image in place: step `k` replaces block `k` with the
    /// image's block `k`, journalled, so a cut run resumes where it stopped.
    /// The update id is the image's SHA-256.
    pub fn install(
        &mut self,
        source: &mut dyn ReadAt,
        image: ImageInfo,
        progress: &mut dyn Progress,
        cancel: Option<CancelToken>,
    ) -> Result<u64> {
        if source.size() != image.size {
            return Err(Error::InvalidArgument(format!(
                "the image source has {} bytes, {} were announced",
                source.size(),
                image.size
            )));
        }
        let Some(mut session) = self.begin(image.sha256, image)? else {
            return Ok(0);
        };
        let erase = session.block_size();
        let steps = image.size.div_ceil(erase);
        let first = session.completed_steps(&image.sha256)?;
        let mut buf = vec![0u8; usize::try_from(erase).unwrap_or(0)];
        for step in first..steps {
            if let Some(cancel) = &cancel {
                cancel.check()?;
            }
            let at = step * erase;
            let n = (image.size - at).min(erase) as usize;
            source.read_exact_at(at, &mut buf[..n])?;
            session.replace_block(at, &buf[..n])?;
            session.record_steps(&image.sha256, step + 1)?;
            let done = (at + n as u64).min(image.size);
            for operation in [Operation::Erase, Operation::Program, Operation::Verify] {
                progress.report(ProgressEvent {
                    operation,
                    done,
                    total: Some(image.size),
                })?;
            }
        }
        session.finish()?;
        Ok(steps - first)
    }

    /// SHA-256 of the first `size` bytes of the slot.
    pub fn slot_digest(&mut self, size: u64) -> Result<[u8; 32]> {
        let erase = self.device.geometry().erase_size;
        let (logical, _) = self.state.map(erase);
        region_digest(&mut self.device, &logical, erase, size)
    }

    /// Reads logical bytes of the slot.
    pub fn read_slot(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let erase = self.device.geometry().erase_size;
        let (logical, _) = self.state.map(erase);
        super::writer::read_with_map(&mut self.device, &logical, erase, offset, buf)
    }
}

/// An in-place update under way: the [`InPlaceTarget`] the delta engine's
/// in-place kind drives, and a [`ReadAt`] over the slot's current bytes.
pub struct InPlaceSession<'a, D: BlockDevice> {
    device: &'a mut D,
    store: &'a mut RecordStore,
    state: &'a mut SingleState,
    update_id: [u8; 32],
    image: ImageInfo,
    logical: Vec<u64>,
    spares: Vec<u64>,
    scratch: Vec<u8>,
    blank: [u8; 32],
}

impl<D: BlockDevice> std::fmt::Debug for InPlaceSession<'_, D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InPlaceSession")
            .field("device", &self.device.name())
            .field("image", &self.image)
            .field("phase", &self.state.phase)
            .finish_non_exhaustive()
    }
}

impl<D: BlockDevice> InPlaceSession<'_, D> {
    pub fn update_id(&self) -> &[u8; 32] {
        &self.update_id
    }

    /// The image the update leaves in the slot.
    pub fn image(&self) -> ImageInfo {
        self.image
    }

    /// What the slot held before the update started, when recorded: a delta
    /// can check its source against it.
    pub fn old_image(&self) -> Option<ImageInfo> {
        self.state.image
    }

    /// All steps are done: checks the slot's SHA-256 against the new image
    /// and records it as what the slot holds.
    pub fn finish(self) -> Result<()> {
        let erase = self.device.geometry().erase_size;
        let digest = region_digest(self.device, &self.logical, erase, self.image.size)?;
        if digest != self.image.sha256 {
            return Err(Error::Verify {
                subject: format!("in-place slot of {}", self.device.name()),
                what: "sha256".into(),
                expected: hex(&self.image.sha256),
                actual: hex(&digest),
            });
        }
        let mut next = self.state.clone();
        next.phase = InPlacePhase::Idle;
        next.image = Some(self.image);
        self.store
            .write(self.device, &Layout::Single(next.clone()))?;
        *self.state = next;
        Ok(())
    }

    fn write_record(&mut self, next: SingleState) -> Result<()> {
        self.store
            .write(self.device, &Layout::Single(next.clone()))?;
        *self.state = next;
        Ok(())
    }

    /// A block gone bad: its data goes to the first spare that is neither
    /// used nor bad, and the record learns the remap.
    fn relocate(&mut self, index: usize, desired: &[u8]) -> Result<()> {
        let erase = self.device.geometry().erase_size;
        loop {
            let used: Vec<u64> = self.logical.clone();
            let mut spare = None;
            for &candidate in &self.spares {
                if !used.contains(&candidate) && !self.device.is_bad(candidate)? {
                    spare = Some(candidate);
                    break;
                }
            }
            let Some(spare) = spare else {
                return Err(Error::Slot(format!(
                    "{}: a block went bad during the in-place update and no spare block is left",
                    self.device.name()
                )));
            };
            match commit_block(self.device, spare, desired, &self.blank, &mut self.scratch) {
                Ok(_) => {
                    let mut next = self.state.clone();
                    let relative = ((spare - self.state.slot.start) / erase) as u32;
                    next.remap.retain(|&(l, _)| l as usize != index);
                    next.remap.push((index as u32, relative));
                    self.write_record(next)?;
                    self.logical[index] = spare;
                    return Ok(());
                }
                Err(error) if is_media_failure(&error) || matches!(error, Error::Verify { .. }) => {
                    self.device.mark_bad(spare)?;
                }
                Err(error) => return Err(error),
            }
        }
    }
}

impl<D: BlockDevice> ReadAt for InPlaceSession<'_, D> {
    fn size(&self) -> u64 {
        self.logical.len() as u64 * self.device.geometry().erase_size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let erase = self.device.geometry().erase_size;
        super::writer::read_with_map(self.device, &self.logical, erase, offset, buf)
    }
}

impl<D: BlockDevice> InPlaceTarget for InPlaceSession<'_, D> {
    fn block_size(&self) -> u64 {
        self.device.geometry().erase_size
    }

    fn replace_block(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        let geometry = self.device.geometry();
        let erase = geometry.erase_size;
        let index = usize::try_from(offset / erase).unwrap_or(usize::MAX);
        if !offset.is_multiple_of(erase) || data.len() as u64 > erase || index >= self.logical.len()
        {
            return Err(Error::InvalidArgument(format!(
                "in-place step at {offset:#x} with {} bytes: steps replace whole {erase:#x}-byte blocks inside the {}-byte slot",
                data.len(),
                self.size()
            )));
        }
        let mut desired = data.to_vec();
        desired.resize(usize::try_from(erase).unwrap_or(0), 0xFF);
        let at = self.logical[index];
        match commit_block(self.device, at, &desired, &self.blank, &mut self.scratch) {
            Ok(_) => Ok(()),
            Err(error)
                if geometry.kind.has_bad_blocks()
                    && (is_media_failure(&error) || matches!(error, Error::Verify { .. })) =>
            {
                self.device.mark_bad(at)?;
                self.relocate(index, &desired)
            }
            Err(error) => Err(error),
        }
    }

    fn completed_steps(&mut self, update_id: &[u8; 32]) -> Result<u64> {
        Ok(match self.state.phase {
            InPlacePhase::Updating {
                update_id: current,
                completed,
                ..
            } if current == *update_id => completed,
            _ => 0,
        })
    }

    fn record_steps(&mut self, update_id: &[u8; 32], count: u64) -> Result<()> {
        let InPlacePhase::Updating {
            update_id: current,
            image,
            completed,
        } = self.state.phase
        else {
            return Err(Error::Slot("no in-place update is under way".into()));
        };
        if current != *update_id {
            return Err(Error::Slot(format!(
                "steps recorded for update {}…, but {}… is under way",
                hex(&update_id[..8]),
                hex(&current[..8])
            )));
        }
        if count == completed {
            return Ok(());
        }
        let mut next = self.state.clone();
        next.phase = InPlacePhase::Updating {
            update_id: current,
            image,
            completed: count,
        };
        self.write_record(next)
    }
}
