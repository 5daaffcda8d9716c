//! Flashing through the STM32 system bootloader (what `stm32flash -w -v -g`
//! does): 0x7F autobaud, GET / GET_VERSION / GET_ID, erase of the pages the
//! image covers (or all), 256-byte WRITE_MEMORY, READ_MEMORY read-back
//! compare, and GO.

use std::time::{Duration, Instant};

use super::{ACK, BUSY, Chip, INIT, NACK, address_bytes, cmd, xor};
use crate::io::ReadAt;
use crate::progress::{Operation, Progress, ProgressEvent};
use crate::serial::link::{Link, read_byte, read_exact};
use crate::{DeviceErrorKind, Error, Result};

const PROTOCOL: &str = "STM32 bootloader";
const CHUNK: usize = 256;
const REPLY_TIMEOUT: Duration = Duration::from_secs(1);
const PAGE_ERASE_TIMEOUT: Duration = Duration::from_secs(5);
const MASS_ERASE_TIMEOUT: Duration = Duration::from_secs(35);

/// What the bootloader said about itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Info {
    pub bootloader_version: u8,
    pub option_bytes: [u8; 2],
    pub commands: Vec<u8>,
    pub pid: u16,
    pub chip: Option<&'static Chip>,
}

impl Info {
    fn erase_command(&self) -> Option<u8> {
        [cmd::EXTENDED_ERASE, cmd::ERASE]
            .into_iter()
            .find(|c| self.commands.contains(c))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Erase {
    /// The pages the image covers (needs the chip's page layout).
    Pages,
    /// The whole flash.
    Mass,
    /// Nothing (the flash is known to be blank).
    None,
}

#[derive(Clone, Debug)]
pub struct FlashOptions {
    pub address: u32,
    pub erase: Erase,
    pub verify: bool,
    /// Start the application at this address afterwards.
    pub go: Option<u32>,
}

impl Default for FlashOptions {
    fn default() -> Self {
        Self {
            address: 0x0800_0000,
            erase: Erase::Pages,
            verify: true,
            go: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FlashReport {
    pub info: Info,
    pub size: u64,
    pub erased_pages: Option<usize>,
    pub verified: bool,
    pub started_at: Option<u32>,
}

/// A connected bootloader.
pub struct Bootloader<'a> {
    link: &'a mut dyn Link,
    pub info: Info,
}

impl std::fmt::Debug for Bootloader<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bootloader")
            .field("port", &self.link.name())
            .field("info", &self.info)
            .finish()
    }
}

fn protocol_error(link: &dyn Link, message: impl Into<String>) -> Error {
    Error::Protocol {
        port: link.name().to_string(),
        protocol: PROTOCOL,
        message: message.into(),
    }
}

/// Waits for ACK; a NACK is `Ok(false)`. BUSY bytes extend the wait.
fn ack(link: &mut dyn Link, timeout: Duration, waiting_for: &str) -> Result<bool> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match read_byte(link, left)? {
            Some(ACK) => return Ok(true),
            Some(NACK) => return Ok(false),
            Some(BUSY) => {}
            Some(other) => {
                return Err(protocol_error(
                    link,
                    format!("got {other:#04x} instead of ACK while {waiting_for}"),
                ));
            }
            None => {
                return Err(Error::Timeout {
                    port: link.name().to_string(),
                    waiting_for: waiting_for.to_string(),
                    timeout,
                });
            }
        }
    }
}

