//! bsdiff's matcher over a libsais suffix array, run on slices of the new
//! image in parallel.

use libsais::SuffixArrayConstruction;
use std::sync::atomic::Ordering;

use otaflash_core::progress::Progress;
use otaflash_core::{Error, Result};

use crate::{Monitor, parallel_map};

/// Copy `copy` bytes from `old` (adding the stored differences), then
/// `extra` literal bytes; records follow each other in new-image order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Record {
    pub copy: u64,
    pub extra: u64,
    pub old: u64,
}

pub(crate) fn suffix_array(old: &[u8], threads: usize) -> Result<Vec<i32>> {
    if old.is_empty() {
        return Ok(Vec::new());
    }
    // Single-threaded on purpose: libsais' OpenMP workers spin after each
    // parallel region and starve the matcher threads on small machines.
    let _ = threads;
    SuffixArrayConstruction::for_text(old)
        .in_owned_buffer32()
        .single_threaded()
        .run()
        .map(|r| r.into_vec())
        .map_err(|e| Error::InvalidArgument(format!("suffix sorting failed: {e:?}")))
}

/// Length of the common prefix of `a` and `b`.
fn matchlen(a: &[u8], b: &[u8]) -> usize {
    let n = a.len().min(b.len());
    let mut i = 0;
    while i + 8 <= n {
        let x = u64::from_le_bytes(a[i..i + 8].try_into().unwrap_or([0; 8]));
        let y = u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
        let d = x ^ y;
        if d != 0 {
            return i + (d.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < n && a[i] == b[i] {
        i += 1;
    }
    i
}

/// The longest match of `target`'s prefix in `old`: (length, suffix array index).
fn search(sa: &[i32], old: &[u8], target: &[u8]) -> (usize, usize) {
    let (mut lo, mut hi) = (0usize, sa.len() - 1);
    while hi - lo >= 2 {
        let mid = lo + (hi - lo) / 2;
        let s = &old[sa[mid] as usize..];
        let n = s.len().min(target.len());
        if s[..n] < target[..n] {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let (a, b) = (sa[lo] as usize, sa[hi] as usize);
    let x = matchlen(&old[a..], target);
    let y = matchlen(&old[b..], target);
    if x >= y { (x, lo) } else { (y, hi) }
}

/// Where a new record copies from: of the old positions next to suffix
/// array index `at` (whose suffix shares `len` bytes with `target`), the one
/// scoring best in quarter bytes: 4 per byte matched (up to `MATCH_SLACK`
/// fewer than `len` are accepted), 1 per byte equal among the next
/// `look_ahead` (the copy's approximate extension), and 2 per bit of the
/// distance from `want`, where the previous copy's diagonal would be (the
/// record's seek); of equal scores, the nearest. bsdiff takes whichever
/// suffix the search ends on: far seeks made up 60 % of ruff's records.
fn best_source(
    sa: &[i32],
    old: &[u8],
    target: &[u8],
    (at, len): (usize, usize),
    want: usize,
    look_ahead: usize,
) -> usize {
    let score = |pos: usize, matched: usize| {
        let ahead = old
            .get(pos + matched..)
            .unwrap_or_default()
            .iter()
            .zip(target.get(matched..).unwrap_or_default())
            .take(look_ahead)
            .filter(|(a, b)| a == b)
            .count();
        let distance_bits = u64::BITS - (pos.abs_diff(want) as u64 + 1).leading_zeros();
        (4 * matched + ahead) as i64 - 2 * i64::from(distance_bits)
    };
    let mut best = sa[at] as usize;
    let mut best_score = score(best, len);
    let mut consider = |i: usize| {
        let pos = sa[i] as usize;
        let matched = matchlen(&old[pos..], target);
        if matched + MATCH_SLACK < len {
            return false;
        }
        let s = score(pos, matched);
        if s > best_score || s == best_score && pos.abs_diff(want) < best.abs_diff(want) {
            (best, best_score) = (pos, s);
        }
        true
    };
    // Suffixes sharing more with `target` sit closer to `at`: stop at the
    // first one sharing too little.
    for i in (at.saturating_sub(CANDIDATES)..at).rev() {
        if !consider(i) {
            break;
        }
    }
    for i in at + 1..(at + 1 + CANDIDATES).min(sa.len()) {
        if !consider(i) {
            break;
        }
    }
    best
}

/// Suffix array neighbours `best_source` considers on each side.
const CANDIDATES: usize = 64;
/// How much shorter than the longest a closer match may be.
const MATCH_SLACK: usize = 4;

/// Bytes after a match that `best_source` compares at match `threshold`.
/// Only low thresholds gain (ruff -0.2 %, greatfet -1.2 %); at 64 (GHC's
/// output, shellcheck) any look-ahead costs 5 %: there, the nearest source
/// of a long match is what keeps the later records few.
fn look_ahead(threshold: usize) -> usize {
    if threshold <= 16 { 32 } else { 0 }
}

/// bsdiff's scan over `new[start..end]` (matches may extend up to `end`).
///
/// `threshold`: how many bytes longer than continuing at the last offset a
/// new exact match must be to start a new record (bsdiff uses 8; smaller
/// suits images where short moved pieces matter, larger suits code where
/// the approximate extension already covers them).
pub(crate) fn scan_range(
    sa: &[i32],
    old: &[u8],
    new_all: &[u8],
    start: usize,
    end: usize,
    threshold: usize,
    monitor: &Monitor,
) -> Vec<Record> {
    let new = &new_all[..end];
    let oldsize = old.len();
    let newsize = end;
    let mut out = Vec::new();
    if oldsize == 0 || sa.is_empty() {
        if end > start {
            out.push(Record {
                copy: 0,
                extra: (end - start) as u64,
                old: 0,
            });
        }
        return out;
    }
    let look_ahead = look_ahead(threshold);
    let (mut scan, mut len, mut pos, mut at) = (start, 0usize, 0usize, 0usize);
    let (mut lastscan, mut lastpos, mut lastoffset) = (start, 0usize, 0isize);
    let mut reported = start;
    while scan < newsize {
        if scan - reported >= 1 << 16 {
            monitor
                .done
                .fetch_add((scan - reported) as u64, Ordering::Relaxed);
            reported = scan;
            if monitor.stop.load(Ordering::Relaxed) {
                return out;
            }
        }
        let mut oldscore = 0usize;
        scan += len;
        let mut scsc = scan;
        while scan < newsize {
            let (l, i) = search(sa, old, &new[scan..]);
            len = l;
            pos = sa[i] as usize;
            at = i;
            while scsc < scan + len {
                let o = scsc as isize + lastoffset;
                if o >= 0 && (o as usize) < oldsize && old[o as usize] == new[scsc] {
                    oldscore += 1;
                }
                scsc += 1;
            }
            if (len == oldscore && len != 0) || len > oldscore + threshold {
                break;
            }
            let o = scan as isize + lastoffset;
            if o >= 0 && (o as usize) < oldsize && old[o as usize] == new[scan] {
                oldscore = oldscore.saturating_sub(1);
            }
            scan += 1;
        }
        if len != oldscore || scan == newsize {
            if scan < newsize && len > 0 {
                let want = lastpos + (scan - lastscan);
                pos = best_source(sa, old, &new[scan..], (at, len), want, look_ahead);
            }
            // Forward extension from the last match.
            let (mut s, mut sf, mut lenf) = (0isize, 0isize, 0usize);
            let mut i = 0usize;
            while lastscan + i < scan && lastpos + i < oldsize {
                if old[lastpos + i] == new[lastscan + i] {
                    s += 1;
                }
                i += 1;
                if s * 2 - i as isize > sf * 2 - lenf as isize {
                    sf = s;
                    lenf = i;
                }
            }
            // Backward extension from the new match.
            let mut lenb = 0usize;
            if scan < newsize {
                let (mut s, mut sb) = (0isize, 0isize);
                let mut i = 1usize;
                while scan >= lastscan + i && pos >= i {
                    if old[pos - i] == new[scan - i] {
                        s += 1;
                    }
                    if s * 2 - i as isize > sb * 2 - lenb as isize {
                        sb = s;
                        lenb = i;
                    }
                    i += 1;
                }
            }
            if lastscan + lenf > scan - lenb {
                let overlap = (lastscan + lenf) - (scan - lenb);
                let (mut s, mut ss, mut lens) = (0isize, 0isize, 0usize);
                for i in 0..overlap {
                    if new[lastscan + lenf - overlap + i] == old[lastpos + lenf - overlap + i] {
                        s += 1;
                    }
                    if new[scan - lenb + i] == old[pos - lenb + i] {
                        s -= 1;
                    }
                    if s > ss {
                        ss = s;
                        lens = i + 1;
                    }
                }
                lenf = lenf + lens - overlap;
                lenb -= lens;
            }
            let extra = (scan - lenb) - (lastscan + lenf);
            out.push(Record {
                copy: lenf as u64,
                extra: extra as u64,
                old: lastpos as u64,
            });
            lastscan = scan - lenb;
            lastpos = pos - lenb;
            lastoffset = pos as isize - scan as isize;
        }
    }
    monitor
        .done
        .fetch_add((newsize - reported) as u64, Ordering::Relaxed);
    out
}

/// Records covering all of `new`, matched against `old`, for each of
/// `thresholds`.
pub(crate) fn find_records(
    sa: &[i32],
    old: &[u8],
    new: &[u8],
    threads: usize,
    thresholds: &[usize],
    monitor: &Monitor,
    progress: &mut dyn Progress,
) -> Result<Vec<Vec<Record>>> {
    // Slices of at least 1 MiB, one per thread: each runs bsdiff's scan on
    // its own; the seams cost a record or two. All thresholds' slices share
    // the threads (a small image's thresholds run side by side).
    let parts = threads.clamp(1, (new.len() >> 20).max(1));
    let bounds: Vec<usize> = (0..=parts).map(|i| new.len() * i / parts).collect();
    let pieces = parallel_map(thresholds.len() * parts, threads, monitor, progress, |j| {
        let (threshold, part) = (thresholds[j / parts], j % parts);
        let (a, b) = (bounds[part], bounds[part + 1]);
        Ok(scan_range(sa, old, new, a, b, threshold, monitor))
    })?;
    pieces
        .chunks(parts)
        .map(|slices| {
            let records: Vec<Record> = slices.iter().flatten().copied().collect();
            let covered: u64 = records.iter().map(|r| r.copy + r.extra).sum();
            if covered != new.len() as u64 {
                return Err(Error::InvalidArgument(format!(
                    "internal error: matching covered {covered} of {} bytes",
                    new.len()
                )));
            }
            Ok(records)
        })
        .collect()
}

/// In-place: new block j may copy only old bytes that, shifted up by
/// `shift`, lie at or above block j + 1. Copies below that become literals.
pub(crate) fn restrict_in_place(records: &[Record], block: u32, shift: u64) -> Vec<Record> {
    let bs = u64::from(block);
    let mut out = Vec::with_capacity(records.len());
    let mut at = 0u64;
    for r in records {
        let (mut copy, mut old) = (r.copy, r.old);
        let mut pending_extra = 0u64;
        while copy > 0 {
            let b = at / bs;
            let room = (b + 1) * bs - at;
            let c = copy.min(room);
            let limit = ((b + 1) * bs).saturating_sub(shift);
            // Old positions [old, old + c) valid where >= limit.
            let bad = limit.saturating_sub(old).min(c);
            if bad > 0 {
                pending_extra += bad;
            }
            if c > bad {
                if pending_extra > 0 || out.is_empty() {
                    out.push(Record {
                        copy: 0,
                        extra: pending_extra,
                        old,
                    });
                    pending_extra = 0;
                }
                out.push(Record {
                    copy: c - bad,
                    extra: 0,
                    old: old + bad,
                });
            }
            at += c;
            old += c;
            copy -= c;
        }
        let extra = pending_extra + r.extra;
        match out.last_mut() {
            Some(last) => last.extra += extra,
            None => out.push(Record {
                copy: 0,
                extra,
                old: 0,
            }),
        }
        at += r.extra;
    }
    // Drop empty records left by the splitting.
    out.retain(|r| r.copy + r.extra > 0);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffix_array_is_sorted() {
        let text: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 13) as u8).collect();
        let sa = suffix_array(&text, 2).unwrap();
        assert_eq!(sa.len(), text.len());
        for w in sa.windows(2) {
            assert!(text[w[0] as usize..] < text[w[1] as usize..]);
        }
    }

    /// A piece found twice in the old image is copied from the copy nearer
    /// the previous record, whichever the suffix search ends on.
    #[test]
    fn equal_matches_copy_from_the_nearer_place() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut old: Vec<u8> = (0..100_000).map(|_| rng.u8(..)).collect();
        let piece: Vec<u8> = (0..60).map(|_| rng.u8(..)).collect();
        // The far copy's next byte sorts next to the new image's, so the
        // search ends on it.
        old[25_000..25_060].copy_from_slice(&piece);
        old[25_060] = 0xF0;
        old[80_000..80_060].copy_from_slice(&piece);
        old[80_060] = 0x81;
        let mut new = old[..20_000].to_vec();
        new.extend((0..30).map(|_| rng.u8(..)));
        new.extend_from_slice(&piece);
        new.push(0x80);
        new.extend((0..200).map(|_| rng.u8(..)));
        let sa = suffix_array(&old, 1).unwrap();
        let (len, at) = search(&sa, &old, &new[20_030..]);
        assert_eq!((len, sa[at]), (60, 80_000));
        let monitor = Monitor::new(1);
        let records = scan_range(&sa, &old, &new, 0, new.len(), 8, &monitor);
        let sources: Vec<u64> = records
            .iter()
            .filter(|r| r.copy >= 50)
            .map(|r| r.old)
            .collect();
        assert!(
            sources.iter().any(|o| (24_990..=25_000).contains(o)),
            "{records:?}"
        );
        assert!(
            !sources.iter().any(|o| (79_990..=80_000).contains(o)),
            "{records:?}"
        );
    }

    #[test]
    fn records_cover_new_exactly() {
        let old: Vec<u8> = (0..100_000u32).map(|i| (i * 31 % 251) as u8).collect();
        let mut new = old.clone();
        new.splice(5000..5000, b"inserted bytes".iter().copied());
        new[70_000] ^= 0x55;
        let sa = suffix_array(&old, 1).unwrap();
        let found = find_records(
            &sa,
            &old,
            &new,
            2,
            &[4, 8, 12],
            &Monitor::new(1),
            &mut otaflash_core::progress::NoProgress,
        )
        .unwrap();
        assert_eq!(found.len(), 3);
        for records in found {
            assert_eq!(
                records.iter().map(|r| r.copy + r.extra).sum::<u64>(),
                new.len() as u64
            );
            assert!(records.iter().map(|r| r.extra).sum::<u64>() < 100);
        }
    }
}
