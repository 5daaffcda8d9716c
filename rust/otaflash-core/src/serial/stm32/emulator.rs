//! An emulated STM32 system bootloader (AN3155 over USART), byte for byte
//! what the real one answers, with its flash kept in a [`FlashStore`].
//!
//! Like the real bootloader it waits for 0x7F after reset, never times out
//! inside a command (stm32flash's resynchronisation relies on that), NACKs
//! bad complements and checksums, programs flash NOR-style (bits only go
//! from 1 to 0: writing over unerased bytes is NACKed), erases whole pages
//! to 0xFF, and after GO, WRITE/READOUT (UN)PROTECT "resets" and waits for
//! a new 0x7F. Readout protection blocks READ, WRITE and GO until READOUT
//! UNPROTECT mass-erases the flash.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ACK, Chip, INIT, NACK, address_bytes, cmd, xor};
use crate::flash::{BlockDevice, FlashKind, TargetSpec};
use crate::progress::CancelToken;
use crate::serial::link::Link;
use crate::{Error, Result};

/// The emulated chip's flash memory.
pub trait FlashStore: Send {
    fn size(&self) -> u64;
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;
    /// Programs `data` at `offset`; false (and nothing written) when a bit
    /// would have to go from 0 to 1, which flash cannot do without an erase.
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<bool>;
    /// Sets `len` bytes at `offset` to 0xFF.
    fn erase(&mut self, offset: u64, len: u64) -> Result<()>;
}

/// Flash kept in a file of exactly the flash's size (created erased).
#[derive(Debug)]
pub struct FileFlash {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileFlash {
    pub fn open(path: impl AsRef<Path>, size: u64) -> Result<Self> {
        let path = path.as_ref();
        let existed = path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let mut flash = Self {
            file,
            path: path.to_path_buf(),
            size,
        };
        let len = flash
            .file
            .metadata()
            .map_err(|e| Error::io("stat", path, e))?
            .len();
        if !existed || len == 0 {
            flash.erase(0, size)?;
        } else if len != size {
            return Err(Error::InvalidArgument(format!(
                "{} holds {len} bytes but the emulated chip has {size} bytes of flash; \
                 use another file or delete this one",
                path.display()
            )));
        }
        Ok(flash)
    }
}

/// The emulated chip's flash, from a target URI: `file:PATH` (a plain file
/// of the flash's size), `sim:PATH` (a simulated NOR flash, created with the
/// chip's size and its smallest page as the erase block unless the URI says
/// otherwise) or `mtd:/dev/mtdN`.
pub fn open_flash(target: &str, chip: &Chip) -> Result<Box<dyn FlashStore>> {
    let size = u64::from(chip.flash_size());
    match TargetSpec::parse(target)? {
        TargetSpec::File(path) => Ok(Box::new(FileFlash::open(path, size)?)),
        TargetSpec::Sim(mut spec) => {
            if !spec.path.exists() {
                spec.size.get_or_insert(size);
                if *spec.kind.get_or_insert(FlashKind::Nor) == FlashKind::Nor {
                    spec.erase.get_or_insert(u64::from(smallest_page(chip)));
                }
            }
            Ok(Box::new(DeviceFlash::new(spec.open()?, chip)?))
        }
        spec @ TargetSpec::Mtd(_) => Ok(Box::new(DeviceFlash::new(spec.open()?, chip)?)),
    }
}

/// Flash kept on a flash-layer device (a `sim:` NOR flash, an MTD
/// partition): the device must be byte-programmable (NOR, RAM) with erase
/// blocks that tile the chip's pages, and exactly as large as its flash.
pub struct DeviceFlash<D: BlockDevice + Send> {
    device: D,
}

impl<D: BlockDevice + Send> std::fmt::Debug for DeviceFlash<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceFlash")
            .field("device", &self.device.name())
            .finish()
    }
}

