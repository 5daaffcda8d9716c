//! The device end of the otaflash serial protocol (`otaflash agent`).
//!
//! It answers HELLO, switches baud rate on request, and receives a stream —
//! a full image, or a patch it applies to its own current image — into a
//! [`Slot`]. Frames are taken strictly in order (go-back-N): anything out
//! of order is dropped and NAKed, so the agent buffers nothing beyond one
//! frame, and memory stays at one inflate window (32 KiB) plus small
//! buffers whatever the image size. Resume points are made durable every
//! `checkpoint_every` bytes; at the end the whole image is read back from
//! the slot and hashed, and it becomes current only when the hash matches.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use flate2::{Decompress, FlushDecompress, Status};

use super::delta::{DeltaEngine, PatchApplier};
use super::frame::{self, FrameReader};
use super::link::Link;
use super::message::{
    AgentInfo, Begin, BlockStart, DEFAULT_MAX_PAYLOAD, Encoding, ErrorCode, MAX_BODY,
    MAX_PAYLOAD_LIMIT, Message, StreamKind, VERSION, caps,
};
use super::sha256_of;
use super::slot::{Slot, SlotWriter};
use crate::flash::ImageInfo;
use crate::progress::{CancelToken, Operation, Progress, ProgressEvent};
use crate::{Error, Result};

#[derive(Clone, Debug)]
pub struct AgentOptions {
    /// The rate the agent listens at; it comes back to it when a host goes quiet.
    pub baud: u32,
    /// The highest rate it agrees to switch to.
    pub max_baud: u32,
    pub max_payload: u16,
    /// Bytes a host may have in flight: keep it within the port's receive buffer.
    pub window: u32,
    pub max_block: u32,
    /// Stream bytes between durable resume points.
    pub checkpoint_every: u64,
    /// Return after the first transfer that reaches its end.
    pub once: bool,
    /// Back to `baud` after this long without a valid frame at another rate.
    pub idle_revert: Duration,
}

impl Default for AgentOptions {
    fn default() -> Self {
        Self {
            baud: 115_200,
            max_baud: 4_000_000,
            max_payload: DEFAULT_MAX_PAYLOAD,
            window: 16 * 1024,
            max_block: 1 << 20,
            checkpoint_every: 64 * 1024,
            once: false,
            idle_revert: Duration::from_secs(2),
        }
    }
}

/// What one transfer ended as.
#[derive(Clone, Debug, PartialEq)]
pub struct TransferReport {
    pub kind: StreamKind,
    pub stream_size: u64,
    pub image_size: u64,
    /// SHA-256 of the image as read back from the target.
    pub sha256: [u8; 32],
    /// The read-back matched and the image is now current.
    pub verified: bool,
    pub resumed_from: u64,
    pub frames: u64,
    pub crc_errors: u64,
    pub seconds: f64,
}

enum Output {
    Image(Box<dyn SlotWriter>),
    Delta(Box<dyn PatchApplier>),
}

impl Output {
    fn write(&mut self, data: &[u8]) -> Result<()> {
        match self {
            Self::Image(writer) => writer.write(data),
            Self::Delta(applier) => applier.feed(data),
        }
    }
}

struct Block {
    start: BlockStart,
    produced: u64,
    inflater: Option<Decompress>,
    /// The compressed stream reached its end marker.
    stream_ended: bool,
    /// The frame that closes the block arrived and checked out.
    ended: bool,
}

struct Transfer {
    session: u16,
    begin: Begin,
    reply: Message,
    next_seq: u32,
    /// Stream bytes in completed blocks.
    offset: u64,
    block: Option<Block>,
    output: Output,
    last_checkpoint: u64,
    /// The sequence number last NAKed, and the highest one seen since.
    nak: Option<(u32, u32)>,
    resumed_from: u64,
    frames: u64,
    started: Instant,
}

/// A failure to report to the host in an ERROR frame.
struct Refusal {
    code: ErrorCode,
    message: String,
}

impl Refusal {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn from_error(code: ErrorCode, error: &Error) -> Self {
        // Cancellation and callback errors are not the host's business.
        Self::new(code, error.to_string())
    }
}

