"""otaflash.delta and the diff / patch / patch-info verbs, against real peers
(Debian bsdiff/bspatch, PyPI bsdiff4) and a corrupted-patch corpus."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import threading
from pathlib import Path

import pytest

from otaflash import _core, delta
from otaflash.cli import main
from otaflash.errors import (
    CorruptPatchError,
    ForeignPatchError,
    InputError,
    PatchError,
    UnsupportedPatchError,
    VerifyError,
    WrongOldImageError,
)


def firmware_pair(size: int, seed: int) -> tuple[bytes, bytes]:
    """Code-like old image and a new one with inserted, removed and patched
    pieces, and shifted 32-bit addresses (what real releases look like)."""
    rng = random.Random(seed)
    words = [rng.randrange(0, 1 << 20) * 4 for _ in range(size // 4)]
    old = b"".join(w.to_bytes(4, "little") for w in words)
    new_words = [w + 64 if rng.random() < 0.3 else w for w in words]
    new = bytearray(b"".join(w.to_bytes(4, "little") for w in new_words))
    new[size // 3 : size // 3] = rng.randbytes(700)
    del new[size // 2 : size // 2 + 300]
    new += rng.randbytes(1000)
    return old, bytes(new)


@pytest.fixture(scope="module")
def pair() -> tuple[bytes, bytes]:
    return firmware_pair(300_000, 1)


@pytest.fixture(scope="module")
def patch(pair: tuple[bytes, bytes]) -> bytes:
    old, new = pair
    return delta.diff_bytes(old, new)


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_stream_apply_with_python_reader_and_sink(pair: tuple[bytes, bytes], patch: bytes) -> None:
    old, new = pair
    assert len(patch) < len(new) // 4
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, length: int) -> bytes:
        reads.append((offset, length))
        return old[offset : offset + length]

    out = bytearray()
    events: list[tuple[str, int, int | None]] = []
    applier = delta.Applier(
        read_at, out.extend, old_size=len(old), progress=lambda *e: events.append(e)
    )
    rng = random.Random(2)
    at = 0
    while at < len(patch):
        step = rng.choice([1, 3, 100, 5000, 70_000])
        applier.feed(memoryview(patch)[at : at + step])
        at += step
    result = applier.finish()
    assert bytes(out) == new
    assert result.new_size == len(new)
    assert result.format == "otaflash"
    assert reads, "the old image was never read through the callable"
    assert max(length for _, length in reads) <= 1 << 20, "old image read in one piece"
    assert {"verify", "patch"} <= {e[0] for e in events}
    assert applier.working_set is not None
    assert applier.working_set <= delta.DEFAULT_MAX_WORKING_SET


def test_file_apply_and_cli_round_trip(tmp_path: Path, pair: tuple[bytes, bytes], capsys) -> None:
    old, new = pair
    old_p, new_p = write(tmp_path / "old", old), write(tmp_path / "new", new)
    patch_p, out_p = tmp_path / "p.otp", tmp_path / "out"
    assert main(["diff", str(old_p), str(new_p), "-o", str(patch_p), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["size"] == patch_p.stat().st_size
    assert record["new_sha256"] == hashlib.sha256(new).hexdigest()
    assert main(["patch", str(old_p), str(patch_p), "-o", str(out_p), "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert out_p.read_bytes() == new
    assert record["size"] == len(new)
    assert main(["patch-info", str(patch_p)]) == 0
    text = capsys.readouterr().out
    assert "kind: sequential" in text
    assert f"new_size: {len(new)}" in text
    assert not (tmp_path / "out.part").exists()


def test_lzma2_patches_are_smaller_and_apply_the_same(
    tmp_path: Path, pair: tuple[bytes, bytes], capsys
) -> None:
    old, new = pair
    old_p, new_p = write(tmp_path / "old", old), write(tmp_path / "new", new)
    sizes = {}
    for codec in ("zstd", "lzma2"):
        patch_p, out_p = tmp_path / f"p.{codec}", tmp_path / f"out.{codec}"
        args = ["diff", str(old_p), str(new_p), "-o", str(patch_p), "--compression", codec]
        assert main([*args, "--json"]) == 0
        record = json.loads(capsys.readouterr().out)
        assert record["compression"] == codec
        assert isinstance(record["sparse_diffs"], bool)
        assert isinstance(record["x86_branches"], bool)
        # Small images keep one LZMA2 stream per frame.
        assert record["split_streams"] is False
        assert record["record_columns"] is True
        # Small images carry no reference map, so version 3 appliers read them.
        assert (record["reference_pages"], record["version"]) == (0, 3)
        assert record["references"] == "none"
        # The patch's first bytes say as much as the whole.
        head = patch_p.read_bytes()[: _core.PATCH_HEADER_MAX]
        assert delta.patch_info(head).fields == delta.patch_info(patch_p).fields
        sizes[codec] = patch_p.stat().st_size
        assert main(["patch", str(old_p), str(patch_p), "-o", str(out_p)]) == 0
        capsys.readouterr()
        assert out_p.read_bytes() == new
    assert sizes["lzma2"] < sizes["zstd"], sizes
    with pytest.raises(InputError, match="LZMA2 preset 12"):
        delta.diff_bytes(old, new, compression="lzma2", level=12)


def test_wrong_old_image_is_refused_and_nothing_is_written(
    tmp_path: Path, pair: tuple[bytes, bytes], patch: bytes
) -> None:
    old, _ = pair
    other = bytearray(old)
    other[1234] ^= 0xFF
    patch_p = write(tmp_path / "p", patch)
    with pytest.raises(WrongOldImageError) as info:
        delta.apply(write(tmp_path / "other", bytes(other)), patch_p, tmp_path / "out")
    assert str(info.value).startswith("this patch needs old image sha256 ")
    assert info.value.exit_code == 7
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "out.part").exists()
    written = bytearray()
    applier = delta.Applier(bytes(other), written.extend)
    with pytest.raises(WrongOldImageError):
        applier.feed(patch)
    assert written == b""


def test_corrupted_patch_corpus(tmp_path: Path) -> None:
    old, new = firmware_pair(8_000, 3)
    patch = delta.diff_bytes(old, new, block_size=1024, window_log=12, frame_size=2048)

    def apply(data: bytes) -> None:
        applier = delta.Applier(old, bytearray().extend)
        applier.feed(data)
        applier.finish()

    for length in range(len(patch)):
        with pytest.raises(PatchError):
            apply(patch[:length])
    for bit in range(0, len(patch) * 8, 3):
        bad = bytearray(patch)
        bad[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises((PatchError, VerifyError)):
            apply(bytes(bad))
    with pytest.raises(ForeignPatchError, match="zstd"):
        apply(b"\x28\xb5\x2f\xfd" + bytes(200))
    with pytest.raises(CorruptPatchError, match="longer"):
        apply(patch + b"\0")
    # The CLI: one line, exit 7, no output file.
    bad_p = write(tmp_path / "bad", patch[:-1])
    old_p = write(tmp_path / "old", old)
    assert main(["patch", str(old_p), str(bad_p), "-o", str(tmp_path / "out")]) == 7
    assert not (tmp_path / "out").exists()


def test_working_memory_limit(pair: tuple[bytes, bytes], patch: bytes) -> None:
    old, _ = pair
    with pytest.raises(UnsupportedPatchError, match="working memory"):
        delta.Applier(old, bytearray().extend, max_working_set=256 << 10).feed(patch)


def test_checkpoint_resume_after_a_cut(tmp_path: Path) -> None:
    old, new = firmware_pair(400_000, 4)
    patch = delta.diff_bytes(old, new, block_size=16384, frame_size=65536)
    out = tmp_path / "new"
    applier = delta.Applier(old, out)
    applier.feed(patch[: len(patch) * 2 // 3])
    checkpoint = applier.checkpoint()
    assert checkpoint is not None
    patch_offset, output_offset = delta.checkpoint_offsets(checkpoint)
    assert 0 < output_offset <= applier.output_offset
    del applier  # power cut: the file holds whatever was written
    resumed = delta.Applier(old, out, checkpoint=checkpoint)
    resumed.feed(patch[patch_offset:])
    resumed.finish()
    assert out.read_bytes() == new


def test_ctrl_c_and_callback_errors_stop_the_apply(pair: tuple[bytes, bytes], patch: bytes) -> None:
    old, _ = pair

    def interrupt(operation: str, done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        delta.Applier(old, bytearray().extend, progress=interrupt).feed(patch)

    def broken_sink(data: bytes) -> None:
        raise OSError("flash went away")

    applier = delta.Applier(old, broken_sink)
    with pytest.raises(OSError, match="flash went away"):
        applier.feed(patch)


def test_native_work_releases_the_gil(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    ticks = 0
    stop = threading.Event()

    def count() -> None:
        nonlocal ticks
        while not stop.is_set():
            ticks += 1

    thread = threading.Thread(target=count)
    thread.start()
    try:
        delta.diff_bytes(old * 8, new * 8, threads=1)
    finally:
        stop.set()
        thread.join()
    assert ticks > 1000


def test_in_place_patch_is_refused_by_the_sequential_applier(pair: tuple[bytes, bytes]) -> None:
    old, new = pair
    patch = delta.diff_bytes(old, new, kind="in-place", block_size=4096)
    info = delta.patch_info(patch)
    assert info.fields["kind"] == "in-place"
    assert info.fields["slot_size"] >= len(new)
    with pytest.raises(UnsupportedPatchError, match="in-place"):
        delta.Applier(old, bytearray().extend).feed(patch)


# --- BSDIFF40 compatibility against the real tools -------------------------


@pytest.mark.parametrize("seed", [5, 6])
def test_debian_bsdiff_patches_apply_like_bspatch(tmp_path: Path, seed: int) -> None:
    old, new = firmware_pair(200_000 + seed * 1000, seed)
    old_p, new_p = write(tmp_path / "old", old), write(tmp_path / "new", new)
    patch_p = tmp_path / "p.bsdiff"
    subprocess.run(["bsdiff", str(old_p), str(new_p), str(patch_p)], check=True)
    subprocess.run(["bspatch", str(old_p), str(tmp_path / "ref"), str(patch_p)], check=True)
    ours = tmp_path / "ours"
    result = delta.apply(old_p, patch_p, ours)
    assert result.format == "bsdiff40"
    assert ours.read_bytes() == (tmp_path / "ref").read_bytes() == new
    # Streamed in small chunks through callables too.
    out = bytearray()
    applier = delta.Applier(old, out.extend)
    data = patch_p.read_bytes()
    for at in range(0, len(data), 999):
        applier.feed(data[at : at + 999])
    applier.finish()
    assert bytes(out) == new


def test_bsdiff4_patches_apply_like_bspatch(tmp_path: Path) -> None:
    import bsdiff4

    old, new = firmware_pair(150_000, 7)
    patch = bsdiff4.diff(old, new)
    patch_p = write(tmp_path / "p", patch)
    old_p = write(tmp_path / "old", old)
    subprocess.run(["bspatch", str(old_p), str(tmp_path / "ref"), str(patch_p)], check=True)
    assert delta.apply(old_p, patch_p, tmp_path / "ours").new_size == len(new)
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "ref").read_bytes() == new
    assert bsdiff4.patch(old, patch) == new


def test_bad_bsdiff_patches_are_errors(tmp_path: Path) -> None:
    old, new = firmware_pair(20_000, 8)
    old_p, new_p = write(tmp_path / "old", old), write(tmp_path / "new", new)
    patch_p = tmp_path / "p"
    subprocess.run(["bsdiff", str(old_p), str(new_p), str(patch_p)], check=True)
    patch = patch_p.read_bytes()

    def apply(data: bytes) -> None:
        applier = delta.Applier(old, bytearray().extend)
        applier.feed(data)
        applier.finish()

    for length in range(0, len(patch), 7):
        with pytest.raises(PatchError):
            apply(patch[:length])


# --- VCDIFF (xdelta3) compatibility against the real tool -----------------


def xdelta3(tmp_path: Path, old: bytes | None, new: bytes, *options: str) -> bytes:
    """A patch made by Debian's xdelta3, checked with `xdelta3 -d` first."""
    new_p, patch_p = write(tmp_path / "x.new", new), tmp_path / "x.vcdiff"
    source = ["-s", str(write(tmp_path / "x.old", old))] if old is not None else []
    subprocess.run(["xdelta3", "-e", "-f", *options, *source, str(new_p), str(patch_p)], check=True)
    ref = tmp_path / "x.ref"
    subprocess.run(["xdelta3", "-d", "-f", *source, str(patch_p), str(ref)], check=True)
    assert ref.read_bytes() == new
    return patch_p.read_bytes()