impl<'a> Bootloader<'a> {
    /// Wakes the bootloader (0x7F) and asks who it is.
    pub fn connect(link: &'a mut dyn Link) -> Result<Self> {
        link.discard_input()?;
        link.write_all(&[INIT])?;
        match read_byte(link, Duration::from_millis(500))? {
            Some(ACK) => {}
            // Already awake from an earlier session.
            Some(NACK) => {}
            Some(other) => {
                return Err(protocol_error(
                    link,
                    format!("got {other:#04x} in answer to 0x7F"),
                ));
            }
            None => {
                // The last 0x7F may have been taken as a command byte by a
                // bootloader that was already awake: a second one completes
                // that "command" and draws a NACK.
                link.write_all(&[INIT])?;
                match read_byte(link, Duration::from_millis(500))? {
                    Some(NACK | ACK) => {}
                    _ => {
                        return Err(Error::Timeout {
                            port: link.name().to_string(),
                            waiting_for: "waking the STM32 bootloader with 0x7F (BOOT0 high and \
                                          reset? right port and baud rate?)"
                                .into(),
                            timeout: Duration::from_secs(1),
                        });
                    }
                }
            }
        }
        let mut boot = Self {
            link,
            info: Info {
                bootloader_version: 0,
                option_bytes: [0; 2],
                commands: Vec::new(),
                pid: 0,
                chip: None,
            },
        };
        boot.command(cmd::GET_VERSION)?;
        let mut version = [0u8; 3];
        read_exact(
            boot.link,
            &mut version,
            REPLY_TIMEOUT,
            "reading GET_VERSION",
        )?;
        boot.expect_ack("ending GET_VERSION")?;
        boot.command(cmd::GET)?;
        let n = boot.read_u8("reading GET")?;
        let mut reply = vec![0u8; usize::from(n) + 1];
        read_exact(boot.link, &mut reply, REPLY_TIMEOUT, "reading GET")?;
        boot.expect_ack("ending GET")?;
        boot.command(cmd::GET_ID)?;
        let n = boot.read_u8("reading GET_ID")?;
        let mut id = vec![0u8; usize::from(n) + 1];
        read_exact(boot.link, &mut id, REPLY_TIMEOUT, "reading GET_ID")?;
        boot.expect_ack("ending GET_ID")?;
        if id.len() < 2 {
            return Err(protocol_error(boot.link, "GET_ID returned no product ID"));
        }
        let pid = u16::from_be_bytes([id[0], id[1]]);
        boot.info = Info {
            bootloader_version: reply.first().copied().unwrap_or(version[0]),
            option_bytes: [version[1], version[2]],
            commands: reply.get(1..).unwrap_or_default().to_vec(),
            pid,
            chip: Chip::by_pid(pid),
        };
        Ok(boot)
    }

    fn read_u8(&mut self, waiting_for: &str) -> Result<u8> {
        let mut byte = [0u8];
        read_exact(self.link, &mut byte, REPLY_TIMEOUT, waiting_for)?;
        Ok(byte[0])
    }

    fn expect_ack(&mut self, waiting_for: &str) -> Result<()> {
        if ack(self.link, REPLY_TIMEOUT, waiting_for)? {
            Ok(())
        } else {
            Err(self.refused(waiting_for))
        }
    }

    fn refused(&self, what: &str) -> Error {
        Error::Device {
            port: self.link.name().to_string(),
            kind: DeviceErrorKind::Flash,
            message: format!("refused (NACK) while {what}"),
        }
    }

    fn command(&mut self, code: u8) -> Result<()> {
        if !self.info.commands.is_empty() && !self.info.commands.contains(&code) {
            return Err(Error::Device {
                port: self.link.name().to_string(),
                kind: DeviceErrorKind::Unsupported,
                message: format!("bootloader does not offer command {code:#04x}"),
            });
        }
        self.link.write_all(&[code, !code])?;
        let what = format!("sending command {code:#04x}");
        self.expect_ack(&what)
    }

    fn send_address(&mut self, address: u32) -> Result<()> {
        self.link.write_all(&address_bytes(address))?;
        self.expect_ack(&format!("sending address {address:#010x}"))
    }

    pub fn read_memory(&mut self, address: u32, buf: &mut [u8]) -> Result<()> {
        if buf.is_empty() || buf.len() > CHUNK {
            return Err(Error::InvalidArgument(format!(
                "a read is 1 to 256 bytes, not {}",
                buf.len()
            )));
        }
        self.command(cmd::READ_MEMORY)?;
        self.send_address(address)?;
        let n = (buf.len() - 1) as u8;
        self.link.write_all(&[n, !n])?;
        self.expect_ack("sending the read length")?;
        read_exact(self.link, buf, REPLY_TIMEOUT, "reading memory")
    }

    /// Writes up to 256 bytes at a 4-aligned address (padded with 0xFF to a
    /// multiple of 4).
    pub fn write_memory(&mut self, address: u32, data: &[u8]) -> Result<()> {
        if data.is_empty() || data.len() > CHUNK || !address.is_multiple_of(4) {
            return Err(Error::InvalidArgument(format!(
                "a write is 1 to 256 bytes at a 4-aligned address, not {} at {address:#010x}",
                data.len()
            )));
        }
        let command = [cmd::WRITE_MEMORY, cmd::WRITE_MEMORY_NS]
            .into_iter()
            .find(|c| self.info.commands.contains(c))
            .unwrap_or(cmd::WRITE_MEMORY);
        self.command(command)?;
        self.send_address(address)?;
        let padded = data.len().div_ceil(4) * 4;
        let mut packet = Vec::with_capacity(padded + 2);
        packet.push((padded - 1) as u8);
        packet.extend_from_slice(data);
        packet.resize(padded + 1, 0xFF);
        packet.push(xor(&packet));
        self.link.write_all(&packet)?;
        if ack(self.link, REPLY_TIMEOUT, "writing memory")? {
            Ok(())
        } else {
            Err(self.refused(&format!(
                "writing {} bytes at {address:#010x} (not erased? write-protected?)",
                data.len()
            )))
        }
    }

