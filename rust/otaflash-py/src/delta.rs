//! Delta patches: diff, file-to-file apply, the streaming `Applier`, and
//! adapters that let Python callables be the old-image reader and the sink.

use std::io::Read;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard, PoisonError};

use otaflash_core::io::{FileSink, FileSource, ImageSink, ReadAt};
use otaflash_core::patch::{
    self, Applier as CoreApplier, ApplyOptions, ApplyReport, Compression, Kind, OldCheck,
    PatchSummary,
};
use otaflash_core::{Error, Result as CoreResult};
use otaflash_diff::DiffOptions;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyString};

use crate::buffer::ByteView;
use crate::errors::OtaResult;
use crate::progress::PyProgress;

const PATCH_CHUNK: usize = 256 << 10;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// (format, new_size, new_sha256 hex, patch_size)
type Report = (&'static str, u64, String, u64);

fn report(r: ApplyReport) -> Report {
    (r.format, r.new_size, hex(&r.new_sha256), r.patch_size)
}

/// `read_at(offset, length) -> bytes` as the old image.
struct PyReadAt {
    callable: Py<PyAny>,
    size: u64,
}

impl ReadAt for PyReadAt {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> CoreResult<()> {
        Python::attach(|py| {
            let data = self.callable.call1(py, (offset, buf.len()))?;
            let view = ByteView::new(data.bind(py))?;
            let got = view.as_bytes();
            if got.len() != buf.len() {
                return Err(pyo3::exceptions::PyValueError::new_err(format!(
                    "the old-image reader returned {} bytes for a read of {} at offset {offset}",
                    got.len(),
                    buf.len()
                )));
            }
            buf.copy_from_slice(got);
            Ok(())
        })
        .map_err(|e: PyErr| Error::Callback(Box::new(e)))
    }
}

/// `write(data)` as the sink; `data` is a bytes object of one block.
struct PySink {
    callable: Py<PyAny>,
}

impl ImageSink for PySink {
    fn write(&mut self, data: &[u8]) -> CoreResult<()> {
        Python::attach(|py| {
            self.callable.call1(py, (PyBytes::new(py, data),))?;
            Ok(())
        })
        .map_err(|e: PyErr| Error::Callback(Box::new(e)))
    }

    fn finish(&mut self) -> CoreResult<()> {
        Ok(())
    }
}

/// An owned copy of a Python buffer as the old image.
struct OwnedOld(Vec<u8>);

impl ReadAt for OwnedOld {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> CoreResult<()> {
        self.0.as_slice().read_exact_at(offset, buf)
    }
}

type DynApplier = CoreApplier<Box<dyn ReadAt + Send>, Box<dyn ImageSink + Send>>;

fn options(max_working_set: usize, read_cache: usize) -> ApplyOptions {
    ApplyOptions {
        max_working_set,
        read_cache,
        ..ApplyOptions::default()
    }
}

/// Makes a patch turning `old` into `new` (GIL released).
#[pyfunction]
#[pyo3(signature = (old, new, *, kind = "sequential", level = None, window_log = 21,
    block_size = None, frame_size = None, slot_size = None, threads = 0,
    compression = "zstd", progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn diff<'py>(
    py: Python<'py>,
    old: &Bound<'py, PyAny>,
    new: &Bound<'py, PyAny>,
    kind: &str,
    level: Option<i32>,
    window_log: u8,
    block_size: Option<u32>,
    frame_size: Option<u64>,
    slot_size: Option<u64>,
    threads: usize,
    compression: &str,
    progress: Option<Py<PyAny>>,
) -> OtaResult<Bound<'py, PyBytes>> {
    let compression = match compression {
        "zstd" => Compression::Zstd,
        "lzma2" => Compression::Lzma2,
        "none" => Compression::None,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown compression {other:?}; choose zstd, lzma2 or none"
            ))
            .into());
        }
    };
    let mut opts = match kind {
        "sequential" => DiffOptions::with_compression(compression),
        "in-place" | "inplace" => DiffOptions {
            compression,
            ..DiffOptions::in_place(block_size.unwrap_or(4096), slot_size)
        },
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown patch kind {other:?}; choose sequential or in-place"
            ))
            .into());
        }
    };
    opts.window_log = window_log;
    opts.threads = threads;
    if let Some(b) = block_size {
        opts.block_size = b;
    }
    if let Some(f) = frame_size {
        opts.frame_size = f;
    }
    opts.level = level.unwrap_or_else(|| otaflash_diff::default_level(opts.compression));
    let old = ByteView::new(old)?;
    let new = ByteView::new(new)?;
    let (old, new) = (old.as_bytes(), new.as_bytes());
    let mut progress = PyProgress::new(progress);
    let patch = py.detach(|| otaflash_diff::diff_with(old, new, &opts, &mut progress))?;
    Ok(PyBytes::new(py, &patch))
}

