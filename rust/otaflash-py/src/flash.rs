//! Flash targets (`mtd:`, `sim:`, `file:`) for `otaflash.flash`: open, write
//! an image (raw, A/B or in place), verify, read, inspect, boot hook and
//! confirm. Results come back as plain dicts that `otaflash.flash` shapes.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use otaflash_core::flash::{
    self as core_flash, AbLayout, AbPhase, BlockDevice, FlashWriter, ImageInfo, InPlacePhase,
    Layout, NextAction, SingleSlot, WriteOptions, WriteReport,
};
use otaflash_core::hash::{HashAlgorithm, hash_file};
use otaflash_core::io::{FileSource, ImageSink, ReadAt};
use otaflash_core::progress::{CancelToken, NoProgress, Progress};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::errors::OtaResult;
use crate::progress::PyProgress;

type Device = Box<dyn BlockDevice + Send>;

/// An open flash target. Frozen, with the device behind a Mutex: every
/// operation runs detached from the interpreter.
#[pyclass(module = "otaflash._core", frozen)]
pub struct FlashTarget {
    uri: String,
    device: Mutex<Device>,
    cancel: Mutex<CancelToken>,
}

impl std::fmt::Debug for FlashTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashTarget")
            .field("uri", &self.uri)
            .finish_non_exhaustive()
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl FlashTarget {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Device> {
        // A panic mid-operation leaves the device as the flash would be after a
        // power cut; the layouts are built to be reopened from exactly that.
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn fresh_cancel(&self) -> CancelToken {
        let token = CancelToken::new();
        *self.cancel.lock().unwrap_or_else(PoisonError::into_inner) = token.clone();
        token
    }
}

/// The image at `path`: its source, size and SHA-256 (one read pass first,
/// so a target is never touched for an image that cannot be read).
fn open_image(path: &PathBuf) -> otaflash_core::Result<(FileSource, ImageInfo)> {
    let source = FileSource::open(path)?;
    let digests = hash_file(path, &[HashAlgorithm::Sha256], &mut NoProgress)?;
    let mut sha256 = [0u8; 32];
    if let Some(digest) = digests.digests.first() {
        sha256.copy_from_slice(digest.as_bytes());
    }
    if digests.size != source.size() {
        return Err(otaflash_core::Error::InvalidArgument(format!(
            "{} changed while it was read",
            path.display()
        )));
    }
    let size = source.size();
    Ok((source, ImageInfo { size, sha256 }))
}

fn copy_into(source: &mut dyn ReadAt, sink: &mut dyn ImageSink) -> otaflash_core::Result<()> {
    let mut buf = vec![0u8; 1 << 20];
    let size = source.size();
    let mut at = 0;
    while at < size {
        let n = (size - at).min(buf.len() as u64) as usize;
        source.read_exact_at(at, &mut buf[..n])?;
        sink.write(&buf[..n])?;
        at += n as u64;
    }
    sink.finish()
}

pub(crate) fn report_dict<'py>(
    py: Python<'py>,
    report: &WriteReport,
) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("size", report.bytes)?;
    d.set_item("sha256", hex(&report.sha256))?;
    d.set_item("blocks", report.blocks)?;
    d.set_item("blocks_unchanged", report.blocks_unchanged)?;
    d.set_item("erases", report.erases)?;
    d.set_item("erases_skipped", report.erases_skipped)?;
    d.set_item("bytes_programmed", report.bytes_programmed)?;
    d.set_item("bad_blocks_skipped", report.bad_blocks_skipped.clone())?;
    d.set_item("blocks_relocated", report.blocks_relocated.clone())?;
    Ok(d)
}

fn image_dict<'py>(py: Python<'py>, image: Option<ImageInfo>) -> PyResult<Bound<'py, PyAny>> {
    match image {
        None => Ok(py.None().into_bound(py)),
        Some(info) => {
            let d = PyDict::new(py);
            d.set_item("size", info.size)?;
            d.set_item("sha256", hex(&info.sha256))?;
            Ok(d.into_any())
        }
    }
}

