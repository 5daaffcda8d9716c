//! Zero-copy reads of any object that exports a contiguous buffer (bytes,
//! bytearray, memoryview, array, mmap), as hashlib does.
//!
//! This is the one place outside the MTD ioctl module that uses `unsafe`:
//! PyO3's safe buffer API only yields per-byte cells, which cannot be handed
//! to native code running with the GIL released.
#![allow(unsafe_code)]

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyString;

pub(crate) struct ByteView {
    // Boxed: the exporter may keep pointers into the Py_buffer until release.
    view: Box<ffi::Py_buffer>,
}

impl ByteView {
    pub(crate) fn new(obj: &Bound<'_, PyAny>) -> PyResult<Self> {
        if obj.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "Strings must be encoded before hashing",
            ));
        }
        let mut view = Box::new(ffi::Py_buffer::new());
        // SAFETY: `obj` is alive and we are attached; on success the view is
        // owned here and released exactly once, in Drop.
        let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_SIMPLE) };
        if rc != 0 {
            return Err(PyErr::take(obj.py()).unwrap_or_else(|| {
                PyBufferError::new_err("object does not export a contiguous byte buffer")
            }));
        }
        Ok(Self { view })
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        let len = usize::try_from(self.view.len).unwrap_or(0);
        if self.view.buf.is_null() || len == 0 {
            return &[];
        }
        // SAFETY: a PyBUF_SIMPLE export is `len` contiguous bytes at `buf`,
        // valid and never resized until PyBuffer_Release (exporters such as
        // bytearray refuse to resize while a view is held). Like hashlib, we
        // accept that another thread may change the bytes meanwhile.
        unsafe { std::slice::from_raw_parts(self.view.buf.cast::<u8>(), len) }
    }
}

impl Drop for ByteView {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and
        // is released once, attached to the interpreter.
        Python::attach(|_| unsafe { ffi::PyBuffer_Release(&mut *self.view) });
    }
}