/// Applies the patch file to the old image file, writing (and syncing) the
/// new image file. Returns `(format, new_size, new_sha256, patch_size)`.
/// `old_check="alongside"` hashes the old image while applying: only for a
/// `new` the caller deletes unless this returns.
#[pyfunction]
#[pyo3(signature = (old, patch, new, *, max_working_set = patch::DEFAULT_MAX_WORKING_SET,
    read_cache = patch::DEFAULT_READ_CACHE, old_check = "before", progress = None))]
#[allow(clippy::too_many_arguments)]
pub fn apply_file(
    py: Python<'_>,
    old: PathBuf,
    patch: PathBuf,
    new: PathBuf,
    max_working_set: usize,
    read_cache: usize,
    old_check: &str,
    progress: Option<Py<PyAny>>,
) -> OtaResult<Report> {
    let old_check = match old_check {
        "before" => OldCheck::Before,
        "alongside" => OldCheck::Alongside,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown old_check {other:?}; choose before or alongside"
            ))
            .into());
        }
    };
    let mut progress = PyProgress::new(progress);
    let result = py.detach(|| -> CoreResult<ApplyReport> {
        let source = FileSource::open(&old)?;
        let mut file = std::fs::File::open(&patch).map_err(|e| Error::io("open", &patch, e))?;
        let sink = FileSink::create(&new)?;
        let options = ApplyOptions {
            old_check,
            ..options(max_working_set, read_cache)
        };
        let mut applier = CoreApplier::new(source, sink, options);
        let mut buf = vec![0u8; PATCH_CHUNK];
        loop {
            let n = file
                .read(&mut buf)
                .map_err(|e| Error::io("read", &patch, e))?;
            if n == 0 {
                break;
            }
            applier.feed_with(&buf[..n], &mut progress)?;
        }
        applier.finish_with(&mut progress)
    })?;
    Ok(report(result))
}

/// Describes a patch from its first bytes (`PATCH_HEADER_MAX` suffice: the
/// header and its reference map's head): a dict of fields.
#[pyfunction]
pub fn patch_info<'py>(head: &Bound<'py, PyAny>) -> OtaResult<Bound<'py, PyDict>> {
    let view = ByteView::new(head)?;
    let summary = patch::inspect(view.as_bytes())?;
    let d = PyDict::new(head.py());
    match summary {
        PatchSummary::Bsdiff40 { new_size } => {
            d.set_item("format", "bsdiff40")?;
            d.set_item("new_size", new_size)?;
        }
        PatchSummary::Vcdiff { secondary } => {
            d.set_item("format", "vcdiff")?;
            d.set_item("new_size", head.py().None())?;
            d.set_item("secondary", secondary)?;
        }
        PatchSummary::Otaflash(h) => {
            let kind = match h.kind {
                Kind::Sequential => "sequential",
                Kind::InPlace => "in-place",
            };
            d.set_item("format", "otaflash")?;
            d.set_item("version", h.version)?;
            d.set_item("kind", kind)?;
            d.set_item("compression", h.compression.name())?;
            d.set_item("sparse_diffs", h.sparse_diffs)?;
            d.set_item("x86_branches", h.x86_branches)?;
            d.set_item("split_streams", h.split_streams)?;
            d.set_item("record_columns", h.record_columns)?;
            d.set_item("reference_pages", h.reference_pages)?;
            // None: the bytes given end inside the map's head.
            let references = match patch::reference_rules(view.as_bytes(), &h)? {
                Some(rules) => Some(rules.to_string()),
                None if h.reference_pages == 0 => Some("none".to_string()),
                None => None,
            };
            d.set_item("references", references)?;
            d.set_item("old_size", h.old_size)?;
            d.set_item("new_size", h.new_size)?;
            d.set_item("old_sha256", hex(&h.old_sha256))?;
            d.set_item("new_sha256", hex(&h.new_sha256))?;
            d.set_item("body_sha256", h.body_sha256.map(|d| hex(&d)))?;
            d.set_item("patch_size", h.body_size + h.encoded_len() as u64)?;
            d.set_item("block_size", h.block_size)?;
            d.set_item("window_log", h.window_log)?;
            d.set_item("frame_count", h.frame_count)?;
            d.set_item("shift", h.shift)?;
            d.set_item("slot_size", h.slot_size)?;
            d.set_item(
                "working_set",
                patch::working_set(&h, patch::DEFAULT_READ_CACHE),
            )?;
            d.set_item("patch_id", hex(&h.patch_id()))?;
        }
    }
    Ok(d)
}

/// A streaming apply: `feed(chunk)` as patch bytes arrive, then `finish()`.
#[pyclass(module = "otaflash._core", frozen)]
pub struct Applier {
    inner: Mutex<Option<DynApplier>>,
    progress: Option<Py<PyAny>>,
}

impl std::fmt::Debug for Applier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").finish_non_exhaustive()
    }
}

