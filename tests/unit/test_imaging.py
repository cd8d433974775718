"""bayroute.imaging: every hostile case of issue 6, the format sniffer, and the decode decisions."""

from __future__ import annotations

import dataclasses
import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, JpegImagePlugin

from bayroute.config import load_settings
from bayroute.errors import (
    CorruptImage,
    TooManyPixels,
    TruncatedImage,
    WorkflowError,
)
from bayroute.imaging import (
    DEFAULT_MAX_PIXELS,
    SUPPORTED_FORMATS,
    InputStats,
    decode_png_payload,
    prepare_image,
    sniff_format,
)
from tests.hostile import (
    OK,
    HostileCase,
    animated_gif,
    cmyk_jpeg,
    encode,
    exif_rotated,
    hostile_case,
    hostile_cases,
    photo_4000x3000,
    photo_like,
    png_16bit,
    png_declaring,
    truncated_jpeg,
    truncated_png,
)

DATASET = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar100-vehicles"
SIZE = 32
LIMIT = DEFAULT_MAX_PIXELS


def _real_image() -> Path | None:
    folder = DATASET / "train" / "bicycle"
    return next(iter(sorted(folder.glob("*.png"))), None) if folder.is_dir() else None


CASES = hostile_cases(_real_image())


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_every_hostile_case_reaches_its_expected_outcome(case: HostileCase) -> None:
    if case.expected != OK:
        with pytest.raises(WorkflowError) as caught:
            prepare_image(case.data, size=SIZE, max_pixels=LIMIT)
        assert caught.value.reason == case.expected, caught.value.detail
        assert json.loads(str(caught.value))["reason"] == case.expected
        return
    prepared = prepare_image(case.data, size=SIZE, max_pixels=LIMIT)
    assert prepared.array.shape == (SIZE, SIZE, 3)
    assert prepared.array.dtype == np.uint8
    assert (prepared.stats.original_width, prepared.stats.original_height) == case.displayed_size
    assert prepared.stats.bytes == len(case.data)
    assert 0.0 < prepared.stats.brightness < 1.0
    # The payload is lossless and compact: it decodes back to exactly the model input.
    assert np.array_equal(decode_png_payload(prepared.png, SIZE), prepared.array)
    assert len(prepared.png) < 3500


def test_the_extension_never_decides_the_format() -> None:
    case = hostile_case("text_named_png")
    assert case.filename.endswith(".png")
    assert sniff_format(case.data) is None
    assert sniff_format(hostile_case("webp").data) == "webp"


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "png"),
        (b"\xff\xd8\xff\xe0\x00\x10JFIF", "jpeg"),
        (b"GIF89a\x01\x00", "gif"),
        (b"GIF87a\x01\x00", "gif"),
        (b"RIFF\x10\x00\x00\x00WEBPVP8 ", "webp"),
        (b"BM" + bytes(30), "bmp"),
        (b"II*\x00\x08\x00\x00\x00", "tiff"),
        (b"MM\x00*\x00\x00\x00\x08", "tiff"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1heic", "heic"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1miaf", "heif"),
        (b"\x00\x00\x00\x1cftypavif\x00\x00\x00\x00avifmif1miaf", "avif"),
        (b"\x00\x00\x00\x18ftypmif1\x00\x00\x00\x00mif1avif", "avif"),
        (b"\x00\x00\x00\x18ftypisom\x00\x00\x02\x00isomiso2", None),  # an MP4 video
        (b"\xff\x0a\xfa\x7f", "jxl"),
        (b"\x00\x00\x00\x0cjP  \r\n\x87\n\x00\x00", "jpeg2000"),
        (b"\x00\x00\x01\x00\x01\x00\x10\x10", "ico"),
        (b"8BPS\x00\x01", "psd"),
        (b'<?xml version="1.0"?><svg xmlns=', "svg"),
        (b"%PDF-1.7\n", None),
        (b"hello", None),
        (b"", None),
    ],
)
def test_sniff_format_reads_magic_bytes(head: bytes, expected: str | None) -> None:
    assert sniff_format(head) == expected


def test_the_common_formats_are_decodable_with_this_pillow() -> None:
    assert {"png", "jpeg", "gif", "webp", "bmp", "tiff"} <= SUPPORTED_FORMATS
    assert "heic" not in SUPPORTED_FORMATS


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "AVIF"])
def test_other_supported_formats_decode(fmt: str) -> None:
    if fmt.lower() not in SUPPORTED_FORMATS:
        pytest.skip(f"this Pillow build has no {fmt} decoder")
    prepared = prepare_image(encode(photo_like(48, 32), fmt), size=SIZE, max_pixels=LIMIT)
    assert prepared.stats.format == fmt.lower()
    assert (prepared.stats.original_width, prepared.stats.original_height) == (48, 32)


