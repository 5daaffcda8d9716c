//! A plain image file as a block device: what a factory station prepares
//! for a programmer. It overwrites, never needs an erase, and grows (gaps
//! read as erased flash, 0xFF).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::{BlockDevice, FlashKind, Geometry, invalid};
use crate::{Error, Result};

/// Blocks the writer compares and writes a file in.
const BLOCK: u64 = 64 * 1024;

#[derive(Debug)]
pub struct ImageFile {
    name: String,
    path: PathBuf,
    file: File,
    size: u64,
}

impl ImageFile {
    /// Opens `path`, creating an empty file when it does not exist.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if !meta.is_file() {
            return Err(Error::Target {
                target: format!("file:{}", path.display()),
                reason: "is not a regular file; use mtd: for a flash device".into(),
            });
        }
        Ok(Self {
            name: format!("file:{}", path.display()),
            path: path.to_path_buf(),
            file,
            size: meta.len(),
        })
    }

    fn io(&self, action: &'static str, e: io::Error) -> Error {
        Error::io(action, &self.path, e)
    }
}

impl BlockDevice for ImageFile {
    fn name(&self) -> &str {
        &self.name
    }

    fn geometry(&self) -> Geometry {
        Geometry {
            kind: FlashKind::Image,
            size: self.size,
            erase_size: BLOCK,
            write_size: 1,
            page_size: 4096,
            oob_size: 0,
        }
    }

    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(invalid(&self.name, "read", offset, buf.len() as u64));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| self.io("read", e))
    }

    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        self.ensure_size(offset + len)?;
        let chunk = vec![0xFF; usize::try_from(len.min(1 << 20)).unwrap_or(1 << 20)];
        let mut at = offset;
        while at < offset + len {
            let n = (offset + len - at).min(chunk.len() as u64) as usize;
            self.file
                .write_all_at(&chunk[..n], at)
                .map_err(|e| self.io("write", e))?;
            at += n as u64;
        }
        Ok(())
    }

    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.ensure_size(offset + data.len() as u64)?;
        self.file
            .write_all_at(data, offset)
            .map_err(|e| self.io("write", e))
    }

    fn is_bad(&mut self, _offset: u64) -> Result<bool> {
        Ok(false)
    }

    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        Err(Error::Flash {
            device: self.name.clone(),
            operation: "mark bad",
            offset,
            len: 0,
            source: io::Error::from_raw_os_error(nix::libc::EOPNOTSUPP),
        })
    }

    /// Grows the file to `size`, the new bytes erased (0xFF).
    fn ensure_size(&mut self, size: u64) -> Result<()> {
        if size <= self.size {
            return Ok(());
        }
        let chunk = vec![0xFFu8; 1 << 20];
        let mut at = self.size;
        while at < size {
            let n = (size - at).min(chunk.len() as u64) as usize;
            self.file
                .write_all_at(&chunk[..n], at)
                .map_err(|e| self.io("write", e))?;
            at += n as u64;
        }
        self.size = size;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.file.sync_all().map_err(|e| self.io("sync", e))
    }
}
