//! Linux MTD character devices (`/dev/mtdN`). Reads and programs are plain
//! `pread`/`pwrite`; erase and the bad-block table go through the MTD
//! ioctls, declared with nix's ioctl macros (numbers and layouts from
//! `include/uapi/mtd/mtd-abi.h`). This is the one module allowed `unsafe`:
//! each ioctl call passes a pointer to a correctly sized, initialised
//! `#[repr(C)]` value on the stack and a file descriptor we own.
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use super::{BlockDevice, FlashKind, Geometry};
use crate::{Error, Result};

/// `struct mtd_info_user` (32 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct MtdInfoUser {
    kind: u8,
    flags: u32,
    size: u32,
    erasesize: u32,
    writesize: u32,
    oobsize: u32,
    padding: u64,
}

/// `struct erase_info_user64`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct EraseInfoUser64 {
    start: u64,
    length: u64,
}

// MEMGETINFO 0x80204D01, MEMERASE64 0x40104D14,
// MEMGETBADBLOCK 0x40084D0B, MEMSETBADBLOCK 0x40084D0C.
nix::ioctl_read!(mem_get_info, b'M', 1, MtdInfoUser);
nix::ioctl_write_ptr!(mem_erase64, b'M', 20, EraseInfoUser64);
nix::ioctl_write_ptr!(mem_get_bad_block, b'M', 11, i64);
nix::ioctl_write_ptr!(mem_set_bad_block, b'M', 12, i64);

const MTD_RAM: u8 = 1;
const MTD_ROM: u8 = 2;
const MTD_NORFLASH: u8 = 3;
const MTD_NANDFLASH: u8 = 4;
const MTD_DATAFLASH: u8 = 6;
const MTD_UBIVOLUME: u8 = 7;
const MTD_MLCNANDFLASH: u8 = 8;
const MTD_WRITEABLE: u32 = 0x400;

#[derive(Debug)]
pub struct Mtd {
    name: String,
    path: PathBuf,
    file: File,
    geometry: Geometry,
    writable: bool,
}

impl Mtd {
    /// Opens an MTD character device; anything else is refused here, before
    /// any erase could be attempted.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let not_mtd = |reason: String| Error::Target {
            target: format!("mtd:{name}"),
            reason: format!("is not an MTD device ({reason}); give /dev/mtdN (see /proc/mtd)"),
        };
        let meta = std::fs::metadata(path).map_err(|e| Error::io("open", path, e))?;
        if !meta.file_type().is_char_device() {
            let what = if meta.is_dir() {
                "a directory"
            } else if meta.is_file() {
                "a regular file"
            } else {
                "not a character device"
            };
            return Err(not_mtd(what.into()));
        }
        let (file, writable) = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(file) => (file, true),
            Err(e) if matches!(e.raw_os_error(), Some(nix::libc::EACCES | nix::libc::EROFS)) => {
                let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
                (file, false)
            }
            Err(e) => return Err(Error::io("open", path, e)),
        };
        let mut info = MtdInfoUser::default();
        // SAFETY: `info` is a live, writable `mtd_info_user` of the size the
        // ioctl number encodes; the fd is open for the call's duration.
        unsafe { mem_get_info(file.as_raw_fd(), &mut info) }
            .map_err(|errno| not_mtd(format!("MEMGETINFO: {}", errno.desc().to_lowercase())))?;
        let kind = match info.kind {
            MTD_NORFLASH | MTD_DATAFLASH => FlashKind::Nor,
            MTD_NANDFLASH | MTD_MLCNANDFLASH => FlashKind::Nand,
            MTD_RAM => FlashKind::Ram,
            MTD_ROM => return Err(not_mtd("a ROM, it cannot be written".into())),
            MTD_UBIVOLUME => {
                return Err(not_mtd("a UBI volume; update it with ubiupdatevol".into()));
            }
            other => return Err(not_mtd(format!("unknown MTD type {other}"))),
        };
        let write_size = u64::from(info.writesize.max(1));
        let erase_size = u64::from(info.erasesize);
        // NOR reports a write size of 1; program in 4 KiB pieces there.
        let page_size = if kind == FlashKind::Nand {
            write_size
        } else {
            write_size.max(4096).min(erase_size.max(1))
        };
        let geometry = Geometry {
            kind,
            size: u64::from(info.size),
            erase_size,
            write_size,
            page_size,
            oob_size: info.oobsize,
        };
        geometry
            .validate()
            .map_err(|e| not_mtd(format!("it reports an unusable geometry: {e}")))?;
        Ok(Self {
            name,
            path: path.to_path_buf(),
            file,
            geometry,
            writable: writable && info.flags & MTD_WRITEABLE != 0,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the partition can be written (it is not read-only and we
    /// could open it for writing).
    pub fn writable(&self) -> bool {
        self.writable
    }

    fn error(&self, operation: &'static str, offset: u64, len: u64, source: io::Error) -> Error {
        Error::Flash {
            device: self.name.clone(),
            operation,
            offset,
            len,
            source,
        }
    }

    fn check_writable(&self, operation: &'static str, offset: u64, len: u64) -> Result<()> {
        if self.writable {
            return Ok(());
        }
        Err(self.error(
            operation,
            offset,
            len,
            io::Error::from_raw_os_error(nix::libc::EROFS),
        ))
    }
}

impl BlockDevice for Mtd {
    fn name(&self) -> &str {
        &self.name
    }

    fn geometry(&self) -> Geometry {
        self.geometry
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.error("read", offset, buf.len() as u64, e))
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        self.check_writable("erase", offset, len)?;
        let request = EraseInfoUser64 {
            start: offset,
            length: len,
        };
        // SAFETY: `request` is a live `erase_info_user64`; the kernel only reads it.
        unsafe { mem_erase64(self.file.as_raw_fd(), &request) }
            .map(drop)
            .map_err(|errno| self.error("erase", offset, len, io::Error::from(errno)))
    }

    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.check_writable("write", offset, data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.error("write", offset, data.len() as u64, e))
    }

    fn is_bad(&mut self, offset: u64) -> Result<bool> {
        if !self.geometry.kind.has_bad_blocks() {
            return Ok(false);
        }
        let at = i64::try_from(offset).unwrap_or(i64::MAX);
        // SAFETY: `at` is a live loff_t the kernel only reads.
        unsafe { mem_get_bad_block(self.file.as_raw_fd(), &at) }
            .map(|bad| bad > 0)
            .map_err(|errno| self.error("check bad block", offset, 0, io::Error::from(errno)))
    }

    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        self.check_writable("mark bad", offset, 0)?;
        let at = i64::try_from(offset).unwrap_or(i64::MAX);
        // SAFETY: as for MEMGETBADBLOCK.
        unsafe { mem_set_bad_block(self.file.as_raw_fd(), &at) }
            .map(drop)
            .map_err(|errno| self.error("mark bad", offset, 0, io::Error::from(errno)))
    }
}
