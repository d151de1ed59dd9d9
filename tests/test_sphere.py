"""NIST SPHERE reading and writing (datamodules/sphere.py)."""

from __future__ import annotations

import numpy as np
import pytest

from datamodules.sphere import read_header, read_sphere, write_sphere
from lightning_sep.errors import LightningSepError


def make_sphere(path, lines, data=b"", size=1024, end=True):
    """A hand-written SPHERE file: header ``lines`` (str), padded to ``size``, then ``data``."""
    body = "\n".join(lines) + ("\nend_head\n" if end else "\n")
    head = f"NIST_1A\n{size:7d}\n{body}".encode("latin-1")
    assert len(head) <= size
    path.write_bytes(head + b" " * (size - len(head)) + data)
    return path


def header_lines(n, channels=1, n_bytes=2, byte_format="01", extra=()):
    return [
        "database_id -s5 TIMIT",
        "database_version -s3 1.0",
        "utterance_id -s8 aks0_sa1",
        f"channel_count -i {channels}",
        f"sample_count -i {n}",
        "sample_rate -i 16000",
        f"sample_n_bytes -i {n_bytes}",
        f"sample_byte_format -s{len(byte_format)} {byte_format}",
        "sample_sig_bits -i 16",
        *extra,
    ]


def test_round_trip(tmp_path):
    x = (np.random.default_rng(0).standard_normal(4001) * 5000).clip(-32768, 32767).astype(np.int16)
    path = tmp_path / "SA1.WAV"
    write_sphere(path, x, 16000, {"utterance_id": "aks0_sa1", "gain": 0.5})
    raw = path.read_bytes()
    assert raw.startswith(b"NIST_1A\n   1024\n")
    assert len(raw) == 1024 + 2 * len(x)
    y, header = read_sphere(path)
    assert y.dtype == np.int16 and y.shape == x.shape
    np.testing.assert_array_equal(y, x)
    assert header == {
        "database_id": "TIMIT",
        "database_version": "1.0",
        "utterance_id": "aks0_sa1",
        "channel_count": 1,
        "sample_count": len(x),
        "sample_rate": 16000,
        "sample_min": int(x.min()),
        "sample_max": int(x.max()),
        "sample_n_bytes": 2,
        "sample_byte_format": "01",
        "sample_sig_bits": 16,
        "gain": 0.5,
    }
    assert read_header(path) == header
    # deterministic bytes, and no temporary file left behind
    write_sphere(tmp_path / "again.wav", x, 16000, {"utterance_id": "aks0_sa1", "gain": 0.5})
    assert (tmp_path / "again.wav").read_bytes() == raw
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_write_large_header_and_bad_input(tmp_path):
    x = np.arange(-5, 5, dtype=np.int16)
    path = tmp_path / "big.wav"
    write_sphere(path, x, 8000, {f"note_{i}": "x" * 40 for i in range(40)})
    assert path.read_bytes()[8:16] == b"   3072\n"
    y, header = read_sphere(path)
    np.testing.assert_array_equal(y, x)
    assert header["note_39"] == "x" * 40 and header["sample_rate"] == 8000
    with pytest.raises(LightningSepError, match="int16"):
        write_sphere(tmp_path / "f.wav", x.astype(np.float32), 16000)
    with pytest.raises(LightningSepError, match="sample_count"):
        write_sphere(tmp_path / "f.wav", x, 16000, {"sample_count": 3})


def test_big_endian(tmp_path):
    x = np.array([0, 1, -1, 256, -32768, 32767, 1234], dtype=np.int16)
    path = make_sphere(tmp_path / "be.wav", header_lines(len(x), byte_format="10"), x.astype(">i2").tobytes())
    y, header = read_sphere(path)
    assert header["sample_byte_format"] == "10"
    np.testing.assert_array_equal(y, x)


