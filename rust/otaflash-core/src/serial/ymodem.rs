//! YMODEM batch transfers: a sender that works with lrzsz `rb` and U-Boot
//! `loady`, and a receiver that works with lrzsz `sb` (128-byte blocks) and
//! `sb -k` (1 KiB blocks).
//!
//! Wire facts (Chuck Forsberg's YMODEM notes; U-Boot `common/xyzModem.c`):
//! the receiver asks with `C` (CRC-16 mode) or NAK (8-bit checksum); a
//! packet is SOH (128 bytes) or STX (1024 bytes), block number and its
//! complement, data, then CRC-16/XMODEM big-endian or the checksum. Block 0
//! is the header (`name\0size mtime mode ...`), data blocks count from 1
//! modulo 256, the file ends with EOT, and an all-zero block 0 ends the
//! batch. The classic receiver NAKs the first EOT; U-Boot ACKs it at once
//! and, in CRC mode, uses `C` where others send NAK.

use std::time::{Duration, Instant};

use super::link::{Link, read_byte, read_exact};
use crate::io::{ImageSink, ReadAt};
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::{Error, Result};

const SOH: u8 = 0x01;
const STX: u8 = 0x02;
const EOT: u8 = 0x04;
const ACK: u8 = 0x06;
const NAK: u8 = 0x15;
const CAN: u8 = 0x18;
const CRC_REQUEST: u8 = b'C';
/// Padding of the last block (CP/M end of file).
const CPMEOF: u8 = 0x1A;

const PROTOCOL: &str = "YMODEM";
const CRC16: crc::Crc<u16> = crc::Crc::<u16>::new(&crc::CRC_16_XMODEM);