def apply_streamed(old: bytes, patch: bytes, step: int) -> bytes:
    out = bytearray()
    applier = delta.Applier(old, out.extend)
    for at in range(0, len(patch), step):
        applier.feed(patch[at : at + step])
    result = applier.finish()
    assert result.format == "vcdiff"
    assert result.new_size == len(out)
    assert result.new_sha256 == hashlib.sha256(out).hexdigest()
    return bytes(out)


def repetitive_pair(seed: int) -> tuple[bytes, bytes]:
    """A new image with runs and repeated pieces of itself, so windows copy
    from their own output (overlapping copies included)."""
    old, new = firmware_pair(150_000, seed)
    rng = random.Random(seed)
    piece = rng.randbytes(3000)
    return old, new[:40_000] + piece * 5 + bytes(5000) + b"ab" * 2000 + new[40_000:]


@pytest.mark.parametrize(
    "options",
    [
        (),  # the default: LZMA secondary compression, Adler-32 per window
        ("-S", "none"),
        ("-9",),
        ("-0",),
        ("-n", "-S", "none"),  # no checksums
        ("-W", "65536", "-B", "524288"),  # many windows, one xz stream each kind
    ],
    ids=["default", "no-secondary", "level-9", "level-0", "no-checksum", "small-windows"],
)
def test_xdelta3_patches_apply_like_xdelta3(tmp_path: Path, options: tuple[str, ...]) -> None:
    old, new = repetitive_pair(11)
    patch = xdelta3(tmp_path, old, new, *options)
    assert delta.patch_info(patch).format == "vcdiff"
    result = delta.apply(
        write(tmp_path / "old", old), write(tmp_path / "p", patch), tmp_path / "out"
    )
    assert (result.format, result.new_size) == ("vcdiff", len(new))
    assert (tmp_path / "out").read_bytes() == new
    for step in (1, 777, 1 << 20):
        assert apply_streamed(old, patch, step) == new


