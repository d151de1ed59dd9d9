"""NIST SPHERE audio files (TIMIT's ``.WAV``), numpy only.

A SPHERE file is an ASCII header followed by raw samples::

    NIST_1A
       1024
    database_id -s5 TIMIT
    ...
    sample_count -i 46797
    sample_rate -i 16000
    end_head
    <padding to the header size, then the samples>

The first line is the magic ``NIST_1A``, the second the header size in bytes (1024, or a multiple
of it), then one ``name -type value`` field per line -- ``-i`` integer, ``-r`` real, ``-sN`` a
string of N bytes -- up to ``end_head``.  The samples follow at the header size: ``sample_n_bytes``
per sample (2: 16-bit PCM; 1: 8-bit, ``sample_coding -s4 ulaw`` for mu-law), interleaved over
``channel_count`` channels, little-endian if ``sample_byte_format`` is ``01``, big-endian if ``10``.

Original TIMIT is uncompressed; some LDC SPHERE corpora are ``shorten``- or ``wavpack``-compressed,
which is not supported here (convert them with ``sph2pipe -f wav``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from lightning_sep.errors import LightningSepError
from lightning_sep.utils.atomic import atomic_open

__all__ = ["read_header", "read_sphere", "write_sphere"]

MAGIC = b"NIST_1A\n"
HEADER_BLOCK = 1024
_MAX_HEADER = 1 << 20  # refuse absurd header sizes (a corrupt file)


def _err(path, what: str, todo: str) -> LightningSepError:
    return LightningSepError(f"{path}: {what}: {todo}")


def _bad_header(path, what: str) -> LightningSepError:
    return _err(
        path,
        f"malformed NIST SPHERE header ({what})",
        "the file is corrupt or not a SPHERE file; replace it with a good copy of the corpus",
    )


def _parse_header(path, fh) -> tuple[dict, int]:
    """Read and parse the header from the open binary file ``fh``; returns (fields, size)."""
    magic = fh.read(len(MAGIC))
    if magic != MAGIC:
        raise _err(
            path,
            f"not a NIST SPHERE file (it starts with {magic[:8]!r}, not {MAGIC!r})",
            "give a TIMIT-format .WAV file in SPHERE format (a RIFF .wav file is read with "
            "soundfile instead)",
        )
    size_line = fh.readline(32)  # "   1024\n"
    try:
        size = int(size_line.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise _bad_header(path, f"header size line {size_line!r} is not a number") from None
    start = len(MAGIC) + len(size_line)
    if size % HEADER_BLOCK or not start < size <= _MAX_HEADER:
        raise _bad_header(path, f"header size {size} is not a multiple of {HEADER_BLOCK} bytes")
    body = fh.read(size - start)
    if len(body) < size - start:
        raise _bad_header(path, f"the file ends inside its {size}-byte header")

    fields: dict = {}
    pos = 0
    while True:
        nl = body.find(b"\n", pos)
        if nl < 0:
            raise _bad_header(path, f"no 'end_head' line within the {size}-byte header")
        line = body[pos:nl].rstrip(b"\r")
        pos = nl + 1
        stripped = line.strip()
        if stripped == b"end_head":
            break
        if not stripped or stripped.startswith(b";"):  # blank lines and comments
            continue
        name, kind, value = _parse_field(path, line)
        if kind.startswith("-s"):  # -sN: a string of exactly N bytes, which may hold spaces
            n = int(kind[2:])
            if len(value) < n:
                raise _bad_header(path, f"field {name!r} declares {n} bytes but has {len(value)}")
            fields[name] = value[:n].decode("latin-1")
        elif kind == "-i":
            try:
                fields[name] = int(value)
            except ValueError:
                raise _bad_header(path, f"field {name!r} is -i but {value!r} is not an integer") from None
        else:  # -r
            try:
                fields[name] = float(value)
            except ValueError:
                raise _bad_header(path, f"field {name!r} is -r but {value!r} is not a number") from None
    return fields, size


_FIELD = re.compile(rb"^\s*(\S+)[ \t]+(-\S+)(?:[ \t](.*))?$")


def _parse_field(path, line: bytes) -> tuple[str, str, bytes]:
    """``name -type value`` -> (name, type, raw value bytes after the single separator)."""
    m = _FIELD.match(line)
    if not m:
        raise _bad_header(path, f"unparsable line {line!r}")
    name, kind, value = m.group(1).decode("latin-1"), m.group(2).decode(), m.group(3) or b""
    if not (kind in ("-i", "-r") or (kind.startswith("-s") and kind[2:].isdigit())):
        raise _bad_header(path, f"field {name!r} has unknown type {kind!r} (not -i, -r or -sN)")
    if kind in ("-i", "-r"):
        value = value.strip()
    return name, kind, value


def read_header(path: str | os.PathLike) -> dict:
    """The header fields of a SPHERE file: ints for ``-i``, floats for ``-r``, str for ``-s``."""
    try:
        with open(path, "rb") as fh:
            return _parse_header(path, fh)[0]
    except FileNotFoundError:
        raise LightningSepError(f"{path}: no such file: check the path.") from None


def _ulaw_to_int16(codes: np.ndarray) -> np.ndarray:
    """G.711 mu-law bytes to 16-bit linear PCM."""
    u = ~codes.astype(np.uint8)
    sign = u & 0x80
    exponent = (u >> 4) & 0x07
    mantissa = u & 0x0F
    magnitude = ((mantissa.astype(np.int32) << 3) + 0x84) << exponent
    return np.where(sign, 0x84 - magnitude, magnitude - 0x84).astype(np.int16)


def read_sphere(path: str | os.PathLike) -> tuple[np.ndarray, dict]:
    """Samples and header of a SPHERE file.

    Samples are int16, ``(n,)`` for one channel or ``(n, channels)``: 16-bit PCM as stored,
    mu-law decoded to linear, 8-bit PCM scaled by 256.
    """
    try:
        with open(path, "rb") as fh:
            fields, size = _parse_header(path, fh)
            data = fh.read()
    except FileNotFoundError:
        raise LightningSepError(f"{path}: no such file: check the path.") from None

    coding = str(fields.get("sample_coding", "pcm")).strip().lower()
    if "shorten" in coding or "wavpack" in coding:
        raise _err(
            path,
            f"the samples are compressed (sample_coding {coding!r}), which is not supported",
            "convert the file to plain audio with `sph2pipe -f wav` (or `sph2pipe -f sph` for "
            "uncompressed SPHERE), or use an uncompressed TIMIT copy",
        )
    for key in ("sample_count", "sample_rate"):
        if key not in fields:
            raise _bad_header(path, f"no {key} field")
        if not isinstance(fields[key], int) or fields[key] < 0:
            raise _bad_header(path, f"{key} {fields[key]!r} is not a non-negative integer")
    channels = fields.get("channel_count", 1)
    if not isinstance(channels, int) or channels < 1:
        raise _bad_header(path, f"channel_count {channels!r} is not a positive integer")
    ulaw = coding.startswith("ulaw") or coding.startswith("mu-law")
    n_bytes = fields.get("sample_n_bytes", 1 if ulaw else 2)
    if coding not in ("pcm", "") and not ulaw:
        raise _err(
            path,
            f"unsupported sample_coding {coding!r}",
            "only pcm and ulaw are supported: convert the file with `sph2pipe -f wav`",
        )
    if n_bytes not in (1, 2) or (ulaw and n_bytes != 1):
        raise _err(
            path,
            f"unsupported sample size sample_n_bytes={n_bytes!r} (coding {coding!r})",
            "only 16-bit and 8-bit PCM and 8-bit mu-law are supported: convert the file with "
            "`sph2pipe -f wav`",
        )

    n = fields["sample_count"]
    need = n * channels * n_bytes
    if len(data) < need:
        raise _err(
            path,
            f"truncated: {len(data)} of the {need} bytes of sample data its header announces "
            f"({n} samples x {channels} channel(s) x {n_bytes} byte(s))",
            "the file is incomplete; copy or download it again",
        )
    data = data[:need]
    if ulaw:
        samples = _ulaw_to_int16(np.frombuffer(data, np.uint8))
    elif n_bytes == 1:  # 8-bit PCM, scaled to 16 bits
        samples = np.frombuffer(data, np.int8).astype(np.int16) << 8
    else:
        order = str(fields.get("sample_byte_format", "01")).strip()
        if order not in ("01", "10"):
            raise _err(
                path,
                f"unsupported sample_byte_format {order!r} for 2-byte samples",
                "expected 01 (little-endian) or 10 (big-endian); convert the file with "
                "`sph2pipe -f wav`",
            )
        dtype = np.dtype("<i2" if order == "01" else ">i2")
        samples = np.frombuffer(data, dtype).astype(np.int16)
    if channels > 1:
        samples = samples.reshape(n, channels)
    return samples, fields


def _format_field(name: str, value) -> str:
    if isinstance(value, bool):
        raise TypeError
    if isinstance(value, (int, np.integer)):
        return f"{name} -i {int(value)}"
    if isinstance(value, (float, np.floating)):
        return f"{name} -r {float(value)!r}"
    if isinstance(value, str):
        return f"{name} -s{len(value.encode('latin-1'))} {value}"
    raise TypeError


def write_sphere(
    path: str | os.PathLike,
    samples: np.ndarray,
    sample_rate: int,
    fields: dict | None = None,
) -> None:
    """Write 1-D int16 ``samples`` as a TIMIT-style SPHERE file (little-endian), atomically.

    The header holds TIMIT's fields (``database_id -s5 TIMIT``, ``database_version -s3 1.0``,
    channel/sample counts, rate, min/max...); ``fields`` adds to or overrides them (an
    ``utterance_id`` for instance).  Equal input gives identical bytes.
    """
    samples = np.asarray(samples)
    if samples.ndim != 1 or samples.dtype != np.int16:
        raise LightningSepError(
            f"{path}: write_sphere needs 1-D int16 samples, got shape {samples.shape} dtype "
            f"{samples.dtype}: convert with np.clip(x * 32768, -32768, 32767).astype(np.int16)."
        )
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or sample_rate <= 0:
        raise LightningSepError(
            f"{path}: sample_rate {sample_rate!r} must be a positive integer (16000 for TIMIT)."
        )
    header = {
        "database_id": "TIMIT",
        "database_version": "1.0",
        "utterance_id": Path(path).stem.lower(),
        "channel_count": 1,
        "sample_count": len(samples),
        "sample_rate": int(sample_rate),
        "sample_min": int(samples.min()) if len(samples) else 0,
        "sample_max": int(samples.max()) if len(samples) else 0,
        "sample_n_bytes": 2,
        "sample_byte_format": "01",
        "sample_sig_bits": 16,
    }
    derived = set(header) - {"database_id", "database_version", "utterance_id"}
    for name, value in (fields or {}).items():
        if not isinstance(name, str) or not name or any(c.isspace() for c in name):
            raise LightningSepError(f"{path}: SPHERE field name {name!r} must be one word.")
        if name in derived and value != header[name]:
            raise LightningSepError(
                f"{path}: SPHERE field {name}={value!r} contradicts the samples "
                f"({name}={header[name]!r}): leave it out, write_sphere computes it."
            )
        if isinstance(value, str) and ("\n" in value or "\r" in value):
            raise LightningSepError(f"{path}: SPHERE field {name!r} value must be one line.")
        header[name] = value
    lines = []
    for name, value in header.items():
        try:
            lines.append(_format_field(name, value))
        except (TypeError, UnicodeEncodeError):
            raise LightningSepError(
                f"{path}: SPHERE field {name}={value!r} must be an int, a float or a Latin-1 str."
            ) from None
    body = ("\n".join(lines) + "\nend_head\n").encode("latin-1")
    size = HEADER_BLOCK
    while len(MAGIC) + 8 + len(body) > size:
        size += HEADER_BLOCK
    head = MAGIC + f"{size:7d}\n".encode("ascii") + body
    head += b" " * (size - len(head))
    with atomic_open(path, "wb") as fh:
        fh.write(head)
        fh.write(samples.astype("<i2").tobytes())
