//! The flash writer against the simulated flash: skip-blank and
//! skip-unchanged, NAND bad blocks (at the start, in the middle, and going
//! bad during the write) relocated as nandwrite does, transient bit flips,
//! cancellation, progress, and bad input refused before any erase.

#![allow(clippy::unwrap_used)]

use otaflash_core::Error;
use otaflash_core::flash::{
    BlockDevice, FlashKind, FlashWriter, Geometry, ImageFile, Mtd, Region, SimFlash, SimOptions,
    WriteOptions, read_mapped, verify_image,
};
use otaflash_core::io::ImageSink;
use otaflash_core::progress::{CancelToken, NoProgress, Operation, ProgressEvent};

fn nor() -> Geometry {
    Geometry {
        kind: FlashKind::Nor,
        size: 32 * 65536,
        erase_size: 65536,
        write_size: 1,
        page_size: 256,
        oob_size: 0,
    }
}

fn nand() -> Geometry {
    Geometry {
        kind: FlashKind::Nand,
        size: 32 * 131072,
        erase_size: 131072,
        write_size: 512,
        page_size: 2048,
        oob_size: 64,
    }
}

fn image(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..len).map(|_| rng.u8(..)).collect()
}

fn write(
    flash: &mut SimFlash,
    offset: u64,
    data: &[u8],
    chunk: usize,
) -> otaflash_core::Result<otaflash_core::flash::WriteReport> {
    let mut writer =
        FlashWriter::new(flash, offset, WriteOptions::default())?.expect_size(data.len() as u64)?;
    for piece in data.chunks(chunk) {
        writer.write(piece)?;
    }
    writer.finish()?;
    Ok(writer.into_report())
}

fn read_back(flash: &mut SimFlash, offset: u64, len: usize) -> Vec<u8> {
    let size = flash.geometry().size;
    let mut buf = vec![0u8; len];
    read_mapped(flash, Region::new(offset, size - offset), 0, &mut buf).unwrap();
    buf
}