def test_xdelta3_without_a_source_and_the_patch_info(tmp_path: Path) -> None:
    _, new = repetitive_pair(12)
    patch = xdelta3(tmp_path, None, new)
    assert apply_streamed(b"", patch, 4096) == new
    info = delta.patch_info(patch)
    assert (info.format, info.new_size, info.fields["secondary"]) == ("vcdiff", None, "lzma")
    assert main(["patch-info", str(write(tmp_path / "p", patch)), "--json"]) == 0


def test_xdelta3_coders_we_do_not_have_are_named(tmp_path: Path) -> None:
    old, new = firmware_pair(50_000, 13)
    for coder in ("djw", "fgk"):
        patch = xdelta3(tmp_path, old, new, "-S", coder)
        with pytest.raises(UnsupportedPatchError, match=coder):
            apply_streamed(old, patch, 4096)


def test_bad_vcdiff_patches_are_errors_never_wrong_images(tmp_path: Path) -> None:
    old, new = repetitive_pair(14)
    patch = xdelta3(tmp_path, old, new, "-W", "65536", "-B", "524288")
    for length in range(0, len(patch), max(1, len(patch) // 150)):
        with pytest.raises(PatchError):
            apply_streamed(old, patch[:length], 4096)
    # Bit flips: an error, or (in the file name of the application header)
    # harmless. Every window carries an Adler-32 of its output.
    rng = random.Random(14)
    for bit in rng.sample(range(len(patch) * 8), 300):
        damaged = bytearray(patch)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            out = apply_streamed(old, bytes(damaged), 8192)
        except (PatchError, VerifyError):
            continue
        assert out == new, f"bit {bit} made a wrong image without an error"
    # The wrong old image (VCDIFF carries no hash of it): the checksums catch it.
    other = bytearray(old)
    other[1000:1100] = bytes(100)
    with pytest.raises(VerifyError, match="adler32"):
        apply_streamed(bytes(other), patch, 8192)


def test_diff_reports_progress_and_stops_on_ctrl_c() -> None:
    old, new = firmware_pair(3_000_000, 9)
    events: list[tuple[str, int, int | None]] = []
    delta.diff_bytes(old, new, progress=lambda *e: events.append(e))
    assert events
    assert events[-1][1] == events[-1][2]

    def interrupt(operation: str, done: int, total: int | None) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        delta.diff_bytes(old, new, progress=interrupt)