impl<D: BlockDevice + Send> DeviceFlash<D> {
    pub fn new(device: D, chip: &Chip) -> Result<Self> {
        let geometry = device.geometry();
        let bad = |reason: String| Error::Target {
            target: device.name().to_string(),
            reason,
        };
        if !matches!(geometry.kind, FlashKind::Nor | FlashKind::Ram) || geometry.write_size != 1 {
            return Err(bad(format!(
                "is {} flash programmed in {}-byte units; the STM32 emulator needs \
                 byte-programmable NOR (kind=nor)",
                geometry.kind, geometry.write_size
            )));
        }
        let size = u64::from(chip.flash_size());
        if geometry.size != size {
            return Err(bad(format!(
                "holds {} bytes, the emulated {} has {size} bytes of flash; use size={size}",
                geometry.size, chip.name
            )));
        }
        if let Some((start, len)) = chip.page_spans().find(|(start, len)| {
            !u64::from(start - chip.flash.0).is_multiple_of(geometry.erase_size)
                || !u64::from(*len).is_multiple_of(geometry.erase_size)
        }) {
            return Err(bad(format!(
                "erases {}-byte blocks, which do not tile the chip's page at {start:#010x} \
                 ({len} bytes); use erase={}",
                geometry.erase_size,
                smallest_page(chip)
            )));
        }
        Ok(Self { device })
    }
}

/// The chip's smallest erasable page: the erase block a `sim:` flash for it
/// gets by default.
pub fn smallest_page(chip: &Chip) -> u32 {
    chip.page_spans().map(|(_, len)| len).min().unwrap_or(1024)
}

impl<D: BlockDevice + Send> FlashStore for DeviceFlash<D> {
    fn size(&self) -> u64 {
        self.device.geometry().size
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.device.read(offset, buf)
    }

    fn program(&mut self, offset: u64, data: &[u8]) -> Result<bool> {
        let mut old = vec![0u8; data.len()];
        self.device.read(offset, &mut old)?;
        if old.iter().zip(data).any(|(o, n)| o & n != *n) {
            return Ok(false);
        }
        self.device.program(offset, data)?;
        Ok(true)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        self.device.erase(offset, len)
    }
}

impl FlashStore for FileFlash {
    fn size(&self) -> u64 {
        self.size
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", &self.path, e))
    }

    fn program(&mut self, offset: u64, data: &[u8]) -> Result<bool> {
        let mut old = vec![0u8; data.len()];
        self.read(offset, &mut old)?;
        if old.iter().zip(data).any(|(o, n)| o & n != *n) {
            return Ok(false);
        }
        self.file
            .write_all_at(data, offset)
            .map_err(|e| Error::io("write", &self.path, e))?;
        Ok(true)
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        let chunk = vec![0xFFu8; 64 * 1024];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(chunk.len() as u64) as usize;
            self.file
                .write_all_at(chunk.get(..n).unwrap_or_default(), offset + done)
                .map_err(|e| Error::io("write", &self.path, e))?;
            done += n as u64;
        }
        Ok(())
    }
}

/// An emulated part: a chip from the table and its bootloader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Profile {
    pub name: &'static str,
    pub pid: u16,
    pub bootloader_version: u8,
    /// What GET lists; the erase command decides ERASE vs EXTENDED ERASE.
    pub commands: &'static [u8],
}

/// The parts `otaflash sim stm32` emulates.
pub const PROFILES: &[Profile] = &[
    // STM32F103xB: bootloader 2.2, the classic one-byte ERASE.
    Profile {
        name: "f103",
        pid: 0x410,
        bootloader_version: 0x22,
        commands: &[
            cmd::GET,
            cmd::GET_VERSION,
            cmd::GET_ID,
            cmd::READ_MEMORY,
            cmd::GO,
            cmd::WRITE_MEMORY,
            cmd::ERASE,
            cmd::WRITE_PROTECT,
            cmd::WRITE_UNPROTECT,
            cmd::READOUT_PROTECT,
            cmd::READOUT_UNPROTECT,
        ],
    },
    // STM32F407: bootloader 3.1, EXTENDED ERASE over 1 MiB of mixed sectors.
    Profile {
        name: "f407",
        pid: 0x413,
        bootloader_version: 0x31,
        commands: &[
            cmd::GET,
            cmd::GET_VERSION,
            cmd::GET_ID,
            cmd::READ_MEMORY,
            cmd::GO,
            cmd::WRITE_MEMORY,
            cmd::EXTENDED_ERASE,
            cmd::WRITE_PROTECT,
            cmd::WRITE_UNPROTECT,
            cmd::READOUT_PROTECT,
            cmd::READOUT_UNPROTECT,
        ],
    },
];

