//! Streaming installs into a flash target: the update flow pushes downloaded
//! chunks (a full image or a patch) as they arrive, with no temporary copy.
//!
//! The core's A/B install borrows the layout it writes through, so a session
//! runs on its own thread that owns that borrow; `write` hands chunks to it
//! over a small bounded channel (back-pressure keeps memory flat) and
//! `finish` collects the outcome. A patch is applied on that thread too: the
//! sequential applier reads the old image from the active slot while the
//! install fills the inactive one.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use otaflash_core::flash::{
    AbLayout, BlockDevice, FlashWriter, ImageInfo, SharedDevice, SingleSlot, WriteOptions,
    WriteReport,
};
use otaflash_core::inplace::InPlaceTarget;
use otaflash_core::io::{FileSource, ImageSink, ReadAt};
use otaflash_core::patch::{
    Applier, ApplyOptions, PatchSummary, apply_in_place, in_place_steps, inspect,
};
use otaflash_core::progress::{CancelToken, Progress};
use otaflash_core::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::buffer::ByteView;
use crate::errors::OtaResult;
use crate::flash::{FlashTarget, hex, report_dict};
use crate::progress::PyProgress;

/// Chunks queued between `write` and the install thread.
const QUEUE_DEPTH: usize = 4;

enum Message {
    Data(Vec<u8>),
    /// Everything was sent: finish and verify. A closed channel without it
    /// means the caller gave up, and the install stops where it is.
    Finish,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Placement {
    Raw,
    Ab,
}

struct Plan {
    placement: Placement,
    image: ImageInfo,
    patch: bool,
    options: WriteOptions,
}

struct Installed {
    report: WriteReport,
    slot: Option<u8>,
}

struct Running {
    sender: SyncSender<Message>,
    worker: JoinHandle<Result<Installed>>,
}

/// An install under way; see the module description.
#[pyclass(module = "otaflash._core", frozen)]
pub struct InstallSession {
    running: Mutex<Option<Running>>,
    image: ImageInfo,
    layout: &'static str,
}

impl std::fmt::Debug for InstallSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstallSession")
            .field("layout", &self.layout)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

fn parse_sha256(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    let mut out = [0u8; 32];
    let valid = text.len() == 64
        && text.is_ascii()
        && out.iter_mut().enumerate().all(|(i, byte)| {
            text.get(2 * i..2 * i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .map(|value| *byte = value)
                .is_some()
        });
    if valid {
        Ok(out)
    } else {
        Err(Error::InvalidArgument(format!(
            "{text:?} is not a SHA-256 (64 hex digits)"
        )))
    }
}

/// Feeds queued chunks to `consume` until the caller says Finish.
fn pump(
    chunks: &Receiver<Message>,
    cancel: &CancelToken,
    mut consume: impl FnMut(&[u8]) -> Result<()>,
) -> Result<()> {
    loop {
        match chunks.recv() {
            Ok(Message::Data(chunk)) => {
                cancel.check()?;
                consume(&chunk)?;
            }
            Ok(Message::Finish) => return Ok(()),
            Err(_) => return Err(Error::Cancelled),
        }
    }
}

fn run_install(
    target: Py<FlashTarget>,
    plan: Plan,
    chunks: Receiver<Message>,
    mut progress: PyProgress,
    cancel: CancelToken,
) -> Result<Installed> {
    let flash = target.get();
    let mut device = flash.lock();
    match plan.placement {
        Placement::Raw => {
            if plan.patch {
                return Err(Error::InvalidArgument(
                    "a sequential patch cannot be written over its own old image; \
                     use the ab layout, or an in-place patch with the inplace layout"
                        .into(),
                ));
            }
            let mut writer = FlashWriter::new(&mut **device, 0, plan.options)?
                .expect_size(plan.image.size)?
                .with_progress(|e| progress.report(e))
                .with_cancel(cancel.clone());
            pump(&chunks, &cancel, |chunk| writer.write(chunk))?;
            writer.finish()?;
            let report = writer.into_report();
            if report.sha256 != plan.image.sha256 {
                return Err(Error::Verify {
                    subject: device.name().to_string(),
                    what: "sha256".into(),
                    expected: hex(&plan.image.sha256),
                    actual: hex(&report.sha256),
                });
            }
            Ok(Installed { report, slot: None })
        }
        Placement::Ab => {
            let shared = SharedDevice::new(&mut **device);
            let mut layout = AbLayout::open_or_create(shared.clone(), None)?;
            let old = if plan.patch {
                Some(layout.image_reader(layout.state().active)?)
            } else {
                None
            };
            let install = layout
                .begin_install(plan.image, plan.options)?
                .with_progress(|e| progress.report(e))
                .with_cancel(cancel.clone());
            let slot = install.slot();
            let report = match old {
                Some(old) => {
                    let mut applier = Applier::new(old, install, ApplyOptions::default());
                    pump(&chunks, &cancel, |chunk| applier.feed(chunk))?;
                    applier.finish()?;
                    let (_, install) = applier.into_parts();
                    install.into_report()
                }
                None => {
                    let mut install = install;
                    pump(&chunks, &cancel, |chunk| install.write(chunk))?;
                    install.finish()?;
                    install.into_report()
                }
            };
            Ok(Installed {
                report,
                slot: Some(slot),
            })
        }
    }
}

impl InstallSession {
    fn take(&self) -> Option<Running> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    fn sender(&self) -> Option<SyncSender<Message>> {
        self.running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|r| r.sender.clone())
    }

    /// The worker stopped early: its error is the answer.
    fn failure(&self, py: Python<'_>) -> OtaResult<()> {
        let Some(running) = self.take() else {
            return Err(Error::InvalidArgument("this install is already over".into()).into());
        };
        drop(running.sender);
        match py.detach(|| running.worker.join()) {
            Ok(Ok(_)) => Err(Error::InvalidArgument("the install ended early".into()).into()),
            Ok(Err(error)) => Err(error.into()),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

#[pymethods]
impl InstallSession {
    /// Queues the next bytes of the image (or patch).
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> OtaResult<()> {
        let chunk = ByteView::new(data)?.as_bytes().to_vec();
        let Some(sender) = self.sender() else {
            return Err(Error::InvalidArgument("this install is already over".into()).into());
        };
        if py.detach(|| sender.send(Message::Data(chunk))).is_err() {
            return self.failure(py);
        }
        Ok(())
    }

    /// All bytes were written: finishes the install, which reads the image
    /// back and checks its SHA-256 (A/B: then switches to a trial of it).
    fn finish<'py>(&self, py: Python<'py>) -> OtaResult<Bound<'py, PyDict>> {
        let Some(running) = self.take() else {
            return Err(Error::InvalidArgument("this install is already over".into()).into());
        };
        // A send error means the worker already stopped; join tells why.
        let _ = py.detach(|| running.sender.send(Message::Finish));
        drop(running.sender);
        let installed = match py.detach(|| running.worker.join()) {
            Ok(result) => result?,
            Err(panic) => std::panic::resume_unwind(panic),
        };
        let d = report_dict(py, &installed.report)?;
        d.set_item("layout", self.layout)?;
        d.set_item("slot", installed.slot)?;
        d.set_item("image_size", self.image.size)?;
        d.set_item("image_sha256", hex(&self.image.sha256))?;
        Ok(d)
    }

    /// Gives up: the install stops where it is; the running image is untouched.
    fn abort(&self, py: Python<'_>) {
        if let Some(running) = self.take() {
            drop(running.sender);
            let _ = py.detach(|| running.worker.join());
        }
    }

    #[getter]
    fn layout(&self) -> &'static str {
        self.layout
    }
}

/// Starts streaming an image (or, with `patch`, a sequential patch that
/// makes it) into `target`. `layout`: "ab" (the inactive slot, then a trial
/// of it) or "raw" (at the start of the device; full images only).
#[pyfunction]
#[pyo3(signature = (target, size, sha256, layout = "ab", patch = false, progress = None, skip_blank = true, skip_unchanged = true))]
#[allow(clippy::too_many_arguments)]
pub fn begin_install(
    py: Python<'_>,
    target: Py<FlashTarget>,
    size: u64,
    sha256: &str,
    layout: &str,
    patch: bool,
    progress: Option<Py<PyAny>>,
    skip_blank: bool,
    skip_unchanged: bool,
) -> OtaResult<InstallSession> {
    let (placement, layout) = match layout {
        "ab" => (Placement::Ab, "ab"),
        "raw" => (Placement::Raw, "raw"),
        other => {
            return Err(Error::InvalidArgument(format!(
                "a streaming install needs the ab or raw layout, not {other:?}; \
                 in-place updates are applied from a staged file"
            ))
            .into());
        }
    };
    let image = ImageInfo {
        size,
        sha256: parse_sha256(sha256)?,
    };
    let plan = Plan {
        placement,
        image,
        patch,
        options: WriteOptions {
            skip_blank,
            skip_unchanged,
            ..WriteOptions::default()
        },
    };
    let cancel = target.get().fresh_cancel();
    let progress = PyProgress::new(progress);
    let (sender, chunks) = sync_channel(QUEUE_DEPTH);
    let worker = py.detach(|| {
        std::thread::Builder::new()
            .name("otaflash-install".into())
            .spawn(move || run_install(target, plan, chunks, progress, cancel))
            .map_err(|e| Error::InvalidArgument(format!("cannot start the install thread: {e}")))
    })?;
    Ok(InstallSession {
        running: Mutex::new(Some(Running { sender, worker })),
        image,
        layout,
    })
}

/// Applies the in-place patch at `patch` to the single-slot layout of
/// `target` (created when the device has none), or resumes it after a cut.
/// Returns `{size, sha256, steps, resumed_from}`.
#[pyfunction]
#[pyo3(signature = (target, patch, progress = None))]
pub fn apply_patch_in_place<'py>(
    py: Python<'py>,
    target: Py<FlashTarget>,
    patch: PathBuf,
    progress: Option<Py<PyAny>>,
) -> OtaResult<Bound<'py, PyDict>> {
    let mut progress = PyProgress::new(progress);
    let flash = target.get();
    let (image, steps, resumed_from) = py.detach(|| {
        let mut source = FileSource::open(&patch)?;
        let mut head = vec![0u8; source.size().min(4096) as usize];
        source.read_exact_at(0, &mut head)?;
        let header = match inspect(&head)? {
            PatchSummary::Otaflash(header) => header,
            PatchSummary::Bsdiff40 { .. } | PatchSummary::Vcdiff { .. } => {
                return Err(Error::PatchUnsupported(
                    "a BSDIFF40 or VCDIFF patch writes a new image elsewhere, it cannot run \
                     in place"
                        .into(),
                ));
            }
        };
        let image = ImageInfo {
            size: header.new_size,
            sha256: header.new_sha256,
        };
        let mut device = flash.lock();
        let mut slot = SingleSlot::open_or_create(&mut **device, None)?;
        let Some(mut session) = slot.begin(header.patch_id(), image)? else {
            return Ok((image, 0, 0));
        };
        let resumed_from = session.completed_steps(&header.patch_id())?;
        let report = apply_in_place(
            &mut session,
            &mut source,
            &ApplyOptions::default(),
            &mut progress,
        )?;
        session.finish()?;
        let (shift_steps, patch_steps) = in_place_steps(&header);
        let made = ImageInfo {
            size: report.new_size,
            sha256: report.new_sha256,
        };
        Ok::<_, Error>((made, shift_steps + patch_steps, resumed_from))
    })?;
    let d = PyDict::new(py);
    d.set_item("layout", "inplace")?;
    d.set_item("size", image.size)?;
    d.set_item("sha256", hex(&image.sha256))?;
    d.set_item("steps", steps)?;
    d.set_item("resumed_from", resumed_from)?;
    Ok(d)
}