def test_two_channels(tmp_path):
    x = np.stack([np.arange(6), -np.arange(6) * 100], axis=1).astype(np.int16)  # (n, 2)
    path = make_sphere(tmp_path / "st.wav", header_lines(6, channels=2), x.astype("<i2").tobytes())
    y, header = read_sphere(path)
    assert y.shape == (6, 2) and header["channel_count"] == 2
    np.testing.assert_array_equal(y, x)


def test_ulaw_and_8bit(tmp_path):
    codes = bytes([0xFF, 0x7F, 0x80, 0x00, 0xEF])  # +0, -0, +max, -max, small positive
    lines = header_lines(5, n_bytes=1, byte_format="1", extra=["sample_coding -s4 ulaw"])
    y, _ = read_sphere(make_sphere(tmp_path / "u.wav", lines, codes))
    np.testing.assert_array_equal(y, [0, 0, 32124, -32124, 132])
    y, _ = read_sphere(make_sphere(tmp_path / "p8.wav", header_lines(3, n_bytes=1), bytes([0, 1, 0xFF])))
    np.testing.assert_array_equal(y, [0, 256, -256])


def test_ulaw_matches_g711():
    from datamodules.sphere import _ulaw_to_int16

    def reference(code):  # ITU-T G.711 mu-law expansion
        u = ~code & 0xFF
        t = (((u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4)
        return 0x84 - t if u & 0x80 else t - 0x84

    codes = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(_ulaw_to_int16(codes), [reference(int(c)) for c in codes])


def test_bad_magic(tmp_path):
    path = tmp_path / "riff.wav"
    path.write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(100))
    with pytest.raises(LightningSepError, match="riff.wav.*not a NIST SPHERE file"):
        read_sphere(path)
    with pytest.raises(LightningSepError, match="riff.wav"):
        read_header(path)


def test_truncated(tmp_path):
    path = make_sphere(tmp_path / "short.wav", header_lines(100), bytes(150))
    with pytest.raises(LightningSepError, match=r"short.wav.*truncated: 150 of the 200 bytes"):
        read_sphere(path)
    assert read_header(path)["sample_count"] == 100  # the header alone is fine


def test_shorten_compressed(tmp_path):
    lines = header_lines(100, extra=["sample_coding -s26 pcm,embedded-shorten-v2.00"])
    path = make_sphere(tmp_path / "comp.wav", lines, bytes(40))
    with pytest.raises(LightningSepError, match=r"comp.wav.*compressed.*sph2pipe -f wav") as info:
        read_sphere(path)
    assert "uncompressed TIMIT" in str(info.value)


def test_missing_end_head(tmp_path):
    path = make_sphere(tmp_path / "noend.wav", header_lines(2), bytes(4), end=False)
    with pytest.raises(LightningSepError, match=r"noend.wav.*malformed.*end_head"):
        read_sphere(path)


@pytest.mark.parametrize(
    "lines, size, match",
    [
        (header_lines(2)[:4] + ["sample_rate -i 16000"], 1024, "no sample_count"),
        (header_lines(2) + ["this line has no type"], 1024, "unparsable line"),
        (header_lines(2) + ["weird -x 3"], 1024, "unknown type"),
        (header_lines(2) + ["sample_max -i lots"], 1024, "not an integer"),
        (header_lines(2), 1000, "not a multiple of 1024"),
    ],
)
def test_malformed_header(tmp_path, lines, size, match):
    path = make_sphere(tmp_path / "bad.wav", lines, bytes(4), size=size)
    with pytest.raises(LightningSepError, match=rf"bad.wav.*{match}"):
        read_sphere(path)


def test_unsupported_sample_size(tmp_path):
    path = make_sphere(tmp_path / "s24.wav", header_lines(2, n_bytes=3), bytes(6))
    with pytest.raises(LightningSepError, match=r"s24.wav.*sample_n_bytes=3"):
        read_sphere(path)


def test_missing_file(tmp_path):
    with pytest.raises(LightningSepError, match="nope.wav.*no such file"):
        read_sphere(tmp_path / "nope.wav")