/// Who is to blame for a failed write: the storage, or (for a delta) the patch.
fn output_error_code(error: &Error, kind: StreamKind) -> ErrorCode {
    let storage = matches!(
        error,
        Error::Io { .. } | Error::Flash { .. } | Error::Geometry(_) | Error::Slot(_)
    );
    if storage || kind == StreamKind::Image {
        ErrorCode::Flash
    } else {
        ErrorCode::Patch
    }
}

/// Serves hosts on `link` until cancelled, the link fails, or (with
/// `options.once`) one transfer has ended. `on_transfer` hears every
/// transfer that reached its end, verified or not.
#[allow(clippy::too_many_arguments)]
pub fn serve(
    link: &mut dyn Link,
    slot: &mut dyn Slot,
    delta: Option<&dyn DeltaEngine>,
    options: &AgentOptions,
    progress: &mut dyn Progress,
    cancel: &CancelToken,
    on_transfer: &mut dyn FnMut(&TransferReport) -> Result<()>,
) -> Result<()> {
    let max_payload = options.max_payload.clamp(64, MAX_PAYLOAD_LIMIT);
    let info = AgentInfo {
        version: VERSION,
        max_payload,
        window: options.window.max(u32::from(max_payload) * 2),
        max_block: options.max_block.max(4096),
        max_baud: options.max_baud,
        caps: caps::DEFLATE | if delta.is_some() { caps::DELTA } else { 0 },
        target: slot.describe(),
    };
    let mut agent = Agent {
        link,
        slot,
        delta,
        options,
        info,
        reader: FrameReader::new(MAX_BODY),
        inbox: VecDeque::new(),
        session: None,
        baud: options.baud,
        last_valid: Instant::now(),
        transfer: None,
        finished: None,
        out: Vec::with_capacity(256),
    };
    agent.run(progress, cancel, on_transfer)
}

struct Agent<'a> {
    link: &'a mut dyn Link,
    slot: &'a mut dyn Slot,
    delta: Option<&'a dyn DeltaEngine>,
    options: &'a AgentOptions,
    info: AgentInfo,
    reader: FrameReader,
    inbox: VecDeque<Vec<u8>>,
    session: Option<u16>,
    baud: u32,
    last_valid: Instant,
    transfer: Option<Transfer>,
    /// The last RESULT, re-sent when its END is repeated.
    finished: Option<Message>,
    out: Vec<u8>,
}

const POLL: Duration = Duration::from_millis(100);
const INFLATE_CHUNK: usize = 16 * 1024;

