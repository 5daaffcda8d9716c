//! The otaflash serial protocol end to end in-process: host and agent over an
//! in-memory link, a `file:` target on disk or a simulated NOR flash with the
//! A/B layout, real patches from the diff crate applied by the real delta
//! engine, and injected faults (bit errors, dropped bytes, a cable pulled at
//! every frame). Every run must end in a verified image or an error, never a
//! false success, and a resumed run must continue exactly where the agent
//! proved its bytes.

#![allow(clippy::unwrap_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use otaflash_core::flash::{
    AbLayout, AbPhase, FlashKind, Geometry, ImageInfo, SharedDevice, SimFlash, SimOptions,
};
use otaflash_core::progress::{CancelToken, NoProgress};
use otaflash_core::serial::ab_slot::AbSlot;
use otaflash_core::serial::agent::{self, AgentOptions, TransferReport};
use otaflash_core::serial::delta::{DeltaEngine, PatchEngine};
use otaflash_core::serial::host::{self, FlashReport, HostOptions, Stream};
use otaflash_core::serial::link::{Link, MemoryLink};
use otaflash_core::serial::message::StreamKind;
use otaflash_core::serial::slot::{FileSlot, Slot};
use otaflash_core::{DeviceErrorKind, Error, Result};
use otaflash_diff::DiffOptions;

fn temp_dir(name: &str) -> PathBuf {
    // tmpfs when there is one: these tests fsync at every resume point.
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_path_buf()
    } else {
        std::env::temp_dir()
    };
    let dir = base.join(format!("otaflash-proto-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

/// Firmware-like bytes: runs, repeats and noise, so deflate has work to do.
fn firmware(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        match rng.u8(0..4) {
            0 => out.extend(std::iter::repeat_n(0xFF, rng.usize(1..300))),
            1 => {
                let start = out.len().saturating_sub(rng.usize(1..2000));
                let n = rng.usize(4..200).min(out.len() - start);
                let copy = out[start..start + n].to_vec();
                out.extend(copy);
            }
            _ => out.extend((0..rng.usize(1..64)).map(|_| rng.u8(..))),
        }
    }
    out.truncate(len);
    out
}

/// The device's UART: it never sees a disconnect, only silence, and a new
/// host can be plugged in (what a USB-serial cable looks like from the MCU).
#[derive(Clone, Default)]
struct DevicePort(Arc<Mutex<Option<MemoryLink>>>);

impl DevicePort {
    /// Plugs a new cable in; returns the host's end of it.
    fn plug(&self) -> MemoryLink {
        let (host, device) = MemoryLink::pair();
        *self.0.lock().unwrap() = Some(device);
        host
    }
}

impl Link for DevicePort {
    fn name(&self) -> &str {
        "device-uart"
    }
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        if let Some(link) = self.0.lock().unwrap().as_mut() {
            let _ = link.write_all(data); // bytes into a dead cable are lost
        }
        Ok(())
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let slice = timeout.min(Duration::from_millis(20));
        let mut guard = self.0.lock().unwrap();
        match guard.as_mut() {
            Some(link) => match link.read(buf, slice) {
                Ok(n) => Ok(n),
                Err(_) => {
                    *guard = None;
                    Ok(0)
                }
            },
            None => {
                drop(guard);
                thread::sleep(slice);
                Ok(0)
            }
        }
    }
    fn drain(&mut self) -> Result<()> {
        Ok(())
    }
    fn discard_input(&mut self) -> Result<()> {
        if let Some(link) = self.0.lock().unwrap().as_mut() {
            let _ = link.discard_input();
        }
        Ok(())
    }
    fn set_baud_rate(&mut self, _baud: u32) -> Result<()> {
        Ok(())
    }
}

/// Damages what the host sends (and optionally what it receives).
struct Faulty {
    inner: Option<MemoryLink>,
    rng: fastrand::Rng,
    /// Per-bit error probability.
    ber: f64,
    drop_rate: f64,
    /// Pull the cable after this many frames (frame delimiters) were sent.
    cut_after_frames: Option<u64>,
    frames: u64,
    damage_replies: bool,
}

