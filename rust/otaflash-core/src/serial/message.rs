//! The messages of the otaflash serial protocol and their byte layout
//! (`docs/serial-protocol.md` is the specification; this is its code).
//! Integers are little-endian. Every message carries the host's session
//! number so a stale reply from an earlier run is never taken for a new one.

use crate::DeviceErrorKind;

pub const MAGIC: [u8; 4] = *b"OTAF";
pub const VERSION: u8 = 1;

/// Bytes of stream data in one DATA frame, unless the agent asks for fewer.
pub const DEFAULT_MAX_PAYLOAD: u16 = 1024;
/// The largest message body either side accepts (a DATA frame with a block
/// header and the largest payload, plus room).
pub const MAX_BODY: usize = 2048;
/// The largest payload a DATA frame may carry.
pub const MAX_PAYLOAD_LIMIT: u16 = 1536;

mod kind {
    pub const HELLO: u8 = 0x01;
    pub const SET_BAUD: u8 = 0x02;
    pub const PING: u8 = 0x03;
    pub const BEGIN: u8 = 0x10;
    pub const DATA: u8 = 0x20;
    pub const END: u8 = 0x30;
    pub const ABORT: u8 = 0x3F;
    pub const HELLO_REPLY: u8 = 0x81;
    pub const BAUD_OK: u8 = 0x82;
    pub const PONG: u8 = 0x83;
    pub const BEGIN_REPLY: u8 = 0x90;
    pub const ACK: u8 = 0xA0;
    pub const NAK: u8 = 0xA1;
    pub const RESULT: u8 = 0xB0;
    pub const ERROR: u8 = 0xFF;
}

/// What the agent can do, from HELLO_REPLY.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentInfo {
    pub version: u8,
    /// Largest DATA payload it accepts.
    pub max_payload: u16,
    /// Bytes the host may have in flight (the agent's receive buffer).
    pub window: u32,
    /// Largest block (uncompressed) it can take.
    pub max_block: u32,
    /// Highest baud rate it agrees to switch to.
    pub max_baud: u32,
    pub caps: u8,
    /// What the agent writes to, for messages ("file:/var/fw.img").
    pub target: String,
}

pub mod caps {
    /// Blocks may be raw-deflate compressed.
    pub const DEFLATE: u8 = 1;
    /// The agent applies delta patches.
    pub const DELTA: u8 = 2;
}

/// What a transfer carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamKind {
    /// The new image itself.
    Image = 0,
    /// A patch the agent applies to its current image.
    Delta = 1,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Begin {
    pub kind: StreamKind,
    /// Continue an interrupted transfer of the same stream if the agent has one.
    pub resume: bool,
    pub stream_size: u64,
    pub stream_sha256: [u8; 32],
    /// The image the agent must end up with.
    pub image_size: u64,
    pub image_sha256: [u8; 32],
    pub block_size: u32,
}

/// How a block's bytes are coded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Raw = 0,
    /// Raw deflate (RFC 1951), one independent stream per block.
    Deflate = 1,
}

/// The header of a block, carried by its first DATA frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockStart {
    /// Where the block's (decoded) bytes go in the stream.
    pub offset: u64,
    /// Its decoded length.
    pub raw_len: u32,
    pub encoding: Encoding,
}

/// Why the agent refused or failed a request (ERROR frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorCode {
    Flash = 1,
    Patch = 2,
    Verify = 3,
    Unsupported = 4,
    Other = 5,
    /// The host broke the protocol (a block at the wrong offset, say).
    Protocol = 6,
}

impl ErrorCode {
    fn from_u8(code: u8) -> Self {
        match code {
            1 => Self::Flash,
            2 => Self::Patch,
            3 => Self::Verify,
            4 => Self::Unsupported,
            6 => Self::Protocol,
            _ => Self::Other,
        }
    }

