//! The streaming applier: patch bytes pushed in chunks of any size, the old
//! image read at offsets, the new image written sequentially in blocks.

use std::sync::Arc;

use sha2::digest::common::hazmat::{SerializableState, SerializedState};
use sha2::{Digest as _, Sha256};

use super::body::{self, BodyDecoder, Position};
use super::bsdiff::BsdiffApply;
use super::format::{
    BSDIFF_MAGIC, Header, Kind, MAX_HEADER_LEN, PREFIX_LEN, header_len, le_u32, le_u64,
};
use super::head_len;
use super::predictor::BackgroundPredictor;
use super::references::{MovesReader, ReferenceMap, Rules};
use super::vcdiff::{VCDIFF_MAGIC, VcdiffApply};
use crate::hash::background::{BackgroundSha256, SharedSha256, SourceSha256};
use crate::io::{ImageSink, ReadAt};
use crate::progress::{NoProgress, Operation, Progress, ProgressEvent};
use crate::{Error, Result};

/// Old-image reads are verified and cached in pieces of this size by default.
pub const DEFAULT_READ_CACHE: usize = 256 << 10;
/// The default ceiling on the applier's working memory.
pub const DEFAULT_MAX_WORKING_SET: usize = 4 << 20;
const CHECKPOINT_MAGIC: &[u8; 4] = b"OTCK";
/// Version 3 adds the reference map, 4 its absolute address, 5 its rules;
/// versions 2 to 4 are read too.
const CHECKPOINT_VERSION: u16 = 5;

#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// A patch whose decoding needs more working memory than this is refused
    /// before anything is written.
    pub max_working_set: usize,
    /// Bytes of the old image read at once (part of the working set).
    pub read_cache: usize,
    /// BSDIFF40 and VCDIFF only: memory their formats make an applier hold
    /// (BSDIFF40's control and diff streams until its extra stream arrives,
    /// a VCDIFF window and its output); a patch needing more is refused.
    pub legacy_buffer_limit: usize,
    /// Hash the new image on a second thread, one block behind the decoder,
    /// when the machine has a second core, the image is larger than a few
    /// blocks and the working-set limit has room for one more block.
    pub hash_thread: bool,
    /// Predict a patch's references (its reference map) on a second
    /// thread while the decoder goes on with the block, under the same
    /// conditions; the thread lends the read cache's buffer, so it needs a
    /// read cache of a block or more.
    pub reference_thread: bool,
    /// When the old image is checked against the patch's SHA-256.
    pub old_check: OldCheck,
}

/// When the applier checks the old image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OldCheck {
    /// Before the first byte goes to the sink: for sinks that cannot take
    /// output back (flash, a caller's stream).
    #[default]
    Before,
    /// On a second thread while the patch is applied, which saves a pass
    /// over the old image: only for a sink whose output is discarded unless
    /// `finish` returns Ok (a temporary file renamed afterwards). A wrong old
    /// image fails `feed` once the thread has hashed it, and `finish` always.
    /// Falls back to `Before` when the source cannot be read from another
    /// thread ([`ReadAt::reader_for_thread`]), on a resume, for images too
    /// small for helper threads (under four blocks: hashing costs less than
    /// a thread), or when the working-set limit has no room for the
    /// thread's buffer.
    Alongside,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        Self {
            max_working_set: DEFAULT_MAX_WORKING_SET,
            read_cache: DEFAULT_READ_CACHE,
            legacy_buffer_limit: 256 << 20,
            hash_thread: true,
            reference_thread: true,
            old_check: OldCheck::Before,
        }
    }
}

/// What a finished apply made.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApplyReport {
    pub format: &'static str,
    pub new_size: u64,
    pub new_sha256: [u8; 32],
    pub patch_size: u64,
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Hashes the old image and refuses it unless it is the one `header` names.
pub(crate) fn verify_old(
    old: &mut dyn ReadAt,
    header: &Header,
    progress: &mut dyn Progress,
) -> Result<()> {
    check_old_size(old, header)?;
    let mut job = SourceSha256::new(header.old_size, 1 << 20);
    let got = loop {
        let digest = job.step(old)?;
        progress.report(ProgressEvent {
            operation: Operation::Verify,
            done: job.done(),
            total: Some(header.old_size),
        })?;
        if let Some(digest) = digest {
            break digest;
        }
    };
    judge_old(header, old.size(), got)
}

