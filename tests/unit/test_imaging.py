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
    _decode_plain_png,
    _decode_resized_rgb,
    _png_idat_payloads,
    _png_rows_missing,
    _png_scanline_bytes,
    decode_png_payload,
    prepare_image,
    sniff_format,
)
from tests.hostile import (
    OK,
    PNG_SIGNATURE,
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
    png_chunk,
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


# --- The plain-PNG fast path of decode_png_payload -------------------------------------------------------------
# Every case below compares with the full path (_decode_resized_rgb), which stays the reference for pixels and errors.

# Adam7: (first column, first row, column step, row step) of each of the seven passes.
ADAM7_PASSES = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2)]


def _ihdr(width: int = SIZE, height: int = SIZE, bit_depth: int = 8, colour_type: int = 2, interlace: int = 0) -> bytes:
    return png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, interlace))


def _pixels(seed: int = 0, size: int = SIZE) -> np.ndarray:
    """Noise: every filter type predicts it badly, so a wrong unfiltering shows in every byte."""
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def _filtered_rows(array: np.ndarray, filter_types: list[int]) -> bytes:
    """The PNG filtering of an RGB8 array (specification section 9), row y with filter_types[y % len(...)]."""
    height, width, channels = array.shape
    rows = array.reshape(height, width * channels).astype(np.int16)
    filtered = bytearray()
    for y, row in enumerate(rows):
        above = rows[y - 1] if y else np.zeros_like(row)
        left = np.concatenate([np.zeros(channels, np.int16), row[:-channels]])
        upper_left = np.concatenate([np.zeros(channels, np.int16), above[:-channels]])
        filter_type = filter_types[y % len(filter_types)]
        if filter_type == 0:
            predictor = np.zeros_like(row)
        elif filter_type == 1:
            predictor = left
        elif filter_type == 2:
            predictor = above
        elif filter_type == 3:
            predictor = (left + above) // 2
        else:
            estimate = left + above - upper_left
            to_left, to_above, to_upper_left = (np.abs(estimate - neighbour) for neighbour in (left, above, upper_left))
            predictor = np.where(
                (to_left <= to_above) & (to_left <= to_upper_left),
                left,
                np.where(to_above <= to_upper_left, above, upper_left),
            )
        filtered.append(filter_type)
        filtered += ((row - predictor) % 256).astype(np.uint8).tobytes()
    return bytes(filtered)