fn action_dict<'py>(py: Python<'py>, action: &NextAction) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("action", action.name())?;
    match *action {
        NextAction::Boot { slot } => d.set_item("slot", slot)?,
        NextAction::ResumeInstall { slot, image } => {
            d.set_item("slot", slot)?;
            d.set_item("image", image_dict(py, Some(image))?)?;
        }
        NextAction::BootTrial { slot, tries } => {
            d.set_item("slot", slot)?;
            d.set_item("tries", tries)?;
        }
        NextAction::RollBack { from, to } => {
            d.set_item("slot", to)?;
            d.set_item("from", from)?;
        }
        NextAction::ResumeInPlace {
            update_id,
            image,
            completed,
        } => {
            d.set_item("slot", 0)?;
            d.set_item("update_id", hex(&update_id))?;
            d.set_item("image", image_dict(py, Some(image))?)?;
            d.set_item("completed_steps", completed)?;
        }
    }
    Ok(d)
}

fn layout_dict<'py>(py: Python<'py>, layout: &Layout) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("layout", layout.kind().name())?;
    d.set_item("next", action_dict(py, &layout.next_action())?)?;
    match layout {
        Layout::Ab(state) => {
            d.set_item("active", state.active)?;
            let phase = match state.phase {
                AbPhase::Idle => "idle",
                AbPhase::Writing { .. } => "writing",
                AbPhase::Trial { .. } => "trial",
            };
            d.set_item("phase", phase)?;
            let slots = state
                .slots
                .iter()
                .zip(state.images)
                .map(|(region, image)| {
                    let s = PyDict::new(py);
                    s.set_item("offset", region.start)?;
                    s.set_item("size", region.len)?;
                    s.set_item("image", image_dict(py, image)?)?;
                    Ok(s)
                })
                .collect::<PyResult<Vec<_>>>()?;
            d.set_item("slots", slots)?;
        }
        Layout::Single(state) => {
            d.set_item("active", 0)?;
            let phase = match state.phase {
                InPlacePhase::Idle => "idle",
                InPlacePhase::Updating { .. } => "updating",
            };
            d.set_item("phase", phase)?;
            let s = PyDict::new(py);
            s.set_item("offset", state.slot.start)?;
            s.set_item("size", state.slot.len)?;
            s.set_item("image", image_dict(py, state.image)?)?;
            d.set_item("slots", vec![s])?;
            d.set_item(
                "remapped_blocks",
                state.remap.iter().map(|&(l, _)| l).collect::<Vec<_>>(),
            )?;
        }
    }
    Ok(d)
}

enum Written {
    Raw(WriteReport),
    Ab(WriteReport, u8),
    InPlace(u64),
}

#[pymethods]
impl FlashTarget {
    #[new]
    fn new(py: Python<'_>, uri: String) -> OtaResult<Self> {
        let device = py.detach(|| core_flash::open_target(&uri))?;
        Ok(Self {
            uri,
            device: Mutex::new(device),
            cancel: Mutex::new(CancelToken::new()),
        })
    }

    #[getter]
    fn uri(&self) -> &str {
        &self.uri
    }

    #[getter]
    fn name(&self) -> String {
        self.lock().name().to_string()
    }

