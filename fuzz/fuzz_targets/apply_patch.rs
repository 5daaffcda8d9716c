//! Feeds arbitrary bytes to the patch decoder (otaflash, BSDIFF40 and VCDIFF paths)
//! in arbitrary chunkings, and to the in-place applier and the checkpoint
//! parser. Any panic, hang or runaway allocation is a finding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use otaflash_core::patch::{Applier, ApplyOptions, Checkpoint, inspect};

/// A fixed old image; the fuzzer finds patches for it through the seed corpus.
fn old_image() -> Vec<u8> {
    (0..4096u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect()
}

fuzz_target!(|data: &[u8]| {
    let (split, patch) = match data.split_first() {
        Some((s, rest)) => (usize::from(*s) * 7 + 1, rest),
        None => return,
    };
    let old = old_image();
    let options = ApplyOptions {
        max_working_set: 4 << 20,
        read_cache: 4096,
        legacy_buffer_limit: 1 << 20,
        ..ApplyOptions::default()
    };
    let mut applier = Applier::new(old.as_slice(), Vec::new(), options);
    let mut ok = true;
    for chunk in patch.chunks(split) {
        if applier.feed(chunk).is_err() {
            ok = false;
            break;
        }
    }
    if ok {
        let _ = applier.finish();
    }
    let _ = inspect(patch);
    let _ = Checkpoint::from_bytes(patch);
});
