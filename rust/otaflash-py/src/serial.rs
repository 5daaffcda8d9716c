//! Serial flashing for Python: the otaflash protocol (host and agent),
//! YMODEM (send and receive) and the STM32 bootloader (host and emulator),
//! each one native call over a pyserial port, run with the GIL released.
//! `otaflash.serial` shapes the results; see there for the API.

use std::fs;
use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use otaflash_core::flash::TargetSpec;
use otaflash_core::io::{FileSink, FileSource, ImageSink};
use otaflash_core::progress::CancelToken;
use otaflash_core::serial::ab_slot::AbSlot;
use otaflash_core::serial::agent::{self, AgentOptions, TransferReport};
use otaflash_core::serial::delta::PatchEngine;
use otaflash_core::serial::host::{self, HostOptions, Stream};
use otaflash_core::serial::message::StreamKind;
use otaflash_core::serial::slot::{FileSlot, Slot};
use otaflash_core::serial::stm32::emulator::{self, Event, Profile};
use otaflash_core::serial::stm32::host as stm32;
use otaflash_core::serial::{hex, ymodem};
use otaflash_core::{Error, Result};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::errors::OtaResult;
use crate::link::PyLink;
use crate::progress::PyProgress;

fn seconds(value: f64, what: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| Error::InvalidArgument(format!("{what} must be a positive number of seconds")))
}

fn parse_sha256(text: &str) -> Result<[u8; 32]> {
    let text = text.trim();
    let bytes: Option<Vec<u8>> = (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    bytes
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| Error::InvalidArgument(format!("{text:?} is not a SHA-256 in hex")))
}

/// The agent's storage from a target URI: `file:PATH` is a file replaced
/// once verified; `sim:`/`mtd:` are flash with the A/B layout.
fn open_slot(target: &str) -> Result<Box<dyn Slot>> {
    match TargetSpec::parse(target)? {
        TargetSpec::File(path) => Ok(Box::new(FileSlot::new(path))),
        spec => Ok(Box::new(AbSlot::new(spec.open()?, target)?)),
    }
}

/// Checks a target URI before any port is opened; returns how the agent
/// will describe it.
#[pyfunction]
pub fn agent_target(target: &str) -> OtaResult<String> {
    Ok(open_slot(target)?.describe())
}

/// Sends an image (or, with `delta`, a patch) to `otaflash agent` on `port`.
#[pyfunction]
#[pyo3(signature = (
    port, path, *, delta = false, image_size = None, image_sha256 = None, line_rate = None,
    switch_baud = None, compress = true, block_size = 65536, window = None,
    connect_timeout = 10.0, timeout = 10.0, resume = true, progress = None, stop = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn serial_flash(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    path: PathBuf,
    delta: bool,
    image_size: Option<u64>,
    image_sha256: Option<String>,
    line_rate: Option<u32>,
    switch_baud: Option<u32>,
    compress: bool,
    block_size: u32,
    window: Option<u32>,
    connect_timeout: f64,
    timeout: f64,
    resume: bool,
    progress: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<Py<PyDict>> {
    let mut link = PyLink::new(port, stop)?;
    let mut source = FileSource::open(&path)?;
    let image = match (delta, image_size, image_sha256) {
        (false, _, _) => None,
        (true, Some(size), Some(sha)) => Some((size, parse_sha256(&sha)?)),
        (true, _, _) => {
            return Err(Error::InvalidArgument(
                "a delta needs the new image's size and SHA-256".into(),
            )
            .into());
        }
    };
    let options = HostOptions {
        line_rate,
        switch_baud,
        compress,
        block_size,
        window,
        connect_timeout: seconds(connect_timeout, "the connect timeout")?,
        timeout: seconds(timeout, "the timeout")?,
        resume,
        ..HostOptions::default()
    };
    let mut progress = PyProgress::new(progress);
    let report = py.detach(|| {
        host::flash(
            &mut link,
            Stream {
                kind: if delta {
                    StreamKind::Delta
                } else {
                    StreamKind::Image
                },
                source: &mut source,
                image,
            },
            &options,
            &mut progress,
        )
    })?;
    let out = PyDict::new(py);
    out.set_item("target", &report.target)?;
    out.set_item("delta", report.kind == StreamKind::Delta)?;
    out.set_item("stream_size", report.stream_size)?;
    out.set_item("size", report.image_size)?;
    out.set_item("sha256", hex(&report.sha256))?;
    out.set_item("resumed_from", report.resumed_from)?;
    out.set_item("baud", report.baud)?;
    out.set_item("wire_bytes", report.wire_bytes)?;
    out.set_item("payload_bytes", report.payload_bytes)?;
    out.set_item("frames", report.frames)?;
    out.set_item("retransmitted_frames", report.retransmitted_frames)?;
    out.set_item("naks", report.naks)?;
    out.set_item("timeouts", report.timeouts)?;
    out.set_item("seconds", report.seconds)?;
    Ok(out.unbind())
}

fn transfer_dict<'py>(py: Python<'py>, report: &TransferReport) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item("delta", report.kind == StreamKind::Delta)?;
    out.set_item("stream_size", report.stream_size)?;
    out.set_item("size", report.image_size)?;
    out.set_item("sha256", hex(&report.sha256))?;
    out.set_item("verified", report.verified)?;
    out.set_item("resumed_from", report.resumed_from)?;
    out.set_item("frames", report.frames)?;
    out.set_item("crc_errors", report.crc_errors)?;
    out.set_item("seconds", report.seconds)?;
    Ok(out)
}

