//! The one place core errors become Python exceptions. The classes live in
//! pure Python (`otaflash.errors`) so they can be documented, pickled and
//! caught without the extension; they are imported here lazily.

use otaflash_core::{DeviceErrorKind, Error};
use pyo3::PyErr;
use pyo3::exceptions::PyRuntimeError;
use std::io::ErrorKind;

pyo3::import_exception!(otaflash.errors, FileError);
pyo3::import_exception!(otaflash.errors, MissingFileError);
pyo3::import_exception!(otaflash.errors, FileAccessError);
pyo3::import_exception!(otaflash.errors, NotAFileError);
pyo3::import_exception!(otaflash.errors, UnknownAlgorithmError);
pyo3::import_exception!(otaflash.errors, VerifyError);
pyo3::import_exception!(otaflash.errors, InputError);
pyo3::import_exception!(otaflash.errors, Cancelled);
pyo3::import_exception!(otaflash.errors, FlashError);
pyo3::import_exception!(otaflash.errors, GeometryError);
pyo3::import_exception!(otaflash.errors, TargetError);
pyo3::import_exception!(otaflash.errors, SlotError);
pyo3::import_exception!(otaflash.errors, CorruptPatchError);
pyo3::import_exception!(otaflash.errors, ForeignPatchError);
pyo3::import_exception!(otaflash.errors, UnsupportedPatchError);
pyo3::import_exception!(otaflash.errors, WrongOldImageError);
pyo3::import_exception!(otaflash.errors, DfuFileError);
pyo3::import_exception!(otaflash.errors, TransportError);
pyo3::import_exception!(otaflash.errors, LinkTimeoutError);
pyo3::import_exception!(otaflash.errors, ProtocolError);
pyo3::import_exception!(otaflash.errors, DeviceError);
pyo3::import_exception!(otaflash.errors, UnsupportedError);
pyo3::import_exception!(otaflash.errors, PatchError);

/// A core error on its way to Python; also wraps a `PyErr` raised inside a
/// callback so it comes back out unchanged.
#[derive(Debug)]
pub(crate) struct OtaError(Error);

pub(crate) type OtaResult<T> = Result<T, OtaError>;

impl From<Error> for OtaError {
    fn from(error: Error) -> Self {
        Self(error)
    }
}

impl From<PyErr> for OtaError {
    fn from(error: PyErr) -> Self {
        Self(Error::Callback(Box::new(error)))
    }
}

impl From<OtaError> for PyErr {
    fn from(OtaError(error): OtaError) -> Self {
        let message = error.to_string();
        match error {
            Error::Io { path, source, .. } => {
                let errno = source.raw_os_error().unwrap_or(0);
                let args = (errno, message, path.to_string_lossy().into_owned());
                match source.kind() {
                    ErrorKind::NotFound => MissingFileError::new_err(args),
                    ErrorKind::PermissionDenied => FileAccessError::new_err(args),
                    ErrorKind::IsADirectory => NotAFileError::new_err(args),
                    _ => FileError::new_err(args),
                }
            }
            Error::UnknownAlgorithm(_) => UnknownAlgorithmError::new_err(message),
            Error::Verify {
                subject,
                expected,
                actual,
                ..
            } => VerifyError::new_err((message, subject, expected, actual)),
            Error::InvalidArgument(_) => InputError::new_err(message),
            Error::Cancelled => Cancelled::new_err(message),
            Error::Flash {
                device,
                offset,
                source,
                ..
            } => FlashError::new_err((message, device, offset, source.raw_os_error())),
            Error::PowerCut { device, operation } => {
                FlashError::new_err((message, device, operation, None::<i32>))
            }
            Error::Geometry(_) => GeometryError::new_err(message),
            Error::Target { target, .. } => TargetError::new_err((message, target)),
            Error::Slot(_) => SlotError::new_err(message),
            Error::PatchCorrupt(_) => CorruptPatchError::new_err(message),
            Error::PatchForeign(_) => ForeignPatchError::new_err(message),
            Error::PatchUnsupported(_) => UnsupportedPatchError::new_err(message),
            Error::PatchWrongOld {
                expected_sha256,
                actual_sha256,
                ..
            } => WrongOldImageError::new_err((message, expected_sha256, actual_sha256)),
            Error::DfuFile { file, .. } => DfuFileError::new_err((message, file)),
            Error::Link { .. } => TransportError::new_err(message),
            Error::Timeout { .. } => LinkTimeoutError::new_err(message),
            Error::Protocol { .. } => ProtocolError::new_err(message),
            Error::Device { kind, .. } => match kind {
                DeviceErrorKind::Patch => PatchError::new_err(message),
                DeviceErrorKind::Verify => VerifyError::new_err((message,)),
                DeviceErrorKind::Unsupported => UnsupportedError::new_err(message),
                DeviceErrorKind::Flash => DeviceError::new_err(message),
                _ => TransportError::new_err(message),
            },
            Error::Callback(inner) => match inner.downcast::<PyErr>() {
                Ok(py_err) => *py_err,
                Err(other) => PyRuntimeError::new_err(other.to_string()),
            },
            // `Error` is non_exhaustive for downstream crates.
            #[allow(unreachable_patterns)]
            other => PyRuntimeError::new_err(other.to_string()),
        }
    }
}