impl Profile {
    pub fn by_name(name: &str) -> Option<&'static Profile> {
        PROFILES.iter().find(|p| p.name.eq_ignore_ascii_case(name))
    }

    pub fn chip(&self) -> Result<&'static Chip> {
        Chip::by_pid(self.pid).ok_or_else(|| {
            Error::InvalidArgument(format!("no chip with product ID {:#05x}", self.pid))
        })
    }
}

/// What the emulated part did that a watcher may want to know.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A host sent 0x7F after a reset.
    Connected,
    /// Pages erased (their numbers), or the whole flash.
    Erased(Option<Vec<u16>>),
    /// GO: the application was started at this address (then: reset).
    Go(u32),
    /// Readout protection set (true) or removed with a mass erase (false).
    ReadoutProtection(bool),
    /// Write protection changed (then: reset).
    WriteProtection(bool),
}

struct Bootloader<'a> {
    link: &'a mut dyn Link,
    flash: &'a mut dyn FlashStore,
    profile: &'static Profile,
    chip: &'static Chip,
    ram: Vec<u8>,
    readout_protected: bool,
    cancel: &'a CancelToken,
}

enum Next {
    Continue,
    Reset,
}

const POLL: Duration = Duration::from_millis(100);

/// Serves the bootloader on `link` until cancelled or the link fails.
pub fn serve(
    link: &mut dyn Link,
    flash: &mut dyn FlashStore,
    profile: &'static Profile,
    cancel: &CancelToken,
    on_event: &mut dyn FnMut(Event) -> Result<()>,
) -> Result<()> {
    let chip = profile.chip()?;
    if flash.size() != u64::from(chip.flash_size()) {
        return Err(Error::InvalidArgument(format!(
            "the {} has {} bytes of flash, the store holds {}",
            profile.name,
            chip.flash_size(),
            flash.size()
        )));
    }
    let mut bootloader = Bootloader {
        link,
        flash,
        profile,
        chip,
        ram: vec![0u8; (chip.ram.1 - chip.ram.0) as usize],
        readout_protected: false,
        cancel,
    };
    loop {
        // After reset: everything but 0x7F is ignored (autobaud).
        while bootloader.next_byte()? != INIT {}
        bootloader.link.write_all(&[ACK])?;
        on_event(Event::Connected)?;
        loop {
            let command = bootloader.next_byte()?;
            let complement = bootloader.next_byte()?;
            if complement != !command || !profile.commands.contains(&command) {
                bootloader.link.write_all(&[NACK])?;
                continue;
            }
            if let Next::Reset = bootloader.command(command, on_event)? {
                break;
            }
        }
    }
}