impl Faulty {
    fn new(inner: MemoryLink, seed: u64) -> Self {
        Self {
            inner: Some(inner),
            rng: fastrand::Rng::with_seed(seed),
            ber: 0.0,
            drop_rate: 0.0,
            cut_after_frames: None,
            frames: 0,
            damage_replies: false,
        }
    }

    fn damage(&mut self, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len());
        for &byte in data {
            if self.drop_rate > 0.0 && self.rng.f64() < self.drop_rate {
                continue;
            }
            let mut b = byte;
            if self.ber > 0.0 {
                for bit in 0..8 {
                    if self.rng.f64() < self.ber {
                        b ^= 1 << bit;
                    }
                }
            }
            out.push(b);
        }
        out
    }

    fn cut(&mut self) -> Error {
        self.inner = None;
        Error::link("faulty", "the cable was pulled")
    }
}

impl Link for Faulty {
    fn name(&self) -> &str {
        "faulty"
    }
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let mut to_send = Vec::with_capacity(data.len());
        for &byte in data {
            to_send.push(byte);
            if byte == 0 {
                self.frames += 1;
                if self.cut_after_frames.is_some_and(|n| self.frames >= n) {
                    let damaged = self.damage(&to_send);
                    if let Some(inner) = self.inner.as_mut() {
                        inner.write_all(&damaged)?;
                    }
                    return Err(self.cut());
                }
            }
        }
        let damaged = self.damage(&to_send);
        match self.inner.as_mut() {
            Some(inner) => inner.write_all(&damaged),
            None => Err(Error::link("faulty", "the cable was pulled")),
        }
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let Some(inner) = self.inner.as_mut() else {
            return Err(Error::link("faulty", "the cable was pulled"));
        };
        let n = inner.read(buf, timeout)?;
        if self.damage_replies && n > 0 {
            let damaged = self.damage(&buf[..n]);
            buf[..damaged.len()].copy_from_slice(&damaged);
            return Ok(damaged.len());
        }
        Ok(n)
    }
    fn drain(&mut self) -> Result<()> {
        Ok(())
    }
    fn discard_input(&mut self) -> Result<()> {
        match self.inner.as_mut() {
            Some(inner) => inner.discard_input(),
            None => Ok(()),
        }
    }
    fn set_baud_rate(&mut self, _baud: u32) -> Result<()> {
        Ok(())
    }
}

struct Device {
    port: DevicePort,
    cancel: CancelToken,
    reports: Arc<Mutex<Vec<TransferReport>>>,
    handle: Option<thread::JoinHandle<Result<()>>>,
}

impl Device {
    fn start(target: &Path, options: AgentOptions, engine: Option<Arc<dyn DeltaEngine>>) -> Self {
        Self::serving(Box::new(FileSlot::new(target)), options, engine)
    }

    fn serving(
        mut slot: Box<dyn Slot>,
        options: AgentOptions,
        engine: Option<Arc<dyn DeltaEngine>>,
    ) -> Self {
        let port = DevicePort::default();
        let cancel = CancelToken::new();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let mut port = port.clone();
            let cancel = cancel.clone();
            let reports = Arc::clone(&reports);
            thread::spawn(move || {
                agent::serve(
                    &mut port,
                    &mut *slot,
                    engine.as_deref(),
                    &options,
                    &mut NoProgress,
                    &cancel,
                    &mut |report| {
                        reports.lock().unwrap().push(report.clone());
                        Ok(())
                    },
                )
            })
        };
        Self {
            port,
            cancel,
            reports,
            handle: Some(handle),
        }
    }

    fn stop(mut self) -> Vec<TransferReport> {
        self.cancel.cancel();
        let result = self.handle.take().unwrap().join().unwrap();
        assert!(matches!(result, Err(Error::Cancelled)), "{result:?}");
        self.reports.lock().unwrap().clone()
    }
}

fn fast_options() -> HostOptions {
    HostOptions {
        block_size: 4096,
        connect_timeout: Duration::from_secs(5),
        timeout: Duration::from_secs(3),
        ..HostOptions::default()
    }
}