def test_a_real_cifar_image_passes_through_pixel_for_pixel() -> None:
    path = _real_image()
    if path is None:
        pytest.skip(f"dataset absent: {DATASET}")
    data = path.read_bytes()
    prepared = prepare_image(data, size=SIZE, max_pixels=LIMIT)
    expected = np.asarray(Image.open(path).convert("RGB"))
    assert np.array_equal(prepared.array, expected)
    assert len(prepared.png) <= 3300


def test_the_pixel_limit_is_the_callers() -> None:
    data = encode(photo_like(100, 100), "PNG")
    assert prepare_image(data, size=SIZE, max_pixels=10_000).array.shape == (SIZE, SIZE, 3)
    with pytest.raises(TooManyPixels) as caught:
        prepare_image(data, size=SIZE, max_pixels=9_999)
    assert caught.value.facts["width"] == 100
    assert "100x100" in caught.value.detail


def test_the_pixel_limit_is_checked_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail_load(self: Image.Image) -> None:
        raise AssertionError("decoded despite the pixel limit")

    monkeypatch.setattr(ImageFile.ImageFile, "load", fail_load)
    with pytest.raises(TooManyPixels):
        prepare_image(png_declaring(10000, 5000), size=SIZE, max_pixels=LIMIT)


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillows_bomb_warning_maps_to_too_many_pixels_when_warnings_are_errors() -> None:
    with pytest.raises(TooManyPixels) as caught:
        prepare_image(png_declaring(10000, 10000), size=SIZE, max_pixels=200_000_000)
    assert "decompression bomb" in caught.value.detail


def test_the_default_limit_is_the_projects_setting() -> None:
    assert load_settings(env={}).limits.max_image_pixels == DEFAULT_MAX_PIXELS


@pytest.mark.parametrize("make", [truncated_png, truncated_jpeg], ids=["png", "jpeg"])
def test_truncation_is_caught_even_when_pillow_is_told_to_accept_it(
    make: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(TruncatedImage):
        prepare_image(make(), size=SIZE, max_pixels=LIMIT)  # type: ignore[operator]


def test_a_png_without_its_iend_chunk_is_truncated() -> None:
    data = encode(photo_like(40, 40), "PNG")
    assert data.endswith(b"IEND\xaeB`\x82")
    with pytest.raises(TruncatedImage, match="inside a chunk header"):
        prepare_image(data[:-12], size=SIZE, max_pixels=LIMIT)


def test_a_jpeg_cut_before_its_scan_is_truncated() -> None:
    data = encode(photo_like(40, 40), "JPEG")
    with pytest.raises(TruncatedImage, match="before the first image scan"):
        prepare_image(data[:100], size=SIZE, max_pixels=LIMIT)


def test_damaged_pixel_data_is_corrupt() -> None:
    data = bytearray(encode(photo_like(40, 40), "PNG"))
    idat = data.index(b"IDAT")
    length = int.from_bytes(data[idat - 4 : idat], "big")
    payload = bytes(b ^ 0x5A for b in data[idat + 4 : idat + 4 + length])  # garbage zlib stream
    crc = struct.pack(">I", zlib.crc32(b"IDAT" + payload))  # a valid CRC, so only the content is wrong
    data[idat + 4 : idat + 8 + length] = payload + crc
    with pytest.raises(CorruptImage) as caught:
        prepare_image(bytes(data), size=SIZE, max_pixels=LIMIT)
    assert caught.value.facts["format"] == "png"


def test_a_16bit_png_keeps_its_range_instead_of_clipping_to_white() -> None:
    prepared = prepare_image(png_16bit(), size=SIZE, max_pixels=LIMIT)
    gray = prepared.array[..., 0].astype(int)
    assert np.array_equal(prepared.array[..., 0], prepared.array[..., 1])
    assert gray.min() < 10 and gray.max() > 245
    assert 0.45 < prepared.stats.brightness < 0.55


def test_cmyk_jpeg_colours_survive() -> None:
    source = np.asarray(photo_like(120, 80, seed=3).resize((SIZE, SIZE), Image.Resampling.LANCZOS), dtype=np.int16)
    prepared = prepare_image(cmyk_jpeg(), size=SIZE, max_pixels=LIMIT)
    assert np.abs(prepared.array.astype(np.int16) - source).mean() < 4


def test_transparent_pixels_become_white() -> None:
    palette = Image.new("P", (40, 40), 0)
    palette.putpalette([0, 0, 0, 255, 0, 0] + [0] * (256 * 3 - 6))
    palette.paste(1, (0, 0, 20, 40))  # left half red, right half index 0: transparent black
    prepared = prepare_image(encode(palette, "PNG", transparency=0), size=SIZE, max_pixels=LIMIT)
    assert tuple(prepared.array[16, 2]) == (255, 0, 0)
    assert tuple(prepared.array[16, 30]) == (255, 255, 255)

    rgba = Image.new("RGBA", (40, 40), (0, 0, 255, 0))
    rgba.paste((0, 255, 0, 255), (0, 0, 20, 40))
    prepared = prepare_image(encode(rgba, "PNG"), size=SIZE, max_pixels=LIMIT)
    assert tuple(prepared.array[16, 2]) == (0, 255, 0)
    assert tuple(prepared.array[16, 30]) == (255, 255, 255)


def test_an_animated_gif_uses_its_first_frame() -> None:
    array = prepare_image(animated_gif(), size=SIZE, max_pixels=LIMIT).array
    assert tuple(array[16, 2]) == (255, 0, 0)  # frame 1 is red | blue; frame 2 would be green | yellow
    assert tuple(array[16, 30]) == (0, 0, 255)


def test_exif_orientation_is_applied() -> None:
    data = exif_rotated()
    assert Image.open(io.BytesIO(data)).size == (40, 60)  # stored sideways
    prepared = prepare_image(data, size=SIZE, max_pixels=LIMIT)
    red_left, blue_right = prepared.array[16, 3].astype(int), prepared.array[16, 28].astype(int)
    assert red_left[0] > 200 and red_left[2] < 60
    assert blue_right[2] > 200 and blue_right[0] < 60


def test_big_jpegs_decode_in_draft_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    decoded_sizes: list[tuple[int, int]] = []
    original_load = JpegImagePlugin.JpegImageFile.load

    def recording_load(self: JpegImagePlugin.JpegImageFile) -> object:
        decoded_sizes.append(self.size)
        return original_load(self)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "load", recording_load)
    prepared = prepare_image(photo_4000x3000(), size=SIZE, max_pixels=LIMIT)
    assert decoded_sizes[0] == (500, 375)  # libjpeg decoded at 1/8 scale, not 12 million pixels
    assert (prepared.stats.original_width, prepared.stats.original_height) == (4000, 3000)