impl Agent<'_> {
    fn run(
        &mut self,
        progress: &mut dyn Progress,
        cancel: &CancelToken,
        on_transfer: &mut dyn FnMut(&TransferReport) -> Result<()>,
    ) -> Result<()> {
        let mut buf = vec![0u8; 4096];
        loop {
            cancel.check()?;
            // Checked whatever arrives: bytes at a rate we left behind are
            // garbage, not a sign that the host is still there.
            self.idle()?;
            let n = self.link.read(&mut buf, POLL)?;
            if n == 0 {
                continue;
            }
            self.reader
                .push(buf.get(..n).unwrap_or_default(), &mut self.inbox);
            while let Some(body) = self.inbox.pop_front() {
                let Some(message) = Message::decode(&body) else {
                    continue;
                };
                self.last_valid = Instant::now();
                if let Some(report) = self.handle(message, progress)? {
                    on_transfer(&report)?;
                    if self.options.once {
                        return Ok(());
                    }
                }
            }
        }
    }

    /// No valid frame for a while: fall back to the listening rate if a
    /// host switched rates and went away.
    fn idle(&mut self) -> Result<()> {
        if self.baud != self.options.baud && self.last_valid.elapsed() >= self.options.idle_revert {
            self.link.set_baud_rate(self.options.baud)?;
            self.baud = self.options.baud;
            self.reader.reset();
            self.link.discard_input()?;
        }
        Ok(())
    }

    fn send(&mut self, message: &Message) -> Result<()> {
        self.out.clear();
        frame::encode(&message.encode(), &mut self.out);
        self.link.write_all(&self.out)
    }

    fn refuse(&mut self, session: u16, refusal: Refusal) -> Result<()> {
        self.send(&Message::Error {
            session,
            code: refusal.code,
            message: refusal.message,
        })
    }

    fn handle(
        &mut self,
        message: Message,
        progress: &mut dyn Progress,
    ) -> Result<Option<TransferReport>> {
        let session = message.session();
        if let Message::Hello { session } = message {
            if self.session != Some(session) {
                self.abandon_transfer()?;
                self.session = Some(session);
                self.finished = None;
            }
            let info = self.info.clone();
            self.send(&Message::HelloReply { session, info })?;
            return Ok(None);
        }
        if self.session != Some(session) {
            return Ok(None); // a stale frame from an earlier host run
        }
        match message {
            Message::SetBaud { baud, .. } => self.set_baud(session, baud)?,
            Message::Ping { token, .. } => self.send(&Message::Pong { session, token })?,
            Message::Begin { begin, .. } => {
                if let Err(refusal) = self.begin(session, begin) {
                    self.refuse(session, refusal)?;
                }
            }
            Message::Data {
                seq,
                start,
                end,
                payload,
                ..
            } => {
                if let Err(refusal) = self.data(seq, start, end, &payload, progress) {
                    self.drop_transfer();
                    self.refuse(session, refusal)?;
                }
            }
            Message::End { frames, .. } => match self.end(session, frames, progress) {
                Ok(report) => return Ok(report),
                Err(refusal) => {
                    self.drop_transfer();
                    self.refuse(session, refusal)?;
                }
            },
            Message::Abort { .. } => self.abandon_transfer()?,
            _ => {}
        }
        Ok(None)
    }

    fn set_baud(&mut self, session: u16, baud: u32) -> Result<()> {
        if !(1200..=self.options.max_baud).contains(&baud) {
            return self.refuse(
                session,
                Refusal::new(
                    ErrorCode::Unsupported,
                    format!(
                        "cannot switch to {baud} baud (this agent goes up to {})",
                        self.options.max_baud
                    ),
                ),
            );
        }
        self.send(&Message::BaudOk { session, baud })?;
        self.link.drain()?;
        // Many USB-serial drivers return from drain while the adapter still
        // holds bytes: give the reply time to leave at the old rate.
        let reply_time = Duration::from_secs_f64(40.0 * 10.0 / f64::from(self.baud.max(1200)));
        std::thread::sleep(reply_time.max(Duration::from_millis(20)));
        if self.link.set_baud_rate(baud).is_ok() {
            self.baud = baud;
        }
        // If the switch failed the host's PING goes unanswered and it falls back.
        self.reader.reset();
        Ok(())
    }

    /// A transfer failed. A patch's partial output is dropped (a patch
    /// restarts from its start anyway); an image's stays as a resume point.
    fn drop_transfer(&mut self) {
        let Some(transfer) = self.transfer.take() else {
            return;
        };
        let delta = transfer.begin.kind == StreamKind::Delta;
        drop(transfer); // the writer stops before the slot is touched again
        if delta {
            // Best effort: the old image stays current either way.
            let _ = self.slot.discard();
        }
    }

    /// A host went away mid-transfer: keep what was written of an image as
    /// a resume point (a patch restarts from its start: drop its output).
    fn abandon_transfer(&mut self) -> Result<()> {
        if let Some(mut transfer) = self.transfer.take() {
            match &mut transfer.output {
                Output::Image(writer)
                    if transfer.offset + transfer.block.as_ref().map_or(0, |b| b.produced)
                        > transfer.last_checkpoint =>
                {
                    // Best effort: the durable checkpoint from before stays valid if this fails.
                    let _ = writer.checkpoint();
                }
                Output::Image(_) => {}
                Output::Delta(_) => {
                    drop(transfer);
                    let _ = self.slot.discard();
                }
            }
        }
        Ok(())
    }

    fn begin(&mut self, session: u16, begin: Begin) -> std::result::Result<(), Refusal> {
        if let Some(transfer) = &self.transfer
            && transfer.session == session
            && transfer.begin == begin
            && transfer.next_seq == 0
        {
            // Our reply was lost; say it again.
            let reply = transfer.reply.clone();
            return self
                .send(&reply)
                .map_err(|e| Refusal::from_error(ErrorCode::Other, &e));
        }
        self.abandon_transfer()
            .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?;
        self.finished = None;
        if begin.block_size == 0 || begin.block_size > self.info.max_block {
            return Err(Refusal::new(
                ErrorCode::Unsupported,
                format!(
                    "blocks of {} bytes are not supported (at most {})",
                    begin.block_size, self.info.max_block
                ),
            ));
        }
        let id = begin.stream_sha256;
        let (output, resumed_from, prefix) = match begin.kind {
            StreamKind::Image => {
                if begin.stream_size != begin.image_size
                    || begin.stream_sha256 != begin.image_sha256
                {
                    return Err(Refusal::new(
                        ErrorCode::Protocol,
                        "an image transfer must describe the same stream and image",
                    ));
                }
                let flash = |e: Error| Refusal::from_error(ErrorCode::Flash, &e);
                let mut offset = if begin.resume {
                    self.slot
                        .resume_point(&id, begin.image_size)
                        .map_err(flash)?
                } else {
                    0
                };
                let mut prefix = [0u8; 32];
                if offset > 0 {
                    // Prove what is there: the host compares this with its own bytes.
                    match self
                        .slot
                        .open_written()
                        .and_then(|mut written| sha256_of(&mut *written, offset))
                    {
                        Ok(hash) => prefix = hash,
                        Err(_) => offset = 0,
                    }
                }
                let writer = self
                    .slot
                    .open_writer(&id, begin.image_size, offset)
                    .map_err(flash)?;
                (Output::Image(writer), offset, prefix)
            }
            StreamKind::Delta => {
                let Some(engine) = self.delta else {
                    return Err(Refusal::new(
                        ErrorCode::Unsupported,
                        "this agent was built without a delta engine; send the full image",
                    ));
                };
                let flash = |e: Error| Refusal::from_error(ErrorCode::Flash, &e);
                let old = self.slot.open_current().map_err(flash)?;
                // A patch restarts from its first byte: no resume point.
                let image = ImageInfo {
                    size: begin.image_size,
                    sha256: begin.image_sha256,
                };
                let writer = self
                    .slot
                    .open_writer(&image.sha256, image.size, 0)
                    .map_err(flash)?;
                let applier = engine
                    .start(old, writer, image)
                    .map_err(|e| Refusal::from_error(ErrorCode::Patch, &e))?;
                (Output::Delta(applier), 0, [0u8; 32])
            }
        };
        let reply = Message::BeginReply {
            session,
            resume_offset: resumed_from,
            prefix_sha256: prefix,
        };
        self.transfer = Some(Transfer {
            session,
            begin,
            reply: reply.clone(),
            next_seq: 0,
            offset: resumed_from,
            block: None,
            output,
            last_checkpoint: resumed_from,
            nak: None,
            resumed_from,
            frames: 0,
            started: Instant::now(),
        });
        self.send(&reply)
            .map_err(|e| Refusal::from_error(ErrorCode::Other, &e))
    }

    fn data(
        &mut self,
        seq: u32,
        start: Option<BlockStart>,
        end: bool,
        payload: &[u8],
        progress: &mut dyn Progress,
    ) -> std::result::Result<(), Refusal> {
        let link_error = |e: Error| Refusal::from_error(ErrorCode::Other, &e);
        let Some(transfer) = self.transfer.as_mut() else {
            return Ok(()); // no transfer: the host will hear nothing and time out
        };
        let session = transfer.session;
        if seq != transfer.next_seq {
            let reply = if seq < transfer.next_seq {
                // A repeat after a lost ACK.
                Some(Message::Ack {
                    session,
                    next_seq: transfer.next_seq,
                    done: transfer.offset,
                })
            } else {
                // A gap. Ask once per pass of the host over the window: a
                // sequence number at or below the last one seen after our
                // NAK means the host went back and its resend was lost too.
                let new_pass = match transfer.nak {
                    Some((expected, last_seen)) => {
                        expected != transfer.next_seq || seq <= last_seen
                    }
                    None => true,
                };
                transfer.nak = Some((transfer.next_seq, seq));
                new_pass.then_some(Message::Nak {
                    session,
                    next_seq: transfer.next_seq,
                })
            };
            if let Some(reply) = reply {
                self.send(&reply).map_err(link_error)?;
            }
            return Ok(());
        }
        Self::take_frame(transfer, start, end, payload)?;
        transfer.next_seq = transfer.next_seq.wrapping_add(1);
        transfer.frames += 1;
        if transfer.block.as_ref().is_some_and(|b| b.ended) {
            let block = transfer.block.take();
            transfer.offset += block.map_or(0, |b| b.produced);
        }
        // Bytes decoded so far, finished blocks or not: all came in checked
        // frames, in order, so any of them can be a resume point.
        let written = transfer.offset + transfer.block.as_ref().map_or(0, |b| b.produced);
        if let Output::Image(writer) = &mut transfer.output
            && written - transfer.last_checkpoint >= self.options.checkpoint_every
        {
            writer
                .checkpoint()
                .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?;
            transfer.last_checkpoint = written;
        }
        let ack = Message::Ack {
            session,
            next_seq: transfer.next_seq,
            done: transfer.offset,
        };
        let event = ProgressEvent {
            operation: Operation::Transfer,
            done: transfer.offset,
            total: Some(transfer.begin.stream_size),
        };
        self.send(&ack).map_err(link_error)?;
        progress.report(event).map_err(link_error)
    }

    /// Decodes one in-order DATA frame into the output.
    fn take_frame(
        transfer: &mut Transfer,
        start: Option<BlockStart>,
        end: bool,
        payload: &[u8],
    ) -> std::result::Result<(), Refusal> {
        let protocol = |message: String| Refusal::new(ErrorCode::Protocol, message);
        if let Some(start) = start {
            if transfer.block.is_some() {
                return Err(protocol(
                    "a block started before the previous one ended".into(),
                ));
            }
            if start.offset != transfer.offset {
                return Err(protocol(format!(
                    "a block for stream offset {} arrived where the device is at {}",
                    start.offset, transfer.offset
                )));
            }
            if start.raw_len == 0
                || start.raw_len > transfer.begin.block_size
                || start.offset + u64::from(start.raw_len) > transfer.begin.stream_size
            {
                return Err(protocol(format!(
                    "a block of {} bytes at {} does not fit the {}-byte stream",
                    start.raw_len, start.offset, transfer.begin.stream_size
                )));
            }
            transfer.block = Some(Block {
                start,
                produced: 0,
                inflater: (start.encoding == Encoding::Deflate).then(|| Decompress::new(false)),
                stream_ended: false,
                ended: false,
            });
        }
        let Some(block) = transfer.block.as_mut() else {
            return Err(protocol("data arrived outside a block".into()));
        };
        let raw_len = u64::from(block.start.raw_len);
        let output_error =
            |e: Error, kind: StreamKind| Refusal::from_error(output_error_code(&e, kind), &e);
        let kind = transfer.begin.kind;
        let mut stream_ended = false;
        match block.inflater.as_mut() {
            None => {
                if block.produced + payload.len() as u64 > raw_len {
                    return Err(protocol(
                        "a raw block carried more bytes than it declared".into(),
                    ));
                }
                transfer
                    .output
                    .write(payload)
                    .map_err(|e| output_error(e, kind))?;
                block.produced += payload.len() as u64;
            }
            Some(inflater) => {
                let mut input = payload;
                let mut out = vec![0u8; INFLATE_CHUNK];
                loop {
                    let (in_before, out_before) = (inflater.total_in(), inflater.total_out());
                    let status = inflater
                        .decompress(input, &mut out, FlushDecompress::None)
                        .map_err(|e| protocol(format!("a compressed block is corrupt: {e}")))?;
                    let consumed = (inflater.total_in() - in_before) as usize;
                    let produced = (inflater.total_out() - out_before) as usize;
                    input = input.get(consumed..).unwrap_or_default();
                    if block.produced + produced as u64 > raw_len {
                        return Err(protocol(
                            "a compressed block inflates past its declared size".into(),
                        ));
                    }
                    if produced > 0 {
                        transfer
                            .output
                            .write(out.get(..produced).unwrap_or_default())
                            .map_err(|e| output_error(e, kind))?;
                        block.produced += produced as u64;
                    }
                    if status == Status::StreamEnd {
                        stream_ended = true;
                        if !input.is_empty() {
                            return Err(protocol(
                                "bytes follow the end of a compressed block".into(),
                            ));
                        }
                        break;
                    }
                    // The inflater may hand out pending output without
                    // taking input (and vice versa): stop only when a call
                    // does neither.
                    if consumed == 0 && produced == 0 {
                        if !input.is_empty() {
                            return Err(protocol("a compressed block stalled the inflater".into()));
                        }
                        break;
                    }
                }
            }
        }
        if stream_ended {
            block.stream_ended = true;
        } else if block.stream_ended && !payload.is_empty() {
            return Err(protocol(
                "bytes follow the end of a compressed block".into(),
            ));
        }
        if end {
            let complete =
                block.produced == raw_len && (block.inflater.is_none() || block.stream_ended);
            if !complete {
                return Err(protocol(format!(
                    "a block ended with {} of its {} bytes",
                    block.produced, raw_len
                )));
            }
            block.ended = true;
        }
        Ok(())
    }

    fn end(
        &mut self,
        session: u16,
        frames: u32,
        progress: &mut dyn Progress,
    ) -> std::result::Result<Option<TransferReport>, Refusal> {
        let link_error = |e: Error| Refusal::from_error(ErrorCode::Other, &e);
        if let Some(result) = self.finished.clone() {
            self.send(&result).map_err(link_error)?;
            return Ok(None);
        }
        let Some(transfer) = self.transfer.as_mut() else {
            return Err(Refusal::new(ErrorCode::Protocol, "END without a transfer"));
        };
        if frames != transfer.next_seq {
            if frames > transfer.next_seq {
                let nak = Message::Nak {
                    session,
                    next_seq: transfer.next_seq,
                };
                self.send(&nak).map_err(link_error)?;
            }
            return Ok(None);
        }
        if transfer.block.is_some() || transfer.offset != transfer.begin.stream_size {
            return Err(Refusal::new(
                ErrorCode::Protocol,
                format!(
                    "the stream ended at {} of {} bytes",
                    transfer.offset, transfer.begin.stream_size
                ),
            ));
        }
        let Some(transfer) = self.transfer.take() else {
            return Ok(None);
        };
        let image_size = transfer.begin.image_size;
        match transfer.output {
            Output::Image(mut writer) => writer
                .finish()
                .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?,
            Output::Delta(applier) => {
                if let Err(e) = applier.finish() {
                    // Best effort: the old image stays current either way.
                    let _ = self.slot.discard();
                    return Err(Refusal::from_error(
                        output_error_code(&e, StreamKind::Delta),
                        &e,
                    ));
                }
            }
        }
        // Read back what the target holds, never what was meant to be written.
        let (size, sha256) = self
            .slot
            .open_written()
            .and_then(|mut written| {
                let size = written.size();
                let hash = sha256_of(&mut *written, size.min(image_size))?;
                progress.report(ProgressEvent {
                    operation: Operation::Verify,
                    done: image_size,
                    total: Some(image_size),
                })?;
                Ok((size, hash))
            })
            .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?;
        let verified = size == image_size && sha256 == transfer.begin.image_sha256;
        if verified {
            self.slot
                .commit()
                .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?;
        } else {
            self.slot
                .discard()
                .map_err(|e| Refusal::from_error(ErrorCode::Flash, &e))?;
        }
        let result = Message::Result {
            session,
            verified,
            size,
            sha256,
        };
        self.send(&result).map_err(link_error)?;
        self.finished = Some(result);
        Ok(Some(TransferReport {
            kind: transfer.begin.kind,
            stream_size: transfer.begin.stream_size,
            image_size,
            sha256,
            verified,
            resumed_from: transfer.resumed_from,
            frames: transfer.frames,
            crc_errors: self.reader.stats.crc_errors,
            seconds: transfer.started.elapsed().as_secs_f64(),
        }))
    }
}