fn check_old_size(old: &dyn ReadAt, header: &Header) -> Result<()> {
    if old.size() < header.old_size {
        return Err(wrong_old(header, old.size(), None));
    }
    Ok(())
}

fn judge_old(header: &Header, size: u64, got: [u8; 32]) -> Result<()> {
    if got != header.old_sha256 {
        return Err(wrong_old(header, size, Some(got)));
    }
    Ok(())
}

/// The old image's read buffer of an [`OldCheck::Alongside`] check (part of
/// the working set while it runs).
const OLD_CHECK_CHUNK: usize = 64 << 10;

/// The old image hashed while the patch is applied ([`OldCheck::Alongside`]):
/// the helper threads advance the hash when they have nothing more urgent
/// to do (the prediction thread and the new image's hashing thread between
/// blocks), or a thread of its own when neither runs; whatever is left when
/// the verdict is due, the caller hashes.
struct AsideCheck {
    hash: Arc<SharedSha256>,
    judged: bool,
}

impl AsideCheck {
    fn new(reader: Box<dyn ReadAt + Send>, header: &Header, own_thread: bool) -> Result<Self> {
        let hash = SharedSha256::new(reader, header.old_size, OLD_CHECK_CHUNK);
        if own_thread {
            let mine = Arc::clone(&hash);
            std::thread::Builder::new()
                .name("otaflash-old-sha256".into())
                .spawn(move || while mine.step() {})
                .map_err(|e| {
                    Error::InvalidArgument(format!(
                        "cannot start the old-image hashing thread: {e}"
                    ))
                })?;
        }
        Ok(Self {
            hash,
            judged: false,
        })
    }

    fn is_done(&self) -> bool {
        self.judged || self.hash.is_done()
    }

    /// Refuses an old image other than `header`'s (hashing what is left).
    fn verdict(&mut self, header: &Header, old_size: u64) -> Result<()> {
        if std::mem::replace(&mut self.judged, true) {
            return Ok(());
        }
        judge_old(header, old_size, self.hash.finish()?)
    }
}

impl Drop for AsideCheck {
    fn drop(&mut self) {
        self.hash.cancel();
    }
}

fn wrong_old(header: &Header, size: u64, got: Option<[u8; 32]>) -> Error {
    Error::PatchWrongOld {
        expected_size: header.old_size,
        expected_sha256: hex(&header.old_sha256),
        actual_size: size,
        actual_sha256: got.map(|g| hex(&g)),
    }
}

fn sha_state(h: &Sha256) -> Vec<u8> {
    h.serialize().to_vec()
}

fn sha_restore(bytes: &[u8]) -> Result<Sha256> {
    let state = SerializedState::<Sha256>::try_from(bytes)
        .map_err(|_| Error::InvalidArgument("the checkpoint's hash state is damaged".into()))?;
    Sha256::deserialize(&state)
        .map_err(|_| Error::InvalidArgument("the checkpoint's hash state is damaged".into()))
}

/// A resumable point: after a power cut, [`Applier::resume`] with these bytes
/// and the patch fed from [`Checkpoint::patch_offset`] reproduces the output
/// from [`Checkpoint::output_offset`] on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub header: Header,
    pub patch_offset: u64,
    pub output_offset: u64,
    pub frame_index: u32,
    new_state: Vec<u8>,
    /// The patch's reference map once read (section 3.2): a resume past the
    /// start of the body does not see it again.
    references: Option<ReferenceMap>,
}

