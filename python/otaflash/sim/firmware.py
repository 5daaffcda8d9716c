"""Synthetic firmware: deterministic images shaped like a Cortex-M build.

A delta engine is only as good as what it is shown: random bytes are the
wrong test (nothing to reuse), and so are zeros (everything to reuse). This
builds what a microcontroller image is made of, from a seed:

* a vector table and an application descriptor (magic, version, size);
* ``.text``: thousands of Thumb-2 functions of mixed sizes — prologues,
  loads, stores, compares, short branches, ``BL`` calls encoded with their
  real PC-relative offsets, and literal pools holding absolute addresses of
  functions, strings, tables and peripheral registers;
* ``.rodata``: log and format strings, the version string, a CRC table, a
  sine table, a bitmap font, calibration curves;
* initialised data: a shell command table and a peripheral table (pointers);
* an asset blob that does not compress (as a zipped web page would);
* 0xFF padding up to the image size (erased flash).

Release ``r`` is release ``r - 1`` with what a real release changes: a few
percent of the functions edited (instructions replaced and inserted, some
calling new code), new functions inserted between existing ones (every later
address moves, so calls and literal pools across the insertion change),
strings added and reworded, the version string and descriptor, one
calibration table, one more shell command. The image keeps its size (the
padding absorbs the growth), like a build padded to its flash region.

>>> series = FirmwareSeries(1 << 20)        # doctest: +SKIP
>>> v1, v2 = series.image(1), series.image(2)
"""

from __future__ import annotations

import math
import random
import struct
import sys
import zlib
from array import array
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cache

__all__ = ["DEFAULT_SEED", "MAX_SIZE", "MIN_SIZE", "FirmwareSeries", "build", "version_of"]

DEFAULT_SEED = 2024
MIN_SIZE = 64 << 10
MAX_SIZE = 64 << 20

FLASH_BASE = 0x0800_0000
RAM_BASE = 0x2000_0000
RAM_TOP = 0x2002_0000
PERIPHERALS = 0x4000_0000
VECTORS = 112
DESCRIPTOR_MAGIC = 0x4F54_4146  # "FATO" as a little-endian word: otaflash app descriptor
DESCRIPTOR_SIZE = 32

# Share of the image each part takes in release 1. Code fills what is left
# but HEADROOM: the erased padding later releases grow into.
STRING_SHARE = 0.10
ASSET_SHARE = 0.03
HEADROOM = 0.03
TABLES_SIZE = 1024 + 2048 + 4096 + 8 * 128 * 2  # CRC, sine, font, calibration

# What one release changes.
EDITED_FUNCTIONS = 0.01  # of the functions
INSERTED_CODE = 0.004  # of the image, in new functions
NEW_STRINGS_PER_BYTE = 1 / 40_000
REWORDED_STRINGS_PER_BYTE = 1 / 200_000

_WORD_LIST = (
    "sensor adc dma uart spi i2c can usb flash boot watchdog timer rtc gpio irq pwm "
    "motor battery charger thermal fan display touch radio ble wifi mqtt tls cert ota "
    "slot image block page sector journal config calib log shell heap stack task queue "
    "mutex event buffer frame packet checksum crc retry timeout overflow underrun "
    "voltage current power sleep wake reset fault bus clock pll oscillator"
)
_WORDS = _WORD_LIST.split()
_FORMATS = (
    "{a}: {b} {c} timeout after %u ms\n",
    "{a} init failed: err=%d\n",
    "[{a}] {b} %s -> %s\n",
    "{a}_{b}: invalid {c} %#x\n",
    "{a} {b} ready (%u.%u)\n",
    "assert failed: {a}_{b} != {c} at %s:%d\n",
    "{a}: {b} queue full, dropped %u\n",
    "{a}/{b}: %d bytes {c}\n",
    "{A} {B} error %d, retry %u/%u\n",
    "{a}.{b}.{c}",
    "{a}_{b}_{c}",
    "usage: {a} {b} [{c}]\n",
)


