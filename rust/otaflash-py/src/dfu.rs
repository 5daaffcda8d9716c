//! DFU files and DfuSe layouts for `otaflash.usb` (suffix, prefixes, DfuSe
//! files, memory layouts and erase plans), and raw block access to a flash
//! target for the emulated DFU device in `otaflash.sim.dfu`. Results are
//! plain dicts and tuples that the Python modules shape.

use std::sync::{Mutex, MutexGuard, PoisonError};

use otaflash_core::dfu::{DfuFile, DfuseFile, MemoryLayout, Prefix, Suffix, dfuse, suffix};
use otaflash_core::flash::{self as core_flash, BlockDevice};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict};

use crate::buffer::ByteView;
use crate::errors::OtaResult;

fn suffix_dict<'py>(py: Python<'py>, s: &Suffix) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("vendor_id", s.id_vendor)?;
    d.set_item("product_id", s.id_product)?;
    d.set_item("bcd_device", s.bcd_device)?;
    d.set_item("bcd_dfu", s.bcd_dfu)?;
    d.set_item("length", s.length)?;
    d.set_item("crc", s.crc)?;
    Ok(d)
}

/// `{size, payload_len, suffix: dict | None, prefix, prefix_address}`.
#[pyfunction]
pub(crate) fn dfu_file_info<'py>(py: Python<'py>, path: String) -> OtaResult<Bound<'py, PyDict>> {
    let file = py.detach(|| DfuFile::open(&path))?;
    let d = PyDict::new(py);
    d.set_item("size", file.size)?;
    d.set_item("payload_len", file.payload_len)?;
    match &file.suffix {
        Some(s) => d.set_item("suffix", suffix_dict(py, s)?)?,
        None => d.set_item("suffix", py.None())?,
    }
    d.set_item("prefix", file.prefix.name())?;
    if let Prefix::Stellaris { address, .. } = file.prefix {
        d.set_item("prefix_address", address)?;
    }
    Ok(d)
}

/// `{suffix, targets: [{alt, name, elements: [(address, file_offset, size)]}]}`.
#[pyfunction]
pub(crate) fn dfuse_file_parse<'py>(
    py: Python<'py>,
    path: String,
) -> OtaResult<Bound<'py, PyDict>> {
    let file = py.detach(|| DfuseFile::open(&path))?;
    let d = PyDict::new(py);
    d.set_item("suffix", suffix_dict(py, &file.suffix)?)?;
    let targets = file
        .targets
        .iter()
        .map(|t| {
            let td = PyDict::new(py);
            td.set_item("alt", t.alt)?;
            td.set_item("name", t.name.clone())?;
            let elements: Vec<(u32, u64, u32)> = t
                .elements
                .iter()
                .map(|e| (e.address, e.file_offset, e.size))
                .collect();
            td.set_item("elements", elements)?;
            Ok(td)
        })
        .collect::<PyResult<Vec<_>>>()?;
    d.set_item("targets", targets)?;
    Ok(d)
}

type TargetArg = (u8, Option<String>, Vec<(u32, Vec<u8>)>);

/// The bytes of a DfuSe file with these targets (alt, name, [(address, data)]).
#[pyfunction]
pub(crate) fn dfuse_file_build<'py>(
    py: Python<'py>,
    targets: Vec<TargetArg>,
    vendor_id: u16,
    product_id: u16,
    bcd_device: u16,
) -> OtaResult<Bound<'py, PyBytes>> {
    let bytes = py.detach(|| {
        let images: Vec<dfuse::TargetImage<'_>> = targets
            .iter()
            .map(|(alt, name, elements)| dfuse::TargetImage {
                alt: *alt,
                name: name.as_deref(),
                elements: elements.iter().map(|(a, d)| (*a, d.as_slice())).collect(),
            })
            .collect();
        dfuse::build(&images, vendor_id, product_id, bcd_device)
    })?;
    Ok(PyBytes::new(py, &bytes))
}

