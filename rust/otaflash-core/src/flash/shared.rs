//! Two views of one device at once: a sequential delta applier reads the old
//! image from the active slot while the A/B install writes the inactive one.
//! [`SharedDevice`] hands out handles that lock the device per call;
//! [`RegionReader`] is a [`ReadAt`] over a slot (bad blocks skipped on NAND,
//! as the writer laid the image out).

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::writer::read_with_map;
use super::{BlockDevice, Geometry, Region, good_blocks};
use crate::io::ReadAt;
use crate::{Error, Result};

/// A device shared between handles; each call locks it for its duration.
#[derive(Debug)]
pub struct SharedDevice<D: BlockDevice> {
    inner: Arc<Mutex<D>>,
    name: String,
    geometry: Geometry,
}

impl<D: BlockDevice> Clone for SharedDevice<D> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
            name: self.name.clone(),
            geometry: self.geometry,
        }
    }
}

impl<D: BlockDevice> SharedDevice<D> {
    pub fn new(device: D) -> Self {
        let name = device.name().to_string();
        let geometry = device.geometry();
        Self {
            inner: Arc::new(Mutex::new(device)),
            name,
            geometry,
        }
    }

    fn lock(&self) -> MutexGuard<'_, D> {
        // A panic mid-call leaves the flash as a power cut would; the layouts
        // are made to be reopened from exactly that.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<D: BlockDevice> BlockDevice for SharedDevice<D> {
    fn name(&self) -> &str {
        &self.name
    }
    fn geometry(&self) -> Geometry {
        self.geometry
    }
    fn read(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.lock().read(offset, buf)
    }
    fn erase(&mut self, offset: u64, len: u64) -> Result<()> {
        self.lock().erase(offset, len)
    }
    fn program(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        self.lock().program(offset, data)
    }
    fn is_bad(&mut self, offset: u64) -> Result<bool> {
        self.lock().is_bad(offset)
    }
    fn mark_bad(&mut self, offset: u64) -> Result<()> {
        self.lock().mark_bad(offset)
    }
    fn digest(&mut self, offset: u64, len: usize, scratch: &mut Vec<u8>) -> Result<[u8; 32]> {
        self.lock().digest(offset, len, scratch)
    }
    fn ensure_size(&mut self, size: u64) -> Result<()> {
        self.lock().ensure_size(size)
    }
    fn sync(&mut self) -> Result<()> {
        self.lock().sync()
    }
}

/// The first `size` logical bytes of a region, read as the writer laid them.
#[derive(Debug)]
pub struct RegionReader<D: BlockDevice> {
    device: D,
    blocks: Vec<u64>,
    erase_size: u64,
    size: u64,
}

impl<D: BlockDevice> RegionReader<D> {
    pub fn new(mut device: D, region: Region, size: u64) -> Result<Self> {
        let erase_size = device.geometry().erase_size;
        let blocks = good_blocks(&mut device, region)?;
        if size > blocks.len() as u64 * erase_size {
            return Err(Error::Geometry(format!(
                "{}: {size} bytes do not fit the good blocks of {:#x}+{:#x}",
                device.name(),
                region.start,
                region.len
            )));
        }
        Ok(Self {
            device,
            blocks,
            erase_size,
            size,
        })
    }
}

impl<D: BlockDevice> ReadAt for RegionReader<D> {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(Error::InvalidArgument(format!(
                "read of {} bytes at {offset} goes past the end of a {}-byte slot image",
                buf.len(),
                self.size
            )));
        }
        read_with_map(&mut self.device, &self.blocks, self.erase_size, offset, buf)
    }
}