    pub fn device_kind(self) -> DeviceErrorKind {
        match self {
            Self::Flash => DeviceErrorKind::Flash,
            Self::Patch => DeviceErrorKind::Patch,
            Self::Verify => DeviceErrorKind::Verify,
            Self::Unsupported => DeviceErrorKind::Unsupported,
            Self::Other | Self::Protocol => DeviceErrorKind::Other,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    Hello {
        session: u16,
    },
    HelloReply {
        session: u16,
        info: AgentInfo,
    },
    SetBaud {
        session: u16,
        baud: u32,
    },
    BaudOk {
        session: u16,
        baud: u32,
    },
    Ping {
        session: u16,
        token: u32,
    },
    Pong {
        session: u16,
        token: u32,
    },
    Begin {
        session: u16,
        begin: Begin,
    },
    BeginReply {
        session: u16,
        /// Stream bytes the agent already holds from an interrupted run.
        resume_offset: u64,
        /// SHA-256 of those bytes as read back from the target.
        prefix_sha256: [u8; 32],
    },
    Data {
        session: u16,
        seq: u32,
        start: Option<BlockStart>,
        /// The last frame of its block.
        end: bool,
        payload: Vec<u8>,
    },
    Ack {
        session: u16,
        /// The next sequence number the agent expects (all below arrived).
        next_seq: u32,
        /// Stream bytes written so far.
        done: u64,
    },
    Nak {
        session: u16,
        next_seq: u32,
    },
    End {
        session: u16,
        /// How many DATA frames the stream had (the next unused sequence number).
        frames: u32,
    },
    Result {
        session: u16,
        verified: bool,
        size: u64,
        sha256: [u8; 32],
    },
    Abort {
        session: u16,
    },
    Error {
        session: u16,
        code: ErrorCode,
        message: String,
    },
}

const DATA_START: u8 = 1;
const DATA_END: u8 = 2;
/// Error messages are cut to this many bytes.
const MAX_MESSAGE: usize = 240;

impl Message {
    pub fn session(&self) -> u16 {
        match self {
            Self::Hello { session }
            | Self::HelloReply { session, .. }
            | Self::SetBaud { session, .. }
            | Self::BaudOk { session, .. }
            | Self::Ping { session, .. }
            | Self::Pong { session, .. }
            | Self::Begin { session, .. }
            | Self::BeginReply { session, .. }
            | Self::Data { session, .. }
            | Self::Ack { session, .. }
            | Self::Nak { session, .. }
            | Self::End { session, .. }
            | Self::Result { session, .. }
            | Self::Abort { session }
            | Self::Error { session, .. } => *session,
        }
    }

    /// The message body (a frame adds COBS and the CRC).
    pub fn encode(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(64);
        match self {
            Self::Hello { session } => {
                w.push(kind::HELLO);
                w.extend_from_slice(&MAGIC);
                w.push(VERSION);
                put16(&mut w, *session);
            }
            Self::HelloReply { session, info } => {
                w.push(kind::HELLO_REPLY);
                w.extend_from_slice(&MAGIC);
                w.push(info.version);
                put16(&mut w, *session);
                put16(&mut w, info.max_payload);
                put32(&mut w, info.window);
                put32(&mut w, info.max_block);
                put32(&mut w, info.max_baud);
                w.push(info.caps);
                put_text(&mut w, &info.target);
            }
            Self::SetBaud { session, baud } => {
                w.push(kind::SET_BAUD);
                put16(&mut w, *session);
                put32(&mut w, *baud);
            }
            Self::BaudOk { session, baud } => {
                w.push(kind::BAUD_OK);
                put16(&mut w, *session);
                put32(&mut w, *baud);
            }
            Self::Ping { session, token } => {
                w.push(kind::PING);
                put16(&mut w, *session);
                put32(&mut w, *token);
            }
            Self::Pong { session, token } => {
                w.push(kind::PONG);
                put16(&mut w, *session);
                put32(&mut w, *token);
            }
            Self::Begin { session, begin } => {
                w.push(kind::BEGIN);
                put16(&mut w, *session);
                w.push(begin.kind as u8);
                w.push(u8::from(begin.resume));
                put64(&mut w, begin.stream_size);
                w.extend_from_slice(&begin.stream_sha256);
                put64(&mut w, begin.image_size);
                w.extend_from_slice(&begin.image_sha256);
                put32(&mut w, begin.block_size);
            }
            Self::BeginReply {
                session,
                resume_offset,
                prefix_sha256,
            } => {
                w.push(kind::BEGIN_REPLY);
                put16(&mut w, *session);
                put64(&mut w, *resume_offset);
                w.extend_from_slice(prefix_sha256);
            }
            Self::Data {
                session,
                seq,
                start,
                end,
                payload,
            } => {
                w.reserve(payload.len() + 24);
                w.push(kind::DATA);
                put16(&mut w, *session);
                put32(&mut w, *seq);
                let flags =
                    if start.is_some() { DATA_START } else { 0 } | if *end { DATA_END } else { 0 };
                w.push(flags);
                if let Some(start) = start {
                    put64(&mut w, start.offset);
                    put32(&mut w, start.raw_len);
                    w.push(start.encoding as u8);
                }
                w.extend_from_slice(payload);
            }
            Self::Ack {
                session,
                next_seq,
                done,
            } => {
                w.push(kind::ACK);
                put16(&mut w, *session);
                put32(&mut w, *next_seq);
                put64(&mut w, *done);
            }
            Self::Nak { session, next_seq } => {
                w.push(kind::NAK);
                put16(&mut w, *session);
                put32(&mut w, *next_seq);
            }
            Self::End { session, frames } => {
                w.push(kind::END);
                put16(&mut w, *session);
                put32(&mut w, *frames);
            }
            Self::Result {
                session,
                verified,
                size,
                sha256,
            } => {
                w.push(kind::RESULT);
                put16(&mut w, *session);
                w.push(u8::from(!*verified));
                put64(&mut w, *size);
                w.extend_from_slice(sha256);
            }
            Self::Abort { session } => {
                w.push(kind::ABORT);
                put16(&mut w, *session);
            }
            Self::Error {
                session,
                code,
                message,
            } => {
                w.push(kind::ERROR);
                put16(&mut w, *session);
                w.push(*code as u8);
                put_text(&mut w, message);
            }
        }
        w
    }

    /// Parses a message body; `None` for unknown kinds and malformed bodies
    /// (receivers ignore those, so newer peers can add messages).
    pub fn decode(body: &[u8]) -> Option<Self> {
        let (&kind, rest) = body.split_first()?;
        let mut r = Cursor(rest);
        let message = match kind {
            kind::HELLO => {
                if r.take(4)? != MAGIC || r.u8()? != VERSION {
                    return None;
                }
                Self::Hello { session: r.u16()? }
            }
            kind::HELLO_REPLY => {
                if r.take(4)? != MAGIC {
                    return None;
                }
                let version = r.u8()?;
                Self::HelloReply {
                    session: r.u16()?,
                    info: AgentInfo {
                        version,
                        max_payload: r.u16()?,
                        window: r.u32()?,
                        max_block: r.u32()?,
                        max_baud: r.u32()?,
                        caps: r.u8()?,
                        target: r.text()?,
                    },
                }
            }
            kind::SET_BAUD => Self::SetBaud {
                session: r.u16()?,
                baud: r.u32()?,
            },
            kind::BAUD_OK => Self::BaudOk {
                session: r.u16()?,
                baud: r.u32()?,
            },
            kind::PING => Self::Ping {
                session: r.u16()?,
                token: r.u32()?,
            },
            kind::PONG => Self::Pong {
                session: r.u16()?,
                token: r.u32()?,
            },
            kind::BEGIN => Self::Begin {
                session: r.u16()?,
                begin: Begin {
                    kind: match r.u8()? {
                        0 => StreamKind::Image,
                        1 => StreamKind::Delta,
                        _ => return None,
                    },
                    resume: r.u8()? != 0,
                    stream_size: r.u64()?,
                    stream_sha256: r.array()?,
                    image_size: r.u64()?,
                    image_sha256: r.array()?,
                    block_size: r.u32()?,
                },
            },
            kind::BEGIN_REPLY => Self::BeginReply {
                session: r.u16()?,
                resume_offset: r.u64()?,
                prefix_sha256: r.array()?,
            },
            kind::DATA => {
                let session = r.u16()?;
                let seq = r.u32()?;
                let flags = r.u8()?;
                let start = if flags & DATA_START != 0 {
                    Some(BlockStart {
                        offset: r.u64()?,
                        raw_len: r.u32()?,
                        encoding: match r.u8()? {
                            0 => Encoding::Raw,
                            1 => Encoding::Deflate,
                            _ => return None,
                        },
                    })
                } else {
                    None
                };
                Self::Data {
                    session,
                    seq,
                    start,
                    end: flags & DATA_END != 0,
                    payload: r.0.to_vec(),
                }
            }
            kind::ACK => Self::Ack {
                session: r.u16()?,
                next_seq: r.u32()?,
                done: r.u64()?,
            },
            kind::NAK => Self::Nak {
                session: r.u16()?,
                next_seq: r.u32()?,
            },
            kind::END => Self::End {
                session: r.u16()?,
                frames: r.u32()?,
            },
            kind::RESULT => Self::Result {
                session: r.u16()?,
                verified: r.u8()? == 0,
                size: r.u64()?,
                sha256: r.array()?,
            },
            kind::ABORT => Self::Abort { session: r.u16()? },
            kind::ERROR => Self::Error {
                session: r.u16()?,
                code: ErrorCode::from_u8(r.u8()?),
                message: r.text()?,
            },
            _ => return None,
        };
        Some(message)
    }
}

fn put16(w: &mut Vec<u8>, v: u16) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put32(w: &mut Vec<u8>, v: u32) {
    w.extend_from_slice(&v.to_le_bytes());
}
fn put64(w: &mut Vec<u8>, v: u64) {
    w.extend_from_slice(&v.to_le_bytes());
}

/// A length-prefixed UTF-8 string, cut at a character boundary.
fn put_text(w: &mut Vec<u8>, text: &str) {
    let mut end = text.len().min(MAX_MESSAGE);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = text.as_bytes().get(..end).unwrap_or_default();
    w.push(bytes.len() as u8);
    w.extend_from_slice(bytes);
}

struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, tail) = self.0.split_at(n);
        self.0 = tail;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn u8(&mut self) -> Option<u8> {
        Some(self.take(1)?[0])
    }
    fn u16(&mut self) -> Option<u16> {
        Some(u16::from_le_bytes(self.array()?))
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.array()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.array()?))
    }
    fn text(&mut self) -> Option<String> {
        let len = usize::from(self.u8()?);
        Some(String::from_utf8_lossy(self.take(len)?).into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_message_round_trips_and_truncations_are_rejected() {
        let messages = vec![
            Message::Hello { session: 7 },
            Message::HelloReply {
                session: 7,
                info: AgentInfo {
                    version: VERSION,
                    max_payload: 1024,
                    window: 8192,
                    max_block: 65536,
                    max_baud: 921_600,
                    caps: caps::DEFLATE | caps::DELTA,
                    target: "file:/tmp/fw.img".into(),
                },
            },
            Message::SetBaud {
                session: 7,
                baud: 921_600,
            },
            Message::BaudOk {
                session: 7,
                baud: 921_600,
            },
            Message::Ping {
                session: 7,
                token: 99,
            },
            Message::Pong {
                session: 7,
                token: 99,
            },
            Message::Begin {
                session: 7,
                begin: Begin {
                    kind: StreamKind::Delta,
                    resume: true,
                    stream_size: 5,
                    stream_sha256: [1; 32],
                    image_size: 1 << 40,
                    image_sha256: [2; 32],
                    block_size: 65536,
                },
            },
            Message::BeginReply {
                session: 7,
                resume_offset: 65536,
                prefix_sha256: [3; 32],
            },
            Message::Data {
                session: 7,
                seq: 3,
                start: Some(BlockStart {
                    offset: 1 << 33,
                    raw_len: 65536,
                    encoding: Encoding::Deflate,
                }),
                end: false,
                payload: vec![0, 1, 2],
            },
            Message::Data {
                session: 7,
                seq: 4,
                start: None,
                end: true,
                payload: vec![],
            },
            Message::Ack {
                session: 7,
                next_seq: 5,
                done: 12345,
            },
            Message::Nak {
                session: 7,
                next_seq: 5,
            },
            Message::End {
                session: 7,
                frames: 5,
            },
            Message::Result {
                session: 7,
                verified: true,
                size: 10,
                sha256: [4; 32],
            },
            Message::Abort { session: 7 },
            Message::Error {
                session: 7,
                code: ErrorCode::Patch,
                message: "wrong old image".into(),
            },
        ];
        for message in messages {
            let body = message.encode();
            assert_eq!(Message::decode(&body), Some(message.clone()));
            // A DATA frame ends in its payload: only its fixed part is checked.
            let payload_len = match &message {
                Message::Data { payload, .. } => payload.len(),
                _ => 0,
            };
            for cut in 0..body.len() - payload_len {
                assert_eq!(
                    Message::decode(&body[..cut]),
                    None,
                    "{message:?} cut at {cut}"
                );
            }
        }
        assert_eq!(Message::decode(&[0x55, 1, 2]), None);
    }

    #[test]
    fn long_error_texts_are_cut_on_a_character_boundary() {
        let message = Message::Error {
            session: 1,
            code: ErrorCode::Flash,
            message: "é".repeat(200),
        };
        let Some(Message::Error { message: text, .. }) = Message::decode(&message.encode()) else {
            panic!("no error decoded");
        };
        assert_eq!(text, "é".repeat(MAX_MESSAGE / 2));
    }
}
