//! Several digests of one file in a single read pass.
//!
//! The calling thread reads and each algorithm hashes on its own thread, so
//! MD5 + SHA-256 together take about as long as MD5 alone (the slower one),
//! and reading overlaps hashing even for one algorithm. Buffers are recycled
//! from a small fixed pool: memory stays at `POOL_DEPTH * CHUNK_SIZE`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::{Arc, mpsc};
use std::thread;

use super::{Digest, HashAlgorithm, Hasher};
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

const CHUNK_SIZE: usize = 1 << 20;
const POOL_DEPTH: usize = 4;
/// Below this, threads cost more than they save.
const PIPELINE_THRESHOLD: u64 = 8 << 20;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileDigests {
    /// Bytes hashed.
    pub size: u64,
    /// One digest per requested algorithm, in the order asked for (duplicates removed).
    pub digests: Vec<Digest>,
}

impl FileDigests {
    pub fn get(&self, algorithm: HashAlgorithm) -> Option<&Digest> {
        self.digests.iter().find(|d| d.algorithm() == algorithm)
    }
}

/// Hashes the file at `path` with every algorithm in `algorithms`.
///
/// `progress` hears [`Operation::Hash`] on the calling thread after every
/// chunk, and a last event whose `total` equals `done`; an error it returns
/// stops the work and is returned (this is how a binding checks for Ctrl-C).
pub fn hash_file(
    path: &Path,
    algorithms: &[HashAlgorithm],
    progress: &mut dyn Progress,
) -> Result<FileDigests> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    if meta.is_dir() {
        return Err(Error::io("hash", path, io::ErrorKind::IsADirectory.into()));
    }
    // Pipes and character devices report 0; treat their size as unknown.
    let size_hint = meta.is_file().then_some(meta.len());
    hash_stream(file, path, size_hint, algorithms, progress)
}

/// Like [`hash_file`], for any reader (a pipe, a socket, a device).
pub fn hash_reader(
    reader: impl Read,
    algorithms: &[HashAlgorithm],
    progress: &mut dyn Progress,
) -> Result<FileDigests> {
    hash_stream(reader, Path::new("<stream>"), None, algorithms, progress)
}

fn hash_stream(
    mut reader: impl Read,
    name: &Path,
    size_hint: Option<u64>,
    algorithms: &[HashAlgorithm],
    progress: &mut dyn Progress,
) -> Result<FileDigests> {
    let mut unique: Vec<HashAlgorithm> = Vec::with_capacity(algorithms.len());
    for alg in algorithms {
        if !unique.contains(alg) {
            unique.push(*alg);
        }
    }
    if unique.is_empty() {
        return Err(Error::InvalidArgument("no hash algorithm given".into()));
    }
    let read = |reader: &mut dyn Read, buf: &mut [u8]| {
        read_full(reader, buf).map_err(|e| Error::io("read", name, e))
    };
    let mut on_chunk = |done: u64| {
        progress.report(ProgressEvent {
            operation: Operation::Hash,
            done,
            total: size_hint,
        })
    };
    let result = if size_hint.is_some_and(|size| size < PIPELINE_THRESHOLD) {
        hash_inline(&mut reader, &unique, &read, &mut on_chunk)
    } else {
        hash_pipelined(&mut reader, &unique, &read, &mut on_chunk)
    }?;
    // The last chunk's event already closes the operation when the size was known.
    let done = result.size;
    if size_hint != Some(done) {
        progress.report(ProgressEvent {
            operation: Operation::Hash,
            done,
            total: Some(done),
        })?;
    }
    Ok(result)
}

type ReadChunk<'a> = dyn Fn(&mut dyn Read, &mut [u8]) -> Result<usize> + 'a;

fn hash_inline(
    reader: &mut dyn Read,
    algorithms: &[HashAlgorithm],
    read: &ReadChunk<'_>,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<FileDigests> {
    let mut hashers: Vec<Hasher> = algorithms.iter().map(|a| Hasher::new(*a)).collect();
    let mut buf = vec![0u8; CHUNK_SIZE];
    let mut size = 0u64;
    loop {
        let n = read(reader, &mut buf)?;
        let chunk = buf.get(..n).unwrap_or_default();
        for h in &mut hashers {
            h.update(chunk);
        }
        size += n as u64;
        progress(size)?;
        if n < CHUNK_SIZE {
            break;
        }
    }
    let digests = hashers.iter().map(Hasher::finalize).collect();
    Ok(FileDigests { size, digests })
}