impl Checkpoint {
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(MAX_HEADER_LEN + 64 + self.new_state.len());
        b.extend_from_slice(CHECKPOINT_MAGIC);
        b.extend_from_slice(&CHECKPOINT_VERSION.to_le_bytes());
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(&self.header.encode());
        b.extend_from_slice(&self.patch_offset.to_le_bytes());
        b.extend_from_slice(&self.output_offset.to_le_bytes());
        b.extend_from_slice(&self.frame_index.to_le_bytes());
        b.extend_from_slice(&(self.new_state.len() as u32).to_le_bytes());
        b.extend_from_slice(&self.new_state);
        if let Some(map) = &self.references {
            let moves = map.encode_moves();
            b.push(map.page_log());
            b.extend_from_slice(&(map.pages() as u32).to_le_bytes());
            let rules = map.rules();
            b.extend_from_slice(&rules.first().to_le_bytes());
            b.push(rules.byte());
            b.extend_from_slice(&(moves.len() as u32).to_le_bytes());
            b.extend_from_slice(&moves);
        }
        let crc = crc32fast::hash(&b);
        b.extend_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let bad = |what: &str| Error::InvalidArgument(format!("not a usable checkpoint: {what}"));
        if b.len() < 8 + PREFIX_LEN + 24 + 4 || &b[..4] != CHECKPOINT_MAGIC {
            return Err(bad("wrong magic or too short"));
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != le_u32(crc, 0) {
            return Err(bad("its checksum does not match"));
        }
        let version = u16::from_le_bytes([b[4], b[5]]);
        if !(2..=CHECKPOINT_VERSION).contains(&version) {
            return Err(bad("unknown version"));
        }
        let header_end = 8 + header_len(&body[8..])?;
        let header = Header::decode(body.get(8..header_end).ok_or_else(|| bad("short"))?)?;
        let fixed = body
            .get(header_end..header_end + 24)
            .ok_or_else(|| bad("short"))?;
        let patch_offset = le_u64(fixed, 0);
        let output_offset = le_u64(fixed, 8);
        let frame_index = le_u32(fixed, 16);
        let state_len = le_u32(fixed, 20) as usize;
        let state_end = header_end + 24 + state_len;
        let new_state = body
            .get(header_end + 24..state_end)
            .ok_or_else(|| bad("its hash state has the wrong length"))?
            .to_vec();
        let rest = &body[state_end..];
        let references = match rest {
            [] => None,
            [page_log, rest @ ..] if version >= 3 && rest.len() >= 8 => {
                let pages = le_u32(rest, 0);
                let short = || bad("its reference map has the wrong length");
                // Version 4 adds the absolute address of old offset 0, 5
                // the rules byte.
                let (rules, rest) = match version {
                    3 => (Rules::x86(0, header.old_size)?, rest),
                    4 => (
                        Rules::x86(u64::from(le_u32(rest, 4)), header.old_size)?,
                        &rest[4..],
                    ),
                    _ => {
                        let byte = *rest.get(8).ok_or_else(short)?;
                        let first = u64::from(le_u32(rest, 4));
                        (Rules::decode(byte, first, header.old_size)?, &rest[5..])
                    }
                };
                let moves = rest
                    .get(8..)
                    .filter(|m| m.len() == le_u32(rest, 4) as usize);
                let moves = moves.ok_or_else(short)?;
                let mut reader =
                    MovesReader::new(*page_log, u64::from(pages), header.old_size, rules)?;
                reader.take(moves)?;
                Some(reader.finish()?)
            }
            _ => return Err(bad("it has bytes after its hash state")),
        };
        let header_len = header.encoded_len() as u64;
        if patch_offset < header_len
            || patch_offset - header_len > header.body_size
            || output_offset > header.new_size
            || frame_index > header.frame_count
        {
            return Err(bad("its offsets do not fit its patch"));
        }
        Ok(Self {
            header,
            patch_offset,
            output_offset,
            frame_index,
            new_state,
            references,
        })
    }
}

/// The new image's SHA-256, on this thread or on its own.
enum OutputHash {
    Inline(Sha256),
    Background(BackgroundSha256),
}

