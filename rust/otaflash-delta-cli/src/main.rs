//! A minimal whole-process front end, so benchmarks time the Rust engine the
//! way they time the peers' programs (no Python start-up):
//!
//!     otaflash-delta diff OLD NEW PATCH [--compression zstd|lzma2] [--level N] [--window-log N] [--block-size N] [--threads N]
//!     otaflash-delta apply OLD PATCH OUT [--stats]
//!
//! `apply` writes `OUT.part` and renames it to OUT once the new image's
//! SHA-256 matched, like `otaflash patch`, so it checks the old image on a
//! second thread while applying. `--stats` prints one JSON line on stderr:
//! the in-process apply time (from opening the files to the verified end)
//! and the applier's working set.
//!
//! The product's command line is `otaflash diff|patch|patch-info`.

use std::io::{Read, Write};
use std::process::ExitCode;

use otaflash_core::io::{FileSource, ImageSink};
use otaflash_core::patch::format::Compression;
use otaflash_core::patch::{Applier, ApplyOptions, ApplyReport, OldCheck};
use otaflash_core::{Error, Result};
use otaflash_diff::{DiffOptions, diff};

struct PlainSink(std::io::BufWriter<std::fs::File>);

impl ImageSink for PlainSink {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        self.0
            .write_all(data)
            .map_err(|e| Error::io("write", "output", e))
    }

    fn finish(&mut self) -> Result<()> {
        self.0.flush().map_err(|e| Error::io("write", "output", e))
    }
}

fn number(args: &[String], flag: &str) -> Result<Option<u64>> {
    match args.iter().position(|a| a == flag) {
        None => Ok(None),
        Some(i) => args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::InvalidArgument(format!("{flag} needs a number"))),
    }
}

fn run(args: &[String]) -> Result<()> {
    let usage = || {
        Error::InvalidArgument(
            "usage: otaflash-delta diff OLD NEW PATCH | apply OLD PATCH OUT".into(),
        )
    };
    match args.first().map(String::as_str) {
        Some("diff") if args.len() >= 4 => {
            let old = std::fs::read(&args[1]).map_err(|e| Error::io("read", &args[1], e))?;
            let new = std::fs::read(&args[2]).map_err(|e| Error::io("read", &args[2], e))?;
            let compression = match args.iter().position(|a| a == "--compression") {
                None => Compression::Zstd,
                Some(i) => match args.get(i + 1).map(String::as_str) {
                    Some("zstd") => Compression::Zstd,
                    Some("lzma2") => Compression::Lzma2,
                    _ => {
                        return Err(Error::InvalidArgument(
                            "--compression takes zstd or lzma2".into(),
                        ));
                    }
                },
            };
            let mut opts = DiffOptions::with_compression(compression);
            if let Some(v) = number(args, "--level")? {
                opts.level = v as i32;
            }
            if let Some(v) = number(args, "--window-log")? {
                opts.window_log = v as u8;
            }
            if let Some(v) = number(args, "--block-size")? {
                opts.block_size = v as u32;
            }
            if let Some(v) = number(args, "--threads")? {
                opts.threads = v as usize;
            }
            let patch = diff(&old, &new, &opts)?;
            std::fs::write(&args[3], patch).map_err(|e| Error::io("write", &args[3], e))
        }
        Some("apply") if args.len() >= 4 => {
            let started = std::time::Instant::now();
            // Like the product's `otaflash patch`: the output is a temporary
            // file renamed only once the new image's hash matched, so the
            // old image can be checked while the patch is applied.
            let partial = format!("{}.part", args[3]);
            let result = apply(&args[1], &args[2], &partial);
            let (report, working_set) = match result {
                Ok(done) => done,
                Err(e) => {
                    let _ = std::fs::remove_file(&partial);
                    return Err(e);
                }
            };
            // An earlier OUT goes first: renaming over an existing file
            // makes ext4 (auto_da_alloc) allocate and start writing the new
            // one's blocks in the rename, 8 ms for ruff's 24.5 MB. (The peers
            // truncate OUT before they begin; `otaflash patch` syncs
            // first, so the rename has nothing left to flush.)
            match std::fs::remove_file(&args[3]) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(Error::io("remove", &args[3], e));
                }
                _ => {}
            }
            std::fs::rename(&partial, &args[3]).map_err(|e| Error::io("rename", &partial, e))?;
            if args.iter().any(|a| a == "--stats") {
                let seconds = started.elapsed().as_secs_f64();
                let _ = writeln!(
                    std::io::stderr(),
                    "{{\"apply_seconds\":{seconds:.6},\"new_size\":{},\"working_set\":{}}}",
                    report.new_size,
                    working_set
                );
            }
            Ok(())
        }
        _ => Err(usage()),
    }
}

/// Applies `patch` to `old`, writing `out`: the report and the working set.
fn apply(old: &str, patch: &str, out: &str) -> Result<(ApplyReport, usize)> {
    let source = FileSource::open(old)?;
    // Like the peers' programs: written, not fsynced (the product's
    // `otaflash patch` syncs before it reports success).
    let sink = PlainSink(std::io::BufWriter::with_capacity(
        256 << 10,
        std::fs::File::create(out).map_err(|e| Error::io("create", out, e))?,
    ));
    let options = ApplyOptions {
        old_check: OldCheck::Alongside,
        ..ApplyOptions::default()
    };
    let mut applier = Applier::new(source, sink, options);
    let mut file = std::fs::File::open(patch).map_err(|e| Error::io("open", patch, e))?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io("read", patch, e))?;
        if n == 0 {
            break;
        }
        applier.feed(&buf[..n])?;
    }
    let report = applier.finish()?;
    Ok((report, applier.working_set().unwrap_or(0)))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "otaflash-delta: error: {e}");
            ExitCode::from(match e {
                Error::PatchCorrupt(_)
                | Error::PatchForeign(_)
                | Error::PatchUnsupported(_)
                | Error::PatchWrongOld { .. } => 7,
                Error::Verify { .. } => 4,
                _ => 1,
            })
        }
    }
}
