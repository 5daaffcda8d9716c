//! Flash writer figures. Run: `cargo bench -p otaflash-core --bench flash`.
//!
//! 1. Overhead: erase+program+verify of a 32 MiB image on the simulated flash
//!    with no timing model, against a plain copy of the same bytes (the
//!    ceiling: what moving the bytes alone costs).
//! 2. Real-world time with a NOR timing model (64 KiB erase 150 ms, 256 B
//!    page program 0.5 ms, 256 B read 5 us): updating from each corpus
//!    pair's old image to its new one (`../shared/corpus/fetch.sh
//!    target/corpus`), with and without skip-blank and skip-unchanged.
#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use otaflash_core::flash::{
    FlashKind, FlashWriter, Geometry, SimFlash, SimOptions, Timing, WriteOptions,
};
use otaflash_core::io::ImageSink;

const SIZE: usize = 32 << 20;

fn nor(size: u64) -> Geometry {
    Geometry {
        kind: FlashKind::Nor,
        size,
        erase_size: 65536,
        write_size: 1,
        page_size: 256,
        oob_size: 0,
    }
}

fn write(flash: &mut SimFlash, data: &[u8], options: WriteOptions) {
    let mut writer = FlashWriter::new(flash, 0, options)
        .unwrap()
        .expect_size(data.len() as u64)
        .unwrap();
    writer.write(data).unwrap();
    writer.finish().unwrap();
}

fn best<F: FnMut()>(runs: usize, mut f: F) -> Duration {
    (0..runs)
        .map(|_| {
            let started = Instant::now();
            f();
            started.elapsed()
        })
        .min()
        .unwrap_or_default()
}

fn mbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

fn overhead() {
    let mut rng = fastrand::Rng::with_seed(1);
    let a: Vec<u8> = (0..SIZE).map(|_| rng.u8(..)).collect();
    let b: Vec<u8> = (0..SIZE).map(|_| rng.u8(..)).collect();
    let mut flash = SimFlash::new(nor(SIZE as u64), SimOptions::default()).unwrap();
    let mut target = vec![0u8; SIZE];
    let copy = best(5, || {
        target.copy_from_slice(black_box(&a));
        black_box(&target);
    });
    // Alternate two images so every block really is erased and programmed.
    let mut flip = false;
    let full = best(5, || {
        flip = !flip;
        write(
            &mut flash,
            if flip { &a } else { &b },
            WriteOptions::default(),
        );
    });
    let unchanged = best(5, || {
        write(
            &mut flash,
            if flip { &a } else { &b },
            WriteOptions::default(),
        )
    });
    println!("writer overhead, 32 MiB on simulated NOR (no timing model), best of 5:");
    println!(
        "  plain copy of the bytes            {:8.0} MB/s",
        mbps(SIZE, copy)
    );
    println!(
        "  erase+program+verify every block   {:8.0} MB/s  ({:.1}x the copy's time)",
        mbps(SIZE, full),
        full.as_secs_f64() / copy.as_secs_f64()
    );
    println!(
        "  same image again (hash, skip all)  {:8.0} MB/s  ({:.1}x)",
        mbps(SIZE, unchanged),
        unchanged.as_secs_f64() / copy.as_secs_f64()
    );
}

/// Modelled time to write `new` over `old` (None: a blank flash).
fn timed_update(old: Option<&[u8]>, new: &[u8], options: WriteOptions) -> (Duration, u64, u64) {
    let longest = old.map_or(0, <[u8]>::len).max(new.len());
    let size = (longest as u64).next_multiple_of(65536) + 65536;
    let mut flash = SimFlash::new(nor(size), SimOptions::default()).unwrap();
    if let Some(old) = old {
        write(&mut flash, old, WriteOptions::default());
    }
    flash.set_timing(Some(Timing {
        erase_block: Duration::from_millis(150),
        program_page: Duration::from_micros(500),
        read_page: Duration::from_micros(5),
        realtime: false,
    }));
    let before = flash.stats();
    write(&mut flash, new, options);
    let after = flash.stats();
    (
        after.elapsed - before.elapsed,
        after.block_erases - before.block_erases,
        after.page_programs - before.page_programs,
    )
}

fn corpus_dir() -> PathBuf {
    std::env::var_os("OTAFLASH_CORPUS").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/corpus"),
        PathBuf::from,
    )
}

fn timing_model() {
    let dir = corpus_dir();
    let mut pairs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.join("old").is_file() && p.join("new").is_file())
                .collect()
        })
        .unwrap_or_default();
    pairs.sort();
    println!();
    println!(
        "old -> new update on NOR with a timing model (64 KiB erase 150 ms, 256 B program 0.5 ms, read 5 us/256 B):"
    );
    if pairs.is_empty() {
        println!(
            "  no corpus in {}: run ../shared/corpus/fetch.sh target/corpus",
            dir.display()
        );
        return;
    }
    let naive = WriteOptions {
        skip_blank: false,
        skip_unchanged: false,
        ..WriteOptions::default()
    };
    for pair in pairs {
        let old = std::fs::read(pair.join("old")).unwrap();
        let new = std::fs::read(pair.join("new")).unwrap();
        let name = pair
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("?")
            .to_string();
        println!("  {name} ({} -> {} bytes)", old.len(), new.len());
        for (case, before) in [
            ("old -> new", Some(old.as_slice())),
            ("new onto blank flash", None),
            ("new again (re-flash)", Some(new.as_slice())),
        ] {
            let (fast, e1, p1) = timed_update(before, &new, WriteOptions::default());
            let (slow, e2, p2) = timed_update(before, &new, naive);
            println!(
                "    {case:22} skip on {:8.2} s ({e1:4} erases, {p1:6} pages) | skip off {:8.2} s ({e2:4} erases, {p2:6} pages) | saved {:5.1}%",
                fast.as_secs_f64(),
                slow.as_secs_f64(),
                100.0 * (1.0 - fast.as_secs_f64() / slow.as_secs_f64())
            );
        }
    }
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; keep it quick there.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    overhead();
    timing_model();
}
