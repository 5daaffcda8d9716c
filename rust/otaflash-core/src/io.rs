//! The two shapes every byte pipeline here is built from: a random-access
//! source (an old image on a file, an MTD device, a Python callback) and a
//! sequential sink (a file, the flash writer, a Python callable).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::{Error, Result};

/// Random-access reads of a fixed-size image, never loaded whole.
pub trait ReadAt {
    /// Total bytes readable.
    fn size(&self) -> u64;

    /// Fills `buf` with the bytes at `offset`; a read past the end is an error.
    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()>;

    /// Another reader of the same bytes for another thread, when the source
    /// can make one cheaply (a file shares its descriptor); None otherwise.
    fn reader_for_thread(&self) -> Option<Box<dyn ReadAt + Send>> {
        None
    }
}

/// Sequential output: bytes are appended in calls of any size.
pub trait ImageSink {
    fn write(&mut self, data: &[u8]) -> Result<()>;

    /// Everything is written: flush and make it durable.
    fn finish(&mut self) -> Result<()>;
}

impl<T: ReadAt + ?Sized> ReadAt for Box<T> {
    fn size(&self) -> u64 {
        (**self).size()
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        (**self).read_exact_at(offset, buf)
    }

    fn reader_for_thread(&self) -> Option<Box<dyn ReadAt + Send>> {
        (**self).reader_for_thread()
    }
}

impl<T: ImageSink + ?Sized> ImageSink for Box<T> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        (**self).write(data)
    }

    fn finish(&mut self) -> Result<()> {
        (**self).finish()
    }
}

fn past_end(offset: u64, len: usize, size: u64) -> Error {
    Error::InvalidArgument(format!(
        "read of {len} bytes at offset {offset} goes past the end of a {size}-byte image"
    ))
}

impl ReadAt for &[u8] {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let start = usize::try_from(offset).ok();
        let src = start
            .and_then(|s| self.get(s..s.checked_add(buf.len())?))
            .ok_or_else(|| past_end(offset, buf.len(), self.size()))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

impl ReadAt for Vec<u8> {
    fn size(&self) -> u64 {
        self.len() as u64
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.as_slice().read_exact_at(offset, buf)
    }
}

/// A file read at offsets (`pread`), its size fixed when opened.
#[derive(Debug)]
pub struct FileSource {
    file: File,
    path: PathBuf,
    size: u64,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
        let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
        if meta.is_dir() {
            return Err(Error::io(
                "read",
                path,
                std::io::ErrorKind::IsADirectory.into(),
            ));
        }
        Ok(Self {
            file,
            path: path.to_path_buf(),
            size: meta.len(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl ReadAt for FileSource {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&mut self, offset: u64, buf: &mut [u8]) -> Result<()> {
        if offset
            .checked_add(buf.len() as u64)
            .is_none_or(|end| end > self.size)
        {
            return Err(past_end(offset, buf.len(), self.size));
        }
        self.file
            .read_exact_at(buf, offset)
            .map_err(|e| Error::io("read", &self.path, e))
    }

    fn reader_for_thread(&self) -> Option<Box<dyn ReadAt + Send>> {
        let file = self.file.try_clone().ok()?;
        Some(Box::new(Self {
            file,
            path: self.path.clone(),
            size: self.size,
        }))
    }
}

impl ImageSink for Vec<u8> {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.extend_from_slice(data);
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

/// Writes a file sequentially from a starting offset (0 for a new image, the
/// checkpointed offset when resuming).
#[derive(Debug)]
pub struct FileSink {
    file: File,
    path: PathBuf,
}

impl FileSink {
    /// Creates (or truncates) `path`.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = File::create(path).map_err(|e| Error::io("create", path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    /// Opens an existing `path`, cuts it at `offset` and appends from there.
    pub fn resume_at(path: impl AsRef<Path>, offset: u64) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| Error::io("open", path, e))?;
        file.set_len(offset)
            .map_err(|e| Error::io("truncate", path, e))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| Error::io("seek", path, e))?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }
}

impl ImageSink for FileSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.file
            .write_all(data)
            .map_err(|e| Error::io("write", &self.path, e))
    }

    fn finish(&mut self) -> Result<()> {
        self.file
            .sync_all()
            .map_err(|e| Error::io("sync", &self.path, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slices_and_files_read_at_offsets_and_refuse_past_the_end() {
        let data: Vec<u8> = (0..=255).collect();
        let mut buf = [0u8; 4];
        let mut slice = data.as_slice();
        slice.read_exact_at(252, &mut buf).unwrap();
        assert_eq!(buf, [252, 253, 254, 255]);
        assert!(slice.read_exact_at(253, &mut buf).is_err());
        assert!(slice.read_exact_at(u64::MAX, &mut buf).is_err());

        let path = std::env::temp_dir().join(format!("otaflash-io-{}", std::process::id()));
        let mut sink = FileSink::create(&path).unwrap();
        sink.write(&data[..100]).unwrap();
        sink.write(&data[100..]).unwrap();
        sink.finish().unwrap();
        let mut source = FileSource::open(&path).unwrap();
        assert_eq!(source.size(), 256);
        source.read_exact_at(10, &mut buf).unwrap();
        assert_eq!(buf, [10, 11, 12, 13]);
        let err = source.read_exact_at(254, &mut buf).unwrap_err();
        assert!(err.to_string().contains("past the end"), "{err}");

        let mut resumed = FileSink::resume_at(&path, 200).unwrap();
        resumed.write(b"xy").unwrap();
        resumed.finish().unwrap();
        let written = std::fs::read(&path).unwrap();
        assert_eq!(written.len(), 202);
        assert_eq!(&written[198..], &[198, 199, b'x', b'y']);
        std::fs::remove_file(&path).unwrap();
    }
}
