//! Where the agent puts a new image, and what it reads the old one from.
//!
//! [`Slot`] is the agent's view of the device's storage: the current image
//! (a [`ReadAt`]), a writer for the new image (an [`ImageSink`] that can
//! also make a resume point durable), a read-back of what was written, and
//! commit/discard. [`FileSlot`] implements it for `file:PATH` targets;
//! [`super::ab_slot::AbSlot`] for flash targets (`mtd:`, `sim:`) with the
//! flash layer's A/B layout (the new image goes to the inactive slot, and a
//! verified one becomes a trial boot of it).

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::io::{FileSink, FileSource, ImageSink, ReadAt};
use crate::serial::frame::crc32;
use crate::{Error, Result};

/// Writes a new image and records how far it durably got.
pub trait SlotWriter: ImageSink + Send {
    /// Makes the bytes written so far durable and records their count as
    /// the point an interrupted transfer resumes from (flash keeps whole
    /// erase blocks only: bytes short of one are not counted).
    fn checkpoint(&mut self) -> Result<()>;
}

/// The device's storage as the agent uses it.
pub trait Slot: Send {
    /// What it is, for messages (`file:/var/lib/fw.img`).
    fn describe(&self) -> String;

    /// The image the device runs now: what a delta is applied to.
    fn open_current(&mut self) -> Result<Box<dyn ReadAt + Send>>;

    /// How many bytes of image `id` (its SHA-256; `size` bytes) an
    /// interrupted transfer left durably written; 0 when there is nothing to
    /// resume.
    fn resume_point(&mut self, id: &[u8; 32], size: u64) -> Result<u64>;

    /// A writer for image `id` (`size` bytes) continuing at `offset`, which is
    /// 0 or what [`Slot::resume_point`] returned. Anything written before for
    /// another image is dropped.
    fn open_writer(&mut self, id: &[u8; 32], size: u64, offset: u64)
    -> Result<Box<dyn SlotWriter>>;

    /// Reads back what the writer wrote (for prefix and final verification).
    fn open_written(&mut self) -> Result<Box<dyn ReadAt + Send>>;

    /// The written image is verified: make it the current one.
    fn commit(&mut self) -> Result<()>;

    /// The written image is bad: drop it and its resume point.
    fn discard(&mut self) -> Result<()>;
}

/// A `file:PATH` target: the current image is PATH; a new one is written
/// next to it (`PATH.otaflash-new`) and renamed over PATH only once it is
/// verified, so an interrupted or failed transfer leaves PATH as it was.
/// The resume point lives in `PATH.otaflash-resume`.
#[derive(Debug)]
pub struct FileSlot {
    path: PathBuf,
    new_path: PathBuf,
    record_path: PathBuf,
}

const RECORD_MAGIC: [u8; 8] = *b"OTAFRES1";
const RECORD_LEN: usize = 8 + 32 + 8 + 8 + 4;

impl FileSlot {
    pub fn new(path: impl AsRef<Path>) -> Self {
        let path = path.as_ref().to_path_buf();
        let with_suffix = |suffix: &str| {
            let mut name = path.clone().into_os_string();
            name.push(suffix);
            PathBuf::from(name)
        };
        Self {
            new_path: with_suffix(".otaflash-new"),
            record_path: with_suffix(".otaflash-resume"),
            path,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn read_record(&self) -> Option<([u8; 32], u64, u64)> {
        let bytes = fs::read(&self.record_path).ok()?;
        if bytes.len() != RECORD_LEN {
            return None;
        }
        let (body, crc) = bytes.split_at(RECORD_LEN - 4);
        if crc32(body).to_le_bytes() != crc {
            return None;
        }
        let (magic, rest) = body.split_at(8);
        if magic != RECORD_MAGIC {
            return None;
        }
        let (id, rest) = rest.split_at(32);
        let (size, offset) = rest.split_at(8);
        Some((
            id.try_into().ok()?,
            u64::from_le_bytes(size.try_into().ok()?),
            u64::from_le_bytes(offset.try_into().ok()?),
        ))
    }

    fn remove(path: &Path) -> Result<()> {
        match fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io("remove", path, e)),
        }
    }
}

/// Writes `record_path` atomically: a torn write leaves the old record or
/// none, never a wrong one (and the CRC catches anything else).
fn write_record(record_path: &Path, id: &[u8; 32], size: u64, offset: u64) -> Result<()> {
    let mut body = Vec::with_capacity(RECORD_LEN);
    body.extend_from_slice(&RECORD_MAGIC);
    body.extend_from_slice(id);
    body.extend_from_slice(&size.to_le_bytes());
    body.extend_from_slice(&offset.to_le_bytes());
    body.extend_from_slice(&crc32(&body).to_le_bytes());
    let mut tmp_name = record_path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = PathBuf::from(tmp_name);
    let mut file = File::create(&tmp).map_err(|e| Error::io("create", &tmp, e))?;
    file.write_all(&body)
        .map_err(|e| Error::io("write", &tmp, e))?;
    file.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
    fs::rename(&tmp, record_path).map_err(|e| Error::io("rename", &tmp, e))?;
    sync_parent(record_path)
}

fn sync_parent(path: &Path) -> Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)
        .and_then(|dir| dir.sync_all())
        .map_err(|e| Error::io("sync", parent, e))
}

struct FileSlotWriter {
    sink: FileSink,
    record_path: PathBuf,
    id: [u8; 32],
    size: u64,
    written: u64,
}