/// Serves the device end on `port`, writing to `target`, until stopped (or
/// after one transfer with `once`). `on_transfer(dict)` hears each transfer.
#[pyfunction]
#[pyo3(signature = (
    port, target, *, baud = 115200, max_baud = 4000000, window = 16384, max_block = 1048576,
    checkpoint_every = 65536, once = false, progress = None, on_transfer = None, stop = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn serial_agent(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    target: &str,
    baud: u32,
    max_baud: u32,
    window: u32,
    max_block: u32,
    checkpoint_every: u64,
    once: bool,
    progress: Option<Py<PyAny>>,
    on_transfer: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<()> {
    let mut link = PyLink::new(port, stop)?;
    let mut slot = open_slot(target)?;
    let options = AgentOptions {
        baud,
        max_baud,
        window,
        max_block,
        checkpoint_every,
        once,
        ..AgentOptions::default()
    };
    let mut progress = PyProgress::new(progress);
    let mut report = |transfer: &TransferReport| -> Result<()> {
        let Some(callback) = &on_transfer else {
            return Ok(());
        };
        Python::attach(|py| {
            callback.call1(py, (transfer_dict(py, transfer)?,))?;
            Ok::<(), PyErr>(())
        })
        .map_err(|e| Error::Callback(Box::new(e)))
    };
    let engine = PatchEngine::default();
    py.detach(|| {
        agent::serve(
            &mut link,
            &mut *slot,
            Some(&engine),
            &options,
            &mut progress,
            &CancelToken::new(),
            &mut report,
        )
    })?;
    Ok(())
}

/// Sends the file at `path` by YMODEM (to `rb`, U-Boot `loady`, ...).
#[pyfunction]
#[pyo3(signature = (
    port, path, *, name = None, block_size = 1024, start_timeout = 60.0, timeout = 10.0,
    progress = None, stop = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn ymodem_send(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    path: PathBuf,
    name: Option<String>,
    block_size: usize,
    start_timeout: f64,
    timeout: f64,
    progress: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<Py<PyDict>> {
    let mut link = PyLink::new(port, stop)?;
    let mut source = FileSource::open(&path)?;
    let name = name.unwrap_or_else(|| {
        path.file_name().map_or_else(
            || "firmware.bin".into(),
            |n| n.to_string_lossy().into_owned(),
        )
    });
    let mtime = fs::metadata(&path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_secs());
    let options = ymodem::SendOptions {
        block_size,
        start_timeout: seconds(start_timeout, "the start timeout")?,
        timeout: seconds(timeout, "the timeout")?,
        ..ymodem::SendOptions::default()
    };
    let mut progress = PyProgress::new(progress);
    let report = py.detach(|| {
        ymodem::send(
            &mut link,
            &name,
            &mut source,
            mtime,
            &options,
            &mut progress,
        )
    })?;
    let out = PyDict::new(py);
    out.set_item("name", name)?;
    out.set_item("size", report.size)?;
    out.set_item("blocks", report.blocks)?;
    out.set_item("retransmitted", report.retransmitted)?;
    out.set_item("checksum_mode", report.checksum_mode)?;
    out.set_item("first_eot_acked", report.first_eot_acked)?;
    out.set_item("end_of_batch_acked", report.end_of_batch_acked)?;
    Ok(out.unbind())
}

/// Receives a YMODEM batch (from `sb`): into `destination` when it is a
/// directory (each file by its name), else as that one file.
#[pyfunction]
#[pyo3(signature = (
    port, destination, *, ack_first_eot = false, start_timeout = 60.0, timeout = 3.0,
    progress = None, stop = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn ymodem_receive(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    destination: PathBuf,
    ack_first_eot: bool,
    start_timeout: f64,
    timeout: f64,
    progress: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<Py<PyList>> {
    let mut link = PyLink::new(port, stop)?;
    let options = ymodem::ReceiveOptions {
        ack_first_eot,
        start_timeout: seconds(start_timeout, "the start timeout")?,
        timeout: seconds(timeout, "the timeout")?,
        ..ymodem::ReceiveOptions::default()
    };
    let into_dir = destination.is_dir();
    let mut opened = 0;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut open = |name: &str, _size: Option<u64>| -> Result<Box<dyn ImageSink>> {
        opened += 1;
        let path = if into_dir {
            destination.join(name)
        } else if opened == 1 {
            destination.clone()
        } else {
            return Err(Error::InvalidArgument(format!(
                "the sender offered a second file ({name}) but the destination is one file"
            )));
        };
        paths.push(path.clone());
        Ok(Box::new(FileSink::create(path)?))
    };
    let mut progress = PyProgress::new(progress);
    let files = py.detach(|| ymodem::receive(&mut link, &mut open, &options, &mut progress))?;
    let out = PyList::empty(py);
    for (file, path) in files.iter().zip(&paths) {
        let item = PyDict::new(py);
        item.set_item("name", &file.name)?;
        item.set_item("path", path.to_string_lossy())?;
        item.set_item("size", file.size)?;
        item.set_item("declared_size", file.declared_size)?;
        out.append(item)?;
    }
    Ok(out.unbind())
}

fn info_dict<'py>(py: Python<'py>, info: &stm32::Info) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    out.set_item(
        "bootloader_version",
        format!(
            "{}.{}",
            info.bootloader_version >> 4,
            info.bootloader_version & 15
        ),
    )?;
    out.set_item("pid", format!("{:#05x}", info.pid))?;
    out.set_item("chip", info.chip.map(|c| c.name))?;
    if let Some(chip) = info.chip {
        out.set_item("flash_start", chip.flash.0)?;
        out.set_item("flash_size", chip.flash_size())?;
    }
    out.set_item(
        "commands",
        info.commands
            .iter()
            .map(|c| format!("{c:#04x}"))
            .collect::<Vec<_>>(),
    )?;
    Ok(out)
}

/// Flashes the file at `path` through the STM32 system bootloader.
#[pyfunction]
#[pyo3(signature = (
    port, path, *, address = 0x0800_0000, erase = "pages", verify = true, go = None,
    progress = None, stop = None,
))]
#[allow(clippy::too_many_arguments)]
pub fn stm32_flash(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    path: PathBuf,
    address: u32,
    erase: &str,
    verify: bool,
    go: Option<u32>,
    progress: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<Py<PyDict>> {
    let mut link = PyLink::new(port, stop)?;
    let mut source = FileSource::open(&path)?;
    let erase = match erase {
        "pages" => stm32::Erase::Pages,
        "all" | "mass" => stm32::Erase::Mass,
        "none" => stm32::Erase::None,
        other => {
            return Err(Error::InvalidArgument(format!(
                "unknown erase mode {other:?}; choose pages, all or none"
            ))
            .into());
        }
    };
    let options = stm32::FlashOptions {
        address,
        erase,
        verify,
        go,
    };
    let mut progress = PyProgress::new(progress);
    let report = py.detach(|| stm32::flash(&mut link, &mut source, &options, &mut progress))?;
    let out = info_dict(py, &report.info)?;
    out.set_item("size", report.size)?;
    out.set_item("address", address)?;
    out.set_item("erased_pages", report.erased_pages)?;
    out.set_item("verified", report.verified)?;
    out.set_item("started_at", report.started_at)?;
    Ok(out.unbind())
}

/// Wakes the STM32 bootloader and returns what it says about itself.
#[pyfunction]
#[pyo3(signature = (port, *, stop = None))]
pub fn stm32_info(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<Py<PyDict>> {
    let mut link = PyLink::new(port, stop)?;
    let info = py.detach(|| stm32::Bootloader::connect(&mut link).map(|b| b.info.clone()))?;
    Ok(info_dict(py, &info)?.unbind())
}

/// Names of the parts `stm32_emulate` can be.
#[pyfunction]
pub fn stm32_emulated_chips() -> Vec<(&'static str, String, u64)> {
    emulator::PROFILES
        .iter()
        .filter_map(|p| {
            let chip = p.chip().ok()?;
            Some((p.name, chip.name.to_string(), u64::from(chip.flash_size())))
        })
        .collect()
}

fn event_dict<'py>(py: Python<'py>, event: &Event) -> PyResult<Bound<'py, PyDict>> {
    let out = PyDict::new(py);
    match event {
        Event::Connected => out.set_item("event", "connected")?,
        Event::Erased(pages) => {
            out.set_item("event", "erased")?;
            out.set_item("pages", pages.clone())?;
        }
        Event::Go(address) => {
            out.set_item("event", "go")?;
            out.set_item("address", address)?;
        }
        Event::ReadoutProtection(on) => {
            out.set_item("event", "readout_protection")?;
            out.set_item("enabled", on)?;
        }
        Event::WriteProtection(on) => {
            out.set_item("event", "write_protection")?;
            out.set_item("enabled", on)?;
        }
    }
    Ok(out)
}

