"""Real images made with Pillow: several formats, a corrupt one, a decompression bomb."""

import io
import zlib
from struct import pack

from PIL import Image


def make_image(image_format: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    """A gradient with some color, so every operation visibly changes it."""
    width, height = size
    image = Image.new("RGB", size)
    image.putdata(
        [
            (int(255 * x / width), int(255 * y / height), (x * y) % 256)
            for y in range(height)
            for x in range(width)
        ]
    )
    if mode != "RGB":
        image = image.convert(mode)
    out = io.BytesIO()
    image.save(out, format=image_format)
    return out.getvalue()


def open_image(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    return image


def corrupt_png() -> bytes:
    """A PNG signature and header, then garbage: Pillow identifies it and fails to decode it."""
    good = make_image("PNG")
    return good[:60] + b"\x00garbage" * 20


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return pack(">I", len(data)) + kind + data + pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def bomb_png(side: int = 30_000) -> bytes:
    """A real, valid 1-bit PNG of side x side pixels (900 MP by default) that is only a few KB:
    all zeros compress about 1000 to 1."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)  # filter byte + packed bits
    compressor = zlib.compressobj(9)
    data = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    header = pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)  # 1-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", data)
        + _png_chunk(b"IEND", b"")
    )