    pub fn mass_erase(&mut self) -> Result<()> {
        let erase = self.erase_command()?;
        self.command(erase)?;
        if erase == cmd::ERASE {
            self.link.write_all(&[0xFF, 0x00])?;
        } else {
            self.link.write_all(&[0xFF, 0xFF, 0x00])?;
        }
        if ack(self.link, MASS_ERASE_TIMEOUT, "erasing the whole flash")? {
            Ok(())
        } else {
            Err(self.refused("erasing the whole flash"))
        }
    }

    fn erase_command(&self) -> Result<u8> {
        self.info.erase_command().ok_or_else(|| Error::Device {
            port: self.link.name().to_string(),
            kind: DeviceErrorKind::Unsupported,
            message: "bootloader offers no erase command".into(),
        })
    }

    pub fn erase_pages(&mut self, pages: &[u16]) -> Result<()> {
        let erase = self.erase_command()?;
        // ERASE counts pages in one byte, EXTENDED ERASE in two.
        let per_command = if erase == cmd::ERASE { 255 } else { 512 };
        for batch in pages.chunks(per_command) {
            self.command(erase)?;
            let mut packet = Vec::with_capacity(2 + 2 * batch.len() + 1);
            if erase == cmd::ERASE {
                packet.push((batch.len() - 1) as u8);
                for &page in batch {
                    let page = u8::try_from(page).map_err(|_| {
                        Error::InvalidArgument(format!(
                            "page {page} cannot be named by the one-byte ERASE command"
                        ))
                    })?;
                    packet.push(page);
                }
            } else {
                packet.extend_from_slice(&((batch.len() - 1) as u16).to_be_bytes());
                for &page in batch {
                    packet.extend_from_slice(&page.to_be_bytes());
                }
            }
            packet.push(xor(&packet));
            self.link.write_all(&packet)?;
            let timeout = PAGE_ERASE_TIMEOUT * batch.len() as u32;
            if !ack(self.link, timeout, "erasing pages")? {
                return Err(self.refused(&format!("erasing {} pages", batch.len())));
            }
        }
        Ok(())
    }

    pub fn go(&mut self, address: u32) -> Result<()> {
        self.command(cmd::GO)?;
        self.send_address(address)
    }
}

