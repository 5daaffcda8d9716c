"""The exception hierarchy, its exit codes, and where they are documented."""

from __future__ import annotations

import pickle
import re
import subprocess
import sys

import pytest

from otaflash import errors

from .conftest import ROOT

CLASS_CODES = {
    errors.OtaflashError: 1,
    errors.InputError: 3,
    errors.FileError: 3,
    errors.MissingFileError: 3,
    errors.FileAccessError: 3,
    errors.NotAFileError: 3,
    errors.UnknownAlgorithmError: 3,
    errors.TargetError: 3,
    errors.DfuFileError: 3,
    errors.VerifyError: 4,
    errors.TransportError: 5,
    errors.UsbError: 5,
    errors.UsbPermissionError: 5,
    errors.DeviceNotFoundError: 5,
    errors.FlashError: 6,
    errors.GeometryError: 6,
    errors.SlotError: 6,
    errors.TargetError: 3,
    errors.DfuStatusError: 6,
    errors.LinkTimeoutError: 5,
    errors.ProtocolError: 5,
    errors.FlashError: 6,
    errors.GeometryError: 6,
    errors.DeviceError: 6,
    errors.UnsupportedError: 6,
    errors.PatchError: 7,
    errors.CorruptPatchError: 7,
    errors.ForeignPatchError: 7,
    errors.UnsupportedPatchError: 7,
    errors.WrongOldImageError: 7,
    errors.DownloadError: 8,
    errors.RuleError: 9,
    errors.Cancelled: 10,
}


def test_every_exported_class_has_its_code() -> None:
    exported = {getattr(errors, name) for name in errors.__all__ if name[0].isupper()}
    classes = {c for c in exported if isinstance(c, type)}
    assert classes == set(CLASS_CODES)
    for cls, code in CLASS_CODES.items():
        assert cls.exit_code == code, cls
        assert issubclass(cls, errors.OtaflashError)


def readme_exit_codes() -> dict[int, str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("### Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2] for m in re.finditer(r"^\| (\d+) \| (.+?) \|$", section, re.M)}


def test_the_readme_and_the_module_document_the_same_codes() -> None:
    documented = readme_exit_codes()
    assert set(documented) == {*CLASS_CODES.values(), 0, 2, 70, 130}
    module_doc = errors.__doc__ or ""
    for code in documented:
        assert re.search(rf"^{code}\s", module_doc, re.M), f"exit code {code} not in errors.py"
    from otaflash import cli

    for code in documented:
        assert f"{code} " in cli.EPILOG.replace("\n", " ")


def test_errors_module_does_not_import_the_extension() -> None:
    code = "import sys, otaflash.errors; print('otaflash._core' in sys.modules)"
    out = subprocess.check_output([sys.executable, "-c", code], text=True)
    assert out.strip() == "False"


@pytest.mark.parametrize(
    "error",
    [
        errors.MissingFileError(2, "cannot open x: no such file or directory", "x"),
        errors.VerifyError("x: md5 mismatch", "x", "00", "11"),
        errors.PatchError("corrupt patch"),
        errors.DfuStatusError("0483:df11: errWRITE", 3, "errWRITE", "dfuERROR"),
        errors.DfuFileError("fw.dfu: bad CRC", "fw.dfu"),
    ],
)
def test_errors_survive_pickling(error: errors.OtaflashError) -> None:
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert str(copy) == str(error)


def test_file_errors_are_oserrors_with_a_plain_message() -> None:
    e = errors.MissingFileError(2, "cannot open x: no such file or directory", "x")
    assert isinstance(e, FileNotFoundError)
    assert str(e) == "cannot open x: no such file or directory"
    assert (e.errno, e.filename) == (2, "x")
