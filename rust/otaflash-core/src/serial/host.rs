//! The host end of the otaflash serial protocol (`otaflash flash --port`).
//!
//! It keeps the link full: DATA frames go out while earlier ones are still
//! unacknowledged, up to a window sized to the line rate and to what the
//! agent can buffer, so USB-serial latency does not throttle throughput.
//! Lost or damaged frames come back as a NAK or a silent gap; the host goes
//! back to the first frame the agent lacks (go-back-N) after a NAK or after
//! an adaptive timeout (RFC 6298 style, from measured ACK round trips).
//! Success is reported only after the agent has read the image back from
//! its target and its SHA-256 matches the host's.

use std::collections::VecDeque;
use std::io::Write as _;
use std::time::{Duration, Instant};

use flate2::Compression;
use flate2::write::DeflateEncoder;

use super::frame::{self, FrameReader};
use super::link::Link;
use super::message::{
    AgentInfo, Begin, BlockStart, Encoding, ErrorCode, MAX_BODY, MAX_PAYLOAD_LIMIT, Message,
    StreamKind, caps,
};
use super::{hex, sha256_of};
use crate::io::ReadAt;
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

const PROTOCOL: &str = "otaflash";
/// The smallest DATA payload the host shrinks frames to on a noisy line.
const MIN_PAYLOAD: usize = 128;

#[derive(Clone, Debug)]
pub struct HostOptions {
    /// The link's current line rate, when it has one: sizes the window and
    /// the first retransmission timeout.
    pub line_rate: Option<u32>,
    /// Ask the agent to switch to this rate after connecting.
    pub switch_baud: Option<u32>,
    pub compress: bool,
    pub compression_level: u32,
    /// Bytes per independently compressed block (the agent may cap it).
    pub block_size: u32,
    /// Cap on bytes in flight (the agent's own limit applies too).
    pub window: Option<u32>,
    pub max_payload: Option<u16>,
    /// How long to keep calling for an agent.
    pub connect_timeout: Duration,
    /// Give up when the agent shows no progress for this long.
    pub timeout: Duration,
    /// Continue an interrupted transfer of the same stream when the agent has one.
    pub resume: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            line_rate: None,
            switch_baud: None,
            compress: true,
            compression_level: 9,
            block_size: 64 * 1024,
            window: None,
            max_payload: None,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(10),
            resume: true,
        }
    }
}

/// What to send: an image, or a patch plus the image it must produce.
pub struct Stream<'a> {
    pub kind: StreamKind,
    pub source: &'a mut dyn ReadAt,
    /// For a patch: the new image's size and SHA-256 (from the patch header).
    /// For an image: `None`, taken from `source`.
    pub image: Option<(u64, [u8; 32])>,
}

impl std::fmt::Debug for Stream<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stream")
            .field("kind", &self.kind)
            .field("size", &self.source.size())
            .field("image", &self.image)
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FlashReport {
    /// What the agent wrote to.
    pub target: String,
    pub kind: StreamKind,
    pub stream_size: u64,
    pub image_size: u64,
    /// SHA-256 of the image, as read back by the agent (equal to ours).
    pub sha256: [u8; 32],
    pub resumed_from: u64,
    /// The rate the data went at, when switched.
    pub baud: Option<u32>,
    /// Bytes written to the link, retransmissions and framing included.
    pub wire_bytes: u64,
    /// Stream bytes after compression (first transmission of each frame).
    pub payload_bytes: u64,
    pub frames: u64,
    pub retransmitted_frames: u64,
    pub naks: u64,
    pub timeouts: u64,
    pub seconds: f64,
}

