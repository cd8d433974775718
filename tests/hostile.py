"""The hostile-input corpus of issue 6, generated in memory (nothing is stored in the repository).

Each ``HostileCase`` is one object as a user might drop it in the inbox: a suggested file name (whose
extension may lie), its bytes, and the outcome the workflow must reach: ``"ok"`` (routed or at least
classified) or the stable reason code it is dead-lettered with. Unit tests run every case through
``bayroute.imaging``; integration and end-to-end tests reuse the same corpus on the real stack.

Cases that are not about bytes are here as data too: ``oversized_object`` (the ingest size limit),
``HOSTILE_KEYS`` (object keys that S3 events URL-encode) and ``DELETED_BEFORE_READ_REASON`` (an
object removed between its event and the read).
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

OK = "ok"
DELETED_BEFORE_READ_REASON = "object_missing"

# Keys that need URL-encoding in S3 event notifications (space -> '+', '+' -> '%2B', unicode -> %XX...).
HOSTILE_KEYS = (
    "with space.png",
    "plus+sign.png",
    "percent%20literal.png",
    "question?mark&amp=1.png",
    "ünïcødé-fahrrad-🚲.png",
    "日本語/サブフォルダ/画像.png",
    "semi;colon,comma'quote.png",
    "tab\tand#hash.png",
)


@dataclass(frozen=True)
class HostileCase:
    name: str  # identifier, also a valid pytest id
    filename: str  # the name a user would give the file: the extension may lie
    data: bytes
    expected: str  # "ok" or the reason code of bayroute.errors
    description: str
    displayed_size: tuple[int, int] | None = None  # (width, height) after EXIF orientation, for "ok" cases


def photo_like(width: int, height: int, seed: int = 0) -> Image.Image:
    """A smooth, photo-like RGB picture (gradients and soft blobs) that JPEG compresses realistically."""
    rng = np.random.default_rng(seed)
    ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None]
    xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :]
    channels = []
    for channel in range(3):
        fx, fy, phase = rng.uniform(1.0, 4.0), rng.uniform(1.0, 4.0), rng.uniform(0, np.pi)
        wave = np.sin(2 * np.pi * fx * xs + phase) * np.cos(2 * np.pi * fy * ys + channel)
        channels.append(127.5 + 100.0 * wave + 20.0 * (xs - ys))
    array = np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)
    return Image.fromarray(array, mode="RGB")


def encode(image: Image.Image, fmt: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def halves(width: int, height: int, left: tuple[int, int, int], right: tuple[int, int, int]) -> Image.Image:
    """Left half one colour, right half another: orientation is visible after any resize."""
    array = np.empty((height, width, 3), dtype=np.uint8)
    array[:, : width // 2] = left
    array[:, width // 2 :] = right
    return Image.fromarray(array, mode="RGB")


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_chunk(chunk_type: bytes, payload: bytes) -> bytes:
    """One PNG chunk: length, type, data and the CRC of type and data."""
    return struct.pack(">I", len(payload)) + chunk_type + payload + struct.pack(">I", zlib.crc32(chunk_type + payload))


def png_declaring(width: int, height: int, rows_of_data: int = 64) -> bytes:
    """A small, well-formed 1-bit grayscale PNG whose header declares width x height.

    Only the first ``rows_of_data`` rows are present (zeros): a real bomb of this size is ~100 KB of
    zlib that inflates to gigabytes; what matters to the decoder is the header, which must stop it.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\x00" * (1 + (width + 7) // 8)
    pixels = zlib.compress(row * rows_of_data, 9)
    return PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", pixels) + png_chunk(b"IEND", b"")


def empty() -> bytes:
    return b""


def text_named_png() -> bytes:
    return b"Dear bay manager,\nplease route my van to bay 3.\nThanks!\n"


