//! A link is a byte pipe to a device with read timeouts: a serial port, a
//! pty, a socket, or an in-memory pair in tests. Protocols (the otaflash
//! agent protocol, YMODEM, the STM32 bootloader) are written against
//! [`Link`] and never know which one they drive.

use std::collections::VecDeque;
use std::fs::OpenOptions;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, BaudRate, FlushArg, SetArg};

use crate::{Error, Result};

/// A byte pipe to a device.
pub trait Link {
    /// The port's name, for messages ("/dev/ttyUSB0", "socket://host:port").
    fn name(&self) -> &str;

    /// Sends every byte of `data` (may block while the port's buffer is full).
    fn write_all(&mut self, data: &[u8]) -> Result<()>;

    /// Waits at most `timeout` for bytes, then returns how many were put in
    /// `buf` (at least one), or 0 when none came in time.
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize>;

    /// Returns once everything written has left the port (before a baud change).
    fn drain(&mut self) -> Result<()>;

    /// Drops bytes received but not read yet.
    fn discard_input(&mut self) -> Result<()>;

    /// Switches the line rate. Links without one (sockets, memory) accept any.
    fn set_baud_rate(&mut self, baud: u32) -> Result<()>;
}

impl<L: Link + ?Sized> Link for &mut L {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        (**self).write_all(data)
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        (**self).read(buf, timeout)
    }
    fn drain(&mut self) -> Result<()> {
        (**self).drain()
    }
    fn discard_input(&mut self) -> Result<()> {
        (**self).discard_input()
    }
    fn set_baud_rate(&mut self, baud: u32) -> Result<()> {
        (**self).set_baud_rate(baud)
    }
}

impl<L: Link + ?Sized> Link for Box<L> {
    fn name(&self) -> &str {
        (**self).name()
    }
    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        (**self).write_all(data)
    }
    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        (**self).read(buf, timeout)
    }
    fn drain(&mut self) -> Result<()> {
        (**self).drain()
    }
    fn discard_input(&mut self) -> Result<()> {
        (**self).discard_input()
    }
    fn set_baud_rate(&mut self, baud: u32) -> Result<()> {
        (**self).set_baud_rate(baud)
    }
}

/// Reads exactly `buf.len()` bytes within `timeout`; a timeout names what was
/// awaited.
pub fn read_exact(
    link: &mut dyn Link,
    buf: &mut [u8],
    timeout: Duration,
    waiting_for: &str,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    let mut filled = 0;
    while filled < buf.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        let rest = buf.get_mut(filled..).unwrap_or_default();
        let n = if left.is_zero() {
            0
        } else {
            link.read(rest, left)?
        };
        if n == 0 {
            return Err(Error::Timeout {
                port: link.name().to_string(),
                waiting_for: waiting_for.to_string(),
                timeout,
            });
        }
        filled += n;
    }
    Ok(())
}

/// Reads one byte, or `None` when nothing came within `timeout`.
pub fn read_byte(link: &mut dyn Link, timeout: Duration) -> Result<Option<u8>> {
    let mut byte = [0u8];
    Ok((link.read(&mut byte, timeout)? == 1).then_some(byte[0]))
}

/// A serial port or pty through its file descriptor: no interpreter, no
/// copies beyond the kernel's. Reads wait in `poll`; the descriptor may be
/// non-blocking (pyserial opens ports that way).
#[derive(Debug)]
pub struct FdLink {
    fd: OwnedFd,
    name: String,
}

/// How long a write may wait for room in the port's buffer before the link
/// is declared stuck (hardware flow control held off, a wedged adapter).
const WRITE_STALL_LIMIT: Duration = Duration::from_secs(10);

impl FdLink {
    /// Wraps an open descriptor (already configured: speed, raw mode).
    pub fn new(fd: OwnedFd, name: impl Into<String>) -> Self {
        Self {
            fd,
            name: name.into(),
        }
    }

    /// Opens a tty device (a serial port or a pty) in raw 8N1 at `baud`.
    pub fn open(path: impl AsRef<Path>, baud: u32) -> Result<Self> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags((OFlag::O_NOCTTY | OFlag::O_NONBLOCK).bits())
            .open(path)
            .map_err(|e| Error::link_io(&name, "open the port", e))?;
        let link = Self::new(OwnedFd::from(file), name);
        let mut attrs =
            termios::tcgetattr(link.fd.as_fd()).map_err(|e| link.errno("configure", e))?;
        termios::cfmakeraw(&mut attrs);
        attrs.control_flags |= termios::ControlFlags::CLOCAL | termios::ControlFlags::CREAD;
        attrs.control_flags &= !(termios::ControlFlags::CSTOPB
            | termios::ControlFlags::PARENB
            | termios::ControlFlags::CRTSCTS);
        termios::cfsetspeed(&mut attrs, standard_rate(baud, &link.name)?)
            .map_err(|e| link.errno("set the speed of", e))?;
        termios::tcsetattr(link.fd.as_fd(), SetArg::TCSANOW, &attrs)
            .map_err(|e| link.errno("configure", e))?;
        Ok(link)
    }

    fn errno(&self, action: &str, errno: Errno) -> Error {
        if errno == Errno::EIO {
            return self.closed();
        }
        Error::link_io(&self.name, &format!("{action} the port"), errno.into())
    }

    fn closed(&self) -> Error {
        Error::link(
            &self.name,
            "the port was closed (device unplugged or the other end went away)",
        )
    }

    fn wait(&self, flags: PollFlags, timeout: Duration) -> Result<Option<PollFlags>> {
        // Round up so a sub-millisecond wait does not become a busy loop.
        let millis = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128);
        let timeout = PollTimeout::try_from(millis as i32).unwrap_or(PollTimeout::MAX);
        let mut fds = [PollFd::new(self.fd.as_fd(), flags)];
        match poll(&mut fds, timeout) {
            Ok(0) => Ok(None),
            Ok(_) => Ok(fds[0].revents()),
            Err(Errno::EINTR) => Ok(Some(PollFlags::empty())),
            Err(e) => Err(self.errno("wait on", e)),
        }
    }
}

