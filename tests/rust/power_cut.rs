//! Power-cut campaigns: full-image A/B (with confirm, with a rollback, and
//! checkpointed then resumed after the recorded blocks as the serial agent
//! does), full-image in place, and a synthetic in-place step program, on NOR
//! and on NAND (with a factory bad block) geometries. Each prints its number of
//! cut points. Delta drivers plug into the same `campaign::run_campaign`.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::panic)]

#[path = "campaign.rs"]
mod campaign;

use campaign::{
    CampaignConfig, UpdateDriver, ab_booted, ab_hook, campaign, info, nand, nor, run_campaign,
    sha256, single_booted,
};
use otaflash_core::flash::{
    AbLayout, BlockDevice, NextAction, RegionReader, SharedDevice, SimFlash, SimOptions,
    SingleSlot, WriteOptions,
};
use otaflash_core::inplace::InPlaceTarget;
use otaflash_core::io::ImageSink;
use otaflash_core::io::ReadAt;
use otaflash_core::progress::NoProgress;
use otaflash_core::{Error, Result};

/// A reference update: ~300 KB, about half of its 64 KiB pieces changed,
/// and a different length, so skip-unchanged and the tail both matter.
fn reference_images(seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let old: Vec<u8> = (0..300_000).map(|_| rng.u8(..)).collect();
    let mut new = old.clone();
    new.resize(310_123, 0);
    for (index, chunk) in new.chunks_mut(65536).enumerate() {
        if index % 2 == 1 || index == 4 {
            chunk.iter_mut().for_each(|b| *b = rng.u8(..));
        }
    }
    (old, new)
}

fn source(data: &[u8]) -> &[u8] {
    data
}

/// Full image through the A/B layout: install into the inactive slot, boot
/// the trial, then confirm it (or, with `rollback`, reboot unconfirmed).
struct AbFull {
    old: Vec<u8>,
    new: Vec<u8>,
    rollback: bool,
}

impl AbFull {
    fn prepare_with(&self, flash: &mut SimFlash, old: &[u8]) -> Result<()> {
        let mut layout = AbLayout::open_or_create(flash, None)?;
        self.install(&mut layout, old)?;
        layout.boot()?;
        layout.confirm()?;
        Ok(())
    }

    fn install(&self, layout: &mut AbLayout<&mut SimFlash>, data: &[u8]) -> Result<()> {
        layout.install(
            &mut source(data),
            info(data),
            WriteOptions::default(),
            &mut NoProgress,
            None,
        )?;
        Ok(())
    }

    /// The boot hook, run until nothing is pending.
    fn hook(&self, flash: &mut SimFlash) -> Result<()> {
        ab_hook(flash, info(&self.new), !self.rollback, |flash| {
            self.install(&mut AbLayout::open(flash)?, &self.new)
        })
    }
}

impl UpdateDriver for AbFull {
    fn name(&self) -> String {
        if self.rollback {
            "A/B full image, unconfirmed boot rolls back".into()
        } else {
            "A/B full image".into()
        }
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        self.prepare_with(flash, &self.old)
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        self.install(&mut AbLayout::open(&mut *flash)?, &self.new)?;
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

    fn clean_run_ends_new(&self) -> bool {
        !self.rollback
    }
}

/// A/B install that records a checkpoint after every erase block (what the
/// serial agent does), and a recovery that continues after the recorded
/// bytes instead of from the start: the recorded count must be true after a
/// cut anywhere, torn record writes included.
struct AbCheckpointed {
    old: Vec<u8>,
    new: Vec<u8>,
    erase: usize,
}

impl AbCheckpointed {
    fn install_from(&self, layout: &mut AbLayout<&mut SimFlash>) -> Result<()> {
        let image = info(&self.new);
        let offset = layout.resumable(image);
        let mut install = layout
            .begin_install(image, WriteOptions::default())?
            .resume_from(offset)?;
        for chunk in self.new[offset as usize..].chunks(self.erase) {
            install.write(chunk)?;
            install.checkpoint()?;
        }
        install.finish()?;
        Ok(())
    }