def _png(
    array: np.ndarray,
    *,
    filter_types: list[int] | None = None,
    idat_pieces: int = 1,
    before_idat: bytes = b"",
    after_idat: bytes = b"",
    interlace: bool = False,
) -> bytes:
    """An 8-bit RGB PNG built by hand, so filters, chunk layout and interlacing are ours to choose."""
    if interlace:
        scanlines = b"".join(
            _filtered_rows(array[row::row_step, column::column_step], filter_types or [0])
            for column, row, column_step, row_step in ADAM7_PASSES
        )
    else:
        scanlines = _filtered_rows(array, filter_types or [0])
    stream = zlib.compress(scanlines)
    piece = -(-len(stream) // idat_pieces)
    idat = b"".join(png_chunk(b"IDAT", stream[start : start + piece]) for start in range(0, len(stream), piece))
    height, width, _ = array.shape
    header = _ihdr(width, height, interlace=int(interlace))
    return PNG_SIGNATURE + header + before_idat + idat + after_idat + png_chunk(b"IEND", b"")


def _full_path(data: bytes, max_pixels: int = LIMIT) -> np.ndarray:
    rgb, _, _ = _decode_resized_rgb(data, size=SIZE, max_pixels=max_pixels)
    return np.asarray(rgb, dtype=np.uint8)


def _assert_payload_decodes_as_the_full_path(data: bytes, max_pixels: int = LIMIT) -> None:
    try:
        expected = _full_path(data, max_pixels)
    except WorkflowError as full_path_error:
        with pytest.raises(type(full_path_error)) as caught:
            decode_png_payload(data, SIZE, max_pixels=max_pixels)
        assert caught.value.reason == full_path_error.reason
        return
    assert np.array_equal(decode_png_payload(data, SIZE, max_pixels=max_pixels), expected)


def test_the_fast_path_gives_the_full_paths_pixels_on_real_cifar_images() -> None:
    files = sorted(DATASET.glob("train/*/*.png"))
    if not files:
        pytest.skip(f"dataset absent: {DATASET}")
    for path in files[::10]:  # 100 of the 1000, both classes
        data = path.read_bytes()
        plain = _decode_plain_png(data, SIZE, LIMIT)
        expected = _full_path(data)
        assert plain is not None, path
        assert plain.dtype == np.uint8 and plain.shape == (SIZE, SIZE, 3)
        assert plain.flags.writeable == expected.flags.writeable  # the same kind of array callers got before
        assert np.array_equal(plain, expected), path


@pytest.mark.parametrize("filter_types", [[0], [1], [2], [3], [4], [0, 1, 2, 3, 4]], ids=lambda f: f"filters{f}")
def test_the_fast_path_unfilters_every_png_filter_type(filter_types: list[int]) -> None:
    array = _pixels(seed=sum(filter_types))
    data = _png(array, filter_types=filter_types)
    assert np.array_equal(_full_path(data), array)  # the hand-made filtering is right
    plain = _decode_plain_png(data, SIZE, LIMIT)
    assert plain is not None
    assert np.array_equal(plain, array)


@pytest.mark.parametrize("compress_level", [0, 1, 9])
def test_the_fast_path_reads_pillows_own_pngs(compress_level: int) -> None:
    # Pillow picks a filter per row (adaptive filtering); its payloads are the ones the workflow passes along.
    picture = photo_like(SIZE, SIZE, seed=compress_level)
    data = encode(picture, "PNG", compress_level=compress_level)
    plain = _decode_plain_png(data, SIZE, LIMIT)
    assert plain is not None
    assert np.array_equal(plain, np.asarray(picture))


def test_the_fast_path_joins_idat_split_over_many_chunks() -> None:
    array = _pixels(seed=5)
    data = _png(array, filter_types=[4, 1], idat_pieces=9)
    assert data.count(b"IDAT") == 9
    plain = _decode_plain_png(data, SIZE, LIMIT)
    assert plain is not None
    assert np.array_equal(plain, array)

    empty_idat = png_chunk(b"IDAT", b"")  # allowed by the specification, and by both paths
    first_idat = data.index(b"IDAT") - 4
    with_empty = data[:first_idat] + empty_idat + data[first_idat:]
    plain = _decode_plain_png(with_empty, SIZE, LIMIT)
    assert plain is not None
    assert np.array_equal(plain, array)


def test_serialized_payloads_take_the_fast_path_even_with_a_colour_profile() -> None:
    # prepare_image keeps a source's ICC profile in the payload it writes, so photos' payloads carry an iCCP chunk.
    source = encode(photo_like(64, 48, seed=8), "PNG", icc_profile=b"an ICC profile, stored but never applied" * 8)
    prepared = prepare_image(source, size=SIZE, max_pixels=LIMIT)
    assert b"iCCP" in prepared.png
    plain = _decode_plain_png(prepared.png, SIZE, LIMIT)
    assert plain is not None
    assert np.array_equal(plain, prepared.array)


def test_decode_png_payload_takes_the_fast_path_for_a_plain_png(monkeypatch: pytest.MonkeyPatch) -> None:
    def full_path(*args: object, **kwargs: object) -> None:
        raise AssertionError("a plain payload went through the full path")

    array = _pixels(seed=6)
    monkeypatch.setattr("bayroute.imaging._decode_resized_rgb", full_path)
    assert np.array_equal(decode_png_payload(_png(array, filter_types=[2, 3]), SIZE), array)
    with pytest.raises(AssertionError, match="full path"):
        decode_png_payload(_png(array, interlace=True), SIZE)


NEUTRAL_CHUNKS = {
    "sRGB": png_chunk(b"sRGB", b"\x00"),
    "gAMA": png_chunk(b"gAMA", struct.pack(">I", 45455)),
    "cHRM": png_chunk(b"cHRM", struct.pack(">8I", 31270, 32900, 64000, 33000, 30000, 60000, 15000, 6000)),
    "pHYs": png_chunk(b"pHYs", struct.pack(">IIB", 2835, 2835, 1)),
    "tIME": png_chunk(b"tIME", struct.pack(">HBBBBB", 2024, 5, 17, 12, 30, 0)),
    "sBIT": png_chunk(b"sBIT", b"\x08\x08\x08"),
    "bKGD": png_chunk(b"bKGD", struct.pack(">3H", 0, 0, 0)),
    "iCCP": png_chunk(b"iCCP", b"display\x00\x00" + zlib.compress(b"profile" * 50)),
}


@pytest.mark.parametrize("name", NEUTRAL_CHUNKS)
def test_pixel_neutral_chunks_keep_the_fast_path(name: str) -> None:
    array = _pixels(seed=7)
    for data in (_png(array, before_idat=NEUTRAL_CHUNKS[name]), _png(array, after_idat=NEUTRAL_CHUNKS[name])):
        plain = _decode_plain_png(data, SIZE, LIMIT)
        assert plain is not None
        assert np.array_equal(plain, _full_path(data))


def _with_bad_idat_crc() -> bytes:
    data = bytearray(_png(_pixels()))
    crc_end = data.index(b"IEND") - 4
    data[crc_end - 1] ^= 0xFF
    return bytes(data)


def _idat_stream(data: bytes) -> bytes:
    start = data.index(b"IDAT")
    length = int.from_bytes(data[start - 4 : start], "big")
    return data[start + 4 : start + 4 + length]


def _with_idat(stream: bytes, header: bytes = _ihdr()) -> bytes:
    return PNG_SIGNATURE + header + png_chunk(b"IDAT", stream) + png_chunk(b"IEND", b"")


def _exif_rotated_half_turn() -> bytes:
    exif = Image.Exif()
    exif[0x0112] = 3
    return encode(Image.fromarray(_pixels()), "PNG", exif=exif.tobytes())


def _xmp_text_rotated_half_turn() -> bytes:
    xmp = b'XML:com.adobe.xmp\x00<x:xmpmeta><rdf:Description tiff:Orientation="3"/></x:xmpmeta>'
    return _png(_pixels(), before_idat=png_chunk(b"tEXt", xmp))


def _split_by_a_neutral_chunk() -> bytes:
    data = _png(_pixels(), idat_pieces=2)
    second_idat = data.index(b"IDAT", data.index(b"IDAT") + 4) - 4
    return data[:second_idat] + NEUTRAL_CHUNKS["gAMA"] + data[second_idat:]


PLAIN_STREAM = _idat_stream(_png(_pixels()))
NOT_PLAIN: dict[str, bytes] = {
    "tRNS": encode(Image.fromarray(_pixels()), "PNG", transparency=(0, 0, 0)),
    "eXIf_orientation": _exif_rotated_half_turn(),
    "text_xmp_orientation": _xmp_text_rotated_half_turn(),
    "zTXt": _png(_pixels(), before_idat=png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"hello"))),
    "PLTE_suggested_palette": _png(_pixels(), before_idat=png_chunk(b"PLTE", bytes(range(48)))),
    "unknown_chunk": _png(_pixels(), before_idat=png_chunk(b"prVt", b"private")),
    "acTL_apng": _png(_pixels(), before_idat=png_chunk(b"acTL", struct.pack(">II", 1, 0))),
    "second_IHDR": _png(_pixels(), before_idat=_ihdr(16, 16)),
    "other_size": encode(photo_like(64, 64), "PNG"),
    "not_square": encode(photo_like(32, 31), "PNG"),
    "16bit_rgb": _with_idat(zlib.compress(bytes(SIZE * (1 + SIZE * 6))), header=_ihdr(bit_depth=16)),
    "16bit_grey": encode(Image.fromarray(np.full((SIZE, SIZE), 40000, np.uint16)), "PNG"),
    "grey": encode(photo_like(SIZE, SIZE).convert("L"), "PNG"),
    "palette": encode(photo_like(SIZE, SIZE).convert("P"), "PNG"),
    "rgba": encode(photo_like(SIZE, SIZE).convert("RGBA"), "PNG"),
    "interlaced": _png(_pixels(), interlace=True),
    "bad_idat_crc": _with_bad_idat_crc(),
    "bad_ancillary_crc": _png(_pixels(), before_idat=NEUTRAL_CHUNKS["gAMA"][:-1] + b"\x00"),
    "short_gAMA": _png(_pixels(), before_idat=png_chunk(b"gAMA", b"\x00\x00\x01")),
    "iCCP_unknown_compression": _png(_pixels(), before_idat=png_chunk(b"iCCP", b"p\x00\x01" + zlib.compress(b"x"))),
    "iCCP_broken_zlib": _png(_pixels(), before_idat=png_chunk(b"iCCP", b"p\x00\x00not zlib")),
    "idat_split_by_another_chunk": _split_by_a_neutral_chunk(),
    "data_after_iend": _png(_pixels()) + b"trailing bytes",
    "no_iend": _png(_pixels())[:-12],
    "truncated_idat": _png(_pixels())[:500],
    "zlib_stream_cut_in_half": _with_idat(PLAIN_STREAM[: len(PLAIN_STREAM) // 2]),
    "garbage_zlib_stream": _with_idat(bytes(byte ^ 0x5A for byte in PLAIN_STREAM)),
    "unknown_filter_type": _with_idat(zlib.compress(_filtered_rows(_pixels(), [0]).replace(b"\x00", b"\x07", 1))),
    "no_idat": PNG_SIGNATURE + _ihdr() + png_chunk(b"IEND", b""),
    # A zlib bomb behind a model-size header: the fast path stops inflating one byte past the image.
    "megabyte_past_the_last_row": _with_idat(zlib.compress(_filtered_rows(_pixels(), [0]) + bytes(1 << 20))),
    "jpeg": encode(photo_like(SIZE, SIZE), "JPEG"),
    "empty": b"",
}


@pytest.mark.parametrize("name", NOT_PLAIN)
def test_the_fast_path_declines_and_the_full_path_answers(name: str) -> None:
    data = NOT_PLAIN[name]
    assert _decode_plain_png(data, SIZE, LIMIT) is None
    _assert_payload_decodes_as_the_full_path(data)


def test_the_full_path_applies_orientation_that_the_fast_path_would_miss() -> None:
    # Why text and eXIf chunks go to the full path: they can rotate the picture.
    for name in ("eXIf_orientation", "text_xmp_orientation"):
        assert np.array_equal(decode_png_payload(NOT_PLAIN[name], SIZE), _pixels()[::-1, ::-1]), name


def test_broken_pixel_data_at_the_model_size_keeps_its_named_errors() -> None:
    with pytest.raises(TruncatedImage):
        decode_png_payload(NOT_PLAIN["zlib_stream_cut_in_half"], SIZE)
    with pytest.raises(TruncatedImage):
        decode_png_payload(NOT_PLAIN["truncated_idat"], SIZE)
    for name in ("garbage_zlib_stream", "unknown_filter_type", "short_gAMA", "iCCP_unknown_compression"):
        with pytest.raises((CorruptImage, TruncatedImage)) as caught:
            decode_png_payload(NOT_PLAIN[name], SIZE)
        assert caught.value.facts["format"] == "png", name


@pytest.mark.parametrize(
    ("name", "array", "interlace"),
    [("model size", _pixels(), False), ("resized", _pixels(size=48), False), ("interlaced", _pixels(size=37), True)],
)
def test_a_complete_zlib_stream_without_the_last_rows_is_a_truncated_image(
    name: str, array: np.ndarray, interlace: bool
) -> None:
    # Pillow's decoder takes the stream's end for the image's end and leaves the missing rows black: a different
    # picture, scored without a word. Every path names it instead.
    whole = _png(array, interlace=interlace)
    stream = _idat_stream(whole)
    short = _with_idat(zlib.compress(zlib.decompress(stream)[:-40]), header=whole[8:33])
    assert _decode_plain_png(short, SIZE, LIMIT) is None
    for decode in (lambda: decode_png_payload(short, SIZE), lambda: prepare_image(short, size=SIZE, max_pixels=LIMIT)):
        with pytest.raises(TruncatedImage, match="PNG pixel data ends after"):
            decode()
    assert decode_png_payload(whole, SIZE).shape == (SIZE, SIZE, 3), name
    height, width, _ = array.shape
    declared = _png_scanline_bytes(width, height, bit_depth=8, colour_type=2, interlaced=interlace)
    assert declared == len(zlib.decompress(stream))


def test_the_declared_pixel_bytes_follow_the_png_specification_at_every_small_size() -> None:
    # Counted the slow way: each Adam7 pass's pixels enumerated; an empty pass has no rows and no filter bytes.
    for width in range(1, 18):
        for height in range(1, 18):
            for bit_depth, colour_type, samples in ((1, 0, 1), (4, 3, 1), (8, 2, 3), (16, 6, 4)):
                passes = [
                    (len(range(column, width, column_step)), len(range(row, height, row_step)))
                    for column, row, column_step, row_step in ADAM7_PASSES
                ]
                interlaced = sum(
                    rows * (1 + -(-columns * samples * bit_depth // 8)) for columns, rows in passes if columns and rows
                )
                plain = height * (1 + -(-width * samples * bit_depth // 8))
                size = (width, height)
                assert (
                    _png_scanline_bytes(width, height, bit_depth=bit_depth, colour_type=colour_type, interlaced=True)
                    == interlaced
                ), size
                assert (
                    _png_scanline_bytes(width, height, bit_depth=bit_depth, colour_type=colour_type, interlaced=False)
                    == plain
                ), size


@pytest.mark.parametrize(
    ("mode", "options"),
    [
        ("1", {}),
        ("L", {}),
        ("LA", {}),
        ("P", {"bits": 2}),
        ("P", {"bits": 4}),
        ("P", {}),
        ("RGB", {}),
        ("RGBA", {}),
        ("I;16", {}),
    ],
)
def test_every_complete_png_layout_passes_the_row_count(mode: str, options: dict[str, int]) -> None:
    # The count of pixel bytes a header declares, for each bit depth and colour type Pillow writes, at sizes whose
    # rows do not fill whole bytes.
    image = photo_like(37, 29).convert("L").convert(mode) if mode in ("1", "I;16") else photo_like(37, 29).convert(mode)
    data = encode(image, "PNG", **options)
    bit_depth, colour_type = data[24], data[25]
    declared = _png_scanline_bytes(37, 29, bit_depth=bit_depth, colour_type=colour_type, interlaced=False)
    assert declared == len(zlib.decompress(b"".join(_png_idat_payloads(data))))
    assert _png_rows_missing(data, _png_idat_payloads(data), LIMIT) is None
    assert prepare_image(data, size=SIZE, max_pixels=LIMIT).array.shape == (SIZE, SIZE, 3)


def test_the_fast_path_keeps_the_callers_pixel_limit() -> None:
    data = _png(_pixels())
    assert _decode_plain_png(data, SIZE, SIZE * SIZE) is not None
    assert _decode_plain_png(data, SIZE, SIZE * SIZE - 1) is None
    with pytest.raises(TooManyPixels):
        decode_png_payload(data, SIZE, max_pixels=SIZE * SIZE - 1)