/// Appends a DFU suffix to the file (as `dfu-suffix -a`); returns it.
#[pyfunction]
pub(crate) fn dfu_add_suffix<'py>(
    py: Python<'py>,
    path: String,
    vendor_id: u16,
    product_id: u16,
    bcd_device: u16,
    bcd_dfu: u16,
) -> OtaResult<Bound<'py, PyDict>> {
    let added =
        py.detach(|| suffix::add_suffix(&path, vendor_id, product_id, bcd_device, bcd_dfu))?;
    Ok(suffix_dict(py, &added)?)
}

/// CRC-32 without the final XOR, as the DFU suffix stores it.
#[pyfunction]
pub(crate) fn dfu_crc(data: &Bound<'_, PyAny>) -> PyResult<u32> {
    let view = ByteView::new(data)?;
    Ok(suffix::dfu_crc(view.as_bytes()))
}

type SegmentTuple = (u64, u64, u64, bool, bool, bool);

/// `(name, [(start, end, page_size, readable, erasable, writable)])`.
#[pyfunction]
pub(crate) fn dfuse_layout(text: &str) -> OtaResult<(String, Vec<SegmentTuple>)> {
    let layout = MemoryLayout::parse(text)?;
    let segments = layout
        .segments
        .iter()
        .map(|s| {
            (
                s.start,
                s.end,
                s.page_size,
                s.readable,
                s.erasable,
                s.writable,
            )
        })
        .collect();
    Ok((layout.name, segments))
}

/// Pages `(start, size)` to erase before writing `regions` `(start, len)`;
/// a GeometryError when a byte falls outside writable memory.
#[pyfunction]
pub(crate) fn dfuse_erase_plan(text: &str, regions: Vec<(u64, u64)>) -> OtaResult<Vec<(u64, u64)>> {
    Ok(MemoryLayout::parse(text)?.plan(&regions)?.pages)
}

/// Erase/program/read access to a flash target (`sim:`, `file:`, `mtd:`):
/// the memory behind an emulated device. Frozen, the device behind a Mutex.
#[pyclass(module = "otaflash._core", frozen)]
pub struct FlashBlocks {
    device: Mutex<Box<dyn BlockDevice + Send>>,
}

impl std::fmt::Debug for FlashBlocks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlashBlocks").finish_non_exhaustive()
    }
}

impl FlashBlocks {
    fn lock(&self) -> MutexGuard<'_, Box<dyn BlockDevice + Send>> {
        self.device.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[pymethods]
impl FlashBlocks {
    #[new]
    fn new(py: Python<'_>, uri: String) -> OtaResult<Self> {
        let device = py.detach(|| core_flash::open_target(&uri))?;
        Ok(Self {
            device: Mutex::new(device),
        })
    }

    #[getter]
    fn name(&self) -> String {
        self.lock().name().to_string()
    }

    /// `(size, erase_size, write_size)`.
    fn geometry(&self) -> (u64, u64, u64) {
        let g = self.lock().geometry();
        (g.size, g.erase_size, g.write_size)
    }

    fn read<'py>(
        &self,
        py: Python<'py>,
        offset: u64,
        size: usize,
    ) -> OtaResult<Bound<'py, PyBytes>> {
        let data = py.detach(|| {
            let mut buf = vec![0u8; size];
            self.lock().read(offset, &mut buf)?;
            Ok::<_, otaflash_core::Error>(buf)
        })?;
        Ok(PyBytes::new(py, &data))
    }

    fn erase(&self, py: Python<'_>, offset: u64, length: u64) -> OtaResult<()> {
        Ok(py.detach(|| self.lock().erase(offset, length))?)
    }

    fn program(&self, py: Python<'_>, offset: u64, data: &Bound<'_, PyAny>) -> OtaResult<()> {
        let view = ByteView::new(data)?;
        let bytes = view.as_bytes().to_vec();
        Ok(py.detach(|| self.lock().program(offset, &bytes))?)
    }

    fn sync(&self, py: Python<'_>) -> OtaResult<()> {
        Ok(py.detach(|| self.lock().sync())?)
    }
}
