//! Power-cut campaigns for delta updates with real patches (made by
//! otaflash-diff): the core's streaming applier reading the old image from
//! the active slot while it writes the inactive one (A/B), and the in-place
//! kind rewriting the only slot under its journal. Same harness and
//! guarantee as `power_cut.rs`: after any cut, the device boots the old or
//! the new image, verified by hash.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::panic)]

#[path = "campaign.rs"]
#[allow(dead_code)]
mod campaign;

use campaign::{
    UpdateDriver, ab_booted, ab_hook, campaign, info, nand, nor, sha256, single_booted,
};
use otaflash_core::flash::{
    AbLayout, NextAction, RegionReader, SharedDevice, SimFlash, SingleSlot, WriteOptions,
};
use otaflash_core::patch::{Applier, ApplyOptions, PatchSummary, apply_in_place, inspect};
use otaflash_core::progress::NoProgress;
use otaflash_core::{Error, Result};
use otaflash_diff::{DiffOptions, diff};

/// An old image and a new one that shares most of it, shifted: an
/// insertion, scattered edits, a removed range and an appended tail, so
/// the patch copies from moved places (and, in place, must shift data).
fn firmware_pair(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let old: Vec<u8> = (0..300_000).map(|_| rng.u8(..)).collect();
    let mut new = old[..40_000].to_vec();
    new.extend((0..2_000).map(|_| rng.u8(..)));
    new.extend(
        old[40_000..150_000]
            .iter()
            .enumerate()
            .map(|(i, &b)| if i % 997 == 0 { b.wrapping_add(1) } else { b }),
    );
    new.extend_from_slice(&old[152_000..]);
    new.extend((0..8_000).map(|_| rng.u8(..)));
    (old, new)
}

fn single_threaded(options: DiffOptions) -> DiffOptions {
    DiffOptions {
        threads: 1,
        ..options
    }
}

fn ab_prepare(flash: &mut SimFlash, old: &[u8]) -> Result<()> {
    let mut layout = AbLayout::open_or_create(flash, None)?;
    layout.install(
        &mut &old[..],
        info(old),
        WriteOptions::default(),
        &mut NoProgress,
        None,
    )?;
    layout.boot()?;
    layout.confirm()?;
    Ok(())
}

/// A/B: the patch streams (in 1,000-byte chunks, as from a download) into
/// the applier, which reads the old image from the active slot and writes
/// the inactive one; an interrupted install is redone by the boot hook.
struct AbDelta {
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
}

impl AbDelta {
    fn new((old, new): (Vec<u8>, Vec<u8>)) -> Self {
        let patch = diff(&old, &new, &single_threaded(DiffOptions::default())).unwrap();
        assert!(
            patch.len() < new.len() / 10,
            "a real delta: {}",
            patch.len()
        );
        Self { old, new, patch }
    }

    fn apply(&self, flash: &mut SimFlash) -> Result<()> {
        let shared = SharedDevice::new(flash);
        let mut layout = AbLayout::open(shared.clone())?;
        let state = layout.state().clone();
        let active = usize::from(state.active);
        let image = state.images[active]
            .filter(|image| *image == info(&self.old))
            .ok_or_else(|| Error::Slot("the active slot does not hold the old image".into()))?;
        let old = RegionReader::new(shared.clone(), state.slots[active], image.size)?;
        let install = layout.begin_install(info(&self.new), WriteOptions::default())?;
        let mut applier = Applier::new(old, install, ApplyOptions::default());
        for chunk in self.patch.chunks(1000) {
            applier.feed(chunk)?;
        }
        applier.finish()?;
        Ok(())
    }

    fn hook(&self, flash: &mut SimFlash) -> Result<()> {
        ab_hook(flash, info(&self.new), true, |flash| self.apply(flash))
    }
}

impl UpdateDriver for AbDelta {
    fn name(&self) -> String {
        format!("A/B delta ({} byte patch)", self.patch.len())
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        ab_prepare(flash, &self.old)
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        self.apply(flash)?;
        self.hook(flash)
    }

    fn recover(&self, flash: &mut SimFlash) -> Result<()> {
        self.hook(flash)
    }

    fn booted(&self, flash: &mut SimFlash) -> Result<[u8; 32]> {
        ab_booted(flash)
    }

    fn old_sha256(&self) -> [u8; 32] {
        sha256(&self.old)
    }

    fn new_sha256(&self) -> [u8; 32] {
        sha256(&self.new)
    }
}

/// In place: the patch's own kind for a single slot, applied step by step
/// with the slot's record as the journal; a restarted device continues
/// from the last recorded step.
struct InPlaceDelta {
    old: Vec<u8>,
    new: Vec<u8>,
    patch: Vec<u8>,
    id: [u8; 32],
}

impl InPlaceDelta {
    fn new((old, new): (Vec<u8>, Vec<u8>), erase_size: u32) -> Self {
        let options = single_threaded(DiffOptions::in_place(erase_size, None));
        let patch = diff(&old, &new, &options).unwrap();
        assert!(
            patch.len() < new.len() / 10,
            "a real delta: {}",
            patch.len()
        );
        let PatchSummary::Otaflash(header) = inspect(&patch).unwrap() else {
            panic!("not an otaflash patch");
        };
        let id = header.patch_id();
        Self {
            old,
            new,
            patch,
            id,
        }
    }

    fn run(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open(flash)?;
        let Some(mut session) = slot.begin(self.id, info(&self.new))? else {
            return Ok(());
        };
        let mut patch = &self.patch[..];
        apply_in_place(
            &mut session,
            &mut patch,
            &ApplyOptions::default(),
            &mut NoProgress,
        )?;
        session.finish()
    }
}

impl UpdateDriver for InPlaceDelta {
    fn name(&self) -> String {
        format!("in-place delta ({} byte patch)", self.patch.len())
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open_or_create(flash, None)?;
        slot.install(&mut &self.old[..], info(&self.old), &mut NoProgress, None)?;
        Ok(())
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        self.run(flash)
    }

    fn recover(&self, flash: &mut SimFlash) -> Result<()> {
        let state = SingleSlot::open(&mut *flash)?.state().clone();
        match state.next_action() {
            NextAction::ResumeInPlace { update_id, .. } if update_id == self.id => self.run(flash),
            NextAction::Boot { .. } => Ok(()),
            other => Err(Error::Slot(format!("unexpected state {other:?}"))),
        }
    }

    fn booted(&self, flash: &mut SimFlash) -> Result<[u8; 32]> {
        single_booted(flash)
    }

    fn old_sha256(&self) -> [u8; 32] {
        sha256(&self.old)
    }

    fn new_sha256(&self) -> [u8; 32] {
        sha256(&self.new)
    }
}

#[test]
fn ab_delta_nor() {
    campaign(&AbDelta::new(firmware_pair(21)), nor());
}

#[test]
fn ab_delta_nand() {
    campaign(&AbDelta::new(firmware_pair(22)), nand());
}

#[test]
fn in_place_delta_nor() {
    campaign(&InPlaceDelta::new(firmware_pair(23), 65536), nor());
}

#[test]
fn in_place_delta_nand() {
    campaign(&InPlaceDelta::new(firmware_pair(24), 131072), nand());
}