impl OutputHash {
    /// With a hashing thread, that thread also advances `side` between
    /// blocks.
    fn new(
        hasher: Sha256,
        header: &Header,
        helpers: Helpers,
        side: Option<Arc<SharedSha256>>,
    ) -> Result<Self> {
        if helpers.hash_thread {
            let block = header.block_size as usize;
            Ok(Self::Background(BackgroundSha256::spawn(
                hasher, block, side,
            )?))
        } else {
            Ok(Self::Inline(hasher))
        }
    }

    fn update(&mut self, block: &[u8]) -> Result<()> {
        match self {
            Self::Inline(h) => h.update(block),
            Self::Background(h) => h.update(block)?,
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<u8>> {
        match self {
            Self::Inline(h) => Ok(sha_state(h)),
            Self::Background(h) => h.state(),
        }
    }

    fn finalize(self) -> Result<[u8; 32]> {
        match self {
            Self::Inline(h) => Ok(h.finalize().into()),
            Self::Background(h) => h.finalize(),
        }
    }
}

/// Images of fewer blocks than this are hashed, checked and predicted
/// inline: a thread would cost more than it saves.
const HELPER_MIN_BLOCKS: u64 = 4;

/// The threads that work beside the decoder, chosen once per apply: each
/// needs a second core and room under the working-set limit (the new
/// image's hash first, for it saves the most).
#[derive(Clone, Copy, Debug)]
struct Helpers {
    hash_thread: bool,
    old_alongside: bool,
    reference_thread: bool,
    working_set: usize,
}

impl Helpers {
    fn choose(header: &Header, options: &ApplyOptions, old_readable_aside: bool) -> Self {
        let block = header.block_size as usize;
        let mut working_set = body::working_set(header, options.read_cache);
        // Small images get no helper (nor the look at the cgroup's CPUs).
        let helped = header.new_size >= HELPER_MIN_BLOCKS * u64::from(header.block_size)
            && std::thread::available_parallelism().is_ok_and(|n| n.get() > 1);
        let hash_thread =
            options.hash_thread && helped && working_set + block <= options.max_working_set;
        if hash_thread {
            working_set += block;
        }
        let old_alongside = options.old_check == OldCheck::Alongside
            && old_readable_aside
            && helped
            && working_set + OLD_CHECK_CHUNK <= options.max_working_set;
        if old_alongside {
            working_set += OLD_CHECK_CHUNK;
        }
        // The thread's memory takes the read cache's place.
        let aside =
            working_set - options.read_cache + body::aside_working_set(header, options.read_cache);
        let reference_thread = options.reference_thread
            && header.reference_pages > 0
            && helped
            && aside <= options.max_working_set;
        if reference_thread {
            working_set = aside;
        }
        Self {
            hash_thread,
            old_alongside,
            reference_thread,
            working_set,
        }
    }
}

struct OursState {
    header: Header,
    /// Where the body starts in the patch.
    header_len: u64,
    body: BodyDecoder,
    new_hash: OutputHash,
    helpers: Helpers,
    /// The old image's check while it runs beside the decoder.
    old_check: Option<AsideCheck>,
    /// The output hash at the decoder's last frame boundary.
    boundary: (Position, Vec<u8>),
}

enum Mode {
    /// Collecting the first bytes to tell the format.
    Head(Vec<u8>),
    Ours(Box<OursState>),
    Bsdiff(Box<BsdiffApply>),
    Vcdiff(Box<VcdiffApply>),
    Finished,
    /// A previous error makes every later call fail the same way.
    Failed(String),
}

/// Applies a patch pushed in chunks: `feed` as bytes arrive, then `finish`.
///
/// The header is checked, and the old image hashed and compared with the
/// one the patch was made for, before the first byte goes to the sink. The
/// new image's SHA-256 is checked in `finish`; until `finish` returns Ok,
/// what the sink holds is unverified.
pub struct Applier<R: ReadAt, W: ImageSink> {
    old: R,
    sink: W,
    options: ApplyOptions,
    mode: Mode,
    fed: u64,
    resume: Option<Checkpoint>,
    working_set: Option<usize>,
}

impl<R: ReadAt, W: ImageSink> std::fmt::Debug for Applier<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Applier").field("fed", &self.fed).finish()
    }
}