fn send_image(link: &mut dyn Link, image: &[u8], options: &HostOptions) -> Result<FlashReport> {
    let mut source = image.to_vec();
    host::flash(
        link,
        Stream {
            kind: StreamKind::Image,
            source: &mut source,
            image: None,
        },
        options,
        &mut NoProgress,
    )
}

#[test]
fn full_images_arrive_verified_compressed_or_not() {
    let dir = temp_dir("full");
    let target = dir.join("fw.img");
    fs::write(&target, b"the old image").unwrap();
    let device = Device::start(&target, AgentOptions::default(), None);
    let image = firmware(300_000, 1);

    let mut link = device.port.plug();
    let report = send_image(&mut link, &image, &HostOptions::default()).unwrap();
    assert_eq!(fs::read(&target).unwrap(), image);
    assert_eq!(report.image_size, image.len() as u64);
    assert_eq!(report.resumed_from, 0);
    assert!(
        report.payload_bytes < image.len() as u64 * 2 / 3,
        "compressible firmware should shrink: {report:?}"
    );
    assert_eq!(report.retransmitted_frames, 0);
    assert_eq!(report.target, format!("file:{}", target.display()));

    // Incompressible data goes raw (deflate would only add bytes).
    let noise: Vec<u8> = (0..200_000).map(|_| fastrand::u8(..)).collect();
    let mut link = device.port.plug();
    let report = send_image(&mut link, &noise, &HostOptions::default()).unwrap();
    assert_eq!(fs::read(&target).unwrap(), noise);
    assert_eq!(report.payload_bytes, noise.len() as u64);
    // Framing costs under 2 % on 1 KiB frames.
    assert!(
        report.wire_bytes < noise.len() as u64 * 1020 / 1000,
        "{report:?}"
    );

    let mut link = device.port.plug();
    let options = HostOptions {
        compress: false,
        switch_baud: Some(921_600),
        ..HostOptions::default()
    };
    let report = send_image(&mut link, &image, &options).unwrap();
    assert_eq!(report.payload_bytes, image.len() as u64);
    assert_eq!(report.baud, Some(921_600));

    // Long erased runs: a few bytes of deflate inflate past the inflater's
    // 32 KiB window within one frame (found on the nrf52 corpus image).
    let mut erased = firmware(20_000, 9);
    erased.extend(std::iter::repeat_n(0xFF, 150_000));
    erased.extend(firmware(30_000, 10));
    let mut link = device.port.plug();
    let report = send_image(&mut link, &erased, &HostOptions::default()).unwrap();
    assert_eq!(fs::read(&target).unwrap(), erased);
    assert!(report.payload_bytes < 60_000, "{report:?}");

    // An empty image is a valid image.
    let mut link = device.port.plug();
    send_image(&mut link, &[], &HostOptions::default()).unwrap();
    assert_eq!(fs::read(&target).unwrap(), b"");

    let reports = device.stop();
    assert_eq!(reports.len(), 5);
    assert!(reports.iter().all(|r| r.verified));
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn bit_errors_and_dropped_bytes_cost_retransmissions_not_correctness() {
    let dir = temp_dir("noise");
    let target = dir.join("fw.img");
    let device = Device::start(&target, AgentOptions::default(), None);
    let image = firmware(120_000, 2);
    for (seed, ber, drop_rate, replies) in [
        (1, 1e-5, 0.0, false),
        (2, 1e-4, 0.0, true),
        (3, 0.0, 1e-4, false),
        (4, 5e-5, 5e-5, true),
    ] {
        let mut link = Faulty::new(device.port.plug(), seed);
        link.ber = ber;
        link.drop_rate = drop_rate;
        link.damage_replies = replies;
        let report = send_image(&mut link, &image, &fast_options())
            .unwrap_or_else(|e| panic!("ber {ber} drop {drop_rate}: {e}"));
        assert_eq!(fs::read(&target).unwrap(), image);
        assert!(
            report.retransmitted_frames > 0,
            "faults at ber {ber} drop {drop_rate} went unnoticed: {report:?}"
        );
    }
    device.stop();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_cable_pulled_at_every_frame_fails_cleanly_then_resumes_where_the_device_proved_it() {
    let dir = temp_dir("cut");
    let target = dir.join("fw.img");
    let old = b"old firmware, still bootable".to_vec();
    let image = firmware(40_000, 3);
    let options = AgentOptions {
        checkpoint_every: 4096,
        ..AgentOptions::default()
    };
    let device = Device::start(&target, options, None);
    let host_options = HostOptions {
        compress: false,
        ..fast_options()
    };
    // Count the frames of a clean run first.
    fs::write(&target, &old).unwrap();
    let mut link = Faulty::new(device.port.plug(), 0);
    send_image(&mut link, &image, &host_options).unwrap();
    let total_frames = link.frames;
    assert!(total_frames > 40, "{total_frames}");

    let mut resumed = 0;
    for cut in 1..=total_frames {
        fs::write(&target, &old).unwrap();
        let _ = fs::remove_file(dir.join("fw.img.otaflash-resume"));
        let mut link = Faulty::new(device.port.plug(), cut);
        link.cut_after_frames = Some(cut);
        let first = send_image(&mut link, &image, &host_options);
        let on_target = fs::read(&target).unwrap();
        match &first {
            // The cut came after the agent verified and committed.
            Ok(_) => assert_eq!(on_target, image, "cut {cut}"),
            Err(e) => {
                assert!(
                    matches!(e, Error::Link { .. } | Error::Timeout { .. }),
                    "cut {cut}: {e}"
                );
                assert!(
                    on_target == old || on_target == image,
                    "cut {cut}: torn target"
                );
            }
        }
        let mut link = device.port.plug();
        let second = send_image(&mut link, &image, &host_options)
            .unwrap_or_else(|e| panic!("cut {cut}: the resumed run failed: {e}"));
        assert_eq!(fs::read(&target).unwrap(), image, "cut {cut}");
        assert!(second.resumed_from <= image.len() as u64, "cut {cut}");
        if second.resumed_from > 0 {
            resumed += 1;
        }
    }
    assert!(
        resumed > total_frames / 2,
        "only {resumed} of {total_frames} runs resumed"
    );
    device.stop();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_damaged_partial_image_is_never_resumed() {
    let dir = temp_dir("damaged");
    let target = dir.join("fw.img");
    let image = firmware(60_000, 4);
    let options = AgentOptions {
        checkpoint_every: 4096,
        ..AgentOptions::default()
    };
    let device = Device::start(&target, options, None);
    let host_options = HostOptions {
        compress: false,
        ..fast_options()
    };
    let mut link = Faulty::new(device.port.plug(), 0);
    link.cut_after_frames = Some(30);
    assert!(send_image(&mut link, &image, &host_options).is_err());
    // Give the agent a moment to notice the new session and checkpoint.
    let mut link = device.port.plug();
    let partial = dir.join("fw.img.otaflash-new");
    thread::sleep(Duration::from_millis(50));
    let mut bytes = fs::read(&partial).unwrap();
    assert!(bytes.len() > 8192);
    bytes[100] ^= 0x40; // bit rot in the part already written
    fs::write(&partial, &bytes).unwrap();
    let report = send_image(&mut link, &image, &host_options).unwrap();
    assert_eq!(report.resumed_from, 0, "the prefix hash must have failed");
    assert_eq!(fs::read(&target).unwrap(), image);

    // A different image never resumes another one's bytes.
    let mut link = Faulty::new(device.port.plug(), 0);
    link.cut_after_frames = Some(30);
    assert!(send_image(&mut link, &image, &host_options).is_err());
    let other = firmware(60_000, 5);
    let mut link = device.port.plug();
    let report = send_image(&mut link, &other, &host_options).unwrap();
    assert_eq!(report.resumed_from, 0);
    assert_eq!(fs::read(&target).unwrap(), other);
    device.stop();
    fs::remove_dir_all(dir).unwrap();
}

#[test]
fn a_silent_device_is_a_timeout_naming_the_cause() {
    let (mut host_end, _device_end) = MemoryLink::pair();
    let options = HostOptions {
        connect_timeout: Duration::from_millis(300),
        ..HostOptions::default()
    };
    let err = send_image(&mut host_end, b"x", &options).unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    assert!(err.to_string().contains("otaflash agent"), "{err}");
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let digest = otaflash_core::hash::digest(otaflash_core::hash::HashAlgorithm::Sha256, data);
    digest.as_bytes().try_into().unwrap()
}

/// A real patch, as `otaflash diff` makes it.
fn diff(old: &[u8], new: &[u8]) -> Vec<u8> {
    let options = DiffOptions {
        level: 3,
        threads: 1,
        block_size: 4096,
        frame_size: 16384,
        ..DiffOptions::default()
    };
    otaflash_diff::diff(old, new, &options).unwrap()
}

/// A new firmware version: most of the old one, a few regions changed.
fn next_version(old: &[u8], seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut new = old.to_vec();
    for _ in 0..4 {
        let at = rng.usize(..new.len() - 300);
        new[at..at + 200].iter_mut().for_each(|b| *b = rng.u8(..));
    }
    new.extend(firmware(3000, seed));
    new
}

fn send_patch(link: &mut dyn Link, patch: &[u8], new: &[u8]) -> Result<FlashReport> {
    let mut source = patch.to_vec();
    host::flash(
        link,
        Stream {
            kind: StreamKind::Delta,
            source: &mut source,
            image: Some((new.len() as u64, sha256(new))),
        },
        &fast_options(),
        &mut NoProgress,
    )
}

fn device_error(err: &Error) -> (DeviceErrorKind, &str) {
    match err {
        Error::Device { kind, message, .. } => (*kind, message.as_str()),
        other => panic!("not a device error: {other}"),
    }
}

#[test]
fn real_patches_are_applied_on_the_device_and_bad_ones_change_nothing() {
    let dir = temp_dir("delta");
    let target = dir.join("fw.img");
    let old = firmware(120_000, 6);
    let new = next_version(&old, 7);
    let patch = diff(&old, &new);
    assert!(patch.len() < 10_000, "{} bytes", patch.len());
    fs::write(&target, &old).unwrap();
    let engine: Arc<dyn DeltaEngine> = Arc::new(PatchEngine::default());
    let device = Device::start(&target, AgentOptions::default(), Some(Arc::clone(&engine)));
    let mut link = device.port.plug();
    let report = send_patch(&mut link, &patch, &new).unwrap();
    assert_eq!(fs::read(&target).unwrap(), new);
    assert_eq!(report.kind, StreamKind::Delta);
    assert_eq!(report.image_size, new.len() as u64);
    assert_eq!(report.stream_size, patch.len() as u64);

    // The same patch again meets the wrong old image: refused before
    // anything is written, and the image stays.
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &patch, &new).unwrap_err();
    let (kind, message) = device_error(&err);
    assert_eq!(kind, DeviceErrorKind::Patch, "{message}");
    assert!(message.contains("old image"), "{message}");
    assert_eq!(fs::read(&target).unwrap(), new);

    // A damaged body: refused, nothing changes, nothing is left behind.
    let back = diff(&new, &old);
    let mut corrupt = back.clone();
    let middle = corrupt.len() - 40;
    corrupt[middle] ^= 0x5A;
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &corrupt, &old).unwrap_err();
    assert_eq!(device_error(&err).0, DeviceErrorKind::Patch, "{err}");
    assert_eq!(fs::read(&target).unwrap(), new);
    assert!(!dir.join("fw.img.otaflash-new").exists());

    // A patch whose header names another image than the host announced.
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &back, &new).unwrap_err();
    let (kind, message) = device_error(&err);
    assert_eq!(kind, DeviceErrorKind::Patch);
    assert!(message.contains("announced"), "{message}");
    assert_eq!(fs::read(&target).unwrap(), new);

    // The way back works, cut at every frame first.
    for cut in 1..4 {
        let mut link = Faulty::new(device.port.plug(), cut);
        link.cut_after_frames = Some(cut);
        assert!(send_patch(&mut link, &back, &old).is_err(), "cut {cut}");
        assert_eq!(fs::read(&target).unwrap(), new, "cut {cut}");
    }
    let mut link = device.port.plug();
    let report = send_patch(&mut link, &back, &old).unwrap();
    assert_eq!(report.resumed_from, 0, "patches restart from their start");
    assert_eq!(fs::read(&target).unwrap(), old);
    let reports = device.stop();
    assert_eq!(
        reports.iter().map(|r| r.verified).collect::<Vec<_>>(),
        [true, true]
    );

    // Without an engine the agent says so before anything is sent.
    let device = Device::start(&target, AgentOptions::default(), None);
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &patch, &new).unwrap_err();
    let (kind, message) = device_error(&err);
    assert_eq!(kind, DeviceErrorKind::Unsupported);
    assert!(message.contains("delta engine"), "{message}");
    device.stop();
    assert_eq!(fs::read(&target).unwrap(), old);
    fs::remove_dir_all(dir).unwrap();
}