impl ImageSink for FileSlotWriter {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        let end = self.written + data.len() as u64;
        if end > self.size {
            return Err(Error::InvalidArgument(format!(
                "the image would grow past its declared {} bytes",
                self.size
            )));
        }
        self.sink.write(data)?;
        self.written = end;
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        self.sink.finish()
    }
}

impl SlotWriter for FileSlotWriter {
    fn checkpoint(&mut self) -> Result<()> {
        // FileSink::finish is fsync; the file stays open for more writes.
        self.sink.finish()?;
        write_record(&self.record_path, &self.id, self.size, self.written)
    }
}

impl Slot for FileSlot {
    fn describe(&self) -> String {
        format!("file:{}", self.path.display())
    }

    fn open_current(&mut self) -> Result<Box<dyn ReadAt + Send>> {
        Ok(Box::new(FileSource::open(&self.path)?))
    }

    fn resume_point(&mut self, id: &[u8; 32], size: u64) -> Result<u64> {
        let Some((rec_id, rec_size, offset)) = self.read_record() else {
            return Ok(0);
        };
        let on_disk = fs::metadata(&self.new_path).map(|m| m.len()).unwrap_or(0);
        if rec_id != *id || rec_size != size || offset > size || on_disk < offset {
            return Ok(0);
        }
        Ok(offset)
    }

    fn open_writer(
        &mut self,
        id: &[u8; 32],
        size: u64,
        offset: u64,
    ) -> Result<Box<dyn SlotWriter>> {
        let sink = if offset == 0 {
            Self::remove(&self.record_path)?;
            FileSink::create(&self.new_path)?
        } else {
            FileSink::resume_at(&self.new_path, offset)?
        };
        Ok(Box::new(FileSlotWriter {
            sink,
            record_path: self.record_path.clone(),
            id: *id,
            size,
            written: offset,
        }))
    }

    fn open_written(&mut self) -> Result<Box<dyn ReadAt + Send>> {
        Ok(Box::new(FileSource::open(&self.new_path)?))
    }

    fn commit(&mut self) -> Result<()> {
        // Keep the permissions of the image being replaced.
        if let Ok(meta) = fs::metadata(&self.path) {
            let _ = fs::set_permissions(&self.new_path, meta.permissions());
        }
        OpenOptions::new()
            .write(true)
            .open(&self.new_path)
            .and_then(|f| f.sync_all())
            .map_err(|e| Error::io("sync", &self.new_path, e))?;
        fs::rename(&self.new_path, &self.path)
            .map_err(|e| Error::io("rename", &self.new_path, e))?;
        Self::remove(&self.record_path)?;
        sync_parent(&self.path)
    }

    fn discard(&mut self) -> Result<()> {
        Self::remove(&self.record_path)?;
        Self::remove(&self.new_path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("otaflash-slot-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_slot_keeps_the_old_image_until_commit_and_resumes_only_the_same_image() {
        let dir = temp_dir("commit");
        let path = dir.join("fw.img");
        fs::write(&path, b"old image").unwrap();
        let mut slot = FileSlot::new(&path);
        let id = [7u8; 32];
        assert_eq!(slot.resume_point(&id, 10).unwrap(), 0);

        let mut writer = slot.open_writer(&id, 10, 0).unwrap();
        writer.write(b"01234").unwrap();
        writer.checkpoint().unwrap();
        writer.write(b"56").unwrap(); // not checkpointed
        drop(writer);
        assert_eq!(fs::read(&path).unwrap(), b"old image");
        assert_eq!(slot.resume_point(&id, 10).unwrap(), 5);
        assert_eq!(slot.resume_point(&[8u8; 32], 10).unwrap(), 0);
        assert_eq!(slot.resume_point(&id, 11).unwrap(), 0);

        let mut writer = slot.open_writer(&id, 10, 5).unwrap();
        writer.write(b"56789").unwrap();
        assert!(writer.write(b"!").is_err(), "past the declared size");
        writer.finish().unwrap();
        drop(writer);
        let mut written = slot.open_written().unwrap();
        let mut buf = [0u8; 10];
        written.read_exact_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"0123456789");
        slot.commit().unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"0123456789");
        assert_eq!(slot.resume_point(&id, 10).unwrap(), 0);
        assert!(!slot.new_path.exists() && !slot.record_path.exists());
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_damaged_record_or_a_short_file_means_start_over() {
        let dir = temp_dir("damaged");
        let path = dir.join("fw.img");
        let mut slot = FileSlot::new(&path);
        let id = [1u8; 32];
        let mut writer = slot.open_writer(&id, 100, 0).unwrap();
        writer.write(&[0xAA; 50]).unwrap();
        writer.checkpoint().unwrap();
        drop(writer);
        assert_eq!(slot.resume_point(&id, 100).unwrap(), 50);
        let mut record = fs::read(&slot.record_path).unwrap();
        record[45] ^= 1;
        fs::write(&slot.record_path, &record).unwrap();
        assert_eq!(slot.resume_point(&id, 100).unwrap(), 0);
        record[45] ^= 1;
        fs::write(&slot.record_path, &record).unwrap();
        assert_eq!(slot.resume_point(&id, 100).unwrap(), 50);
        File::options()
            .write(true)
            .open(&slot.new_path)
            .unwrap()
            .set_len(20)
            .unwrap();
        assert_eq!(slot.resume_point(&id, 100).unwrap(), 0);
        slot.discard().unwrap();
        assert!(!slot.new_path.exists());
        assert!(slot.open_current().is_err(), "no current image yet");
        fs::remove_dir_all(dir).unwrap();
    }
}