#[derive(Clone, Debug)]
pub struct SendOptions {
    /// 1024 (STX packets, what `sb -k` and U-Boot use) or 128.
    pub block_size: usize,
    /// How long to wait for the receiver to start (its first `C`).
    pub start_timeout: Duration,
    /// How long to wait for each acknowledgement.
    pub timeout: Duration,
    /// Sends of one packet before giving up.
    pub retries: u32,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            block_size: 1024,
            start_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(10),
            retries: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SendReport {
    pub size: u64,
    pub blocks: u64,
    pub retransmitted: u64,
    /// The receiver asked for 8-bit checksums instead of CRC-16.
    pub checksum_mode: bool,
    /// The receiver acknowledged the first EOT (U-Boot) instead of NAKing it.
    pub first_eot_acked: bool,
    /// The receiver acknowledged the empty header that ends the batch.
    pub end_of_batch_acked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Check {
    Crc16,
    Checksum,
}

fn packet(seq: u8, data: &[u8], size: usize, fill: u8, check: Check) -> Vec<u8> {
    let mut out = Vec::with_capacity(size + 5);
    out.push(if size == 1024 { STX } else { SOH });
    out.push(seq);
    out.push(!seq);
    out.extend_from_slice(data);
    out.resize(3 + size, fill);
    let body = out.get(3..).unwrap_or_default();
    match check {
        Check::Crc16 => {
            let crc = CRC16.checksum(body);
            out.extend_from_slice(&crc.to_be_bytes());
        }
        Check::Checksum => {
            let sum = body.iter().fold(0u8, |s, b| s.wrapping_add(*b));
            out.push(sum);
        }
    }
    out
}

fn protocol_error(link: &dyn Link, message: impl Into<String>) -> Error {
    Error::Protocol {
        port: link.name().to_string(),
        protocol: PROTOCOL,
        message: message.into(),
    }
}

fn cancelled_by_peer(link: &dyn Link, who: &str) -> Error {
    Error::Device {
        port: link.name().to_string(),
        kind: crate::DeviceErrorKind::Other,
        message: format!("cancelled the transfer ({who} sent CAN CAN)"),
    }
}

/// Sends one file (`name`, the bytes of `source`) as a YMODEM batch.
pub fn send(
    link: &mut dyn Link,
    name: &str,
    source: &mut dyn ReadAt,
    mtime: Option<u64>,
    options: &SendOptions,
    progress: &mut dyn Progress,
) -> Result<SendReport> {
    let block_size = if options.block_size >= 1024 {
        1024
    } else {
        128
    };
    let size = source.size();
    let mut report = SendReport {
        size,
        blocks: 0,
        retransmitted: 0,
        checksum_mode: false,
        first_eot_acked: false,
        end_of_batch_acked: false,
    };
    let check = wait_for_start(link, options.start_timeout)?;
    report.checksum_mode = check == Check::Checksum;

    // Block 0: the file's name and size (U-Boot reads only the size).
    let mut header = Vec::with_capacity(128);
    header.extend_from_slice(base_name(name).as_bytes());
    header.push(0);
    match mtime {
        Some(mtime) => header.extend_from_slice(format!("{size} {mtime:o} 100644").as_bytes()),
        None => header.extend_from_slice(size.to_string().as_bytes()),
    }
    header.push(0);
    let header_size = if header.len() <= 128 { 128 } else { 1024 };
    if header.len() > 1024 {
        return Err(Error::InvalidArgument(format!(
            "the file name {name:?} is too long for a YMODEM header"
        )));
    }
    let hdr = packet(0, &header, header_size, 0, check);
    send_packet(link, &hdr, options, &mut report)?;
    // A classic receiver now asks for the data with `C`; U-Boot just waits.
    let _ = wait_for(link, &[CRC_REQUEST, NAK], Duration::from_secs(1))?;

    let mut buf = vec![0u8; block_size];
    let mut offset = 0u64;
    let mut seq: u8 = 1;
    while offset < size {
        let left = (size - offset) as usize;
        // A short tail goes in a 128-byte packet, as lrzsz does.
        let this_size = if left <= 128 { 128 } else { block_size };
        let n = left.min(this_size);
        let data = buf.get_mut(..n).unwrap_or_default();
        source.read_exact_at(offset, data)?;
        let pkt = packet(seq, data, this_size, CPMEOF, check);
        send_packet(link, &pkt, options, &mut report)?;
        report.blocks += 1;
        offset += n as u64;
        seq = seq.wrapping_add(1);
        progress.report(ProgressEvent {
            operation: Operation::Transfer,
            done: offset,
            total: Some(size),
        })?;
    }

    // End of file: classic receivers NAK the first EOT, U-Boot ACKs it.
    let mut eots = 0;
    loop {
        eots += 1;
        if eots > options.retries {
            return Err(Error::Timeout {
                port: link.name().to_string(),
                waiting_for: "waiting for the receiver to acknowledge the end of the file".into(),
                timeout: options.timeout,
            });
        }
        link.write_all(&[EOT])?;
        match wait_for(link, &[ACK, NAK, CAN], Duration::from_secs(3))? {
            Some(ACK) => {
                report.first_eot_acked = eots == 1;
                break;
            }
            Some(CAN) => return Err(cancelled_by_peer(link, "the receiver")),
            _ => {}
        }
    }

    // End of batch: an empty header, once the receiver asks for the next
    // file. Every data block and the EOT were acknowledged already, so the
    // file is delivered; this ACK is only hygiene. U-Boot ACKs whatever
    // comes, and lrzsz `rb` flushes its output as it exits, which on a pty
    // can swallow the ACK: a receiver that goes quiet here is done.
    let _ = wait_for(link, &[CRC_REQUEST, NAK], options.timeout)?;
    let last = packet(0, &[], 128, 0, check);
    for _ in 0..3 {
        link.write_all(&last)?;
        match wait_for(link, &[ACK, NAK, CRC_REQUEST], Duration::from_secs(2))? {
            Some(ACK) => {
                report.end_of_batch_acked = true;
                break;
            }
            Some(_) => report.retransmitted += 1,
            None => break,
        }
    }
    Ok(report)
}

fn base_name(name: &str) -> &str {
    let base = name.rsplit('/').next().unwrap_or(name);
    if base.is_empty() {
        "firmware.bin"
    } else {
        base
    }
}

/// Waits for the receiver's first `C` (CRC-16) or NAK (checksum).
fn wait_for_start(link: &mut dyn Link, timeout: Duration) -> Result<Check> {
    match wait_for(link, &[CRC_REQUEST, NAK, CAN], timeout)? {
        Some(CRC_REQUEST) => Ok(Check::Crc16),
        Some(NAK) => Ok(Check::Checksum),
        Some(_) => Err(cancelled_by_peer(link, "the receiver")),
        None => Err(Error::Timeout {
            port: link.name().to_string(),
            waiting_for: "waiting for the receiver to start (run `loady` or `rb` on the device)"
                .into(),
            timeout,
        }),
    }
}

/// Reads until one of `wanted` arrives (others are line noise), or `None`.
fn wait_for(link: &mut dyn Link, wanted: &[u8], timeout: Duration) -> Result<Option<u8>> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match read_byte(link, left)? {
            Some(byte) if wanted.contains(&byte) => return Ok(Some(byte)),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// Sends a packet until the receiver ACKs it. A `C` asks again like a NAK:
/// U-Boot answers bad packets with `C` in CRC mode, and lrzsz `rb` re-asks
/// with `C` for a header it flushed. A repeated header or block is harmless:
/// receivers re-ACK the block they already have.
fn send_packet(
    link: &mut dyn Link,
    pkt: &[u8],
    options: &SendOptions,
    report: &mut SendReport,
) -> Result<()> {
    let mut cans = 0;
    for attempt in 0..options.retries {
        if attempt > 0 {
            report.retransmitted += 1;
        }
        link.write_all(pkt)?;
        let deadline = Instant::now() + options.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(byte) = (if left.is_zero() {
                None
            } else {
                read_byte(link, left)?
            }) else {
                break; // timed out: send again
            };
            match byte {
                ACK => return Ok(()),
                NAK | CRC_REQUEST => break,
                CAN => {
                    cans += 1;
                    if cans >= 2 {
                        return Err(cancelled_by_peer(link, "the receiver"));
                    }
                }
                _ => cans = 0,
            }
        }
    }
    Err(Error::Timeout {
        port: link.name().to_string(),
        waiting_for: format!(
            "waiting for the receiver to acknowledge a packet ({} tries)",
            options.retries
        ),
        timeout: options.timeout,
    })
}

#[derive(Clone, Debug)]
pub struct ReceiveOptions {
    /// ACK the first EOT at once (U-Boot) instead of NAKing it to make sure.
    pub ack_first_eot: bool,
    /// How long to keep asking for a sender.
    pub start_timeout: Duration,
    /// Silence that counts as a lost packet.
    pub timeout: Duration,
    pub retries: u32,
}

impl Default for ReceiveOptions {
    fn default() -> Self {
        Self {
            ack_first_eot: false,
            start_timeout: Duration::from_secs(60),
            timeout: Duration::from_secs(3),
            retries: 10,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReceivedFile {
    pub name: String,
    /// The size the header gave, when it gave one.
    pub declared_size: Option<u64>,
    /// Bytes written.
    pub size: u64,
}

enum Packet {
    Block { seq: u8, data: Vec<u8> },
    Eot,
    Cancel,
    Bad,
    Silence,
}

/// Reads one packet; damaged ones come back as `Bad` after the line went quiet.
fn read_packet(link: &mut dyn Link, check: Check, timeout: Duration) -> Result<Packet> {
    let Some(first) = read_byte(link, timeout)? else {
        return Ok(Packet::Silence);
    };
    let size = match first {
        SOH => 128,
        STX => 1024,
        EOT => return Ok(Packet::Eot),
        CAN => {
            return Ok(match read_byte(link, Duration::from_secs(1))? {
                Some(CAN) => Packet::Cancel,
                _ => Packet::Bad,
            });
        }
        _ => return Ok(Packet::Bad),
    };
    let check_len = if check == Check::Crc16 { 2 } else { 1 };
    let mut rest = vec![0u8; 2 + size + check_len];
    if read_exact(link, &mut rest, Duration::from_secs(2), "a packet").is_err() {
        return Ok(Packet::Bad);
    }
    let (head, body) = rest.split_at(2);
    let (data, tail) = body.split_at(size);
    let ok = head[0] == !head[1]
        && match check {
            Check::Crc16 => CRC16.checksum(data).to_be_bytes() == tail,
            Check::Checksum => {
                data.iter().fold(0u8, |s, b| s.wrapping_add(*b))
                    == tail.first().copied().unwrap_or(0)
            }
        };
    if !ok {
        return Ok(Packet::Bad);
    }
    Ok(Packet::Block {
        seq: head[0],
        data: data.to_vec(),
    })
}

/// Drains a damaged packet's remains so the next read starts on a packet.
fn purge(link: &mut dyn Link) -> Result<()> {
    let mut scratch = [0u8; 1100];
    while link.read(&mut scratch, Duration::from_millis(100))? > 0 {}
    Ok(())
}

/// Gives the sink for a received file from its name and declared size.
pub type OpenFile<'a> = dyn FnMut(&str, Option<u64>) -> Result<Box<dyn ImageSink>> + 'a;

/// Receives a YMODEM batch. `open(name, declared_size)` gives the sink for
/// each file; every file's sink is finished before the next one starts.
pub fn receive(
    link: &mut dyn Link,
    open: &mut OpenFile<'_>,
    options: &ReceiveOptions,
    progress: &mut dyn Progress,
) -> Result<Vec<ReceivedFile>> {
    let check = Check::Crc16;
    let mut files = Vec::new();
    let mut first = true;
    loop {
        // Ask for a header until one comes.
        let deadline = Instant::now()
            + if first {
                options.start_timeout
            } else {
                options.timeout * options.retries
            };
        let header = loop {
            link.write_all(&[CRC_REQUEST])?;
            match read_packet(link, check, Duration::from_secs(1))? {
                Packet::Block { seq: 0, data } => break data,
                Packet::Cancel => return Err(cancelled_by_peer(link, "the sender")),
                Packet::Bad => purge(link)?,
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout {
                    port: link.name().to_string(),
                    waiting_for: "waiting for a YMODEM sender (start `sb` on the other end)".into(),
                    timeout: if first {
                        options.start_timeout
                    } else {
                        options.timeout
                    },
                });
            }
        };
        first = false;
        if header.first().copied().unwrap_or(0) == 0 {
            link.write_all(&[ACK])?; // end of batch
            return Ok(files);
        }
        let (name, declared_size) = parse_header(&header);
        if name.is_empty() || name.contains('/') || name == ".." || name == "." {
            link.write_all(&[CAN; 5])?;
            return Err(protocol_error(
                link,
                format!("the sender offered an unsafe file name {name:?}"),
            ));
        }
        let mut sink = open(&name, declared_size)?;
        link.write_all(&[ACK, CRC_REQUEST])?;
        let size = receive_data(link, &mut *sink, declared_size, check, options, progress)?;
        sink.finish()?;
        files.push(ReceivedFile {
            name,
            declared_size,
            size,
        });
    }
}

fn parse_header(header: &[u8]) -> (String, Option<u64>) {
    let mut parts = header.splitn(2, |&b| b == 0);
    let name = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
    let info = parts.next().unwrap_or_default();
    let info = info.split(|&b| b == 0).next().unwrap_or_default();
    let size = std::str::from_utf8(info)
        .ok()
        .and_then(|s| s.split_ascii_whitespace().next())
        .and_then(|s| {
            s.strip_prefix("0x")
                .map_or_else(|| s.parse().ok(), |hex| u64::from_str_radix(hex, 16).ok())
        });
    (name, size)
}

fn receive_data(
    link: &mut dyn Link,
    sink: &mut dyn ImageSink,
    declared_size: Option<u64>,
    check: Check,
    options: &ReceiveOptions,
    progress: &mut dyn Progress,
) -> Result<u64> {
    let mut expected: u8 = 1;
    let mut written = 0u64;
    // Without a declared size the last block's CP/M padding is cut at EOT.
    let mut held: Option<Vec<u8>> = None;
    let mut eot_seen = false;
    let mut failures = 0;
    loop {
        match read_packet(link, check, options.timeout)? {
            Packet::Block { seq, data } if seq == expected => {
                failures = 0;
                eot_seen = false;
                let data = match declared_size {
                    Some(size) => {
                        let keep = (size.saturating_sub(written)).min(data.len() as u64);
                        data.get(..keep as usize).unwrap_or_default().to_vec()
                    }
                    None => data,
                };
                if let Some(previous) = held.take() {
                    sink.write(&previous)?;
                }
                if declared_size.is_some() {
                    sink.write(&data)?;
                } else {
                    held = Some(data.clone());
                }
                written += data.len() as u64;
                expected = expected.wrapping_add(1);
                link.write_all(&[ACK])?;
                progress.report(ProgressEvent {
                    operation: Operation::Transfer,
                    done: written,
                    total: declared_size,
                })?;
            }
            Packet::Block { seq, .. } if seq == expected.wrapping_sub(1) => {
                link.write_all(&[ACK])?; // our ACK was lost: a repeat
            }
            Packet::Block { seq, .. } => {
                link.write_all(&[CAN; 5])?;
                return Err(protocol_error(
                    link,
                    format!("block {seq} arrived where block {expected} was due"),
                ));
            }
            Packet::Eot => {
                if !options.ack_first_eot && !eot_seen {
                    // Make sure it was an EOT and not a damaged packet start.
                    eot_seen = true;
                    link.write_all(&[NAK])?;
                    continue;
                }
                link.write_all(&[ACK])?;
                let mut written_total = written;
                if let Some(mut last) = held.take() {
                    let padding = last.iter().rev().take_while(|&&b| b == CPMEOF).count();
                    last.truncate(last.len() - padding);
                    written_total -= padding as u64;
                    sink.write(&last)?;
                }
                if let Some(size) = declared_size
                    && written_total < size
                {
                    return Err(protocol_error(
                        link,
                        format!("the file ended after {written_total} of its {size} bytes"),
                    ));
                }
                return Ok(written_total);
            }
            Packet::Cancel => return Err(cancelled_by_peer(link, "the sender")),
            Packet::Bad | Packet::Silence => {
                failures += 1;
                if failures > options.retries {
                    link.write_all(&[CAN; 5])?;
                    return Err(Error::Timeout {
                        port: link.name().to_string(),
                        waiting_for: format!("receiving block {expected}"),
                        timeout: options.timeout,
                    });
                }
                purge(link)?;
                link.write_all(&[NAK])?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::NoProgress;
    use crate::serial::link::MemoryLink;
    use std::sync::{Arc, Mutex};
    use std::thread;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl ImageSink for Shared {
        fn write(&mut self, data: &[u8]) -> Result<()> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(())
        }
        fn finish(&mut self) -> Result<()> {
            Ok(())
        }
    }

    fn round_trip(data: Vec<u8>, block_size: usize, ack_first_eot: bool) -> (SendReport, Vec<u8>) {
        let (mut host, mut device) = MemoryLink::pair();
        let received = Shared::default();
        let sink = received.clone();
        let receiver = thread::spawn(move || {
            let options = ReceiveOptions {
                ack_first_eot,
                ..ReceiveOptions::default()
            };
            let mut open = |name: &str, size: Option<u64>| -> Result<Box<dyn ImageSink>> {
                assert_eq!(name, "fw.bin");
                assert!(size.is_some());
                Ok(Box::new(sink.clone()))
            };
            receive(&mut device, &mut open, &options, &mut NoProgress)
        });
        let mut source = data;
        let options = SendOptions {
            block_size,
            ..SendOptions::default()
        };
        let report = send(
            &mut host,
            "dir/fw.bin",
            &mut source,
            Some(0o1234),
            &options,
            &mut NoProgress,
        )
        .unwrap();
        let files = receiver.join().unwrap().unwrap();
        assert_eq!(files.len(), 1);
        let out = received.0.lock().unwrap().clone();
        assert_eq!(files[0].size, out.len() as u64);
        (report, out)
    }

    #[test]
    fn sender_and_receiver_agree_on_any_size() {
        for len in [0usize, 1, 127, 128, 129, 1023, 1024, 1025, 5000] {
            let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
            for block in [128, 1024] {
                let (report, out) = round_trip(data.clone(), block, false);
                assert_eq!(out, data, "len {len} block {block}");
                assert!(!report.first_eot_acked);
            }
        }
        let (report, _) = round_trip(vec![1; 3000], 1024, true);
        assert!(
            report.first_eot_acked,
            "U-Boot style receivers ACK the first EOT"
        );
    }

    #[test]
    fn headers_parse_like_lrzsz_and_u_boot_write_them() {
        assert_eq!(
            parse_header(b"small.bin\x003000 15300607006 100644 0 1 3000\x00\x00"),
            ("small.bin".into(), Some(3000))
        );
        assert_eq!(parse_header(b"a\x000x10\x00"), ("a".into(), Some(16)));
        assert_eq!(parse_header(b"a\x00\x00"), ("a".into(), None));
    }
}
