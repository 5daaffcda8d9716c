//! The power-cut campaign harness, parameterised by the update driver.
//!
//! A driver puts an old image on a simulated flash (`prepare`), runs an
//! update (`update`), and knows what a restarted device does (`recover`:
//! the hook reads the state record and resumes, switches, confirms or rolls
//! back) and which image it then boots (`booted`, verified by hash). The
//! campaign cuts power at every flash operation index of a clean update,
//! again with each operation torn (prefix and random-bit variants), and
//! along random multi-cut sequences that also cut the recovery; after each,
//! it recovers without faults and checks that the device boots the old or
//! the new image, verified by hash: never neither.
//!
//! New update kinds (a delta applier feeding the writer, the delta engine's
//! in-place kind) plug in as another `UpdateDriver`.

use otaflash_core::flash::{
    AbLayout, AbPhase, FlashKind, Geometry, ImageInfo, NextAction, PowerCut, SimFlash, SimOptions,
    SingleSlot, Tear,
};
use otaflash_core::{Error, Result};

pub trait UpdateDriver {
    fn name(&self) -> String;
    /// Lays the old image (and the layout) onto a fresh device; no faults.
    fn prepare(&self, flash: &mut SimFlash) -> Result<()>;
    /// The update, started from the prepared state.
    fn update(&self, flash: &mut SimFlash) -> Result<()>;
    /// What the device does after a restart: read the state record, resume
    /// or finish what it says, until nothing is pending.
    fn recover(&self, flash: &mut SimFlash) -> Result<()>;
    /// SHA-256 of the image the device boots now, read back from the flash.
    fn booted(&self, flash: &mut SimFlash) -> Result<[u8; 32]>;
    fn old_sha256(&self) -> [u8; 32];
    fn new_sha256(&self) -> [u8; 32];
    /// Whether an update that no cut disturbs ends on the new image (a
    /// driver testing rollback ends on the old one).
    fn clean_run_ends_new(&self) -> bool {
        true
    }
}

#[derive(Clone, Copy, Debug)]
pub struct CampaignConfig {
    /// Random multi-cut sequences to run.
    pub random_sequences: u32,
    /// Cuts per random sequence: uniformly from this range.
    pub cuts_per_sequence: (u32, u32),
    pub seed: u64,
}

