//! The flash layer: one [`BlockDevice`] trait over Linux MTD, a simulated
//! NOR/NAND flash with fault injection and plain image files; a
//! [`FlashWriter`] that streams an image onto any of them; and two update
//! layouts that survive a power cut at any moment ([`AbLayout`],
//! [`SingleSlot`]), each keeping its state in a small on-flash record.

mod ab;
mod block;
mod image_file;
mod mtd;
mod record;
mod shared;
mod sim;
mod single;
mod target;
mod writer;

pub use ab::{AbInstall, AbLayout, AbPhase, AbState, BootDecision};
pub use block::{BlockStep, commit_block, erased_digest};
pub use image_file::ImageFile;
pub use mtd::Mtd;
pub use record::{ImageInfo, Layout, LayoutKind, NextAction, RecordStore, inspect};
pub use shared::{RegionReader, SharedDevice};
pub use sim::{PowerCut, SimFlash, SimOptions, SimStats, Tear, Timing};
pub use single::{InPlacePhase, InPlaceSession, SingleSlot, SingleState};
pub use target::{SimSpec, TargetSpec, open_target, parse_size};
pub use writer::{FlashWriter, WriteOptions, WriteReport, read_mapped, verify_image};

use std::fmt;
use std::io;

use crate::hash::{HashAlgorithm, Hasher};
use crate::{Error, Result};

/// What kind of memory a device is; it decides erase and bad-block rules.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FlashKind {
    /// Byte-programmable, erase sets 0xFF, programming only clears bits.
    Nor,
    /// Page-programmable, erase sets 0xFF, bad blocks.
    Nand,
    /// Overwrites like RAM (the kernel's mtdram); erase still sets 0xFF.
    Ram,
    /// A plain file: overwrites, grows, never needs an erase.
    Image,
}

impl FlashKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Nor => "nor",
            Self::Nand => "nand",
            Self::Ram => "ram",
            Self::Image => "image",
        }
    }

    /// Programming can only clear bits, so a block is erased before it is written.
    pub fn needs_erase(self) -> bool {
        matches!(self, Self::Nor | Self::Nand)
    }

    /// Blocks can be (or go) bad and are skipped, as nandwrite does.
    pub fn has_bad_blocks(self) -> bool {
        self == Self::Nand
    }
}

impl fmt::Display for FlashKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The shape of a device, as MEMGETINFO reports it (plus the program page).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub kind: FlashKind,
    /// Bytes in all.
    pub size: u64,
    /// The erase block.
    pub erase_size: u64,
    /// The smallest aligned unit a program may cover (NAND subpage, NOR 1).
    pub write_size: u64,
    /// The unit programmed at once (NAND page, NOR write buffer): what one
    /// program operation covers in time and in a power cut.
    pub page_size: u64,
    pub oob_size: u32,
}

impl Geometry {
    /// Checks that the numbers describe a device that can exist.
    pub fn validate(&self) -> Result<()> {
        let pow2 = |v: u64| v != 0 && v.is_power_of_two();
        let problem = if !pow2(self.erase_size) {
            Some(format!(
                "erase block of {} bytes is not a power of two",
                self.erase_size
            ))
        } else if !pow2(self.write_size) || !pow2(self.page_size) {
            Some(format!(
                "write unit {} / page {} bytes must be powers of two",
                self.write_size, self.page_size
            ))
        } else if self.write_size > self.page_size || self.page_size > self.erase_size {
            Some(format!(
                "need write unit ({}) <= page ({}) <= erase block ({})",
                self.write_size, self.page_size, self.erase_size
            ))
        } else if self.size == 0 || !self.size.is_multiple_of(self.erase_size) {
            Some(format!(
                "size {} is not a non-zero multiple of the {}-byte erase block",
                self.size, self.erase_size
            ))
        } else {
            None
        };
        match problem {
            Some(text) => Err(Error::Geometry(format!("invalid flash geometry: {text}"))),
            None => Ok(()),
        }
    }

    pub fn blocks(&self) -> u64 {
        self.size / self.erase_size
    }

    pub fn block_start(&self, offset: u64) -> u64 {
        offset - offset % self.erase_size
    }
}

/// An erase/program/read device. Offsets are bytes from the device start.
///
/// Implementations report failures as [`Error::Flash`] with the errno the
/// kernel would give: `EINVAL` for misalignment or out of range, `EIO` for a
/// failed erase or program (a bad block).
pub trait BlockDevice {
    /// What to call the device in messages (`/dev/mtd3`, `sim:/tmp/f.sim`).
    fn name(&self) -> &str;

    fn geometry(&self) -> Geometry;

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Erases whole blocks: `offset` and `len` are erase-block aligned.
    fn erase(&mut self, offset: u64, len: u64) -> Result<()>;