impl Bootloader<'_> {
    /// The next byte from the host; no timeout, as on the real part.
    fn next_byte(&mut self) -> Result<u8> {
        let mut byte = [0u8];
        loop {
            self.cancel.check()?;
            if self.link.read(&mut byte, POLL)? == 1 {
                return Ok(byte[0]);
            }
        }
    }

    fn next_bytes(&mut self, n: usize) -> Result<Vec<u8>> {
        (0..n).map(|_| self.next_byte()).collect()
    }

    fn ack(&mut self) -> Result<()> {
        self.link.write_all(&[ACK])
    }

    fn nack(&mut self) -> Result<Next> {
        self.link.write_all(&[NACK])?;
        Ok(Next::Continue)
    }

    /// Reads an address and its checksum; `None` (after a NACK) when bad.
    fn address(&mut self) -> Result<Option<u32>> {
        let bytes = self.next_bytes(5)?;
        let address = u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]);
        if address_bytes(address)[4] != bytes[4] {
            self.link.write_all(&[NACK])?;
            return Ok(None);
        }
        Ok(Some(address))
    }

    fn in_range(range: (u32, u32), address: u32, len: u32) -> bool {
        address >= range.0 && u64::from(address) + u64::from(len) <= u64::from(range.1)
    }

    /// The 256-byte blocks holding the flash-size register and unique ID.
    fn info_window(&self) -> (u32, u32) {
        let info = self.chip.info;
        let start = info.unique_id.min(info.flash_size) & !0xFF;
        let end = (info.unique_id + 12).max(info.flash_size + 2);
        (start, (end + 0xFF) & !0xFF)
    }

    fn read_memory(&mut self, address: u32, buf: &mut [u8]) -> Result<bool> {
        let len = buf.len() as u32;
        if Self::in_range(self.chip.flash, address, len) {
            self.flash
                .read(u64::from(address - self.chip.flash.0), buf)?;
            return Ok(true);
        }
        if Self::in_range(self.chip.ram, address, len) {
            let start = (address - self.chip.ram.0) as usize;
            buf.copy_from_slice(self.ram.get(start..start + buf.len()).unwrap_or_default());
            return Ok(true);
        }
        let window = self.info_window();
        let readable = [self.chip.system_memory, self.chip.option_bytes, window]
            .iter()
            .any(|range| Self::in_range(*range, address, len));
        if !readable {
            return Ok(false);
        }
        let info = self.chip.info;
        let size_kib = (self.chip.flash_size() / 1024) as u16;
        let uid: Vec<u8> = (0..12u8)
            .map(|i| {
                (self.profile.pid as u8)
                    .wrapping_mul(31)
                    .wrapping_add(i * 17)
            })
            .collect();
        for (i, byte) in buf.iter_mut().enumerate() {
            let at = address + i as u32;
            *byte = if (info.flash_size..info.flash_size + 2).contains(&at) {
                size_kib.to_le_bytes()[(at - info.flash_size) as usize]
            } else if (info.unique_id..info.unique_id + 12).contains(&at) {
                uid[(at - info.unique_id) as usize]
            } else {
                0xFF
            };
        }
        Ok(true)
    }

    fn erase_pages(&mut self, pages: &[u16]) -> Result<bool> {
        let mut spans = Vec::with_capacity(pages.len());
        for &page in pages {
            match self.chip.page_span(page) {
                Some(span) => spans.push(span),
                None => return Ok(false),
            }
        }
        for (start, size) in spans {
            self.flash
                .erase(u64::from(start - self.chip.flash.0), u64::from(size))?;
        }
        Ok(true)
    }

    fn mass_erase(&mut self) -> Result<()> {
        let size = self.flash.size();
        self.flash.erase(0, size)
    }

    fn command(
        &mut self,
        command: u8,
        on_event: &mut dyn FnMut(Event) -> Result<()>,
    ) -> Result<Next> {
        let protected_blocks = matches!(
            command,
            cmd::READ_MEMORY | cmd::WRITE_MEMORY | cmd::GO | cmd::WRITE_PROTECT
        );
        if protected_blocks && self.readout_protected {
            return self.nack();
        }
        match command {
            cmd::GET => {
                let commands = self.profile.commands;
                let mut reply = vec![ACK, commands.len() as u8, self.profile.bootloader_version];
                reply.extend_from_slice(commands);
                reply.push(ACK);
                self.link.write_all(&reply)?;
            }
            cmd::GET_VERSION => {
                let version = self.profile.bootloader_version;
                self.link.write_all(&[ACK, version, 0x00, 0x00, ACK])?;
            }
            cmd::GET_ID => {
                let [hi, lo] = self.profile.pid.to_be_bytes();
                self.link.write_all(&[ACK, 0x01, hi, lo, ACK])?;
            }
            cmd::READ_MEMORY => {
                self.ack()?;
                let Some(address) = self.address()? else {
                    return Ok(Next::Continue);
                };
                self.ack()?;
                let n = self.next_byte()?;
                if self.next_byte()? != !n {
                    return self.nack();
                }
                let mut buf = vec![0u8; usize::from(n) + 1];
                if !self.read_memory(address, &mut buf)? {
                    return self.nack();
                }
                self.ack()?;
                self.link.write_all(&buf)?;
            }
            cmd::GO => {
                self.ack()?;
                let Some(address) = self.address()? else {
                    return Ok(Next::Continue);
                };
                if !Self::in_range(self.chip.flash, address, 4)
                    && !Self::in_range(self.chip.ram, address, 4)
                {
                    return self.nack();
                }
                // Heard before the host sees the ACK, so a watcher never lags it.
                on_event(Event::Go(address))?;
                self.ack()?;
                return Ok(Next::Reset);
            }
            cmd::WRITE_MEMORY | cmd::WRITE_MEMORY_NS => {
                self.ack()?;
                let Some(address) = self.address()? else {
                    return Ok(Next::Continue);
                };
                let writable = (Self::in_range(self.chip.flash, address, 1)
                    || Self::in_range(self.chip.ram, address, 1))
                    && address.is_multiple_of(4);
                if !writable {
                    return self.nack();
                }
                self.ack()?;
                let n = self.next_byte()?;
                let data = self.next_bytes(usize::from(n) + 1)?;
                let checksum = self.next_byte()?;
                if checksum != n ^ xor(&data) {
                    return self.nack();
                }
                let len = data.len() as u32;
                let ok = if Self::in_range(self.chip.flash, address, len) {
                    self.flash
                        .program(u64::from(address - self.chip.flash.0), &data)?
                } else if Self::in_range(self.chip.ram, address, len) {
                    let start = (address - self.chip.ram.0) as usize;
                    if let Some(dst) = self.ram.get_mut(start..start + data.len()) {
                        dst.copy_from_slice(&data);
                    }
                    true
                } else {
                    false
                };
                if !ok {
                    return self.nack();
                }
                self.ack()?;
            }
            cmd::ERASE => {
                self.ack()?;
                let n = self.next_byte()?;
                if n == 0xFF {
                    if self.next_byte()? != 0x00 {
                        return self.nack();
                    }
                    self.mass_erase()?;
                    on_event(Event::Erased(None))?;
                    self.ack()?;
                    return Ok(Next::Continue);
                }
                let pages = self.next_bytes(usize::from(n) + 1)?;
                if self.next_byte()? != n ^ xor(&pages) {
                    return self.nack();
                }
                let pages: Vec<u16> = pages.into_iter().map(u16::from).collect();
                if !self.erase_pages(&pages)? {
                    return self.nack();
                }
                on_event(Event::Erased(Some(pages)))?;
                self.ack()?;
            }
            cmd::EXTENDED_ERASE | cmd::EXTENDED_ERASE_NS => {
                self.ack()?;
                let head = self.next_bytes(2)?;
                let n = u16::from_be_bytes([head[0], head[1]]);
                if n >= 0xFFF0 {
                    // Special erases: FFFF mass, FFFE bank 1, FFFD bank 2.
                    if self.next_byte()? != xor(&head) || n < 0xFFFD {
                        return self.nack();
                    }
                    self.mass_erase()?;
                    on_event(Event::Erased(None))?;
                    self.ack()?;
                    return Ok(Next::Continue);
                }
                let raw = self.next_bytes((usize::from(n) + 1) * 2)?;
                if self.next_byte()? != xor(&head) ^ xor(&raw) {
                    return self.nack();
                }
                let pages: Vec<u16> = raw
                    .chunks_exact(2)
                    .map(|pair| u16::from_be_bytes([pair[0], pair[1]]))
                    .collect();
                if !self.erase_pages(&pages)? {
                    return self.nack();
                }
                on_event(Event::Erased(Some(pages)))?;
                self.ack()?;
            }
            cmd::WRITE_PROTECT => {
                self.ack()?;
                let n = self.next_byte()?;
                let sectors = self.next_bytes(usize::from(n) + 1)?;
                if self.next_byte()? != n ^ xor(&sectors) {
                    return self.nack();
                }
                self.ack()?;
                on_event(Event::WriteProtection(true))?;
                return Ok(Next::Reset);
            }
            cmd::WRITE_UNPROTECT => {
                self.link.write_all(&[ACK, ACK])?;
                on_event(Event::WriteProtection(false))?;
                return Ok(Next::Reset);
            }
            cmd::READOUT_PROTECT => {
                self.link.write_all(&[ACK, ACK])?;
                self.readout_protected = true;
                on_event(Event::ReadoutProtection(true))?;
                return Ok(Next::Reset);
            }
            cmd::READOUT_UNPROTECT => {
                self.ack()?;
                self.mass_erase()?;
                self.readout_protected = false;
                self.ack()?;
                on_event(Event::ReadoutProtection(false))?;
                return Ok(Next::Reset);
            }
            _ => return self.nack(),
        }
        Ok(Next::Continue)
    }
}