/// A NOR flash with 4 KiB erase blocks: two 124 KiB slots after the records.
fn nor_flash() -> SharedDevice<SimFlash> {
    let geometry = Geometry {
        kind: FlashKind::Nor,
        size: 256 << 10,
        erase_size: 4096,
        write_size: 1,
        page_size: 256,
        oob_size: 0,
    };
    SharedDevice::new(SimFlash::new(geometry, SimOptions::default()).unwrap())
}

fn slot_image(flash: &SharedDevice<SimFlash>, slot: u8, size: usize) -> Vec<u8> {
    let mut layout = AbLayout::open(flash.clone()).unwrap();
    let mut out = vec![0u8; size];
    layout.read_slot(slot, 0, &mut out).unwrap();
    out
}

/// What `otaflash slot boot` and then `confirm` do on a device.
fn boot_and_confirm(flash: &SharedDevice<SimFlash>) -> u8 {
    let mut layout = AbLayout::open(flash.clone()).unwrap();
    let decision = layout.boot().unwrap();
    assert_eq!(layout.confirm().unwrap(), Some(decision.slot));
    decision.slot
}

#[test]
fn a_flash_target_takes_images_and_deltas_into_the_inactive_slot() {
    let flash = nor_flash();
    let slot = AbSlot::new(flash.clone(), "sim:test").unwrap();
    let engine: Arc<dyn DeltaEngine> = Arc::new(PatchEngine::default());
    let device = Device::serving(Box::new(slot), AgentOptions::default(), Some(engine));
    let v1 = firmware(100_000, 11);
    let v2 = next_version(&v1, 12);

    // No image yet: a delta has nothing to apply to, and says so.
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &diff(&v1, &v2), &v2).unwrap_err();
    assert!(device_error(&err).1.contains("full image first"), "{err}");

    let mut link = device.port.plug();
    let report = send_image(&mut link, &v1, &fast_options()).unwrap();
    assert_eq!(report.target, "sim:test (A/B slots)");
    let state = AbLayout::open(flash.clone()).unwrap().state().clone();
    assert_eq!(state.phase, AbPhase::Trial { slot: 1, tries: 1 });
    assert_eq!(
        state.active, 0,
        "the old slot boots until the trial is confirmed"
    );

    // Another transfer before the trial is settled is refused, clearly.
    let mut link = device.port.plug();
    let err = send_image(&mut link, &v2, &fast_options()).unwrap_err();
    assert!(device_error(&err).1.contains("on trial"), "{err}");
    assert_eq!(boot_and_confirm(&flash), 1);
    assert_eq!(slot_image(&flash, 1, v1.len()), v1);

    // The delta reads v1 from the active slot (B) and writes v2 into A.
    let mut link = device.port.plug();
    let report = send_patch(&mut link, &diff(&v1, &v2), &v2).unwrap();
    assert_eq!(report.kind, StreamKind::Delta);
    assert_eq!(boot_and_confirm(&flash), 0);
    assert_eq!(slot_image(&flash, 0, v2.len()), v2);
    assert_eq!(
        slot_image(&flash, 1, v1.len()),
        v1,
        "the old slot is intact"
    );

    // A patch for another old image (v1; A holds v2) is refused before
    // anything is written: the record, which still names v1 in slot B for a
    // roll back, is unchanged.
    let before = AbLayout::open(flash.clone()).unwrap().state().clone();
    let mut link = device.port.plug();
    let err = send_patch(&mut link, &diff(&v1, &v2), &v2).unwrap_err();
    let (kind, message) = device_error(&err);
    assert_eq!(kind, DeviceErrorKind::Patch, "{message}");
    assert!(message.contains("old image"), "{message}");
    assert_eq!(AbLayout::open(flash.clone()).unwrap().state(), &before);
    assert_eq!(slot_image(&flash, 1, v1.len()), v1);
    let reports = device.stop();
    assert!(reports.iter().all(|r| r.verified));
    assert_eq!(reports.len(), 2);
}