    /// Programs `data` at `offset` (aligned to the write unit).
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()>;

    /// Whether the erase block holding `offset` is marked bad.
    fn is_bad(&mut self, offset: u64) -> Result<bool>;

    /// Marks the erase block holding `offset` bad, for good.
    fn mark_bad(&mut self, offset: u64) -> Result<()>;

    /// SHA-256 of `len` bytes at `offset`. Local devices read and hash; a
    /// remote one (a UART or DFU loader) asks the device, so comparing a
    /// block costs 32 bytes on the wire instead of the block.
    fn digest(&mut self, offset: u64, len: usize, scratch: &mut Vec<u8>) -> Result<[u8; 32]> {
        scratch.resize(len, 0);
        self.read(offset, scratch)?;
        Ok(sha256(scratch))
    }

    /// Makes sure the device holds at least `size` bytes: files grow, flash
    /// cannot and says so.
    fn ensure_size(&mut self, size: u64) -> Result<()> {
        let have = self.geometry().size;
        if size > have {
            return Err(Error::Geometry(format!(
                "{} holds {have} bytes, {size} are needed",
                self.name()
            )));
        }
        Ok(())
    }

    /// Makes everything written so far durable.
    fn sync(&mut self) -> Result<()> {
        Ok(())
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for &mut D {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(offset, buf)
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).erase(offset, len)
    }
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        (**self).program(offset, data)
    }
    fn is_bad(&mut self, offset: u64) -> Result<bool> {
        (**self).is_bad(offset)
    }
    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        (**self).mark_bad(offset)
    }
    fn digest(&mut self, offset: u64, len: usize, scratch: &mut Vec<u8>) -> Result<[u8; 32]> {
        (**self).digest(offset, len, scratch)
    }
    fn ensure_size(&mut self, size: u64) -> Result<()> {
        (**self).ensure_size(size)
    }
    fn sync(&mut self) -> Result<()> {
        (**self).sync()
    }
}

impl<D: BlockDevice + ?Sized> BlockDevice for Box<D> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn geometry(&self) -> Geometry {
        (**self).geometry()
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read(offset, buf)
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        (**self).erase(offset, len)
    }
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        (**self).program(offset, data)
    }
    fn is_bad(&mut self, offset: u64) -> Result<bool> {
        (**self).is_bad(offset)
    }
    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        (**self).mark_bad(offset)
    }
    fn digest(&mut self, offset: u64, len: usize, scratch: &mut Vec<u8>) -> Result<[u8; 32]> {
        (**self).digest(offset, len, scratch)
    }
    fn ensure_size(&mut self, size: u64) -> Result<()> {
        (**self).ensure_size(size)
    }
    fn sync(&mut self) -> Result<()> {
        (**self).sync()
    }
}

/// A byte range of a device: `[start, start + len)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub len: u64,
}

impl Region {
    pub fn new(start: u64, len: u64) -> Self {
        Self { start, len }
    }

    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The physical erase blocks that hold the logical blocks of `region`,
/// skipping bad ones as nandwrite and `nanddump --bb=skipbad` do.
pub fn good_blocks<D: BlockDevice + ?Sized>(device: &mut D, region: Region) -> Result<Vec<u64>> {
    let geometry = device.geometry();
    let mut blocks = Vec::new();
    let mut offset = region.start;
    while offset < region.end() {
        if !(geometry.kind.has_bad_blocks() && device.is_bad(offset)?) {
            blocks.push(offset);
        }
        offset += geometry.erase_size;
    }
    Ok(blocks)
}

pub(crate) fn sha256(data: &[u8]) -> [u8; 32] {
    let mut hasher = Hasher::new(HashAlgorithm::Sha256);
    hasher.update(data);
    let mut out = [0u8; 32];
    out.copy_from_slice(hasher.finalize().as_bytes());
    out
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The error a device returns for a request it refuses (the kernel's EINVAL).
pub(crate) fn invalid(device: &str, operation: &'static str, offset: u64, len: u64) -> Error {
    Error::Flash {
        device: device.to_string(),
        operation,
        offset,
        len,
        source: io::Error::from_raw_os_error(nix::libc::EINVAL),
    }
}

/// EIO: the flash failed the operation (a bad block).
pub(crate) fn failed(device: &str, operation: &'static str, offset: u64, len: u64) -> Error {
    Error::Flash {
        device: device.to_string(),
        operation,
        offset,
        len,
        source: io::Error::from_raw_os_error(nix::libc::EIO),
    }
}

/// Whether an error says the flash itself failed (EIO), as opposed to a
/// refused request or a lost device; only those justify marking a block bad.
pub(crate) fn is_media_failure(error: &Error) -> bool {
    matches!(error, Error::Flash { .. }) && error.raw_os_error() == Some(nix::libc::EIO)
}