impl Applier {
    fn lock(&self) -> MutexGuard<'_, Option<DynApplier>> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with<T>(&self, f: impl FnOnce(&mut DynApplier) -> CoreResult<T>) -> OtaResult<T> {
        let mut guard = self.lock();
        let applier = guard
            .as_mut()
            .ok_or_else(|| Error::InvalidArgument("this applier is closed".into()))?;
        Ok(f(applier)?)
    }
}

fn old_source(
    py: Python<'_>,
    old: &Bound<'_, PyAny>,
    old_size: Option<u64>,
) -> OtaResult<Box<dyn ReadAt + Send>> {
    if old.is_callable() {
        let size = old_size.ok_or_else(|| {
            Error::InvalidArgument("old_size= is required when old is a read_at callable".into())
        })?;
        return Ok(Box::new(PyReadAt {
            callable: old.clone().unbind(),
            size,
        }));
    }
    if old.is_instance_of::<PyString>() || old.hasattr("__fspath__")? {
        let path: PathBuf = old.extract()?;
        return Ok(Box::new(py.detach(|| FileSource::open(&path))?));
    }
    let view = ByteView::new(old)?;
    Ok(Box::new(OwnedOld(view.as_bytes().to_vec())))
}

#[pymethods]
impl Applier {
    #[new]
    #[pyo3(signature = (old, sink, *, old_size = None, checkpoint = None,
        max_working_set = patch::DEFAULT_MAX_WORKING_SET,
        read_cache = patch::DEFAULT_READ_CACHE, progress = None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        old: &Bound<'_, PyAny>,
        sink: &Bound<'_, PyAny>,
        old_size: Option<u64>,
        checkpoint: Option<&Bound<'_, PyAny>>,
        max_working_set: usize,
        read_cache: usize,
        progress: Option<Py<PyAny>>,
    ) -> OtaResult<Self> {
        let opts = options(max_working_set, read_cache);
        let source = old_source(py, old, old_size)?;
        let cp = match checkpoint {
            Some(c) => Some(patch::Checkpoint::from_bytes(ByteView::new(c)?.as_bytes())?),
            None => None,
        };
        let sink: Box<dyn ImageSink + Send> = if sink.is_callable() {
            Box::new(PySink {
                callable: sink.clone().unbind(),
            })
        } else {
            let path: PathBuf = sink.extract()?;
            match &cp {
                Some(cp) => Box::new(FileSink::resume_at(&path, cp.output_offset)?),
                None => Box::new(FileSink::create(&path)?),
            }
        };
        let applier = match cp {
            Some(cp) => CoreApplier::resume(source, sink, &cp.to_bytes(), opts)?,
            None => CoreApplier::new(source, sink, opts),
        };
        Ok(Self {
            inner: Mutex::new(Some(applier)),
            progress,
        })
    }

    /// Pushes the next patch bytes (any size; GIL released).
    fn feed(&self, py: Python<'_>, chunk: &Bound<'_, PyAny>) -> OtaResult<()> {
        let view = ByteView::new(chunk)?;
        let bytes = view.as_bytes();
        let mut progress = PyProgress::new(self.progress.as_ref().map(|p| p.clone_ref(py)));
        py.detach(|| self.with(|a| a.feed_with(bytes, &mut progress)))
    }

    /// Checks everything and verifies the new image; returns
    /// `(format, new_size, new_sha256, patch_size)`.
    fn finish(&self, py: Python<'_>) -> OtaResult<Report> {
        let mut progress = PyProgress::new(self.progress.as_ref().map(|p| p.clone_ref(py)));
        let r = py.detach(|| self.with(|a| a.finish_with(&mut progress)))?;
        Ok(report(r))
    }

    /// The latest resume point as bytes, or None (none yet, or BSDIFF40).
    fn checkpoint<'py>(&self, py: Python<'py>) -> OtaResult<Option<Bound<'py, PyBytes>>> {
        let cp = self.with(|a| Ok(a.checkpoint()))?;
        Ok(cp.map(|c| PyBytes::new(py, &c.to_bytes())))
    }

    #[getter]
    fn patch_offset(&self) -> OtaResult<u64> {
        self.with(|a| Ok(a.patch_offset()))
    }

    #[getter]
    fn output_offset(&self) -> OtaResult<u64> {
        self.with(|a| Ok(a.output_offset()))
    }

    #[getter]
    fn working_set(&self) -> OtaResult<Option<usize>> {
        self.with(|a| Ok(a.working_set()))
    }
}

/// Parses a checkpoint: `(patch_offset, output_offset)`.
#[pyfunction]
pub fn checkpoint_offsets(checkpoint: &Bound<'_, PyAny>) -> OtaResult<(u64, u64)> {
    let cp = patch::Checkpoint::from_bytes(ByteView::new(checkpoint)?.as_bytes())?;
    Ok((cp.patch_offset, cp.output_offset))
}