def version_of(release: int) -> str:
    """The version release ``release`` carries (``1`` → ``1.0.0``)."""
    return f"{release}.0.0"


def build(size: int = 1 << 20, release: int = 1, *, seed: int = DEFAULT_SEED) -> bytes:
    """Release ``release`` (1, 2, ...) of the firmware, exactly ``size`` bytes.

    The same arguments give the same bytes on every machine."""
    return FirmwareSeries(size, seed=seed).image(release)


# -- instructions ---------------------------------------------------------------
# A literal (what a literal-pool word holds), packed in an int: kind << 40 | value.
_LIT_STRING, _LIT_FUNCTION, _LIT_TABLE, _LIT_CONST = 1, 2, 3, 0
_KIND_SHIFT = 40
_VALUE_MASK = (1 << _KIND_SHIFT) - 1

# While a function is generated it is a list of entries: an int is one
# halfword; (_CALL, uid, 0) is a BL; (_LOAD, rt, pool index) an LDR from its pool.
_CALL, _LOAD = 0, 1
Entry = int | tuple[int, int, int]


def _bl(pc: int, target: int) -> tuple[int, int]:
    """``BL target`` at address ``pc`` (Thumb-2 encoding T1)."""
    offset = (target - (pc + 4)) >> 1 & 0xFF_FFFF
    s = offset >> 23 & 1
    j1 = (1 - (offset >> 22 & 1)) ^ s
    j2 = (1 - (offset >> 21 & 1)) ^ s
    return 0xF000 | s << 10 | (offset >> 11 & 0x3FF), 0xD000 | j1 << 13 | j2 << 11 | offset & 0x7FF


def _ordinary(bits: int) -> tuple[int, ...]:  # noqa: PLR0911, PLR0912 - one case per kind
    """An ordinary (address-independent) instruction from 16 random bits."""
    kind = bits & 0x1F
    rest = bits >> 5
    rd = rest & 7 if rest & 0x18 else rest & 3  # r0..r3 most of the time
    rn = rest >> 3 & 7
    imm = rest >> 6  # 5 bits
    if kind < 6:  # ldr / str rt, [rn, #imm5*4]
        return ((0x6800 if kind < 4 else 0x6000) | (imm & 0xF) << 6 | rn << 3 | rd,)
    if kind < 9:  # movs rd, #imm8 (small constants are common)
        return (0x2000 | rd << 8 | (imm if kind < 8 else imm << 3),)
    if kind < 11:  # cmp rn, #imm8
        return (0x2800 | rd << 8 | imm,)
    if kind < 13:  # adds rd, rn, #imm3
        return (0x1C00 | (imm & 7) << 6 | rn << 3 | rd,)
    if kind < 14:  # adds rd, rn, rm
        return (0x1800 | (imm & 7) << 6 | rn << 3 | rd,)
    if kind < 16:  # b<cond> a few instructions away
        return (0xD000 | (rn & 0xD) << 8 | (imm - 12) & 0xFF,)
    if kind < 18:  # ldrb / strb
        return ((0x7800 if kind == 16 else 0x7000) | imm << 6 | rn << 3 | rd,)
    if kind < 20:  # lsls / lsrs rd, rm, #imm5
        return ((0x0000 if kind == 18 else 0x0800) | imm << 6 | rn << 3 | rd,)
    if kind < 22:  # mov rd, rm (high registers too)
        return (0x4600 | rest & 0x7F,)
    if kind < 24:  # ldr.w / str.w rt, [rn, #imm12]
        return ((0xF8D0 if kind == 22 else 0xF8C0) | rn, rd << 12 | imm << 2)
    if kind < 26:  # ands / orrs / eors / tst
        return (0x4000 | (0, 3, 1, 2)[imm & 3] << 6 | rn << 3 | rd,)
    if kind < 27:  # b a few instructions away
        return (0xE000 | (imm - 16) & 0x7FF,)
    if kind < 29:  # uxtb / uxth / sxth
        return (0xB2C0 | (imm & 3) << 6 | rn << 3 | rd,)
    if kind < 30:  # muls
        return (0x4340 | rn << 3 | rd,)
    return ((0xB000 if kind == 30 else 0xB080) | imm,)  # add / sub sp, #imm