/// Sends `stream` to the agent on `link` and returns once the agent has
/// verified the image it wrote.
pub fn flash(
    link: &mut dyn Link,
    stream: Stream<'_>,
    options: &HostOptions,
    progress: &mut dyn Progress,
) -> Result<FlashReport> {
    let started = Instant::now();
    let stream_size = stream.source.size();
    let stream_sha256 = {
        let hash = sha256_of(stream.source, stream_size)?;
        progress.report(ProgressEvent {
            operation: Operation::Hash,
            done: stream_size,
            total: Some(stream_size),
        })?;
        hash
    };
    let (image_size, image_sha256) = match (stream.kind, stream.image) {
        (StreamKind::Image, _) => (stream_size, stream_sha256),
        (StreamKind::Delta, Some(image)) => image,
        (StreamKind::Delta, None) => {
            return Err(Error::InvalidArgument(
                "a delta transfer needs the new image's size and SHA-256".into(),
            ));
        }
    };
    let mut host = Host::new(link);
    let info = host.connect(options)?;
    if stream.kind == StreamKind::Delta && info.caps & caps::DELTA == 0 {
        return Err(host.device_error(
            ErrorCode::Unsupported,
            "runs an agent without a delta engine; send the full image instead".into(),
        ));
    }
    let baud = match options.switch_baud {
        Some(baud) => Some(host.switch_baud(baud, options)?),
        None => None,
    };
    let line_rate = baud.or(options.line_rate);
    let block_size = options.block_size.clamp(4096, info.max_block.max(4096));
    let begin = Begin {
        kind: stream.kind,
        resume: options.resume,
        stream_size,
        stream_sha256,
        image_size,
        image_sha256,
        block_size,
    };
    let resumed_from = host.begin(&begin, stream.source, options)?;
    let payload = usize::from(
        info.max_payload
            .min(options.max_payload.unwrap_or(u16::MAX))
            .clamp(64, MAX_PAYLOAD_LIMIT),
    );
    let window = window_for(line_rate, payload, info.window, options.window);
    let mut sender = Sender {
        session: host.session,
        source: stream.source,
        stream_size,
        block_size: u64::from(block_size),
        compress: options.compress && info.caps & caps::DEFLATE != 0,
        level: options.compression_level.min(9),
        payload,
        max_payload: payload,
        frames_at_adapt: 0,
        rewinds_since_adapt: 0,
        window,
        next_offset: resumed_from,
        next_seq: 0,
        acked: 0,
        done: resumed_from,
        queue: VecDeque::new(),
        in_flight: VecDeque::new(),
        in_flight_bytes: 0,
        rtt: RttEstimator::new(first_rto(line_rate, window)),
        probing: None,
        stats: Stats::default(),
    };
    sender.run(&mut host, options.timeout, progress)?;
    let (verified, size, sha256) = host.finish(sender.next_seq, image_size, options)?;
    if !verified || size != image_size || sha256 != image_sha256 {
        return Err(Error::Verify {
            subject: format!("{}: {}", host.link.name(), info.target),
            what: "read-back SHA-256".into(),
            expected: format!("{} ({image_size} bytes)", hex(&image_sha256)),
            actual: format!("{} ({size} bytes)", hex(&sha256)),
        });
    }
    Ok(FlashReport {
        target: info.target,
        kind: stream.kind,
        stream_size,
        image_size,
        sha256,
        resumed_from,
        baud,
        wire_bytes: host.wire_bytes,
        payload_bytes: sender.stats.payload_bytes,
        frames: sender.stats.frames,
        retransmitted_frames: sender.stats.retransmitted,
        naks: sender.stats.naks,
        timeouts: sender.stats.timeouts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// Bytes in flight: enough to cover about 100 ms of the line (USB-serial
/// adapters add up to 16 ms each way) and at least four frames, but never
/// more than the agent can buffer.
fn window_for(line_rate: Option<u32>, payload: usize, agent: u32, cap: Option<u32>) -> usize {
    let frame = payload + 32;
    let wanted = match line_rate {
        Some(rate) => (rate as usize / 10 / 10).max(4 * frame),
        None => agent as usize,
    };
    wanted
        .min(agent as usize)
        .min(cap.map_or(usize::MAX, |c| c as usize))
        .max(frame)
}

fn first_rto(line_rate: Option<u32>, window: usize) -> Duration {
    let drain = line_rate.map_or(Duration::ZERO, |rate| {
        Duration::from_secs_f64(window as f64 * 10.0 / f64::from(rate.max(1)))
    });
    Duration::from_millis(500) + 2 * drain
}

/// Smoothed round-trip time and retransmission timeout (RFC 6298).
struct RttEstimator {
    srtt: Option<f64>,
    rttvar: f64,
    rto: Duration,
    backoff: u32,
}

impl RttEstimator {
    const MIN: f64 = 0.2;
    const MAX: f64 = 30.0;

    fn new(initial: Duration) -> Self {
        Self {
            srtt: None,
            rttvar: 0.0,
            rto: initial,
            backoff: 0,
        }
    }

    fn sample(&mut self, rtt: Duration) {
        let r = rtt.as_secs_f64();
        let srtt = match self.srtt {
            None => {
                self.rttvar = r / 2.0;
                r
            }
            Some(srtt) => {
                self.rttvar = 0.75 * self.rttvar + 0.25 * (srtt - r).abs();
                0.875 * srtt + 0.125 * r
            }
        };
        self.srtt = Some(srtt);
        self.backoff = 0;
        self.rto = Duration::from_secs_f64(
            (srtt + (4.0 * self.rttvar).max(0.05)).clamp(Self::MIN, Self::MAX),
        );
    }

    fn current(&self) -> Duration {
        self.rto
            .saturating_mul(1 << self.backoff.min(4))
            .min(Duration::from_secs_f64(Self::MAX))
    }
}

#[derive(Default)]
struct Stats {
    frames: u64,
    retransmitted: u64,
    naks: u64,
    timeouts: u64,
    payload_bytes: u64,
}

struct Pending {
    seq: u32,
    frame: Vec<u8>,
    sent_at: Option<Instant>,
    resent: bool,
}

struct Host<'a> {
    link: &'a mut dyn Link,
    session: u16,
    reader: FrameReader,
    inbox: VecDeque<Vec<u8>>,
    buf: Vec<u8>,
    wire_bytes: u64,
}

impl<'a> Host<'a> {
    fn new(link: &'a mut dyn Link) -> Self {
        // Distinct per run, so replies meant for an earlier run are ignored.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let session = (nanos ^ std::process::id().rotate_left(16)) as u16 | 1;
        Self {
            link,
            session,
            reader: FrameReader::new(MAX_BODY),
            inbox: VecDeque::new(),
            buf: vec![0u8; 4096],
            wire_bytes: 0,
        }
    }

    fn send(&mut self, message: &Message) -> Result<()> {
        let mut out = Vec::with_capacity(64);
        frame::encode(&message.encode(), &mut out);
        self.write(&out)
    }

    fn write(&mut self, bytes: &[u8]) -> Result<()> {
        self.wire_bytes += bytes.len() as u64;
        self.link.write_all(bytes)
    }

    fn device_error(&self, code: ErrorCode, message: String) -> Error {
        let port = self.link.name().to_string();
        match code {
            ErrorCode::Protocol => Error::Protocol {
                port,
                protocol: PROTOCOL,
                message: format!("the agent refused: {message}"),
            },
            _ => Error::Device {
                port,
                kind: code.device_kind(),
                message,
            },
        }
    }

    /// The next message of this session, or `None` after `timeout`. An
    /// ERROR from the agent becomes the matching error.
    fn recv(&mut self, timeout: Duration) -> Result<Option<Message>> {
        let deadline = Instant::now() + timeout;
        loop {
            while let Some(body) = self.inbox.pop_front() {
                match Message::decode(&body) {
                    Some(Message::Error {
                        session,
                        code,
                        message,
                    }) if session == self.session => {
                        return Err(self.device_error(code, message));
                    }
                    Some(message) if message.session() == self.session => {
                        return Ok(Some(message));
                    }
                    _ => {}
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let n = self.link.read(&mut self.buf, left)?;
            if n == 0 {
                return Ok(None);
            }
            self.reader
                .push(self.buf.get(..n).unwrap_or_default(), &mut self.inbox);
        }
    }

    /// Sends `request` every `interval` until a reply `accept` takes comes,
    /// or `limit` passes.
    fn request<T>(
        &mut self,
        request: &Message,
        interval: Duration,
        limit: Duration,
        waiting_for: &str,
        mut accept: impl FnMut(Message) -> Option<T>,
    ) -> Result<T> {
        let deadline = Instant::now() + limit;
        loop {
            self.send(request)?;
            let resend_at = (Instant::now() + interval).min(deadline);
            loop {
                let left = resend_at.saturating_duration_since(Instant::now());
                match self.recv(left)? {
                    Some(message) => {
                        if let Some(value) = accept(message) {
                            return Ok(value);
                        }
                    }
                    None => break,
                }
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    port: self.link.name().to_string(),
                    waiting_for: waiting_for.to_string(),
                    timeout: limit,
                });
            }
        }
    }

    fn connect(&mut self, options: &HostOptions) -> Result<AgentInfo> {
        self.link.discard_input()?;
        let hello = Message::Hello {
            session: self.session,
        };
        self.request(
            &hello,
            Duration::from_millis(300),
            options.connect_timeout,
            "calling the otaflash agent (is `otaflash agent` running on the device, at this baud rate?)",
            |message| match message {
                Message::HelloReply { info, .. } => Some(info),
                _ => None,
            },
        )
    }

    /// Switches both ends to `baud`. When the link does not work at the new
    /// rate this end goes back to the old one and the error says so (the
    /// agent falls back by itself after a quiet spell).
    fn switch_baud(&mut self, baud: u32, options: &HostOptions) -> Result<u32> {
        let session = self.session;
        self.request(
            &Message::SetBaud { session, baud },
            Duration::from_millis(500),
            Duration::from_secs(3),
            "asking the agent to change the baud rate",
            |message| matches!(message, Message::BaudOk { baud: b, .. } if b == baud).then_some(()),
        )?;
        self.link.drain()?;
        // Let the agent's BAUD_OK leave its UART before both sides switch.
        std::thread::sleep(Duration::from_millis(20));
        self.link.set_baud_rate(baud)?;
        self.reader.reset();
        self.link.discard_input()?;
        let pong = self.request(
            &Message::Ping {
                session,
                token: baud,
            },
            Duration::from_millis(200),
            Duration::from_secs(1),
            "checking the link at the new baud rate",
            |message| matches!(message, Message::Pong { token, .. } if token == baud).then_some(()),
        );
        match pong {
            Ok(()) => Ok(baud),
            Err(Error::Timeout { .. }) => {
                if let Some(rate) = options.line_rate {
                    let _ = self.link.set_baud_rate(rate);
                }
                Err(Error::Link {
                    port: self.link.name().to_string(),
                    message: format!(
                        "the link does not work at {baud} baud (the agent returns to its own \
                         rate by itself); try a lower --baud"
                    ),
                    source: None,
                })
            }
            Err(other) => Err(other),
        }
    }

    /// Starts the transfer; returns the stream offset it resumes from.
    fn begin(
        &mut self,
        begin: &Begin,
        source: &mut dyn ReadAt,
        options: &HostOptions,
    ) -> Result<u64> {
        let session = self.session;
        let mut begin = begin.clone();
        loop {
            let (offset, prefix) = self.request(
                &Message::Begin {
                    session,
                    begin: begin.clone(),
                },
                Duration::from_secs(1),
                options.timeout,
                "starting the transfer",
                |message| match message {
                    Message::BeginReply {
                        resume_offset,
                        prefix_sha256,
                        ..
                    } => Some((resume_offset, prefix_sha256)),
                    _ => None,
                },
            )?;
            if offset == 0 {
                return Ok(0);
            }
            // Resume only from bytes the agent has proven by reading them back.
            let ours = (offset <= begin.stream_size)
                .then(|| sha256_of(source, offset))
                .transpose()?;
            if ours == Some(prefix) {
                return Ok(offset);
            }
            if !begin.resume {
                return Err(Error::Protocol {
                    port: self.link.name().to_string(),
                    protocol: PROTOCOL,
                    message: format!("the agent resumed at {offset} although asked to restart"),
                });
            }
            begin.resume = false;
        }
    }

    fn finish(
        &mut self,
        frames: u32,
        image_size: u64,
        options: &HostOptions,
    ) -> Result<(bool, u64, [u8; 32])> {
        // The agent reads the whole image back before answering.
        let reading = Duration::from_secs_f64(image_size as f64 / 1e6);
        self.request(
            &Message::End {
                session: self.session,
                frames,
            },
            Duration::from_secs(2),
            options.timeout + Duration::from_secs(20) + reading,
            "waiting for the agent to verify the image",
            |message| match message {
                Message::Result {
                    verified,
                    size,
                    sha256,
                    ..
                } => Some((verified, size, sha256)),
                _ => None,
            },
        )
    }
}

struct Sender<'s> {
    session: u16,
    source: &'s mut dyn ReadAt,
    stream_size: u64,
    block_size: u64,
    compress: bool,
    level: u32,
    /// DATA payload for the next block's frames (adapts to the error rate).
    payload: usize,
    max_payload: usize,
    frames_at_adapt: u64,
    rewinds_since_adapt: u64,
    window: usize,
    /// Stream offset of the next block to build.
    next_offset: u64,
    /// Sequence number of the next frame to build.
    next_seq: u32,
    /// Every frame below this one is acknowledged.
    acked: u32,
    /// Stream bytes the agent has written.
    done: u64,
    /// Built but not (re)sent yet, in sequence order.
    queue: VecDeque<Pending>,
    in_flight: VecDeque<Pending>,
    in_flight_bytes: usize,
    rtt: RttEstimator,
    /// A frame re-sent alone after a timeout, awaiting its answer.
    probing: Option<u32>,
    stats: Stats,
}

impl Sender<'_> {
    fn run(
        &mut self,
        host: &mut Host<'_>,
        timeout: Duration,
        progress: &mut dyn Progress,
    ) -> Result<()> {
        let mut last_progress = Instant::now();
        let mut batch = Vec::with_capacity(self.window + 2048);
        loop {
            batch.clear();
            self.fill(&mut batch)?;
            if !batch.is_empty() {
                host.write(&batch)?;
            }
            if self.in_flight.is_empty() && self.queue.is_empty() {
                if self.next_offset >= self.stream_size {
                    return Ok(());
                }
                continue;
            }
            let expires = self
                .in_flight
                .front()
                .and_then(|p| p.sent_at)
                .map(|sent_at| sent_at + self.rtt.current());
            let now = Instant::now();
            if expires.is_some_and(|at| at <= now) {
                if last_progress.elapsed() >= timeout {
                    return Err(Error::Timeout {
                        port: host.link.name().to_string(),
                        waiting_for: format!(
                            "sending data at stream offset {} (run the same command again to \
                             resume)",
                            self.done
                        ),
                        timeout,
                    });
                }
                self.stats.timeouts += 1;
                self.rtt.backoff += 1;
                self.probe(host)?;
                continue;
            }
            let wait = expires.map_or(Duration::ZERO, |at| at.saturating_duration_since(now));
            match host.recv(wait)? {
                Some(Message::Ack { next_seq, done, .. }) => {
                    if self.ack(next_seq) {
                        last_progress = Instant::now();
                    }
                    if let Some(probe) = self.probing.take() {
                        if next_seq == probe.wrapping_add(1) {
                            // Only the probe got through: what followed it was lost.
                            self.rewind(next_seq);
                        } else if next_seq <= probe {
                            self.probing = Some(probe);
                        }
                    }
                    if done > self.done {
                        self.done = done;
                        progress.report(ProgressEvent {
                            operation: Operation::Transfer,
                            done,
                            total: Some(self.stream_size),
                        })?;
                    }
                }
                Some(Message::Nak { next_seq, .. }) => {
                    if self.ack(next_seq) {
                        last_progress = Instant::now();
                    }
                    self.probing = None;
                    self.stats.naks += 1;
                    self.rewind(next_seq);
                }
                _ => {}
            }
        }
    }

    /// The oldest frame's timer ran out. The agent may just be busy (a
    /// flash erase) or the frame may be lost: send that one frame again and
    /// let the answer tell which, rather than the whole window.
    fn probe(&mut self, host: &mut Host<'_>) -> Result<()> {
        let Some(oldest) = self.in_flight.front_mut() else {
            return Ok(());
        };
        oldest.sent_at = Some(Instant::now());
        oldest.resent = true;
        self.probing = Some(oldest.seq);
        self.stats.retransmitted += 1;
        let frame = oldest.frame.clone();
        host.write(&frame)
    }

    /// Sends queued frames while the window has room, building blocks as needed.
    fn fill(&mut self, batch: &mut Vec<u8>) -> Result<()> {
        if self.probing.is_some() {
            return Ok(()); // hold back until the probe is answered
        }
        loop {
            if self.queue.is_empty() && self.next_offset < self.stream_size {
                self.build_block()?;
            }
            let Some(front) = self.queue.front() else {
                return Ok(());
            };
            if !self.in_flight.is_empty() && self.in_flight_bytes + front.frame.len() > self.window
            {
                return Ok(());
            }
            let Some(mut pending) = self.queue.pop_front() else {
                return Ok(());
            };
            batch.extend_from_slice(&pending.frame);
            if pending.sent_at.is_some() {
                pending.resent = true;
                self.stats.retransmitted += 1;
            }
            pending.sent_at = Some(Instant::now());
            self.in_flight_bytes += pending.frame.len();
            self.in_flight.push_back(pending);
        }
    }

    /// A noisy line loses long frames more often than short ones: shrink
    /// frames while rewinds are frequent, grow them back when it is clean.
    fn adapt_payload(&mut self) {
        let frames = self.stats.frames - self.frames_at_adapt;
        if frames < 16 {
            return;
        }
        if self.rewinds_since_adapt * 10 > frames {
            self.payload = (self.payload / 2).max(MIN_PAYLOAD);
        } else if self.rewinds_since_adapt == 0 {
            self.payload = (self.payload * 2).min(self.max_payload);
        }
        self.frames_at_adapt = self.stats.frames;
        self.rewinds_since_adapt = 0;
    }

    fn build_block(&mut self) -> Result<()> {
        self.adapt_payload();
        let offset = self.next_offset;
        let len = (self.stream_size - offset).min(self.block_size) as usize;
        let mut raw = vec![0u8; len];
        self.source.read_exact_at(offset, &mut raw)?;
        let (encoding, coded) = if self.compress {
            let mut encoder =
                DeflateEncoder::new(Vec::with_capacity(len / 2), Compression::new(self.level));
            let packed = encoder
                .write_all(&raw)
                .and_then(|()| encoder.finish())
                .map_err(|e| Error::InvalidArgument(format!("compression failed: {e}")))?;
            if packed.len() < raw.len() {
                (Encoding::Deflate, packed)
            } else {
                (Encoding::Raw, raw)
            }
        } else {
            (Encoding::Raw, raw)
        };
        let pieces: Vec<&[u8]> = coded.chunks(self.payload).collect();
        let count = pieces.len();
        for (i, piece) in pieces.into_iter().enumerate() {
            let message = Message::Data {
                session: self.session,
                seq: self.next_seq,
                start: (i == 0).then_some(BlockStart {
                    offset,
                    raw_len: len as u32,
                    encoding,
                }),
                end: i + 1 == count,
                payload: piece.to_vec(),
            };
            let mut frame = Vec::with_capacity(piece.len() + 40);
            frame::encode(&message.encode(), &mut frame);
            self.stats.payload_bytes += piece.len() as u64;
            self.stats.frames += 1;
            self.queue.push_back(Pending {
                seq: self.next_seq,
                frame,
                sent_at: None,
                resent: false,
            });
            self.next_seq = self.next_seq.wrapping_add(1);
        }
        self.next_offset = offset + len as u64;
        Ok(())
    }

    /// Drops everything below `next_seq`; true when that was progress.
    fn ack(&mut self, next_seq: u32) -> bool {
        if next_seq <= self.acked || next_seq > self.next_seq {
            return false;
        }
        let mut newest_sample = None;
        while let Some(front) = self.in_flight.front() {
            if front.seq >= next_seq {
                break;
            }
            if let Some(pending) = self.in_flight.pop_front() {
                self.in_flight_bytes -= pending.frame.len();
                if !pending.resent {
                    newest_sample = pending.sent_at;
                }
            }
        }
        while self.queue.front().is_some_and(|p| p.seq < next_seq) {
            self.queue.pop_front();
        }
        if let Some(sent_at) = newest_sample {
            self.rtt.sample(sent_at.elapsed());
        }
        self.acked = next_seq;
        // Progress: the link works again, so drop any timer backoff (with
        // every frame resent there may be no clean RTT sample to do it).
        self.rtt.backoff = 0;
        true
    }

    /// Goes back to `seq`: every frame from it on is sent again, in order.
    fn rewind(&mut self, seq: u32) {
        self.rewinds_since_adapt += 1;
        while self.in_flight.back().is_some_and(|p| p.seq >= seq) {
            if let Some(pending) = self.in_flight.pop_back() {
                self.in_flight_bytes -= pending.frame.len();
                self.queue.push_front(pending);
            }
        }
    }
}