    /// `{kind, size, erase_size, write_size, page_size, oob_size}`.
    fn geometry<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let g = self.lock().geometry();
        let d = PyDict::new(py);
        d.set_item("kind", g.kind.name())?;
        d.set_item("size", g.size)?;
        d.set_item("erase_size", g.erase_size)?;
        d.set_item("write_size", g.write_size)?;
        d.set_item("page_size", g.page_size)?;
        d.set_item("oob_size", g.oob_size)?;
        Ok(d)
    }

    /// Offsets of the erase blocks marked bad.
    fn bad_blocks(&self, py: Python<'_>) -> OtaResult<Vec<u64>> {
        let bad = py.detach(|| {
            let mut device = self.lock();
            let g = device.geometry();
            if !g.kind.has_bad_blocks() {
                return Ok(Vec::new());
            }
            let mut bad = Vec::new();
            for block in 0..g.blocks() {
                if device.is_bad(block * g.erase_size)? {
                    bad.push(block * g.erase_size);
                }
            }
            Ok::<_, otaflash_core::Error>(bad)
        })?;
        Ok(bad)
    }

    /// The update layout's state record, or None.
    fn layout<'py>(&self, py: Python<'py>) -> OtaResult<Option<Bound<'py, PyDict>>> {
        let layout = py.detach(|| core_flash::inspect(&mut **self.lock()))?;
        Ok(match layout {
            Some(layout) => Some(layout_dict(py, &layout)?),
            None => None,
        })
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        size: usize,
    ) -> OtaResult<Bound<'py, PyBytes>> {
        let mut buf = vec![0u8; size];
        py.detach(|| self.lock().read(offset, &mut buf))?;
        Ok(PyBytes::new(py, &buf))
    }

    /// Writes the image file. `layout`: "raw" (at `offset`), "ab" (into the
    /// inactive slot, then a trial of it) or "inplace" (journalled single slot).
    #[pyo3(signature = (image, offset = 0, layout = "raw", progress = None, skip_blank = true, skip_unchanged = true))]
    #[allow(clippy::too_many_arguments)]
    fn write<'py>(
        &self,
        py: Python<'py>,
        image: PathBuf,
        offset: u64,
        layout: &str,
        progress: Option<Py<PyAny>>,
        skip_blank: bool,
        skip_unchanged: bool,
    ) -> OtaResult<Bound<'py, PyDict>> {
        let options = WriteOptions {
            skip_blank,
            skip_unchanged,
            ..WriteOptions::default()
        };
        if !matches!(layout, "raw" | "ab" | "inplace") {
            return Err(otaflash_core::Error::InvalidArgument(format!(
                "unknown layout {layout:?}; use raw, ab or inplace"
            ))
            .into());
        }
        if layout != "raw" && offset != 0 {
            return Err(otaflash_core::Error::InvalidArgument(
                "an offset applies to raw writes only; layouts place their own slots".into(),
            )
            .into());
        }
        let cancel = self.fresh_cancel();
        let mut progress = PyProgress::new(progress);
        let (image_info, written) = py.detach(|| {
            let (mut source, info) = open_image(&image)?;
            let mut device = self.lock();
            let written = match layout {
                "ab" => {
                    let mut ab = AbLayout::open_or_create(&mut **device, None)?;
                    let report =
                        ab.install(&mut source, info, options, &mut progress, Some(cancel))?;
                    Written::Ab(report, ab.state().next_action().slot())
                }
                "inplace" => {
                    let mut slot = SingleSlot::open_or_create(&mut **device, None)?;
                    Written::InPlace(slot.install(
                        &mut source,
                        info,
                        &mut progress,
                        Some(cancel),
                    )?)
                }
                _ => {
                    let mut writer = FlashWriter::new(&mut **device, offset, options)?
                        .expect_size(info.size)?
                        .with_progress(|e| progress.report(e))
                        .with_cancel(cancel);
                    copy_into(&mut source, &mut writer)?;
                    let report = writer.into_report();
                    if report.sha256 != info.sha256 {
                        return Err(otaflash_core::Error::InvalidArgument(format!(
                            "{} changed while it was written",
                            image.display()
                        )));
                    }
                    Written::Raw(report)
                }
            };
            Ok::<_, otaflash_core::Error>((info, written))
        })?;
        let d = match &written {
            Written::Raw(report) => report_dict(py, report)?,
            Written::Ab(report, slot) => {
                let d = report_dict(py, report)?;
                d.set_item("slot", *slot)?;
                d
            }
            Written::InPlace(steps) => {
                let d = PyDict::new(py);
                d.set_item("size", image_info.size)?;
                d.set_item("sha256", hex(&image_info.sha256))?;
                d.set_item("steps", *steps)?;
                d.set_item("slot", 0)?;
                d
            }
        };
        d.set_item("layout", layout)?;
        d.set_item("offset", offset)?;
        Ok(d)
    }

    /// Checks the target holds exactly the image at `offset`; returns its
    /// SHA-256 hex, raises VerifyError naming the first difference.
    #[pyo3(signature = (image, offset = 0, progress = None))]
    fn verify(
        &self,
        py: Python<'_>,
        image: PathBuf,
        offset: u64,
        progress: Option<Py<PyAny>>,
    ) -> OtaResult<String> {
        let mut progress = PyProgress::new(progress);
        let digest = py.detach(|| {
            let mut source = FileSource::open(&image)?;
            core_flash::verify_image(&mut **self.lock(), offset, &mut source, &mut progress)
        })?;
        Ok(hex(&digest))
    }

    /// The restarted hook: resumes an interrupted update when `image` is the
    /// one it was writing, then decides what to boot (A/B: trial, rollback).
    #[pyo3(signature = (image = None, progress = None))]
    fn boot<'py>(
        &self,
        py: Python<'py>,
        image: Option<PathBuf>,
        progress: Option<Py<PyAny>>,
    ) -> OtaResult<Bound<'py, PyDict>> {
        let cancel = self.fresh_cancel();
        let mut progress = PyProgress::new(progress);
        let (before, decision, resumed) = py.detach(|| {
            let mut device = self.lock();
            let layout = core_flash::inspect(&mut **device)?.ok_or_else(|| {
                otaflash_core::Error::Slot(format!("{} has no update layout to boot", device.name()))
            })?;
            let before = layout.next_action();
            let mut resumed = false;
            let pending = match before {
                NextAction::ResumeInstall { image: pending, .. }
                | NextAction::ResumeInPlace { image: pending, .. } => Some(pending),
                _ => None,
            };
            // An interrupted A/B install left the active slot intact: without
            // its image, boot that and leave the install for later. An
            // interrupted in-place update left the slot holding neither image:
            // it must be finished before anything can boot.
            let in_place = matches!(before, NextAction::ResumeInPlace { .. });
            if let Some(pending) = pending.filter(|_| image.is_some() || in_place) {
                let Some(path) = &image else {
                    return Err(otaflash_core::Error::Slot(format!(
                        "an in-place update to an image of {pending} was interrupted and the slot holds neither image; \
                         finish it with the image (--image) or the patch (--patch) it was applying"
                    )));
                };
                let (mut source, info) = open_image(path)?;
                if info != pending {
                    return Err(otaflash_core::Error::Slot(format!(
                        "{} is not the image the interrupted update was writing ({pending})",
                        path.display()
                    )));
                }
                match layout {
                    Layout::Ab(_) => {
                        let mut ab = AbLayout::open(&mut **device)?;
                        ab.install(&mut source, info, WriteOptions::default(), &mut progress, Some(cancel))?;
                    }
                    Layout::Single(_) => {
                        let mut slot = SingleSlot::open(&mut **device)?;
                        slot.install(&mut source, info, &mut progress, Some(cancel))?;
                    }
                }
                resumed = true;
            }
            let decision = match core_flash::inspect(&mut **device)? {
                Some(Layout::Ab(_)) => {
                    let mut ab = AbLayout::open(&mut **device)?;
                    let decision = ab.boot()?;
                    (decision.slot, decision.image)
                }
                Some(Layout::Single(state)) => (0, state.image),
                None => (0, None),
            };
            Ok::<_, otaflash_core::Error>((before, decision, resumed))
        })?;
        let d = action_dict(py, &before)?;
        d.set_item("resumed", resumed)?;
        d.set_item("boot_slot", decision.0)?;
        d.set_item("image", image_dict(py, decision.1)?)?;
        Ok(d)
    }

    /// The running image is good: an A/B trial becomes the active slot.
    /// Returns the confirmed slot, or None when no trial was pending.
    fn confirm(&self, py: Python<'_>) -> OtaResult<Option<u8>> {
        let slot = py.detach(|| {
            let mut device = self.lock();
            let mut ab = AbLayout::open(&mut **device)?;
            ab.confirm()
        })?;
        Ok(slot)
    }

    /// Stops the operation running on this target (from another thread).
    fn cancel(&self) {
        self.cancel
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
    }

    fn __repr__(&self) -> String {
        format!("<otaflash._core.FlashTarget {:?}>", self.uri)
    }
}

trait ActionSlot {
    fn slot(&self) -> u8;
}

impl ActionSlot for NextAction {
    fn slot(&self) -> u8 {
        match *self {
            NextAction::Boot { slot }
            | NextAction::ResumeInstall { slot, .. }
            | NextAction::BootTrial { slot, .. } => slot,
            NextAction::RollBack { to, .. } => to,
            NextAction::ResumeInPlace { .. } => 0,
        }
    }
}