impl<R: ReadAt, W: ImageSink> Applier<R, W> {
    pub fn new(old: R, sink: W, options: ApplyOptions) -> Self {
        Self {
            old,
            sink,
            options,
            mode: Mode::Head(Vec::with_capacity(MAX_HEADER_LEN)),
            fed: 0,
            resume: None,
            working_set: None,
        }
    }

    /// Continues an apply from `checkpoint` (from [`Applier::checkpoint`]).
    /// The sink must continue at `checkpoint.output_offset` (e.g.
    /// `FileSink::resume_at`), and the patch must be fed from
    /// `checkpoint.patch_offset`. The old image is verified again first.
    pub fn resume(old: R, sink: W, checkpoint: &[u8], options: ApplyOptions) -> Result<Self> {
        let cp = Checkpoint::from_bytes(checkpoint)?;
        let mut applier = Self::new(old, sink, options);
        applier.fed = cp.patch_offset;
        applier.resume = Some(cp);
        Ok(applier)
    }

    /// Where in the patch the next `feed` continues (0 for a fresh apply).
    pub fn patch_offset(&self) -> u64 {
        self.fed
    }

    pub fn header(&self) -> Option<&Header> {
        match &self.mode {
            Mode::Ours(s) => Some(&s.header),
            _ => None,
        }
    }

    /// Output bytes handed to the sink so far.
    pub fn output_offset(&self) -> u64 {
        match &self.mode {
            Mode::Ours(s) => s.body.out_pos(),
            Mode::Bsdiff(b) => b.out_pos(),
            Mode::Vcdiff(v) => v.out_pos(),
            _ => 0,
        }
    }

    /// Working memory of this apply, once the header is known.
    pub fn working_set(&self) -> Option<usize> {
        match &self.mode {
            Mode::Ours(s) => Some(s.helpers.working_set),
            Mode::Bsdiff(b) => Some(b.working_set()),
            Mode::Vcdiff(v) => Some(v.working_set()),
            _ => self.working_set,
        }
    }

    /// The latest resumable point (a frame boundary), or None before the
    /// first. It is valid once the sink has durably stored
    /// `output_offset` bytes; BSDIFF40 patches have none.
    pub fn checkpoint(&self) -> Option<Checkpoint> {
        let Mode::Ours(s) = &self.mode else {
            return None;
        };
        let (pos, new_state) = &s.boundary;
        Some(Checkpoint {
            header: s.header.clone(),
            patch_offset: s.header_len + pos.body_pos,
            output_offset: pos.out_pos,
            frame_index: pos.frame_index,
            new_state: new_state.clone(),
            references: (pos.body_pos > 0)
                .then(|| s.body.reference_map().cloned())
                .flatten(),
        })
    }

    pub fn into_parts(self) -> (R, W) {
        (self.old, self.sink)
    }