/// Writes `image` at `options.address`, verifies it by reading it back and
/// optionally starts it.
pub fn flash(
    link: &mut dyn Link,
    image: &mut dyn ReadAt,
    options: &FlashOptions,
    progress: &mut dyn Progress,
) -> Result<FlashReport> {
    let size = image.size();
    let mut boot = Bootloader::connect(link)?;
    let size32 = u32::try_from(size)
        .map_err(|_| Error::InvalidArgument(format!("a {size}-byte image is too large")))?;
    if !options.address.is_multiple_of(4) {
        return Err(Error::InvalidArgument(format!(
            "the address {:#010x} is not 4-byte aligned",
            options.address
        )));
    }
    if let Some(chip) = boot.info.chip {
        let end = u64::from(options.address) + size;
        if options.address < chip.flash.0 || end > u64::from(chip.flash.1) {
            return Err(Error::InvalidArgument(format!(
                "{size} bytes at {:#010x} do not fit the {} flash ({:#010x}..{:#010x})",
                options.address, chip.name, chip.flash.0, chip.flash.1
            )));
        }
    }
    let erased_pages = match options.erase {
        Erase::None => None,
        Erase::Mass => {
            boot.mass_erase()?;
            None
        }
        Erase::Pages => {
            let Some(chip) = boot.info.chip else {
                return Err(Error::InvalidArgument(format!(
                    "the page layout of product ID {:#05x} is unknown; erase it whole \
                     (--erase all) or not at all (--erase none)",
                    boot.info.pid
                )));
            };
            let pages = chip.pages_covering(options.address, size32);
            progress.report(ProgressEvent {
                operation: Operation::Erase,
                done: 0,
                total: Some(pages.len() as u64),
            })?;
            if !pages.is_empty() {
                boot.erase_pages(&pages)?;
            }
            progress.report(ProgressEvent {
                operation: Operation::Erase,
                done: pages.len() as u64,
                total: Some(pages.len() as u64),
            })?;
            Some(pages.len())
        }
    };
    let mut buf = vec![0u8; CHUNK];
    let mut offset = 0u64;
    while offset < size {
        let n = (size - offset).min(CHUNK as u64) as usize;
        let chunk = buf.get_mut(..n).unwrap_or_default();
        image.read_exact_at(offset, chunk)?;
        boot.write_memory(options.address + offset as u32, chunk)?;
        offset += n as u64;
        progress.report(ProgressEvent {
            operation: Operation::Program,
            done: offset,
            total: Some(size),
        })?;
    }
    if options.verify {
        let mut expected = vec![0u8; CHUNK];
        let mut offset = 0u64;
        while offset < size {
            let n = (size - offset).min(CHUNK as u64) as usize;
            let want = expected.get_mut(..n).unwrap_or_default();
            image.read_exact_at(offset, want)?;
            let got = buf.get_mut(..n).unwrap_or_default();
            let address = options.address + offset as u32;
            boot.read_memory(address, got)?;
            if let Some(i) = got.iter().zip(want.iter()).position(|(a, b)| a != b) {
                return Err(Error::Verify {
                    subject: format!(
                        "{}: flash at {:#010x}",
                        boot.link.name(),
                        address + i as u32
                    ),
                    what: "read-back byte".into(),
                    expected: format!("{:#04x}", want[i]),
                    actual: format!("{:#04x}", got[i]),
                });
            }
            offset += n as u64;
            progress.report(ProgressEvent {
                operation: Operation::Verify,
                done: offset,
                total: Some(size),
            })?;
        }
    }
    if let Some(address) = options.go {
        boot.go(address)?;
    }
    Ok(FlashReport {
        info: boot.info.clone(),
        size,
        erased_pages,
        verified: options.verify,
        started_at: options.go,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::progress::{CancelToken, NoProgress};
    use crate::serial::link::MemoryLink;
    use crate::serial::stm32::emulator::{self, Event, FileFlash, Profile};
    use std::sync::{Arc, Mutex};

    fn with_emulator(
        profile: &str,
        test: impl FnOnce(&mut MemoryLink, &std::path::Path, &Arc<Mutex<Vec<Event>>>),
    ) {
        let dir =
            std::env::temp_dir().join(format!("otaflash-stm32-{profile}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let flash_path = dir.join("flash.bin");
        let profile = Profile::by_name(profile).unwrap();
        let size = u64::from(profile.chip().unwrap().flash_size());
        let (mut host, mut device) = MemoryLink::pair();
        let cancel = CancelToken::new();
        let events = Arc::new(Mutex::new(Vec::new()));
        let handle = {
            let cancel = cancel.clone();
            let events = Arc::clone(&events);
            let flash_path = flash_path.clone();
            std::thread::spawn(move || {
                let mut flash = FileFlash::open(&flash_path, size).unwrap();
                emulator::serve(&mut device, &mut flash, profile, &cancel, &mut |event| {
                    events.lock().unwrap().push(event);
                    Ok(())
                })
            })
        };
        test(&mut host, &flash_path, &events);
        cancel.cancel();
        let _ = handle.join().unwrap();
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn our_host_flashes_both_emulated_parts_and_starts_the_image() {
        for profile in ["f103", "f407"] {
            with_emulator(profile, |link, flash_path, events| {
                let flash_image = flash;
                let image: Vec<u8> = (0..70_001u32).map(|i| (i * 13 % 253) as u8).collect();
                let mut source = image.clone();
                let options = FlashOptions {
                    go: Some(0x0800_0000),
                    ..FlashOptions::default()
                };
                let report = flash_image(link, &mut source, &options, &mut NoProgress).unwrap();
                assert!(report.verified);
                let on_chip = std::fs::read(flash_path).unwrap();
                assert_eq!(&on_chip[..image.len()], &image[..]);
                assert!(on_chip[image.len()..].iter().all(|&b| b == 0xFF));
                let events = events.lock().unwrap();
                assert_eq!(events.last(), Some(&Event::Go(0x0800_0000)));
                // Writing again over programmed flash without an erase is refused.
                drop(events);
                let options = FlashOptions {
                    erase: Erase::None,
                    ..FlashOptions::default()
                };
                let mut other: Vec<u8> = image.iter().map(|b| !b).collect();
                let err = flash(link, &mut other, &options, &mut NoProgress).unwrap_err();
                assert!(matches!(err, Error::Device { .. }), "{err}");
                // And an image past the end of flash is refused before anything happens.
                let mut huge = vec![0u8; 2 << 20];
                let err =
                    flash(link, &mut huge, &FlashOptions::default(), &mut NoProgress).unwrap_err();
                assert!(err.to_string().contains("do not fit"), "{err}");
            });
        }
    }
}