@cache
def _ordinary_table() -> tuple[tuple[int, ...], ...]:
    return tuple(_ordinary(bits) for bits in range(1 << 16))


# -- what a release is made of ----------------------------------------------------


@dataclass(frozen=True)
class _Scope:
    """What code written at some point could refer to."""

    functions: int  # uids 0..functions-1 exist
    strings: int  # string ids 0..strings-1 exist
    new_functions: tuple[int, ...] = ()  # uids added by the same release


@dataclass(frozen=True)
class _FunctionSpec:
    """A function, as the seed and its history define it (its code is derived)."""

    uid: int
    length: int
    scope: _Scope
    #: (release, scope at that release) for each release that edited it.
    edits: tuple[tuple[int, _Scope], ...] = ()


@dataclass
class _Code:
    """A function compiled up to its addresses."""

    halfwords: array[int]  # calls and loads hold placeholders; word-aligned
    call_at: array[int]
    call_uid: array[int]
    load_at: array[int]
    load_slot: array[int]
    pool: array[int]  # packed literals

    @property
    def size(self) -> int:
        return 2 * len(self.halfwords) + 4 * len(self.pool)


@dataclass(frozen=True)
class _Release:
    number: int
    functions: tuple[_FunctionSpec, ...]
    strings: tuple[tuple[int, bytes], ...]
    calibration: tuple[tuple[float, ...], ...]
    commands: tuple[tuple[int, int, int], ...]
    scope: _Scope