def test_the_whole_frame_is_squashed_not_cropped() -> None:
    # A wide picture whose outer tenths are red: a centre crop would lose them, a squash keeps them.
    array = np.full((100, 400, 3), 128, dtype=np.uint8)
    array[:, :40] = (255, 0, 0)
    array[:, -40:] = (255, 0, 0)
    prepared = prepare_image(encode(Image.fromarray(array), "PNG"), size=SIZE, max_pixels=LIMIT)
    assert prepared.array[16, 0, 0] > 200 and prepared.array[16, 31, 0] > 200
    assert prepared.array[16, 16, 0] == 128


def test_brightness_and_contrast_of_the_resized_image() -> None:
    flat = prepare_image(encode(Image.new("RGB", (64, 64), (128, 128, 128)), "PNG"), size=SIZE, max_pixels=LIMIT)
    assert flat.stats.brightness == pytest.approx(128 / 255, abs=1e-4)
    assert flat.stats.contrast == pytest.approx(0.0, abs=1e-6)
    checker = np.indices((64, 64)).sum(axis=0) // 16 % 2 * 255  # 16-pixel black and white squares
    board = Image.fromarray(checker.astype(np.uint8)).convert("RGB")
    stats = prepare_image(encode(board, "PNG"), size=SIZE, max_pixels=LIMIT).stats
    assert stats.brightness == pytest.approx(0.5, abs=0.02)
    assert stats.contrast > 0.4


def test_payload_decoding_resizes_any_accepted_image() -> None:
    array = decode_png_payload(encode(photo_like(64, 48), "JPEG"), SIZE)
    assert array.shape == (SIZE, SIZE, 3)
    with pytest.raises(TruncatedImage):
        decode_png_payload(truncated_png(), SIZE)


def test_input_stats_are_the_luma_mean_and_deviation_and_round_trip_as_a_dict() -> None:
    rng = np.random.default_rng(3)
    for high in (1, 40, 256):
        array = rng.integers(0, high, (32, 32, 3), dtype=np.uint8)
        stats = InputStats.measure(array, width=640, height=480, fmt="jpeg", size=12_345)
        gray = array.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
        assert stats.brightness == pytest.approx(gray.mean() / 255.0, abs=1e-6)
        assert stats.contrast == pytest.approx(gray.std() / 255.0, abs=1e-6)
        assert stats.to_dict() == dataclasses.asdict(stats)  # every field, spelled out by hand
        assert InputStats.from_dict(json.loads(json.dumps(stats.to_dict()))) == stats