impl Link for FdLink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_all(&mut self, mut data: &[u8]) -> Result<()> {
        let mut stalled_since: Option<Instant> = None;
        while !data.is_empty() {
            match nix::unistd::write(self.fd.as_fd(), data) {
                Ok(n) => {
                    data = data.get(n..).unwrap_or_default();
                    stalled_since = None;
                }
                Err(Errno::EAGAIN) => {
                    let since = *stalled_since.get_or_insert_with(Instant::now);
                    if since.elapsed() > WRITE_STALL_LIMIT {
                        return Err(Error::Timeout {
                            port: self.name.clone(),
                            waiting_for: "waiting for room to send (flow control held off?)".into(),
                            timeout: WRITE_STALL_LIMIT,
                        });
                    }
                    self.wait(PollFlags::POLLOUT, Duration::from_millis(100))?;
                }
                Err(Errno::EINTR) => {}
                Err(e) => return Err(self.errno("write to", e)),
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.wait(PollFlags::POLLIN, left)? {
                None => return Ok(0),
                Some(revents) if revents.is_empty() => {}
                Some(revents) => {
                    match nix::unistd::read(self.fd.as_fd(), buf) {
                        Ok(0) => return Err(self.closed()),
                        Ok(n) => return Ok(n),
                        Err(Errno::EAGAIN | Errno::EINTR) => {}
                        Err(e) => return Err(self.errno("read from", e)),
                    }
                    if revents.contains(PollFlags::POLLHUP) {
                        return Err(self.closed());
                    }
                }
            }
            if Instant::now() >= deadline {
                return Ok(0);
            }
        }
    }

    fn drain(&mut self) -> Result<()> {
        match termios::tcdrain(self.fd.as_fd()) {
            Ok(()) | Err(Errno::ENOTTY) => Ok(()),
            Err(e) => Err(self.errno("drain", e)),
        }
    }

    fn discard_input(&mut self) -> Result<()> {
        match termios::tcflush(self.fd.as_fd(), FlushArg::TCIFLUSH) {
            Ok(()) => Ok(()),
            Err(Errno::ENOTTY) => {
                let mut scratch = [0u8; 4096];
                while self.read(&mut scratch, Duration::ZERO)? > 0 {}
                Ok(())
            }
            Err(e) => Err(self.errno("flush", e)),
        }
    }

    fn set_baud_rate(&mut self, baud: u32) -> Result<()> {
        let rate = standard_rate(baud, &self.name)?;
        let mut attrs =
            termios::tcgetattr(self.fd.as_fd()).map_err(|e| self.errno("configure", e))?;
        termios::cfsetspeed(&mut attrs, rate).map_err(|e| self.errno("set the speed of", e))?;
        termios::tcsetattr(self.fd.as_fd(), SetArg::TCSADRAIN, &attrs)
            .map_err(|e| self.errno("set the speed of", e))
    }
}

/// The termios constant for a baud rate; other rates need the port's own
/// driver (pyserial does that when it owns the port).
fn standard_rate(baud: u32, port: &str) -> Result<BaudRate> {
    use BaudRate::*;
    Ok(match baud {
        1200 => B1200,
        2400 => B2400,
        4800 => B4800,
        9600 => B9600,
        19200 => B19200,
        38400 => B38400,
        57600 => B57600,
        115200 => B115200,
        230400 => B230400,
        460800 => B460800,
        500000 => B500000,
        576000 => B576000,
        921600 => B921600,
        1000000 => B1000000,
        1152000 => B1152000,
        1500000 => B1500000,
        2000000 => B2000000,
        2500000 => B2500000,
        3000000 => B3000000,
        3500000 => B3500000,
        4000000 => B4000000,
        _ => {
            return Err(Error::link(
                port,
                format!("{baud} baud is not a standard rate this port can be set to"),
            ));
        }
    })
}

/// One direction of a [`MemoryLink`] pair.
#[derive(Debug, Default)]
struct Pipe {
    state: Mutex<PipeState>,
    ready: Condvar,
}