def truncated_png() -> bytes:
    data = encode(photo_like(64, 48, seed=1), "PNG")
    return data[: len(data) // 2]


def png_missing_rows() -> bytes:
    """A 64x48 RGB PNG whose zlib stream is complete but holds only its first 24 rows (a decoder that takes the
    stream's end for the image's end would fill the rest with black)."""
    header = struct.pack(">IIBBBBB", 64, 48, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + bytes(range(192)) for _ in range(24))
    return (
        PNG_SIGNATURE + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", zlib.compress(rows)) + png_chunk(b"IEND", b"")
    )


def truncated_jpeg() -> bytes:
    data = encode(photo_like(640, 480, seed=2), "JPEG", quality=90)
    return data[: len(data) * 2 // 3]


def decompression_bomb() -> bytes:
    return png_declaring(30000, 30000)


def over_pixel_limit() -> bytes:
    """50 megapixels declared: over the project's 40 M limit, under Pillow's own bomb threshold."""
    return png_declaring(10000, 5000)


def png_16bit() -> bytes:
    ramp = np.linspace(0, 65535, 48 * 64, dtype=np.float64).reshape(48, 64).astype(np.uint16)
    return encode(Image.fromarray(ramp), "PNG")


def cmyk_jpeg() -> bytes:
    return encode(photo_like(120, 80, seed=3).convert("CMYK"), "JPEG", quality=90)


def grayscale_png() -> bytes:
    return encode(photo_like(64, 64, seed=4).convert("L"), "PNG")


def palette_with_transparency() -> bytes:
    image = photo_like(64, 64, seed=5).quantize(colors=16)
    image.info["transparency"] = 0
    return encode(image, "PNG", transparency=0)


def rgba_png() -> bytes:
    image = photo_like(64, 64, seed=6).convert("RGBA")
    image.putalpha(Image.linear_gradient("L").resize((64, 64)))
    return encode(image, "PNG")


def animated_gif() -> bytes:
    frames = [halves(40, 30, (255, 0, 0), (0, 0, 255)), halves(40, 30, (0, 255, 0), (255, 255, 0))]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def webp() -> bytes:
    return encode(photo_like(80, 60, seed=7), "WEBP", quality=80)


def heic_like() -> bytes:
    """An ISO-BMFF ``ftyp`` box with HEIC brands, as an iPhone photo starts, followed by opaque data."""
    ftyp = struct.pack(">I", 24) + b"ftyp" + b"heic" + struct.pack(">I", 0) + b"mif1heic"
    return ftyp + struct.pack(">I", 40) + b"meta" + bytes(32)


def exif_rotated() -> bytes:
    """A JPEG stored sideways with EXIF orientation 6: displayed, it is 60x40, red left and blue right."""
    displayed = halves(60, 40, (255, 0, 0), (0, 0, 255))
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # exif_transpose undoes it with ROTATE_270
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(stored, "JPEG", quality=95, exif=exif.tobytes())


@cache
def photo_4000x3000() -> bytes:
    # Drawn at 1/8 scale and enlarged: the same smooth content, generated in a fraction of the time.
    picture = photo_like(500, 375, seed=8).resize((4000, 3000), Image.Resampling.BILINEAR)
    return encode(picture, "JPEG", quality=85)


def big_photo_from(image: bytes | Path, size: tuple[int, int] = (4032, 3024)) -> bytes:
    """A phone-photo-sized JPEG made from a real (small) image: its upscaled copy, squashed to ``size``."""
    raw = image.read_bytes() if isinstance(image, Path) else image
    with Image.open(io.BytesIO(raw)) as source:
        big = source.convert("RGB").resize(size, Image.Resampling.BICUBIC)
    return encode(big, "JPEG", quality=90)


def oversized_object(max_object_bytes: int) -> bytes:
    """One byte over the ingest size limit, with a valid JPEG start so only the size can reject it."""
    start = encode(photo_like(16, 16), "JPEG")
    return start + bytes(max_object_bytes + 1 - len(start))


_CASES: tuple[tuple[str, str, Callable[[], bytes], str, str, tuple[int, int] | None], ...] = (
    ("empty", "empty.png", empty, "empty_object", "a zero-byte object", None),
    ("text_named_png", "letter.png", text_named_png, "not_an_image", "plain text with a .png name", None),
    ("truncated_png", "cut.png", truncated_png, "truncated_image", "a PNG cut in half", None),
    ("truncated_jpeg", "cut.jpg", truncated_jpeg, "truncated_image", "a JPEG missing its last third", None),
    ("png_rows_missing", "half.png", png_missing_rows, "truncated_image", "a PNG whose pixels stop halfway", None),
    ("decompression_bomb", "bomb.png", decompression_bomb, "too_many_pixels", "tiny PNG declaring 30000x30000", None),
    ("over_pixel_limit", "huge.png", over_pixel_limit, "too_many_pixels", "a small PNG declaring 10000x5000", None),
    ("png_16bit", "deep.png", png_16bit, OK, "16-bit grayscale PNG (mode I;16)", (64, 48)),
    ("cmyk_jpeg", "print.jpg", cmyk_jpeg, OK, "CMYK JPEG", (120, 80)),
    ("grayscale", "gray.png", grayscale_png, OK, "8-bit grayscale PNG", (64, 64)),
    ("palette_transparency", "palette.png", palette_with_transparency, OK, "palette PNG, transparent index", (64, 64)),
    ("rgba", "alpha.png", rgba_png, OK, "RGBA PNG with a gradient alpha", (64, 64)),
    ("animated_gif", "anim.gif", animated_gif, OK, "two-frame animated GIF (first frame used)", (40, 30)),
    ("webp", "photo.webp", webp, OK, "lossy WebP", (80, 60)),
    ("heic", "IMG_0001.HEIC", heic_like, "unsupported_format", "HEIC (ftyp heic) that Pillow cannot decode", None),
    ("exif_rotated", "sideways.jpg", exif_rotated, OK, "JPEG stored sideways with EXIF orientation 6", (60, 40)),
    ("photo_4000x3000", "camera.jpg", photo_4000x3000, OK, "a 4000x3000 JPEG (12 MP)", (4000, 3000)),
)


def _build(entry: tuple[str, str, Callable[[], bytes], str, str, tuple[int, int] | None]) -> HostileCase:
    name, filename, make, expected, description, displayed = entry
    return HostileCase(name, filename, make(), expected, description, displayed)


def _big_photo_case(real_image: bytes | Path) -> HostileCase:
    return HostileCase(
        "big_photo_from_real",
        "delivery.jpg",
        big_photo_from(real_image),
        OK,
        "a 4032x3024 JPEG upscaled from a real image",
        (4032, 3024),
    )


def hostile_cases(real_image: bytes | Path | None = None) -> list[HostileCase]:
    """Every byte-level case; with a real (small) image, also a phone-sized JPEG made from it."""
    cases = [_build(entry) for entry in _CASES]
    if real_image is not None:
        cases.append(_big_photo_case(real_image))
    return cases


def hostile_case(name: str, real_image: bytes | Path | None = None) -> HostileCase:
    if name == "big_photo_from_real" and real_image is not None:
        return _big_photo_case(real_image)
    for entry in _CASES:
        if entry[0] == name:
            return _build(entry)
    raise KeyError(f"no hostile case named {name!r}")
