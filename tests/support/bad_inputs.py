"""Builders of bad or unusual input files for the bad-input corpus (tests/cli/test_bad_input_corpus.py).

Each builder writes one file (or link) at ``path`` and returns it; none needs more than a few KB.
"""
from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def gray(path: Path, size=(60, 70), seed: int = 0) -> Path:
    """A random gray page (odd size: it gets fitted to the page size)."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)).save(path)
    return path


def colour(path: Path, size=(40, 50), seed: int = 9) -> Path:
    """A random RGB reference."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def _rgb_data(size=(60, 70), seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def truncated_png(path: Path) -> Path:
    gray(path, (120, 160))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def corrupt_png(path: Path) -> Path:
    """A PNG signature and header followed by garbage (a bad CRC / undecodable data)."""
    gray(path)
    data = bytearray(path.read_bytes())
    for k in range(40, len(data) - 12, 7):
        data[k] ^= 0x5A
    path.write_bytes(bytes(data))
    return path


def zero_bytes(path: Path) -> Path:
    path.write_bytes(b"")
    return path


def text_as_png(path: Path) -> Path:
    path.write_text("this is a text file, not a picture\n")
    return path


def tiny(path: Path) -> Path:
    return gray(path, (1, 1))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(path: Path, width: int = 100_000, height: int = 100_000) -> Path:
    """A PNG whose header claims width x height pixels (10^10: a decompression bomb); its data is tiny."""
    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\xff" * ((width + 7) // 8))  # one row: Pillow refuses at open
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))
    return path


def multi_frame(path: Path, frames: int = 3) -> Path:
    """A multi-page TIFF or an animated GIF (by the suffix of ``path``)."""
    images = [Image.new("L", (40, 50), 40 * i + 20) for i in range(frames)]
    images[0].save(path, save_all=True, append_images=images[1:])
    return path


def mode_image(path: Path, mode: str) -> Path:
    """A page stored in an unusual pixel mode (the file format follows ``path``'s suffix)."""
    rgb = Image.fromarray(_rgb_data())
    if mode == "CMYK":
        rgb.convert("CMYK").save(path)  # a CMYK JPEG (or TIFF)
    elif mode == "LA":
        la = rgb.convert("LA")
        alpha = Image.new("L", la.size, 0)
        alpha.paste(255, (10, 10, 50, 60))  # transparent border: paper
        la.putalpha(alpha)
        la.save(path)
    elif mode == "RGBA":
        rgba = rgb.convert("RGBA")
        alpha = Image.new("L", rgba.size, 0)  # mostly transparent: hidden RGB is black
        alpha.paste(255, (20, 20, 40, 50))
        rgba.putalpha(alpha)
        rgba.save(path)
    elif mode == "P":
        rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(path)
    elif mode == "P-transparent":
        p = rgb.convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
        p.info["transparency"] = 0
        p.save(path, transparency=0)
    elif mode == "I;16":
        data = (np.random.default_rng(2).integers(0, 65536, (70, 60))).astype(np.uint16)
        Image.fromarray(data).save(path)  # uint16 → mode I;16: a 16-bit gray PNG
    elif mode == "RGB16":
        _rgb16_png(path)
    elif mode == "1":
        rgb.convert("1").save(path)
    elif mode == "F":
        data = np.random.default_rng(3).random((70, 60), dtype=np.float32)
        Image.fromarray(data, "F").save(path)  # a float TIFF in 0..1
    else:
        raise ValueError(mode)
    return path


def _rgb16_png(path: Path, size=(60, 70)) -> Path:
    """A 16-bit-per-channel RGB PNG (Pillow opens it as 8-bit RGB), written by hand."""
    width, height = size
    data = np.random.default_rng(4).integers(0, 65536, (height, width, 3)).astype(">u2")
    raw = b"".join(b"\x00" + data[y].tobytes() for y in range(height))
    ihdr = struct.pack(">IIBBBBB", width, height, 16, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(raw))
                     + _chunk(b"IEND", b""))
    return path


def dangling_link(path: Path) -> Path:
    os.symlink(path.parent / "gone.png", path)
    return path


def looping_link(path: Path) -> Path:
    os.symlink(path, path)
    return path
