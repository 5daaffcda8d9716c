//! A pyserial port as a core [`Link`].
//!
//! Real ports and ptys are driven through a duplicate of their file
//! descriptor ([`FdLink`]): no interpreter on the data path at all. Other
//! pyserial objects (`socket://`, `rfc2217://`, `loop://`, anything with
//! pyserial's `read`/`write`/`timeout`) are called once per read or write
//! of a whole frame or block, never per byte. Either way a long wait is cut
//! into slices so Ctrl-C and a Python `threading.Event` stop it within
//! 100 ms, and baud changes go through pyserial so its state stays right.
//!
//! The one `unsafe` here borrows the descriptor pyserial owns for the
//! instant it takes to duplicate it.
#![allow(unsafe_code)]

use std::io::IsTerminal;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use otaflash_core::serial::link::{FdLink, Link};
use otaflash_core::{Error, Result};
use pyo3::exceptions::PyOSError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

const SLICE: Duration = Duration::from_millis(100);

enum Path {
    Fd(FdLink),
    Object,
}

pub(crate) struct PyLink {
    port: Py<PyAny>,
    name: String,
    path: Path,
    stop: Option<Py<PyAny>>,
    last_check: Instant,
    /// The `timeout` last set on the pyserial object (object path).
    timeout: Option<Duration>,
}

/// A Python exception from pyserial: port trouble (OSError, which
/// pyserial's SerialException is) becomes a link error; the rest
/// (KeyboardInterrupt above all) goes back to Python unchanged.
fn from_python(name: &str, error: PyErr, py: Python<'_>) -> Error {
    if error.is_instance_of::<PyOSError>(py) {
        Error::link(name, error.value(py).to_string())
    } else {
        Error::Callback(Box::new(error))
    }
}

impl PyLink {
    pub(crate) fn new(port: &Bound<'_, PyAny>, stop: Option<Py<PyAny>>) -> PyResult<Self> {
        let name = port
            .getattr("port")
            .ok()
            .filter(|p| !p.is_none())
            .map_or_else(|| port.to_string(), |p| p.to_string());
        let path = match Self::duplicate_tty(port)? {
            Some(fd) => Path::Fd(FdLink::new(fd, name.clone())),
            None => Path::Object,
        };
        Ok(Self {
            port: port.clone().unbind(),
            name,
            path,
            stop,
            last_check: Instant::now(),
            timeout: None,
        })
    }

    /// A private copy of the port's descriptor when it is a terminal.
    fn duplicate_tty(port: &Bound<'_, PyAny>) -> PyResult<Option<OwnedFd>> {
        let Ok(fileno) = port.call_method0("fileno") else {
            return Ok(None);
        };
        let Ok(raw) = fileno.extract::<i32>() else {
            return Ok(None);
        };
        if raw < 0 {
            return Ok(None);
        }
        // SAFETY: `raw` is the open descriptor of `port`, which the caller
        // holds (and so keeps open) while this runs; it is only borrowed to
        // duplicate it (F_DUPFD_CLOEXEC), and the copy is owned from then on.
        let borrowed = unsafe { BorrowedFd::borrow_raw(raw) };
        if !borrowed.is_terminal() {
            return Ok(None);
        }
        Ok(Some(borrowed.try_clone_to_owned()?))
    }

    /// Runs the interpreter's signal handlers and looks at the stop event.
    fn check(&mut self, force: bool) -> Result<()> {
        if !force && self.last_check.elapsed() < SLICE {
            return Ok(());
        }
        self.last_check = Instant::now();
        Python::attach(|py| -> PyResult<bool> {
            py.check_signals()?;
            match &self.stop {
                Some(event) => event.bind(py).call_method0("is_set")?.is_truthy(),
                None => Ok(false),
            }
        })
        .map_err(|e| Error::Callback(Box::new(e)))
        .and_then(|stop| if stop { Err(Error::Cancelled) } else { Ok(()) })
    }

    fn call<T>(&self, f: impl FnOnce(Python<'_>, &Bound<'_, PyAny>) -> PyResult<T>) -> Result<T> {
        Python::attach(|py| f(py, self.port.bind(py)).map_err(|e| from_python(&self.name, e, py)))
    }

    fn object_read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let set_timeout = (self.timeout != Some(timeout)).then_some(timeout);
        let want = buf.len();
        let data = self.call(|_, port| {
            if let Some(t) = set_timeout {
                port.setattr("timeout", t.as_secs_f64())?;
            }
            let waiting: usize = port
                .getattr("in_waiting")
                .and_then(|n| n.extract())
                .unwrap_or(0);
            let data = port.call_method1("read", (waiting.clamp(1, want),))?;
            Ok(data.cast::<PyBytes>()?.as_bytes().to_vec())
        })?;
        if set_timeout.is_some() {
            self.timeout = set_timeout;
        }
        let n = data.len().min(buf.len());
        buf.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(data.get(..n).unwrap_or_default());
        Ok(n)
    }
}

impl Link for PyLink {
    fn name(&self) -> &str {
        &self.name
    }

    fn write_all(&mut self, data: &[u8]) -> Result<()> {
        self.check(false)?;
        match &mut self.path {
            Path::Fd(fd) => fd.write_all(data),
            Path::Object => self.call(|py, port| {
                port.call_method1("write", (PyBytes::new(py, data),))?;
                Ok(())
            }),
        }
    }

    fn read(&mut self, buf: &mut [u8], timeout: Duration) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check(false)?;
            let left = deadline.saturating_duration_since(Instant::now());
            let slice = left.min(SLICE);
            let n = match &mut self.path {
                Path::Fd(fd) => fd.read(buf, slice)?,
                Path::Object => self.object_read(buf, slice)?,
            };
            if n > 0 || Instant::now() >= deadline {
                return Ok(n);
            }
            self.check(true)?;
        }
    }

    fn drain(&mut self) -> Result<()> {
        match &mut self.path {
            Path::Fd(fd) => fd.drain(),
            Path::Object => self.call(|_, port| port.call_method0("flush").map(drop)),
        }
    }

    fn discard_input(&mut self) -> Result<()> {
        match &mut self.path {
            Path::Fd(fd) => fd.discard_input(),
            Path::Object => self.call(|_, port| port.call_method0("reset_input_buffer").map(drop)),
        }
    }

    fn set_baud_rate(&mut self, baud: u32) -> Result<()> {
        // Through pyserial in both paths, so `port.baudrate` stays true.
        self.call(|_, port| port.setattr("baudrate", baud))
    }
}
