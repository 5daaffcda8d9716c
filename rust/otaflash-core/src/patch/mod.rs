//! Delta patches: the otaflash patch format (sequential and in-place kinds),
//! BSDIFF40 and xdelta3's VCDIFF, applied while streaming with a fixed
//! working set (the foreign formats: a stated one).
//! `docs/patch-format.md` specifies the format.

mod apply;
mod body;
pub mod branches;
mod bsdiff;
pub mod format;
mod inplace;
mod predictor;
pub mod references;
mod vcdiff;

pub use apply::{
    Applier, ApplyOptions, ApplyReport, Checkpoint, DEFAULT_MAX_WORKING_SET, DEFAULT_READ_CACHE,
    OldCheck,
};
pub use body::working_set;
pub use format::{Compression, Header, Kind};
pub use inplace::{apply_in_place, in_place_steps};

/// Parses the header of a patch (otaflash, BSDIFF40 or VCDIFF) from its
/// first bytes.
pub fn inspect(head: &[u8]) -> crate::Result<PatchSummary> {
    if head.starts_with(vcdiff::VCDIFF_MAGIC) {
        return Ok(PatchSummary::Vcdiff {
            secondary: vcdiff::secondary_name(head),
        });
    }
    if head.starts_with(format::BSDIFF_MAGIC) {
        if head.len() < 32 {
            return Err(crate::Error::PatchCorrupt(
                "the BSDIFF40 header is truncated".into(),
            ));
        }
        let new = format::le_u64(head, 24);
        return Ok(PatchSummary::Bsdiff40 {
            new_size: new & !(1 << 63),
        });
    }
    Ok(PatchSummary::Otaflash(Header::decode(head)?))
}

/// First bytes that say all [`inspect`] and [`reference_rules`] tell: an
/// otaflash header and its reference map's head.
pub const INFO_HEAD_MAX: usize = format::MAX_HEADER_LEN + body::MAX_MAP_HEAD_LEN;

/// What an otaflash patch's reference map looks for (section 3.2's rules),
/// from the patch's first bytes ([`INFO_HEAD_MAX`] suffice): None when it
/// has no map or `head` ends inside the map's head.
pub fn reference_rules(head: &[u8], header: &Header) -> crate::Result<Option<references::Rules>> {
    if header.reference_pages == 0 {
        return Ok(None);
    }
    let body = head.get(header.encoded_len()..).unwrap_or_default();
    Ok(body::MapHead::parse(body, header)?.map(|h| h.rules))
}

/// How many first bytes of a patch make its header, known from the first
/// [`format::PREFIX_LEN`]: BSDIFF40's 32, ours from its length byte, VCDIFF
/// none beyond the prefix (it is read as it comes). Foreign or unreadable
/// prefixes are errors naming the problem.
pub fn head_len(head: &[u8]) -> crate::Result<usize> {
    if head.len() < format::PREFIX_LEN || head.starts_with(vcdiff::VCDIFF_MAGIC) {
        Ok(format::PREFIX_LEN)
    } else if head.starts_with(format::BSDIFF_MAGIC) {
        Ok(32)
    } else {
        format::header_len(head)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PatchSummary {
    Otaflash(Header),
    Bsdiff40 {
        new_size: u64,
    },
    /// Sizes are per window, so none for the whole; `secondary` names
    /// xdelta3's secondary compression ("none", "lzma", "djw", "fgk").
    Vcdiff {
        secondary: &'static str,
    },
}