#[test]
fn a_cut_into_a_flash_target_leaves_the_active_slot_and_resumes_honestly() {
    let flash = nor_flash();
    let slot = AbSlot::new(flash.clone(), "sim:cut").unwrap();
    let options = AgentOptions {
        checkpoint_every: 4096,
        ..AgentOptions::default()
    };
    let device = Device::serving(Box::new(slot), options, None);
    let host_options = HostOptions {
        compress: false,
        ..fast_options()
    };
    let mut images = vec![firmware(40_000, 20)];
    let mut link = device.port.plug();
    send_image(&mut link, &images[0], &host_options).unwrap();
    boot_and_confirm(&flash);
    let mut link = Faulty::new(device.port.plug(), 0);
    send_image(&mut link, &firmware(40_000, 21), &host_options).unwrap();
    let total_frames = link.frames;
    boot_and_confirm(&flash);
    images.push(firmware(40_000, 21));

    let mut resumed = 0;
    for cut in 1..=total_frames {
        let image = firmware(40_000, 100 + cut);
        let active_before = AbLayout::open(flash.clone()).unwrap().state().active;
        let running = images.last().unwrap().clone();
        let mut link = Faulty::new(device.port.plug(), cut);
        link.cut_after_frames = Some(cut);
        let first = send_image(&mut link, &image, &host_options);
        // Whatever happened, a boot now runs an intact image.
        let mut layout = AbLayout::open(flash.clone()).unwrap();
        let state = layout.state().clone();
        let decision = layout.boot().unwrap();
        let booted = slot_image(&flash, decision.slot, 40_000);
        match (&first, state.phase) {
            // The agent verified and switched (the host may not have heard).
            (_, AbPhase::Trial { .. }) => {
                assert_eq!(booted, image, "cut {cut}: a trial of the verified image");
                assert_eq!(layout.confirm().unwrap(), Some(decision.slot));
            }
            (Ok(_), phase) => panic!("cut {cut}: success without a trial: {phase:?}"),
            (Err(_), _) => {
                drop(layout);
                assert_eq!(decision.slot, active_before, "cut {cut}: {state:?}");
                assert_eq!(booted, running, "cut {cut}");
                let mut link = device.port.plug();
                let second = send_image(&mut link, &image, &host_options)
                    .unwrap_or_else(|e| panic!("cut {cut}: the resumed run failed: {e}"));
                // Resumed only after whole erase blocks the agent proved,
                // or done at once when the agent had finished (a cut after END).
                let at = second.resumed_from;
                assert!(
                    at.is_multiple_of(4096) || at == image.len() as u64,
                    "cut {cut}: resumed at {at}"
                );
                assert!(at <= image.len() as u64, "cut {cut}");
                if second.resumed_from > 0 {
                    resumed += 1;
                }
                assert_eq!(boot_and_confirm(&flash), 1 - active_before, "cut {cut}");
            }
        }
        let state = AbLayout::open(flash.clone()).unwrap().state().clone();
        assert_eq!(slot_image(&flash, state.active, image.len()), image);
        assert_eq!(
            state.images[usize::from(state.active)],
            Some(ImageInfo {
                size: image.len() as u64,
                sha256: sha256(&image)
            })
        );
        images.push(image);
    }
    assert!(
        resumed > total_frames / 2,
        "only {resumed} of {total_frames} runs resumed"
    );
    device.stop();
}