#[test]
fn writes_read_back_identical_and_skip_what_is_already_there() {
    for geometry in [nor(), nand()] {
        let mut flash = SimFlash::new(geometry, SimOptions::default()).unwrap();
        let data = image(700_001, 1);
        let offset = 2 * geometry.erase_size;
        let first = write(&mut flash, offset, &data, 4093).unwrap();
        assert_eq!(read_back(&mut flash, offset, data.len()), data);
        let blocks = (data.len() as u64).div_ceil(geometry.erase_size);
        assert_eq!(first.blocks, blocks);
        assert_eq!(
            (first.erases, first.erases_skipped),
            (0, blocks),
            "blank flash needs no erase"
        );
        // The tail of the last block is erased flash.
        let mut tail = vec![0u8; 100];
        flash.read(offset + data.len() as u64, &mut tail).unwrap();
        assert!(tail.iter().all(|&b| b == 0xFF));

        // Same image again: every block is skipped by hash, nothing erased.
        let before = flash.stats();
        let again = write(&mut flash, offset, &data, 1 << 20).unwrap();
        assert_eq!(again.blocks_unchanged, blocks);
        assert_eq!(flash.stats().block_erases, before.block_erases);
        assert_eq!(flash.stats().page_programs, before.page_programs);

        // One block changed: one erase, and only that block programmed.
        let mut changed = data.clone();
        changed[geometry.erase_size as usize + 5] ^= 0xFF;
        let third = write(&mut flash, offset, &changed, 65536).unwrap();
        assert_eq!((third.erases, third.blocks_unchanged), (1, blocks - 1));
        assert_eq!(read_back(&mut flash, offset, data.len()), changed);
        assert_eq!(third.sha256, sha256(&changed));
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut h = otaflash_core::hash::Hasher::new(otaflash_core::hash::HashAlgorithm::Sha256);
    h.update(data);
    h.finalize().as_bytes().try_into().unwrap()
}

#[test]
fn nand_bad_blocks_at_start_middle_and_during_the_write_are_skipped_and_relocated() {
    let erase = nand().erase_size;
    let mut flash = SimFlash::new(
        nand(),
        SimOptions {
            bad_blocks: vec![0, 3],
            ..Default::default()
        },
    )
    .unwrap();
    // Blocks 5 and 6 go bad during the write: their first program fails.
    flash.fail_block(5, 0);
    flash.fail_block(6, 0);
    let data = image(9 * erase as usize + 1234, 2);
    let report = write(&mut flash, 0, &data, 100_000).unwrap();
    assert_eq!(report.bad_blocks_skipped, vec![0, 3 * erase]);
    assert_eq!(report.blocks_relocated, vec![5 * erase, 6 * erase]);
    assert_eq!(flash.bad_blocks(), vec![0, 3, 5, 6]);
    // nanddump --bb=skipbad semantics: reading around the bad blocks gives the image.
    assert_eq!(read_back(&mut flash, 0, data.len()), data);
    assert_eq!(report.end, 14 * erase);
}

#[test]
fn nor_write_failures_are_errors_with_device_address_and_errno() {
    let mut flash = SimFlash::new(nor(), SimOptions::default()).unwrap();
    flash.fail_block(3, 0);
    let e = write(&mut flash, 0, &image(300_000, 3), 65536).unwrap_err();
    let text = e.to_string();
    assert_eq!(e.raw_os_error(), Some(5), "{text}");
    assert!(
        text.contains("sim:memory") && text.contains("0x30000") && text.contains("EIO"),
        "{text}"
    );
}

#[test]
fn transient_bit_flips_on_read_do_not_corrupt_or_fail_the_write() {
    let mut flash = SimFlash::new(
        nand(),
        SimOptions {
            bitflip_probability: 0.01,
            seed: 9,
            ..Default::default()
        },
    )
    .unwrap();
    let data = image(1_500_000, 4);
    write(&mut flash, 0, &data, 65536).unwrap();
    flash.set_bitflip_probability(0.0);
    assert_eq!(read_back(&mut flash, 0, data.len()), data);
}

#[test]
fn bad_input_is_refused_before_any_erase() {
    for geometry in [nor(), nand()] {
        let mut flash = SimFlash::new(geometry, SimOptions::default()).unwrap();
        // Larger than the room from the offset.
        let e = FlashWriter::new(
            &mut flash,
            geometry.size - geometry.erase_size,
            WriteOptions::default(),
        )
        .unwrap()
        .expect_size(geometry.erase_size + 1)
        .unwrap_err();
        assert!(
            matches!(e, Error::Geometry(_)) && e.to_string().contains("does not fit"),
            "{e}"
        );
        // Misaligned offset.
        let e = FlashWriter::new(&mut flash, 4096, WriteOptions::default()).unwrap_err();
        assert!(e.to_string().contains("not aligned"), "{e}");
        // Past the end.
        assert!(
            FlashWriter::new(
                &mut flash,
                geometry.size + geometry.erase_size,
                WriteOptions::default()
            )
            .is_err()
        );
        assert_eq!(flash.operations(), 0, "nothing may be erased or programmed");
    }
    // With bad blocks the room shrinks: 32 blocks, 2 bad, 31 blocks of data do not fit.
    let mut flash = SimFlash::new(
        nand(),
        SimOptions {
            bad_blocks: vec![1, 2],
            ..Default::default()
        },
    )
    .unwrap();
    let e = FlashWriter::new(&mut flash, 0, WriteOptions::default())
        .unwrap()
        .expect_size(31 * nand().erase_size)
        .unwrap_err();
    assert!(e.to_string().contains("usable bytes"), "{e}");
    assert_eq!(flash.operations(), 0);
}

#[test]
fn paths_that_are_not_mtd_devices_are_refused_with_a_clear_error() {
    let file = std::env::temp_dir().join(format!("otaflash-notmtd-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    for path in [
        file.as_path(),
        std::path::Path::new("/dev/null"),
        std::path::Path::new("/tmp"),
    ] {
        let e = Mtd::open(path).unwrap_err();
        assert!(matches!(e, Error::Target { .. }), "{path:?}: {e}");
        assert!(e.to_string().contains("is not an MTD device"), "{e}");
    }
    let e = Mtd::open("/dev/mtd-does-not-exist").unwrap_err();
    assert!(e.to_string().contains("no such file"), "{e}");
    std::fs::remove_file(&file).unwrap();
}

#[test]
fn progress_reaches_the_total_for_each_operation_and_cancel_stops_the_write() {
    let mut flash = SimFlash::new(nor(), SimOptions::default()).unwrap();
    let data = image(500_000, 5);
    let mut events: Vec<ProgressEvent> = Vec::new();
    {
        let mut writer = FlashWriter::new(&mut flash, 0, WriteOptions::default())
            .unwrap()
            .expect_size(data.len() as u64)
            .unwrap()
            .with_progress(|e: ProgressEvent| {
                events.push(e);
                Ok(())
            });
        writer.write(&data).unwrap();
        writer.finish().unwrap();
    }
    for op in [Operation::Erase, Operation::Program, Operation::Verify] {
        let mine: Vec<_> = events.iter().filter(|e| e.operation == op).collect();
        assert!(mine.windows(2).all(|w| w[0].done <= w[1].done));
        let last = mine.last().unwrap();
        assert_eq!((last.done, last.total), (500_000, Some(500_000)));
    }

    let cancel = CancelToken::new();
    cancel.cancel();
    let mut writer = FlashWriter::new(&mut flash, 0, WriteOptions::default())
        .unwrap()
        .with_cancel(cancel);
    writer.write(&image(200_000, 6)).unwrap_err();
    assert!(matches!(writer.finish().unwrap_err(), Error::Cancelled));
}

#[test]
fn image_files_grow_with_erased_gaps_and_verify_finds_differences() {
    let path = std::env::temp_dir().join(format!("otaflash-img-{}.bin", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let data = image(100_000, 7);
    {
        let mut file = ImageFile::open(&path).unwrap();
        let mut writer = FlashWriter::new(&mut file, 5000, WriteOptions::default())
            .unwrap()
            .expect_size(data.len() as u64)
            .unwrap();
        writer.write(&data).unwrap();
        writer.finish().unwrap();
    }
    let bytes = std::fs::read(&path).unwrap();
    assert_eq!(bytes.len(), 105_000);
    assert!(bytes[..5000].iter().all(|&b| b == 0xFF));
    assert_eq!(&bytes[5000..], &data[..]);

    let mut file = ImageFile::open(&path).unwrap();
    let digest = verify_image(&mut file, 5000, &mut data.as_slice(), &mut NoProgress).unwrap();
    assert_eq!(digest, sha256(&data));
    let mut other = data.clone();
    other[77_777] ^= 1;
    let e = verify_image(&mut file, 5000, &mut other.as_slice(), &mut NoProgress).unwrap_err();
    assert!(e.to_string().contains("0x12fd1"), "{e}");
    std::fs::remove_file(&path).unwrap();
}