/// Serves an emulated STM32 bootloader on `port` with its flash in `target`
/// (`file:PATH`, `sim:PATH...` or `mtd:...`) until stopped; `on_event(dict)`
/// hears what the host made it do.
#[pyfunction]
#[pyo3(signature = (port, target, *, chip = "f407", on_event = None, stop = None))]
pub fn stm32_emulate(
    py: Python<'_>,
    port: &Bound<'_, PyAny>,
    target: &str,
    chip: &str,
    on_event: Option<Py<PyAny>>,
    stop: Option<Py<PyAny>>,
) -> OtaResult<()> {
    let profile = Profile::by_name(chip).ok_or_else(|| {
        let names: Vec<&str> = emulator::PROFILES.iter().map(|p| p.name).collect();
        Error::InvalidArgument(format!(
            "no emulated chip {chip:?}; choose {}",
            names.join(", ")
        ))
    })?;
    let mut store = emulator::open_flash(target, profile.chip()?)?;
    let mut link = PyLink::new(port, stop)?;
    let mut report = |event: Event| -> Result<()> {
        let Some(callback) = &on_event else {
            return Ok(());
        };
        Python::attach(|py| {
            callback.call1(py, (event_dict(py, &event)?,))?;
            Ok::<(), PyErr>(())
        })
        .map_err(|e| Error::Callback(Box::new(e)))
    };
    py.detach(|| {
        emulator::serve(
            &mut link,
            &mut *store,
            profile,
            &CancelToken::new(),
            &mut report,
        )
    })?;
    Ok(())
}