#[derive(Debug, Default)]
struct PipeState {
    bytes: VecDeque<u8>,
    closed: bool,
}

impl Pipe {
    fn lock(&self) -> MutexGuard<'_, PipeState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One end of an in-memory full-duplex link: the fake backend the protocol
/// tests run on. Dropping (or [`MemoryLink::close`]) an end closes both
/// directions, like pulling the cable.
#[derive(Debug)]
pub struct MemoryLink {
    name: String,
    rx: Arc<Pipe>,
    tx: Arc<Pipe>,
}

impl MemoryLink {
    /// Two connected ends: what one writes the other reads.
    pub fn pair() -> (Self, Self) {
        let a_to_b = Arc::new(Pipe::default());
        let b_to_a = Arc::new(Pipe::default());
        (
            Self {
                name: "memory:host".into(),
                rx: Arc::clone(&b_to_a),
                tx: Arc::clone(&a_to_b),
            },
            Self {
                name: "memory:device".into(),
                rx: a_to_b,
                tx: b_to_a,
            },
        )
    }

    /// Closes both directions: the other end's reads and writes fail.
    pub fn close(&self) {
        for pipe in [&self.rx, &self.tx] {
            pipe.lock().closed = true;
            pipe.ready.notify_all();
        }
    }

    fn closed(&self) -> Error {
        Error::link(&self.name, "the port was closed (the other end went away)")
    }
}

impl Drop for MemoryLink {
    fn drop(&mut self) {
        self.close();
    }
}

impl Link for MemoryLink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        let mut state = self.tx.lock();
        if state.closed {
            return Err(self.closed());
        }
        state.bytes.extend(data);
        self.tx.ready.notify_all();
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        let mut state = self.rx.lock();
        loop {
            if !state.bytes.is_empty() {
                let n = buf.len().min(state.bytes.len());
                for (dst, src) in buf.iter_mut().zip(state.bytes.drain(..n)) {
                    *dst = src;
                }
                return Ok(n);
            }
            if state.closed {
                return Err(self.closed());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(0);
            }
            state = self
                .rx
                .ready
                .wait_timeout(state, left)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    fn drain(&mut self) -> Result<()> {
        Ok(())
    }

    fn discard_input(&mut self) -> Result<()> {
        self.rx.lock().bytes.clear();
        Ok(())
    }

    fn set_baud_rate(&mut self, _baud: u32) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_pair_carries_bytes_both_ways_and_times_out() {
        let (mut a, mut b) = MemoryLink::pair();
        a.write_all(b"hello").unwrap();
        let mut buf = [0u8; 16];
        let n = b.read(&mut buf, Duration::from_secs(1)).unwrap();
        assert_eq!(&buf[..n], b"hello");
        assert_eq!(b.read(&mut buf, Duration::from_millis(10)).unwrap(), 0);
        b.write_all(b"ok").unwrap();
        read_exact(&mut a, &mut buf[..2], Duration::from_secs(1), "test").unwrap();
        assert_eq!(&buf[..2], b"ok");
        let err = read_exact(
            &mut a,
            &mut buf[..2],
            Duration::from_millis(20),
            "the reply",
        )
        .unwrap_err();
        assert!(err.to_string().contains("while the reply"), "{err}");
        drop(b);
        assert!(a.write_all(b"x").is_err());
        assert!(a.read(&mut buf, Duration::from_millis(10)).is_err());
    }

    #[test]
    fn fd_link_over_a_real_pty() {
        let pty = nix::pty::openpty(None, None).unwrap();
        let slave_path = nix::unistd::ttyname(pty.slave.as_fd()).unwrap();
        let mut link = FdLink::open(&slave_path, 115200).unwrap();
        let mut master = FdLink::new(pty.master, "master");
        link.write_all(&[0u8, 1, 2, 0xFF, b'\n', 0x7F]).unwrap();
        let mut buf = [0u8; 16];
        read_exact(&mut master, &mut buf[..6], Duration::from_secs(1), "bytes").unwrap();
        // Raw mode: no CR/LF translation, no special characters.
        assert_eq!(&buf[..6], &[0u8, 1, 2, 0xFF, b'\n', 0x7F]);
        master.write_all(b"\x03\x04\x11\x13").unwrap();
        read_exact(&mut link, &mut buf[..4], Duration::from_secs(1), "bytes").unwrap();
        assert_eq!(&buf[..4], b"\x03\x04\x11\x13");
        link.set_baud_rate(921600).unwrap();
        assert!(link.set_baud_rate(123).is_err());
        link.drain().unwrap();
        master.write_all(b"stale").unwrap();
        std::thread::sleep(Duration::from_millis(20));
        link.discard_input().unwrap();
        assert_eq!(link.read(&mut buf, Duration::from_millis(20)).unwrap(), 0);
        drop(master);
        drop(pty.slave);
        let err = link.read(&mut buf, Duration::from_millis(200)).unwrap_err();
        assert!(err.to_string().contains("closed"), "{err}");
    }
}