impl Default for CampaignConfig {
    fn default() -> Self {
        Self {
            random_sequences: 1000,
            cuts_per_sequence: (2, 20),
            seed: 0x5eed,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct CampaignReport {
    pub name: String,
    /// Flash operations of a clean update.
    pub operations: u64,
    /// Single cuts at operation boundaries (the operation never happens).
    pub boundary_cuts: u64,
    /// Single cuts that tear the operation they hit.
    pub torn_cuts: u64,
    pub random_sequences: u64,
    /// Cuts that hit during the random sequences (updates and recoveries).
    pub random_cuts: u64,
    /// Runs that ended booting the old image / the new one.
    pub ended_old: u64,
    pub ended_new: u64,
}

impl CampaignReport {
    pub fn cut_points(&self) -> u64 {
        self.boundary_cuts + self.torn_cuts + self.random_cuts
    }

    pub fn summary(&self) -> String {
        format!(
            "{}: {} flash operations; {} cut points tried ({} boundary, {} torn, {} in {} random sequences); ended old {} / new {}, never neither",
            self.name,
            self.operations,
            self.cut_points(),
            self.boundary_cuts,
            self.torn_cuts,
            self.random_cuts,
            self.random_sequences,
            self.ended_old,
            self.ended_new
        )
    }
}

/// Runs the whole campaign on `fresh` (a blank device of the geometry under
/// test). Returns the report, or a description of the first failure.
pub fn run_campaign(
    driver: &dyn UpdateDriver,
    fresh: &mut SimFlash,
    config: CampaignConfig,
) -> std::result::Result<CampaignReport, String> {
    let name = driver.name();
    let fail = |what: String| format!("{name}: {what}");
    driver
        .prepare(fresh)
        .map_err(|e| fail(format!("prepare failed: {e}")))?;
    let baseline = fresh
        .snapshot()
        .map_err(|e| fail(format!("snapshot: {e}")))?;
    let mut flash = fresh.snapshot().map_err(|e| fail(e.to_string()))?;
    let mut report = CampaignReport {
        name: name.clone(),
        ..Default::default()
    };

    // The clean run gives the number of operations to cut at.
    driver
        .update(&mut flash)
        .map_err(|e| fail(format!("clean update failed: {e}")))?;
    report.operations = flash.operations();
    let booted = driver
        .booted(&mut flash)
        .map_err(|e| fail(format!("after a clean update: {e}")))?;
    let expected = if driver.clean_run_ends_new() {
        driver.new_sha256()
    } else {
        driver.old_sha256()
    };
    if booted != expected {
        return Err(fail(
            "a clean update does not end on the image it should".into(),
        ));
    }

    let tears = [Tear::Clean, Tear::Prefix, Tear::RandomBits];
    for at_op in 0..report.operations {
        for tear in tears {
            flash
                .restore_from(&baseline)
                .map_err(|e| fail(e.to_string()))?;
            let cut = PowerCut {
                at_op,
                tear,
                seed: at_op.wrapping_mul(0x9E37_79B9) ^ tear as u64,
            };
            flash.arm_power_cut(cut);
            let outcome = driver.update(&mut flash);
            expect_cut(&outcome, &flash)
                .map_err(|e| fail(format!("cut at operation {at_op} ({tear:?}): {e}")))?;
            flash.power_on();
            recover_and_check(driver, &mut flash, &mut report)
                .map_err(|e| fail(format!("cut at operation {at_op} ({tear:?}): {e}")))?;
            match tear {
                Tear::Clean => report.boundary_cuts += 1,
                _ => report.torn_cuts += 1,
            }
        }
    }

    let mut rng = fastrand::Rng::with_seed(config.seed);
    for sequence in 0..config.random_sequences {
        flash
            .restore_from(&baseline)
            .map_err(|e| fail(e.to_string()))?;
        let cuts = rng.u32(config.cuts_per_sequence.0..=config.cuts_per_sequence.1);
        let mut trail = Vec::new();
        for index in 0..cuts {
            let tear = tears[rng.usize(..tears.len())];
            let at_op = flash.operations() + rng.u64(0..report.operations.max(1));
            flash.arm_power_cut(PowerCut {
                at_op,
                tear,
                seed: rng.u64(..),
            });
            trail.push((at_op, tear));
            let outcome = if index == 0 {
                driver.update(&mut flash)
            } else {
                driver.recover(&mut flash)
            };
            match outcome {
                Err(Error::PowerCut { .. }) => report.random_cuts += 1,
                Ok(()) => {}
                Err(e) => {
                    return Err(fail(format!(
                        "random sequence {sequence} (cuts {trail:?}): unexpected error {e}"
                    )));
                }
            }
            flash.power_on();
        }
        recover_and_check(driver, &mut flash, &mut report)
            .map_err(|e| fail(format!("random sequence {sequence} (cuts {trail:?}): {e}")))?;
        report.random_sequences += 1;
    }
    Ok(report)
}

fn expect_cut(outcome: &Result<()>, flash: &SimFlash) -> std::result::Result<(), String> {
    match outcome {
        Err(Error::PowerCut { .. }) => Ok(()),
        Ok(()) => Err(format!(
            "the update finished without reaching the cut ({} operations)",
            flash.operations()
        )),
        Err(e) => Err(format!("failed with {e} instead of losing power")),
    }
}

fn recover_and_check(
    driver: &dyn UpdateDriver,
    flash: &mut SimFlash,
    report: &mut CampaignReport,
) -> std::result::Result<(), String> {
    driver
        .recover(flash)
        .map_err(|e| format!("recovery failed: {e}"))?;
    check_ends(driver, flash, report)
}

fn check_ends(
    driver: &dyn UpdateDriver,
    flash: &mut SimFlash,
    report: &mut CampaignReport,
) -> std::result::Result<(), String> {
    let booted = driver
        .booted(flash)
        .map_err(|e| format!("no verified bootable image: {e}"))?;
    if booted == driver.new_sha256() {
        report.ended_new += 1;
    } else if booted == driver.old_sha256() {
        report.ended_old += 1;
    } else {
        return Err(format!(
            "boots an image that is neither old nor new (sha256 {})",
            booted
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>()
        ));
    }
    Ok(())
}

// -- fixtures the campaign tests share ----------------------------------------

pub fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hasher = otaflash_core::hash::Hasher::new(otaflash_core::hash::HashAlgorithm::Sha256);
    hasher.update(data);
    hasher.finalize().as_bytes().try_into().unwrap()
}

pub fn info(data: &[u8]) -> ImageInfo {
    ImageInfo {
        size: data.len() as u64,
        sha256: sha256(data),
    }
}

pub fn nor() -> (Geometry, SimOptions) {
    let g = Geometry {
        kind: FlashKind::Nor,
        size: 14 * 65536,
        erase_size: 65536,
        write_size: 1,
        page_size: 256,
        oob_size: 0,
    };
    (g, SimOptions::default())
}

pub fn nand() -> (Geometry, SimOptions) {
    let g = Geometry {
        kind: FlashKind::Nand,
        size: 14 * 131072,
        erase_size: 131072,
        write_size: 512,
        page_size: 2048,
        oob_size: 64,
    };
    let options = SimOptions {
        bad_blocks: vec![6],
        ..Default::default()
    };
    (g, options)
}

pub fn ab_booted(flash: &mut SimFlash) -> Result<[u8; 32]> {
    let mut layout = AbLayout::open(flash)?;
    let state = layout.state().clone();
    if state.phase != AbPhase::Idle {
        return Err(Error::Slot(format!("still pending: {:?}", state.phase)));
    }
    let image = state.images[usize::from(state.active)]
        .ok_or_else(|| Error::Slot("the active slot holds no recorded image".into()))?;
    let digest = layout.slot_digest(state.active, image.size)?;
    if digest != image.sha256 {
        return Err(Error::Slot(
            "the active slot does not hold its recorded image".into(),
        ));
    }
    Ok(digest)
}

pub fn single_booted(flash: &mut SimFlash) -> Result<[u8; 32]> {
    let mut slot = SingleSlot::open(flash)?;
    let state = slot.state().clone();
    if let NextAction::ResumeInPlace { .. } = state.next_action() {
        return Err(Error::Slot("an in-place update is still pending".into()));
    }
    let image = state
        .image
        .ok_or_else(|| Error::Slot("the slot holds no recorded image".into()))?;
    let digest = slot.slot_digest(image.size)?;
    if digest != image.sha256 {
        return Err(Error::Slot(
            "the slot does not hold its recorded image".into(),
        ));
    }
    Ok(digest)
}

/// An A/B device's boot hook, run until nothing is pending: `resume` redoes
/// an interrupted install of `new`, a trial boots (and, with `confirm`, is
/// confirmed), an unconfirmed trial rolls back.
pub fn ab_hook(
    flash: &mut SimFlash,
    new: ImageInfo,
    confirm: bool,
    mut resume: impl FnMut(&mut SimFlash) -> Result<()>,
) -> Result<()> {
    loop {
        let action = AbLayout::open(&mut *flash)?.state().next_action();
        match action {
            NextAction::Boot { .. } => return Ok(()),
            NextAction::ResumeInstall { image, .. } if image == new => resume(flash)?,
            NextAction::BootTrial { .. } => {
                let mut layout = AbLayout::open(&mut *flash)?;
                layout.boot()?;
                if confirm {
                    layout.confirm()?;
                }
            }
            NextAction::RollBack { .. } => {
                AbLayout::open(&mut *flash)?.boot()?;
            }
            other => return Err(Error::Slot(format!("unexpected state {other:?}"))),
        }
    }
}

/// Runs the campaign for `driver` on a blank device and prints its summary.
pub fn campaign(driver: &dyn UpdateDriver, (geometry, options): (Geometry, SimOptions)) {
    let mut flash = SimFlash::new(geometry, options).unwrap();
    let report = match run_campaign(driver, &mut flash, CampaignConfig::default()) {
        Ok(report) => report,
        Err(failure) => panic!("{} on {}: {failure}", driver.name(), geometry.kind),
    };
    println!(
        "power-cut campaign [{}] {}",
        geometry.kind,
        report.summary()
    );
    assert!(report.boundary_cuts >= report.operations && report.random_sequences >= 1000);
    assert!(report.ended_old + report.ended_new > 0 && report.torn_cuts > 0);
}
