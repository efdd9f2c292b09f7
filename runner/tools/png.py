"""A minimal PNG encoder (RGB, no dependencies) so tools can return real images."""

import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(*, width: int, height: int, pixels: list[list[tuple[int, int, int]]]) -> bytes:
    """Encode rows of (r, g, b) pixels as a PNG file."""
    raw = b"".join(b"\x00" + bytes(channel for pixel in row for channel in pixel) for row in pixels)
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 9)) + _chunk(b"IEND", b"")
    )


def bar_chart(*, values: list[float], width: int = 240, height: int = 120) -> bytes:
    """A bar chart of `values` (scaled to the largest) as a PNG."""
    background, bar, axis = (255, 255, 255), (59, 130, 246), (55, 65, 81)
    pixels = [[background] * width for _ in range(height)]
    top = max(max(values, default=0), 1e-9)
    slot = max(width // max(len(values), 1), 1)
    for index, value in enumerate(values):
        bar_height = int((height - 4) * max(value, 0) / top)
        for x in range(index * slot + slot // 5, min((index + 1) * slot - slot // 5, width)):
            for y in range(height - 2 - bar_height, height - 2):
                pixels[y][x] = bar
    for x in range(width):
        pixels[height - 2][x] = axis
    return encode_png(width=width, height=height, pixels=pixels)
