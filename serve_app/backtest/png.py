"""A PNG of a line chart without any imaging library: an RGB canvas in a bytearray,
lines and rectangles, a 5×7 bitmap font (lower case, digits and a little punctuation),
written as PNG with zlib (one IDAT chunk, filter 0 on every row)."""

from __future__ import annotations

import itertools
import struct
import zlib

from serve_app.backtest.plot import LineChart, format_tick, frame, points_path

GLYPHS = {
    "0": "0e11131519110e", "1": "040c040404040e", "2": "0e11010204081f", "3": "1f02040201110e",
    "4": "02060a121f0202", "5": "1f101e0101110e", "6": "0608101e11110e", "7": "1f010204080808",
    "8": "0e11110e11110e", "9": "0e11110f01020c", "%": "18190204081303", "-": "0000001f000000",
    ".": "00000000000c0c", ",": "000000000c0408", ":": "000c0c000c0c00", "(": "02040808080402",
    ")": "08040202020408", "+": "0004041f040400", "/": "00010204081000", " ": "00000000000000",
    "$": "040f140e051e04", "=": "00001f001f0000", "a": "00000e010f110f", "b": "1010161911111e",
    "c": "00000e1010110e", "d": "01010d1311110f", "e": "00000e111f100e", "f": "0609081c080808",
    "g": "000f11110f010e", "h": "10101619111111", "i": "04000c0404040e", "j": "0200060202120c",
    "k": "10101214181412", "l": "0c04040404040e", "m": "00001a15151111", "n": "00001619111111",
    "o": "00000e1111110e", "p": "00001e111e1010", "q": "00000d130f0101", "r": "00001619101010",
    "s": "00000e100e011e", "t": "08081c08080906", "u": "0000111111130d", "v": "00001111110a04",
    "w": "0000111115150a", "x": "0000110a040a11", "y": "000011110f010e", "z": "00001f0204081f",
}  # fmt: skip
"""Rows of 5 pixels, most significant bit on the left, 7 rows a glyph (hex pairs)."""

RGB = tuple[int, int, int]


def rgb(color: str) -> RGB:
    """`#rrggbb` as a tuple."""
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)


class Canvas:
    """An RGB image, white to begin with."""

    def __init__(self, width: int, height: int) -> None:
        self.width = width
        self.height = height
        self.pixels = bytearray(b"\xff" * (width * height * 3))

    def dot(self, x: int, y: int, color: RGB) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = (y * self.width + x) * 3
            self.pixels[i : i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: RGB) -> None:
        """Fill [x0, x1) × [y0, y1)."""
        x0, x1 = max(0, x0), min(self.width, x1)
        row = bytes(color) * max(0, x1 - x0)
        for y in range(max(0, y0), min(self.height, y1)):
            i = (y * self.width + x0) * 3
            self.pixels[i : i + len(row)] = row

    def line(
        self,
        a: tuple[float, float],
        b: tuple[float, float],
        color: RGB,
        thickness: int = 1,
        dash: tuple[int, int] | None = None,
    ) -> None:
        """A straight line, `thickness` pixels wide, dashed as (on, off) pixels if asked."""
        (x0, y0), (x1, y1) = a, b
        steps = max(1, round(max(abs(x1 - x0), abs(y1 - y0))))
        half = thickness // 2
        for k in range(steps + 1):
            if dash is not None and k % (dash[0] + dash[1]) >= dash[0]:
                continue
            x = round(x0 + (x1 - x0) * k / steps)
            y = round(y0 + (y1 - y0) * k / steps)
            self.rect(x - half, y - half, x - half + thickness, y - half + thickness, color)

    def text(self, x: int, y: int, text: str, color: RGB, scale: int = 2) -> int:
        """Draw `text` with its top left at (x, y); returns the x after it."""
        for char in text.lower():
            glyph = GLYPHS.get(char, GLYPHS[" "])
            for row in range(7):
                bits = int(glyph[2 * row : 2 * row + 2], 16)
                for col in range(5):
                    if bits & (0x10 >> col):
                        self.rect(
                            x + col * scale,
                            y + row * scale,
                            x + (col + 1) * scale,
                            y + (row + 1) * scale,
                            color,
                        )
            x += 6 * scale
        return x

    def png(self) -> bytes:
        raw = bytearray()
        stride = self.width * 3
        for y in range(self.height):
            raw.append(0)
            raw += self.pixels[y * stride : (y + 1) * stride]

        def chunk(kind: bytes, data: bytes) -> bytes:
            body = kind + data
            return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (
            b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(bytes(raw), 9))
            + chunk(b"IEND", b"")
        )


def text_width(text: str, scale: int = 2) -> int:
    return 6 * scale * len(text)


def line_chart_png(chart: LineChart, width: int = 1000, height: int = 380) -> bytes:
    """The chart as a PNG (what `svg.line_chart` draws, less the rotated y label)."""
    f = frame(chart, width, height, left=84, top=64, bottom=52)
    canvas = Canvas(width, height)
    grey, dark = rgb("#e5e5e5"), rgb("#333333")
    for band in chart.bands:
        x0, x1 = round(f.px(band.x0)), round(f.px(band.x1))
        canvas.rect(x0, f.top, x1, f.bottom, rgb(band.color))
        canvas.text(x0 + 6, f.top + 6, band.label, rgb("#8a6d1f"))
    for y in f.y_ticks:
        py = round(f.py(y))
        canvas.line((f.left, py), (f.right, py), grey)
        label = format_tick(y, chart.percent)
        canvas.text(f.left - 8 - text_width(label), py - 7, label, dark)
    for x in f.x_ticks:
        label = format_tick(x, False)
        canvas.text(round(f.px(x)) - text_width(label) // 2, f.bottom + 8, label, dark)
    canvas.text(
        (f.left + f.right - text_width(chart.x_label)) // 2, height - 20, chart.x_label, dark
    )
    border = rgb("#999999")
    for corner_a, corner_b in (
        ((f.left, f.top), (f.right, f.top)),
        ((f.left, f.bottom), (f.right, f.bottom)),
        ((f.left, f.top), (f.left, f.bottom)),
        ((f.right, f.top), (f.right, f.bottom)),
    ):
        canvas.line(corner_a, corner_b, border)
    for h in chart.hlines:
        floor_y = f.py(h.y)
        canvas.line((f.left, floor_y), (f.right, floor_y), rgb(h.color), 2, dash=(8, 6))
    for s in chart.series:
        for run in points_path(f, s.points):
            for start, stop in itertools.pairwise(run):
                canvas.line(start, stop, rgb(s.color), 2)
    canvas.text(f.left, 12, chart.title, dark)
    x = f.right
    for label, hex_color in reversed(
        [(s.label, s.color) for s in chart.series] + [(h.label, h.color) for h in chart.hlines]
    ):
        x -= 24 + text_width(label) + 16
        canvas.line((x, 43), (x + 20, 43), rgb(hex_color), 3)
        canvas.text(x + 26, 36, label, dark)
    return canvas.png()
