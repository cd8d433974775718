from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from bayroute.commands.data import app
from training.folder import load_folder_dataset
from training.lst import LstEntry, LstFormatError, format_lst, parse_lst
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

SHARED_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "datasets" / "cifar100-vehicles" / "train"
runner = CliRunner()


def _source(root: Path, per_class: int = 5) -> Path:
    for class_index, name in enumerate(["cat", "dog"]):
        for i in range(per_class):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (6, 4), (class_index * 100, i * 10, 7)).save(root / name / f"img_{i}.png")
    return root


def test_lst_round_trip_and_float_labels() -> None:
    entries = [LstEntry(0, 1, "dog/a.png"), LstEntry(1, 0, "cat/b c.png")]
    text = format_lst(entries)
    assert text == "0\t1\tdog/a.png\n1\t0\tcat/b c.png\n"
    assert parse_lst(text) == entries
    assert parse_lst("7\t1.000000\tx/y.jpg\n\n") == [LstEntry(7, 1, "x/y.jpg")]  # im2rec writes float labels


@pytest.mark.parametrize(("line", "message"), [("1 0 a.png", "3 tab-separated"), ("1\t0.5\ta.png", "whole number")])
def test_lst_bad_lines(line: str, message: str) -> None:
    with pytest.raises(LstFormatError, match=f"line 2: .*{message}"):
        parse_lst("0\t0\tok.png\n" + line)


def test_export_lst_from_a_folder(tmp_path: Path) -> None:
    source = _source(tmp_path / "src")
    out = tmp_path / "out"
    args = ["export", "--format", "lst", "--out", str(out), "--source", str(source), "--val-fraction", "0.4"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "6 train, 4 validation" in result.output
    assert json.loads((out / "classes.json").read_text()) == ["cat", "dog"]
    assert sorted(p.name for p in out.iterdir()) == [
        "classes.json",
        "train",
        "train_lst",
        "validation",
        "validation_lst",
    ]
    original = load_folder_dataset(source)
    _, expected_val = stratified_split(original.labels, 0.4, DEFAULT_SPLIT_SEED)
    validation = parse_lst((out / "validation_lst" / "validation.lst").read_text())
    assert [e.index for e in validation] == [0, 1, 2, 3]
    assert [e.path for e in validation] == [original.paths[i].relative_to(source).as_posix() for i in expected_val]
    for entry in validation:  # label, folder and pixels agree with the source
        assert ["cat", "dog"][entry.label] == entry.path.split("/")[0]
        exported = np.asarray(Image.open(out / "validation" / entry.path))
        assert np.array_equal(exported, np.asarray(Image.open(source / entry.path)))
    assert len(parse_lst((out / "train_lst" / "train.lst").read_text())) == 6

    again = runner.invoke(app, args)
    assert again.exit_code == 1 and "--force" in again.output
    assert runner.invoke(app, [*args, "--force", "--val-fraction", "0.2"]).exit_code == 0
    assert len(parse_lst((out / "validation_lst" / "validation.lst").read_text())) == 2  # nothing left over


def test_export_folder_format(tmp_path: Path) -> None:
    source = _source(tmp_path / "src")
    out = tmp_path / "out"
    result = runner.invoke(app, ["export", "--format", "folder", "--out", str(out), "--source", str(source)])
    assert result.exit_code == 0, result.output
    train, validation = load_folder_dataset(out / "train"), load_folder_dataset(out / "validation")
    assert validation.class_counts() == {"cat": 1, "dog": 1}
    assert train.class_counts() == {"cat": 4, "dog": 4}
    train_files = {p.relative_to(out / "train") for p in train.paths}
    validation_files = {p.relative_to(out / "validation") for p in validation.paths}
    assert not train_files & validation_files
    assert train_files | validation_files == {p.relative_to(source) for p in source.rglob("*.png")}


def test_export_reports_bad_sources(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "--format", "lst", "--out", str(tmp_path / "o"), "--source", str(tmp_path)])
    assert result.exit_code == 1 and "no class folders" in result.output
    source = _source(tmp_path / "src")
    args = [
        "export",
        "--format",
        "folder",
        "--out",
        str(tmp_path / "o"),
        "--source",
        str(source),
        "--val-fraction",
        "1",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "val_fraction" in result.output


@pytest.mark.skipif(not SHARED_TRAIN.is_dir(), reason=f"shared CIFAR-100 vehicles data absent at {SHARED_TRAIN}")
def test_export_real_data_keeps_folder_labels(tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["export", "--format", "lst", "--out", str(out), "--source", str(SHARED_TRAIN)]
    assert runner.invoke(app, args).exit_code == 0
    expected_val = round(500 * DEFAULT_VAL_FRACTION) * 2
    for channel, count in (("train", 1000 - expected_val), ("validation", expected_val)):
        entries = parse_lst((out / f"{channel}_lst" / f"{channel}.lst").read_text())
        assert len(entries) == count
        assert all(["bicycle", "motorcycle"][e.label] == e.path.split("/")[0] for e in entries)
    motorcycle_bikes = [p for p in (out / "train" / "motorcycle").glob("bike_s_*.png")]
    motorcycle_bikes += [p for p in (out / "validation" / "motorcycle").glob("bike_s_*.png")]
    assert len(motorcycle_bikes) == 6