    pub fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        self.feed_with(chunk, &mut NoProgress)
    }

    /// Pushes the next patch bytes. Progress hears `Verify` while the old
    /// image is checked and `Patch` (output bytes) as blocks are written.
    pub fn feed_with(&mut self, chunk: &[u8], progress: &mut dyn Progress) -> Result<()> {
        if let Mode::Failed(why) = &self.mode {
            return Err(Error::InvalidArgument(format!(
                "this apply already failed: {why}"
            )));
        }
        let result = self.feed_inner(chunk, progress);
        if let Err(e) = &result
            && !matches!(e, Error::Callback(_) | Error::Cancelled)
        {
            self.mode = Mode::Failed(e.to_string());
        }
        result
    }

    fn feed_inner(&mut self, mut chunk: &[u8], progress: &mut dyn Progress) -> Result<()> {
        if let Mode::Head(buf) = &mut self.mode {
            if let Some(cp) = self.resume.take() {
                self.mode = Mode::Ours(Box::new(self.start_resumed(cp, progress)?));
            } else {
                if buf.starts_with(VCDIFF_MAGIC) {
                    // Self-delimiting from its first byte: no header to collect.
                    let head = std::mem::take(buf);
                    self.mode = Mode::Vcdiff(Box::new(VcdiffApply::new(&self.options)));
                    self.fed -= head.len() as u64;
                    self.feed_inner(&head, progress)?;
                    return self.feed_inner(chunk, progress);
                }
                let need = head_len(buf)?;
                let take = (need - buf.len()).min(chunk.len());
                buf.extend_from_slice(&chunk[..take]);
                chunk = &chunk[take..];
                self.fed += take as u64;
                if buf.len() < need {
                    return Ok(());
                }
                if need == PREFIX_LEN {
                    return self.feed_inner(chunk, progress);
                }
                let head = std::mem::take(buf);
                if head.starts_with(BSDIFF_MAGIC) {
                    self.mode =
                        Mode::Bsdiff(Box::new(BsdiffApply::new(&head, &self.old, &self.options)?));
                } else {
                    self.mode = Mode::Ours(Box::new(self.start(&head, progress)?));
                }
            }
        }
        match &mut self.mode {
            Mode::Ours(state) => {
                let left = state.header.body_size - (self.fed - state.header_len);
                if chunk.len() as u64 > left {
                    return Err(Error::PatchCorrupt(format!(
                        "it is longer than its header says ({} bytes past the end)",
                        chunk.len() as u64 - left
                    )));
                }
                self.fed += chunk.len() as u64;
                feed_ours(state, chunk, &mut self.old, &mut self.sink, progress)
            }
            Mode::Bsdiff(b) => {
                self.fed += chunk.len() as u64;
                b.feed(chunk, &mut self.old, &mut self.sink, progress)
            }
            Mode::Vcdiff(v) => {
                self.fed += chunk.len() as u64;
                v.feed(chunk, &mut self.old, &mut self.sink, progress)
            }
            Mode::Finished => Err(Error::InvalidArgument(
                "this apply has already finished".into(),
            )),
            Mode::Head(_) | Mode::Failed(_) => Ok(()),
        }
    }

    fn start(&mut self, head: &[u8], progress: &mut dyn Progress) -> Result<OursState> {
        let header = Header::decode(head)?;
        if header.kind != Kind::Sequential {
            return Err(Error::PatchUnsupported(format!(
                "this is an {} patch: apply it to its slot with the in-place applier",
                header.kind.name()
            )));
        }
        self.check_budget(&header)?;
        let aside = match self.options.old_check {
            OldCheck::Alongside => self.old.reader_for_thread(),
            OldCheck::Before => None,
        };
        let helpers = Helpers::choose(&header, &self.options, aside.is_some());
        let old_check = match aside {
            Some(reader) if helpers.old_alongside => {
                check_old_size(&self.old, &header)?;
                let own_thread = !helpers.hash_thread && !helpers.reference_thread;
                Some(AsideCheck::new(reader, &header, own_thread)?)
            }
            _ => {
                verify_old(&mut self.old, &header, progress)?;
                None
            }
        };
        let side = old_check.as_ref().map(|c| Arc::clone(&c.hash));
        let pos = Position {
            body_pos: 0,
            out_pos: 0,
            frame_index: 0,
        };
        let mut body = BodyDecoder::new(&header, self.options.read_cache, pos, None)?;
        if helpers.reference_thread {
            body.predict_aside(BackgroundPredictor::spawn(side.clone())?);
        }
        let boundary = (pos, sha_state(&Sha256::new()));
        let new_hash = OutputHash::new(Sha256::new(), &header, helpers, side)?;
        Ok(OursState {
            header_len: head.len() as u64,
            header,
            body,
            new_hash,
            helpers,
            old_check,
            boundary,
        })
    }

    fn start_resumed(&mut self, cp: Checkpoint, progress: &mut dyn Progress) -> Result<OursState> {
        let header = cp.header.clone();
        self.check_budget(&header)?;
        verify_old(&mut self.old, &header, progress)?;
        let header_len = header.encoded_len() as u64;
        let pos = Position {
            body_pos: cp.patch_offset - header_len,
            out_pos: cp.output_offset,
            frame_index: cp.frame_index,
        };
        let mut body = BodyDecoder::new(&header, self.options.read_cache, pos, cp.references)?;
        let helpers = Helpers::choose(&header, &self.options, false);
        if helpers.reference_thread {
            body.predict_aside(BackgroundPredictor::spawn(None)?);
        }
        let new_hash = OutputHash::new(sha_restore(&cp.new_state)?, &header, helpers, None)?;
        Ok(OursState {
            header,
            header_len,
            body,
            new_hash,
            helpers,
            old_check: None,
            boundary: (pos, cp.new_state),
        })
    }

    fn check_budget(&self, header: &Header) -> Result<()> {
        let need = body::working_set(header, self.options.read_cache);
        if need > self.options.max_working_set {
            return Err(Error::PatchUnsupported(format!(
                "this patch needs {} KiB of working memory, the limit is {} KiB \
                 (make the patch with a smaller block size or window)",
                need.div_ceil(1024),
                self.options.max_working_set / 1024
            )));
        }
        Ok(())
    }

    /// The patch is complete: checks it all, verifies the new image and
    /// finishes the sink. Only an Ok here means the output is good.
    pub fn finish(&mut self) -> Result<ApplyReport> {
        self.finish_with(&mut NoProgress)
    }

    pub fn finish_with(&mut self, progress: &mut dyn Progress) -> Result<ApplyReport> {
        let mode = std::mem::replace(&mut self.mode, Mode::Finished);
        let result = self.finish_mode(mode, progress);
        if let Err(e) = &result {
            self.mode = Mode::Failed(e.to_string());
        }
        result
    }

    fn finish_mode(&mut self, mode: Mode, progress: &mut dyn Progress) -> Result<ApplyReport> {
        self.working_set = match &mode {
            Mode::Ours(s) => Some(s.helpers.working_set),
            Mode::Bsdiff(b) => Some(b.working_set()),
            Mode::Vcdiff(v) => Some(v.working_set()),
            _ => self.working_set,
        };
        match mode {
            Mode::Head(buf) => Err(if self.resume.is_some() {
                Error::PatchCorrupt("no patch bytes were fed after the checkpoint".into())
            } else {
                Error::PatchCorrupt(format!(
                    "it is truncated: it ended after {} bytes, inside its header",
                    buf.len()
                ))
            }),
            Mode::Ours(state) => {
                let OursState {
                    header,
                    header_len,
                    body,
                    new_hash,
                    old_check,
                    ..
                } = *state;
                // A wrong old image explains everything after it: first.
                if let Some(mut check) = old_check {
                    check.verdict(&header, self.old.size())?;
                }
                let body_seen = self.fed - header_len;
                if body_seen < header.body_size || !body.is_complete() {
                    return Err(Error::PatchCorrupt(format!(
                        "it is truncated: it ended after {} of its {} bytes",
                        self.fed,
                        header_len + header.body_size
                    )));
                }
                let new_digest = new_hash.finalize()?;
                if new_digest != header.new_sha256 {
                    return Err(Error::Verify {
                        subject: "patched image".into(),
                        what: "sha256".into(),
                        expected: hex(&header.new_sha256),
                        actual: hex(&new_digest),
                    });
                }
                self.sink.finish()?;
                progress.report(ProgressEvent {
                    operation: Operation::Patch,
                    done: header.new_size,
                    total: Some(header.new_size),
                })?;
                Ok(ApplyReport {
                    format: "otaflash",
                    new_size: header.new_size,
                    new_sha256: new_digest,
                    patch_size: self.fed,
                })
            }
            Mode::Bsdiff(mut b) => {
                let report = b.finish(&mut self.old, &mut self.sink, progress)?;
                self.sink.finish()?;
                Ok(ApplyReport {
                    patch_size: self.fed,
                    ..report
                })
            }
            Mode::Vcdiff(mut v) => {
                let report = v.finish(progress)?;
                self.sink.finish()?;
                Ok(ApplyReport {
                    patch_size: self.fed,
                    ..report
                })
            }
            Mode::Finished => Err(Error::InvalidArgument(
                "this apply has already finished".into(),
            )),
            Mode::Failed(why) => Err(Error::InvalidArgument(format!(
                "this apply already failed: {why}"
            ))),
        }
    }
}