class FirmwareSeries:
    """Releases 1, 2, ... of one synthetic firmware; shares work between them."""

    def __init__(self, size: int = 1 << 20, *, seed: int = DEFAULT_SEED) -> None:
        if not MIN_SIZE <= size <= MAX_SIZE:
            raise ValueError(f"image size {size} is outside {MIN_SIZE}..{MAX_SIZE} bytes")
        self.size = size
        self.seed = seed
        self._codes: dict[_FunctionSpec, _Code] = {}
        rng = random.Random(f"{seed}:peripherals")
        self._peripherals = tuple(
            (PERIPHERALS + rng.randrange(0x2000) * 0x400, rng.randrange(96), rng.randrange(8))
            for _ in range(max(8, size // 20000))
        )
        self._assets = random.Random(f"{seed}:assets").randbytes(int(size * ASSET_SHARE) & ~3)
        self._releases = [self._first()]
        #: Release 1's functions: the library every later function calls into.
        self._library = self._releases[0].scope.functions

    def image(self, release: int) -> bytes:
        """Release ``release``'s image (1-based)."""
        if release < 1:
            raise ValueError(f"release {release} is not 1 or more")
        while len(self._releases) < release:
            self._releases.append(self._evolve(self._releases[-1]))
        return self._link(self._releases[release - 1])

    # -- release 1 ----------------------------------------------------------------

    def _first(self) -> _Release:
        rng = random.Random(f"{self.seed}:base")
        # Lengths come from their own generator, so the function count depends
        # on the size only; bodies are seeded per function.
        commands = max(16, self.size // 5000)
        fixed = (
            VECTORS * 4
            + DESCRIPTOR_SIZE
            + TABLES_SIZE
            + 12 * commands
            + 8 * len(self._peripherals)
            + len(self._assets)
            + 128  # the version banner
        )
        lengths: list[int] = []
        budget = int(self.size * (1 - STRING_SHARE - HEADROOM)) - fixed
        while budget >= 32:
            length = max(6, min(1500, int(rng.lognormvariate(4.0, 0.8))))
            cost = int(length * 2.53) + 5  # bytes, pool included (measured)
            if cost <= budget:
                lengths.append(length)
                budget -= cost
        strings: list[tuple[int, bytes]] = []
        budget = int(self.size * STRING_SHARE)
        while budget > 0:
            text = self._string(len(strings), 1)
            strings.append((len(strings), text))
            budget -= len(text) + 4 & ~3
        scope = _Scope(len(lengths), len(strings))
        return _Release(
            number=1,
            functions=tuple(
                _FunctionSpec(uid, length, scope) for uid, length in enumerate(lengths)
            ),
            strings=tuple(strings),
            calibration=tuple(tuple(rng.uniform(-1, 1) for _ in range(4)) for _ in range(8)),
            commands=tuple(
                (rng.randrange(len(strings)), rng.randrange(len(lengths)), rng.getrandbits(8))
                for _ in range(commands)
            ),
            scope=scope,
        )

    def _string(self, sid: int, release: int) -> bytes:
        rng = random.Random(f"{self.seed}:string:{sid}:{release}")
        a, b, c = (rng.choice(_WORDS) for _ in range(3))
        text = rng.choice(_FORMATS).format(a=a, b=b, c=c, A=a.upper(), B=b.upper())
        return text.encode()

    # -- later releases -------------------------------------------------------------

    def _evolve(self, previous: _Release) -> _Release:
        number = previous.number + 1
        rng = random.Random(f"{self.seed}:release:{number}")
        # New code arrives as modules: each module's strings sit together in
        # .rodata and its functions together in .text, as a linker places
        # them: one module grows in the middle, a new one is linked last.
        strings = list(previous.strings)
        next_sid = previous.scope.strings
        new_strings = max(2, int(self.size * NEW_STRINGS_PER_BYTE))
        middle = rng.randrange(len(strings) + 1)
        for n, sid in enumerate(range(next_sid, next_sid + new_strings)):
            if n % 2:
                strings.append((sid, self._string(sid, number)))
            else:
                strings.insert(middle, (sid, self._string(sid, number)))
                middle += 1
        for _ in range(max(1, int(self.size * REWORDED_STRINGS_PER_BYTE))):
            where = rng.randrange(len(strings))
            sid = strings[where][0]
            strings[where] = (sid, self._string(sid, number))
        functions = list(previous.functions)
        next_uid = previous.scope.functions
        new_uids: list[int] = []
        middle = rng.randrange(1, len(functions))
        budget = int(self.size * INSERTED_CODE)
        while budget > 0:
            uid = next_uid + len(new_uids)
            length = max(20, min(400, int(rng.lognormvariate(4.5, 0.5))))
            # Code written now may refer to everything that exists now.
            spec = _FunctionSpec(uid, length, _Scope(uid + 1, next_sid + new_strings))
            if len(new_uids) % 2:
                functions.append(spec)
            else:
                functions.insert(middle, spec)
                middle += 1
            new_uids.append(uid)
            budget -= self._code(spec).size
        scope = _Scope(next_uid + len(new_uids), next_sid + new_strings, tuple(new_uids))
        for _ in range(max(1, int(len(functions) * EDITED_FUNCTIONS))):
            where = rng.randrange(1, len(functions))
            spec = functions[where]
            functions[where] = replace(spec, edits=(*spec.edits, (number, scope)))
        calibration = list(previous.calibration)
        table = rng.randrange(len(calibration))
        calibration[table] = tuple(c + rng.uniform(-0.05, 0.05) for c in calibration[table])
        command = (rng.randrange(scope.strings), rng.choice(new_uids or [0]), 1)
        return _Release(
            number=number,
            functions=tuple(functions),
            strings=tuple(strings),
            calibration=tuple(calibration),
            commands=(*previous.commands, command),
            scope=scope,
        )

    # -- code ---------------------------------------------------------------------

    def _code(self, spec: _FunctionSpec) -> _Code:
        code = self._codes.get(spec)
        if code is None:
            code = self._codes[spec] = self._compile(spec)
        return code

    def _compile(self, spec: _FunctionSpec) -> _Code:
        rng = random.Random(self.seed * 1_000_003 + spec.uid)
        entries: list[Entry] = []
        pool: list[int] = []
        saved = rng.choice((0x10, 0x30, 0x70, 0xF0, 0x1F0))
        entries.append(0xB500 | saved)  # push {..., lr}
        self._instructions(rng, spec.length, spec.scope, entries, pool)
        entries.append(0xBD00 | saved)  # pop {..., pc}
        for release, scope in spec.edits:
            # A few instructions replaced by new ones, sometimes a call to new code.
            edit = random.Random(f"{self.seed}:edit:{release}:{spec.uid}")
            at = edit.randrange(1, len(entries))
            end = min(at + edit.randrange(0, 6), len(entries) - 1)
            inserted: list[Entry] = []
            self._instructions(edit, edit.randrange(2, 24), scope, inserted, pool)
            if scope.new_functions and edit.random() < 0.5:
                inserted.append((_CALL, edit.choice(scope.new_functions), 0))
            entries[at:end] = inserted
        return _assemble(entries, pool)

    def _instructions(
        self,
        rng: random.Random,
        count: int,
        scope: _Scope,
        entries: list[Entry],
        pool: list[int],
    ) -> None:
        table = _ordinary_table()
        library = self._library
        bits_of = rng.getrandbits
        for _ in range(count):
            bits = bits_of(24)
            pick = bits >> 16
            if pick < 18:  # a call; the low uids (the library) are called most
                entries.append((_CALL, int(library * rng.random() ** 2.5), 0))
            elif pick < 36 and len(pool) < 250:  # a literal load
                pool.append(_literal(rng, scope))
                entries.append((_LOAD, bits & 7, len(pool) - 1))
            else:
                entries.extend(table[bits & 0xFFFF])

    # -- linking ------------------------------------------------------------------

    def _link(self, release: _Release) -> bytes:
        version = version_of(release.number)
        build_id = zlib.crc32(f"{self.seed}:{release.number}".encode())
        banner = (
            f"otaflash-demo firmware {version} (build {build_id:08x}, "
            f"2025-{min(release.number, 12):02d}-15T09:30:00Z)"
        ).encode()
        tables = _tables(self.seed, release.calibration)
        codes = [self._code(spec) for spec in release.functions]
        # Addresses: vectors and descriptor, .text, .rodata, .data, assets.
        address: dict[int, int] = {}
        at = FLASH_BASE + VECTORS * 4 + DESCRIPTOR_SIZE
        for spec, code in zip(release.functions, codes, strict=True):
            address[spec.uid] = at
            at += code.size
        string_at: dict[int, int] = {}
        for sid, text in release.strings:
            string_at[sid] = at
            at += len(text) + 4 & ~3
        banner_at = at
        at += len(banner) + 4 & ~3
        table_at = []
        for table in tables:
            table_at.append(at)
            at += len(table)

        def resolve(literal: int) -> int:
            kind, value = literal >> _KIND_SHIFT, literal & _VALUE_MASK
            if kind == _LIT_STRING:
                return string_at[value]
            if kind == _LIT_FUNCTION:
                return address[value] | 1
            if kind == _LIT_TABLE:
                return table_at[value]
            return value

        first = release.functions[0].uid
        fault = address[release.functions[3].uid] | 1
        handlers = [
            address[release.functions[i * 7 % len(codes)].uid] | 1 if i % 3 else fault
            for i in range(VECTORS - 16)
        ]
        image = bytearray()
        image += struct.pack(f"<{VECTORS}I", RAM_TOP, address[first] | 1, *[fault] * 14, *handlers)
        image += struct.pack(
            f"<5I{DESCRIPTOR_SIZE - 20}x",
            DESCRIPTOR_MAGIC,
            release.number << 16,
            self.size,
            banner_at,
            build_id,
        )
        for spec, code in zip(release.functions, codes, strict=True):
            image += _relocate(code, address[spec.uid], address, resolve)
        for _sid, text in release.strings:
            image += text + bytes(4 - len(text) % 4)
        image += banner + bytes(4 - len(banner) % 4)
        for table in tables:
            image += table
        for name, handler, flags in release.commands:
            image += struct.pack("<3I", string_at[name], address[handler] | 1, flags)
        for base, irq, flags in self._peripherals:
            image += struct.pack("<IHH", base, irq, flags)
        image += self._assets
        if len(image) > self.size:
            raise ValueError(
                f"release {release.number} needs {len(image)} bytes: more than {self.size}"
            )
        image += b"\xff" * (self.size - len(image))
        return bytes(image)


def _literal(rng: random.Random, scope: _Scope) -> int:
    pick = rng.random()
    if pick < 0.35:
        return _LIT_STRING << _KIND_SHIFT | rng.randrange(scope.strings)
    if pick < 0.45:
        return _LIT_FUNCTION << _KIND_SHIFT | rng.randrange(scope.functions)
    if pick < 0.75:  # a RAM variable or a peripheral register
        base = RAM_BASE if rng.random() < 0.5 else PERIPHERALS
        return base + rng.randrange(0x8000) * 4
    if pick < 0.88:
        return _LIT_TABLE << _KIND_SHIFT | rng.randrange(4)
    return rng.choice((0xFFFF, 0xFF00_FF00, 0x00FF_00FF, 1 << rng.randrange(32)))


def _assemble(entries: list[Entry], pool: list[int]) -> _Code:
    halfwords = array("H")
    call_at, call_uid, load_at, load_slot = array("I"), array("I"), array("I"), array("I")
    for entry in entries:
        if isinstance(entry, int):
            halfwords.append(entry)
        elif entry[0] == _CALL:
            call_at.append(len(halfwords))
            call_uid.append(entry[1])
            halfwords.extend((0, 0))
        else:
            load_at.append(len(halfwords))
            load_slot.append(entry[2])
            halfwords.append(0x4800 | entry[1] << 8)  # ldr rt, [pc, #...]: offset at link
    if len(halfwords) % 2:
        halfwords.append(0xBF00)  # nop: the literal pool is word-aligned
    return _Code(halfwords, call_at, call_uid, load_at, load_slot, array("Q", pool))


def _relocate(
    code: _Code, start: int, address: dict[int, int], resolve: Callable[[int], int]
) -> bytes:
    halfwords = array("H", code.halfwords)
    for at, uid in zip(code.call_at, code.call_uid, strict=True):
        halfwords[at], halfwords[at + 1] = _bl(start + 2 * at, address[uid])
    pool_at = start + 2 * len(halfwords)
    for at, slot in zip(code.load_at, code.load_slot, strict=True):
        # ldr's reach is 1 KiB; a longer function's far loads wrap (nothing runs them).
        offset = (pool_at + 4 * slot - (start + 2 * at + 4 & ~3)) >> 2
        halfwords[at] |= offset & 0xFF
    pool = array("I", (resolve(literal) & 0xFFFF_FFFF for literal in code.pool))
    return _little_endian(halfwords) + _little_endian(pool)


def _little_endian(words: array[int]) -> bytes:
    if sys.byteorder == "big":
        words = array(words.typecode, words)
        words.byteswap()
    return words.tobytes()


def _tables(seed: int, calibration: tuple[tuple[float, ...], ...]) -> list[bytes]:
    crc = array("I", [0] * 256)
    for n in range(256):
        c = n
        for _ in range(8):
            c = c >> 1 ^ 0xEDB8_8320 if c & 1 else c >> 1
        crc[n] = c
    sine = array("h", (round(32767 * math.sin(2 * math.pi * i / 1024)) for i in range(1024)))
    glyphs = random.Random(f"{seed}:font")
    font = bytes(
        glyphs.getrandbits(8) & glyphs.choice((0x3C, 0x66, 0x7E, 0x18, 0)) for _ in range(4096)
    )
    curves = array(
        "H",
        (
            round(32768 + 4000 * (a + b * x + c * x * x + d * x**3))
            for a, b, c, d in calibration
            for x in (i / 127 for i in range(128))
        ),
    )
    return [_little_endian(crc), _little_endian(sine), font, _little_endian(curves)]