fn hash_pipelined(
    reader: &mut dyn Read,
    algorithms: &[HashAlgorithm],
    read: &ReadChunk<'_>,
    progress: &mut dyn FnMut(u64) -> Result<()>,
) -> Result<FileDigests> {
    thread::scope(|scope| {
        // Workers signal here after dropping a chunk, so the reader can
        // reclaim the oldest buffer once every worker is done with it.
        let (released_tx, released_rx) = mpsc::channel::<()>();
        let mut feeds = Vec::with_capacity(algorithms.len());
        let mut workers = Vec::with_capacity(algorithms.len());
        for &algorithm in algorithms {
            let (feed, chunks) = mpsc::sync_channel::<(Arc<Vec<u8>>, usize)>(POOL_DEPTH);
            let released = released_tx.clone();
            workers.push(scope.spawn(move || {
                let mut hasher = Hasher::new(algorithm);
                for (buf, len) in chunks {
                    hasher.update(buf.get(..len).unwrap_or_default());
                    drop(buf);
                    // The reader may have stopped listening; nothing to do then.
                    let _ = released.send(());
                }
                hasher.finalize()
            }));
            feeds.push(feed);
        }
        drop(released_tx);

        let mut in_flight: VecDeque<Arc<Vec<u8>>> = VecDeque::with_capacity(POOL_DEPTH);
        let mut size = 0u64;
        let outcome: Result<()> = loop {
            let mut buf = if in_flight.len() < POOL_DEPTH {
                vec![0u8; CHUNK_SIZE]
            } else {
                match reclaim_oldest(&mut in_flight, &released_rx) {
                    Some(buf) => buf,
                    None => break Ok(()), // a worker is gone; join below reports it
                }
            };
            let n = match read(reader, &mut buf) {
                Ok(n) => n,
                Err(e) => break Err(e),
            };
            if n > 0 {
                let shared = Arc::new(buf);
                for feed in &feeds {
                    if feed.send((Arc::clone(&shared), n)).is_err() {
                        break;
                    }
                }
                in_flight.push_back(shared);
                size += n as u64;
            }
            if let Err(e) = progress(size) {
                break Err(e);
            }
            if n < CHUNK_SIZE {
                break Ok(());
            }
        };
        drop(feeds);
        let mut digests = Vec::with_capacity(workers.len());
        for worker in workers {
            match worker.join() {
                Ok(digest) => digests.push(digest),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        outcome.map(|()| FileDigests { size, digests })
    })
}

/// Waits until no worker holds the oldest in-flight buffer, then takes it back.
fn reclaim_oldest(
    in_flight: &mut VecDeque<Arc<Vec<u8>>>,
    released: &mpsc::Receiver<()>,
) -> Option<Vec<u8>> {
    let mut oldest = in_flight.pop_front()?;
    loop {
        match Arc::try_unwrap(oldest) {
            Ok(buf) => return Some(buf),
            Err(still_shared) => {
                oldest = still_shared;
                released.recv().ok()?;
            }
        }
    }
}

/// Fills `buf` unless the reader ends first; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while let Some(rest) = buf.get_mut(filled..).filter(|rest| !rest.is_empty()) {
        match reader.read(rest) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::digest;

    fn pattern(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 131 + (i >> 9)) as u8).collect()
    }

    use crate::progress::NoProgress;

    #[test]
    fn pipelined_and_inline_agree_with_one_shot_digests() {
        let dir = std::env::temp_dir().join(format!("otaflash-hash-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // Sizes around the chunk size and the pipeline threshold.
        for len in [
            0,
            1,
            CHUNK_SIZE - 1,
            CHUNK_SIZE,
            CHUNK_SIZE + 1,
            9 * CHUNK_SIZE + 7,
        ] {
            let data = pattern(len);
            let path = dir.join(format!("f{len}"));
            std::fs::write(&path, &data).unwrap();
            let got = hash_file(&path, &HashAlgorithm::ALL, &mut NoProgress).unwrap();
            assert_eq!(got.size, len as u64);
            for alg in HashAlgorithm::ALL {
                assert_eq!(
                    got.get(alg),
                    Some(&digest(alg, &data)),
                    "{alg} of {len} bytes"
                );
            }
            let streamed = hash_reader(&data[..], &[HashAlgorithm::Md5], &mut NoProgress).unwrap();
            assert_eq!(streamed.digests, vec![digest(HashAlgorithm::Md5, &data)]);
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn progress_error_stops_the_work_and_is_returned() {
        let data = pattern(20 * CHUNK_SIZE);
        let mut calls = 0;
        let mut stop_at_three = |_event: ProgressEvent| {
            calls += 1;
            if calls == 3 {
                Err(Error::InvalidArgument("stop".into()))
            } else {
                Ok(())
            }
        };
        let err = hash_reader(&data[..], &[HashAlgorithm::Sha256], &mut stop_at_three).unwrap_err();
        assert_eq!(err.to_string(), "stop");
        assert_eq!(calls, 3);
    }

    #[test]
    fn duplicates_are_hashed_once_and_empty_lists_refused() {
        let got = hash_reader(
            &b"abc"[..],
            &[HashAlgorithm::Md5, HashAlgorithm::Md5],
            &mut NoProgress,
        )
        .unwrap();
        assert_eq!(got.digests.len(), 1);
        assert!(hash_reader(&b"abc"[..], &[], &mut NoProgress).is_err());
    }

    #[test]
    fn directories_and_missing_files_are_named_in_the_error() {
        let err = hash_file(Path::new("/"), &[HashAlgorithm::Md5], &mut NoProgress).unwrap_err();
        assert_eq!(err.to_string(), "cannot hash /: it is a directory");
        let err = hash_file(
            Path::new("/no/such/file"),
            &[HashAlgorithm::Md5],
            &mut NoProgress,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot open /no/such/file: no such file or directory"
        );
    }
}