    fn hook(&self, flash: &mut SimFlash) -> Result<()> {
        ab_hook(flash, info(&self.new), true, |flash| {
            self.install_from(&mut AbLayout::open(flash)?)
        })
    }
}

impl UpdateDriver for AbCheckpointed {
    fn name(&self) -> String {
        "A/B full image, checkpointed and resumed after the recorded blocks".into()
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        AbFull {
            old: self.old.clone(),
            new: self.new.clone(),
            rollback: false,
        }
        .prepare_with(flash, &self.old)
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        self.install_from(&mut AbLayout::open(&mut *flash)?)?;
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

/// A sequential stream computing the new image from the old one, read out of
/// the active slot while the install writes the inactive slot: the shape of
/// a delta applier plugged into the A/B layout (two handles on one device).
struct AbStreaming {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl AbStreaming {
    fn new(old: Vec<u8>) -> Self {
        let new = Self::transform(0, &old);
        Self { old, new }
    }

    fn transform(at: usize, old: &[u8]) -> Vec<u8> {
        old.iter()
            .enumerate()
            .map(|(i, &b)| {
                if ((at + i) / 8192).is_multiple_of(3) {
                    b ^ 0x5A
                } else {
                    b
                }
            })
            .collect()
    }

    fn apply(&self, flash: &mut SimFlash) -> Result<()> {
        let shared = SharedDevice::new(flash);
        let mut layout = AbLayout::open(shared.clone())?;
        let state = layout.state().clone();
        let active = usize::from(state.active);
        let source = state.images[active]
            .filter(|image| *image == info(&self.old))
            .ok_or_else(|| Error::Slot("the active slot does not hold the old image".into()))?;
        let mut old = RegionReader::new(shared.clone(), state.slots[active], source.size)?;
        let mut sink = layout.begin_install(info(&self.new), WriteOptions::default())?;
        let mut buf = vec![0u8; 4096];
        let mut at = 0;
        while at < self.old.len() {
            let n = (self.old.len() - at).min(buf.len());
            old.read_exact_at(at as u64, &mut buf[..n])?;
            sink.write(&Self::transform(at, &buf[..n]))?;
            at += n;
        }
        sink.finish()
    }

    fn hook(&self, flash: &mut SimFlash) -> Result<()> {
        ab_hook(flash, info(&self.new), true, |flash| self.apply(flash))
    }
}

impl UpdateDriver for AbStreaming {
    fn name(&self) -> String {
        "A/B streaming from the active slot".into()
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        AbFull {
            old: Vec::new(),
            new: self.old.clone(),
            rollback: false,
        }
        .prepare_with(flash, &self.old)
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

/// Full image written in place, one journalled step per block.
struct InPlaceFull {
    old: Vec<u8>,
    new: Vec<u8>,
}

impl UpdateDriver for InPlaceFull {
    fn name(&self) -> String {
        "in place, full image".into()
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open_or_create(flash, None)?;
        slot.install(
            &mut source(&self.old),
            info(&self.old),
            &mut NoProgress,
            None,
        )?;
        Ok(())
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open(flash)?;
        slot.install(
            &mut source(&self.new),
            info(&self.new),
            &mut NoProgress,
            None,
        )?;
        Ok(())
    }

    fn recover(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open(flash)?;
        match slot.state().next_action() {
            NextAction::ResumeInPlace { image, .. } if image == info(&self.new) => {
                slot.install(&mut source(&self.new), image, &mut NoProgress, None)?;
                Ok(())
            }
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

/// A synthetic in-place patch that keeps the contract: step `k` builds new
/// block `k` from old block `k + 1` (not yet overwritten: only step `k + 1`
/// replaces it) and a literal, so re-running any step after a cut gives the
/// same bytes.
struct InPlaceSteps {
    old: Vec<u8>,
    new: Vec<u8>,
    erase: usize,
}

impl InPlaceSteps {
    fn new(old: Vec<u8>, erase: usize, new_len: usize) -> Self {
        let mut padded = old.clone();
        padded.resize(old.len().next_multiple_of(erase) + erase, 0xFF);
        let new = (0..new_len.div_ceil(erase))
            .flat_map(|k| Self::step(k, &padded[(k + 1) * erase..(k + 2) * erase]))
            .take(new_len)
            .collect();
        Self { old, new, erase }
    }

    fn step(k: usize, next_old: &[u8]) -> Vec<u8> {
        next_old
            .iter()
            .enumerate()
            .map(|(i, &b)| b.wrapping_add(k as u8) ^ (i as u8 & 0x0F))
            .collect()
    }

    fn update_id(&self) -> [u8; 32] {
        sha256(&[b"synthetic-in-place".as_slice(), &sha256(&self.new)].concat())
    }

    fn run(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open(flash)?;
        let id = self.update_id();
        let Some(mut session) = slot.begin(id, info(&self.new))? else {
            return Ok(());
        };
        let erase = self.erase;
        let old_blocks = self.old.len().div_ceil(erase);
        let steps = self.new.len().div_ceil(erase) as u64;
        let mut next_old = vec![0u8; erase];
        for k in session.completed_steps(&id)?..steps {
            let k = k as usize;
            if k + 1 < old_blocks {
                session.read_exact_at(((k + 1) * erase) as u64, &mut next_old)?;
            } else {
                next_old.fill(0xFF);
            }
            let mut data = Self::step(k, &next_old);
            data.truncate(self.new.len() - k * erase);
            session.replace_block((k * erase) as u64, &data)?;
            session.record_steps(&id, k as u64 + 1)?;
        }
        session.finish()
    }
}

impl UpdateDriver for InPlaceSteps {
    fn name(&self) -> String {
        "in place, synthetic step program".into()
    }

    fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
        let mut slot = SingleSlot::open_or_create(flash, None)?;
        slot.install(
            &mut source(&self.old),
            info(&self.old),
            &mut NoProgress,
            None,
        )?;
        Ok(())
    }

    fn update(&self, flash: &mut SimFlash) -> Result<()> {
        self.run(flash)
    }

    fn recover(&self, flash: &mut SimFlash) -> Result<()> {
        let state = SingleSlot::open(&mut *flash)?.state().clone();
        match state.next_action() {
            NextAction::ResumeInPlace { update_id, .. } if update_id == self.update_id() => {
                self.run(flash)
            }
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
fn ab_full_image_nor() {
    let (old, new) = reference_images(1);
    campaign(
        &AbFull {
            old,
            new,
            rollback: false,
        },
        nor(),
    );
}

#[test]
fn ab_full_image_nand() {
    let (old, new) = reference_images(2);
    campaign(
        &AbFull {
            old,
            new,
            rollback: false,
        },
        nand(),
    );
}

#[test]
fn ab_rollback_nor() {
    let (old, new) = reference_images(3);
    campaign(
        &AbFull {
            old,
            new,
            rollback: true,
        },
        nor(),
    );
}

#[test]
fn ab_rollback_nand() {
    let (old, new) = reference_images(4);
    campaign(
        &AbFull {
            old,
            new,
            rollback: true,
        },
        nand(),
    );
}

#[test]
fn ab_checkpointed_resume_nor() {
    let (old, new) = reference_images(7);
    campaign(
        &AbCheckpointed {
            old,
            new,
            erase: 65536,
        },
        nor(),
    );
}

#[test]
fn ab_checkpointed_resume_nand() {
    let (old, new) = reference_images(8);
    campaign(
        &AbCheckpointed {
            old,
            new,
            erase: 131072,
        },
        nand(),
    );
}

#[test]
fn ab_streaming_from_the_active_slot_nand() {
    let (old, _) = reference_images(10);
    campaign(&AbStreaming::new(old), nand());
}

#[test]
fn in_place_full_image_nor() {
    let (old, new) = reference_images(5);
    campaign(&InPlaceFull { old, new }, nor());
}

#[test]
fn in_place_full_image_nand() {
    let (old, new) = reference_images(6);
    campaign(&InPlaceFull { old, new }, nand());
}

#[test]
fn in_place_steps_nor() {
    let (old, _) = reference_images(7);
    campaign(&InPlaceSteps::new(old, 65536, 290_000), nor());
}

#[test]
fn in_place_steps_nand() {
    let (old, _) = reference_images(8);
    campaign(&InPlaceSteps::new(old, 131072, 290_000), nand());
}

#[test]
fn the_harness_catches_a_layout_that_is_not_power_safe() {
    // Writing the image straight over the only copy, with no journal, must
    // be caught: a cut in the middle boots neither image.
    struct Unsafe(Vec<u8>, Vec<u8>);
    impl UpdateDriver for Unsafe {
        fn name(&self) -> String {
            "raw overwrite".into()
        }
        fn prepare(&self, flash: &mut SimFlash) -> Result<()> {
            self.write(flash, &self.0)
        }
        fn update(&self, flash: &mut SimFlash) -> Result<()> {
            self.write(flash, &self.1)
        }
        fn recover(&self, _flash: &mut SimFlash) -> Result<()> {
            Ok(())
        }
        fn booted(&self, flash: &mut SimFlash) -> Result<[u8; 32]> {
            let mut buf = vec![0u8; self.0.len()];
            flash.read(0, &mut buf)?;
            Ok(sha256(&buf))
        }
        fn old_sha256(&self) -> [u8; 32] {
            sha256(&self.0)
        }
        fn new_sha256(&self) -> [u8; 32] {
            sha256(&self.1)
        }
    }
    impl Unsafe {
        fn write(&self, flash: &mut SimFlash, data: &[u8]) -> Result<()> {
            use otaflash_core::io::ImageSink;
            let mut writer =
                otaflash_core::flash::FlashWriter::new(flash, 0, WriteOptions::default())?;
            writer.write(data)?;
            writer.finish()
        }
    }
    let (old, _) = reference_images(9);
    let mut new = old.clone();
    new.iter_mut().for_each(|b| *b = !*b);
    let mut flash = SimFlash::new(nor().0, SimOptions::default()).unwrap();
    let failure =
        run_campaign(&Unsafe(old, new), &mut flash, CampaignConfig::default()).unwrap_err();
    assert!(failure.contains("neither old nor new"), "{failure}");
}