fn feed_ours(
    state: &mut OursState,
    chunk: &[u8],
    old: &mut dyn ReadAt,
    sink: &mut dyn ImageSink,
    progress: &mut dyn Progress,
) -> Result<()> {
    let total = state.header.new_size;
    let OursState {
        header,
        body,
        new_hash,
        boundary,
        old_check,
        ..
    } = state;
    // Feed the decoder piecewise so the output hash can be captured exactly
    // at each frame boundary.
    let mut rest = chunk;
    while !rest.is_empty() {
        let before = body.boundary();
        let mut emit = |offset: u64, block: &[u8]| -> Result<()> {
            new_hash.update(block)?;
            sink.write(block)?;
            progress.report(ProgressEvent {
                operation: Operation::Patch,
                done: offset + block.len() as u64,
                total: Some(total),
            })
        };
        let step = frame_step(body, rest.len());
        let (piece, tail) = rest.split_at(step);
        body.push(piece, old, &mut emit)?;
        rest = tail;
        let after = body.boundary();
        if after != before {
            *boundary = (after, new_hash.state()?);
            if let Some(check) = old_check.as_mut().filter(|c| c.is_done()) {
                check.verdict(header, old.size())?;
            }
        }
    }
    Ok(())
}

/// How many of `avail` bytes to push so that a frame boundary, if reached,
/// falls at the end of the push.
fn frame_step(body: &BodyDecoder, avail: usize) -> usize {
    body.bytes_to_boundary()
        .map_or(avail, |n| n.clamp(1, avail as u64) as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::patch::references::Absolute;

    #[test]
    fn checkpoints_keep_the_map_and_read_version_3_and_4_blobs() {
        let old: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut new = old.clone();
        new[100] ^= 1;
        let patch =
            otaflash_diff::diff(&old, &new, &otaflash_diff::DiffOptions::default()).unwrap();
        let header = Header::decode(&patch).unwrap();
        let moves = vec![0, 40, 40];
        let thumb = Rules {
            x86: false,
            thumb: true,
            absolute: Absolute::new(0, 4096),
        };
        for rules in [
            Rules::x86(0, 4096).unwrap(),
            Rules::x86(0x40_0000, 4096).unwrap(),
            thumb,
        ] {
            let checkpoint = Checkpoint {
                header: header.clone(),
                patch_offset: header.encoded_len() as u64,
                output_offset: 0,
                frame_index: 0,
                new_state: sha_state(&Sha256::new()),
                references: Some(ReferenceMap::new(6, moves.clone(), 4096, rules)),
            };
            let blob = checkpoint.to_bytes();
            let read = Checkpoint::from_bytes(&blob).unwrap();
            assert_eq!(read.references, checkpoint.references);
            // Version 4 wrote no rules byte after the address, version 3 no
            // address after the page count: both were x86 maps.
            let map_at = blob.len() - 4 - (1 + 4 + 4 + 1 + 4 + 3);
            let older = |version: u16, cut: std::ops::Range<usize>| {
                let mut b = [&blob[..cut.start], &blob[cut.end..blob.len() - 4]].concat();
                b[4..6].copy_from_slice(&version.to_le_bytes());
                b.extend_from_slice(&crc32fast::hash(&b).to_le_bytes());
                Checkpoint::from_bytes(&b).unwrap().references
            };
            if rules.x86 {
                assert_eq!(older(4, map_at + 9..map_at + 10), checkpoint.references);
            }
            assert_eq!(
                older(3, map_at + 5..map_at + 10),
                Some(ReferenceMap::new(
                    6,
                    moves.clone(),
                    4096,
                    Rules::x86(0, 4096).unwrap()
                ))
            );
        }
    }
}
