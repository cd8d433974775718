"""What goes into each Lambda zip, decided from the code (no pip, no network)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

import infra.package
from infra.package import (
    MAX_UNZIPPED_BYTES,
    MAX_ZIPPED_BYTES,
    RUNTIME_PYTHON_VARIABLE,
    Package,
    PackageError,
    compile_bytecode,
    first_party_files,
    main,
    package,
    prune,
    remove_distributions,
    requirements,
    runtime_python,
    write_zip,
)


def test_each_function_gets_the_distributions_its_code_imports() -> None:
    assert requirements("threshold") == ("aws-lambda-powertools[tracer]",)
    assert requirements("infer") == ("aws-lambda-powertools[tracer]", "numpy", "onnxruntime", "pillow")
    assert "onnxruntime" not in requirements("serialize")
    assert "onnxruntime" not in requirements("ingest")


def test_the_aws_sdk_is_left_to_the_runtime() -> None:
    for function in ("ingest", "serialize", "infer", "threshold"):
        assert not {"boto3", "botocore"} & set(requirements(function))


def test_first_party_files_are_the_import_closure_plus_settings_and_model() -> None:
    infer = {path.as_posix() for path in first_party_files("infer")}
    assert {"services/infer/handler.py", "infra/settings.json", "models/default/model.onnx"} <= infer
    assert "bayroute/adapters/endpoint.py" in infer
    threshold = {path.as_posix() for path in first_party_files("threshold")}
    assert "models/default/model.onnx" not in threshold
    assert not any(path.startswith(("bayroute/local/", "training/", "tests/", "infra/build")) for path in threshold)


def test_a_missing_handler_is_refused(tmp_path: Path) -> None:
    with pytest.raises(PackageError, match=r"services/nope/handler\.py does not exist"):
        package("nope", out=tmp_path)


def test_without_a_runtime_python_packaging_stops_before_pip_and_says_what_to_do(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(infra.package, "runtime_python", lambda: None)
    monkeypatch.setattr(infra.package, "install", lambda *args: pytest.fail("pip ran before the check"))
    with pytest.raises(PackageError) as refused:
        package("threshold", out=tmp_path)
    message = str(refused.value)
    assert "no CPython 3.12 found to compile the package's bytecode" in message
    assert "read-only" in message and "cold start" in message
    assert RUNTIME_PYTHON_VARIABLE in message and "--no-bytecode" in message and "bytecode=False" in message
    assert not (tmp_path / "threshold").exists()
    assert main(["threshold", "--out", str(tmp_path)]) == 1
    assert "cannot package: no CPython 3.12 found" in capsys.readouterr().err


def test_an_explicit_runtime_python_that_is_not_one_is_refused_not_passed_over(tmp_path: Path) -> None:
    not_python = tmp_path / "python3.12"
    not_python.write_text("#!/bin/sh\necho cpython 3.11\n", encoding="utf-8")
    not_python.chmod(0o755)
    with pytest.raises(PackageError, match=rf"{RUNTIME_PYTHON_VARIABLE}=.* is not a CPython 3\.12 interpreter"):
        runtime_python({RUNTIME_PYTHON_VARIABLE: str(not_python), "PATH": ""})


def test_bytecode_is_compiled_for_the_runtime_beside_each_source_naming_it_relative_to_the_package(
    tmp_path: Path,
) -> None:
    interpreter = runtime_python()
    if interpreter is None:
        pytest.skip("no CPython 3.12 here (set BAYROUTE_PYTHON312)")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("", encoding="utf-8")
    (tmp_path / "pkg" / "mod.py").write_text("VALUE = 1\n", encoding="utf-8")
    compile_bytecode(tmp_path, interpreter)
    compiled = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.pyc"))
    assert compiled == ["pkg/__pycache__/__init__.cpython-312.pyc", "pkg/__pycache__/mod.cpython-312.pyc"]
    data = (tmp_path / "pkg" / "__pycache__" / "mod.cpython-312.pyc").read_bytes()
    assert int.from_bytes(data[4:8], "little") == 1  # PEP 552 flags: hash-based, unchecked
    assert b"pkg/mod.py" in data and str(tmp_path).encode() not in data


def test_code_the_runtime_cannot_compile_fails_the_package(tmp_path: Path) -> None:
    interpreter = runtime_python()
    if interpreter is None:
        pytest.skip("no CPython 3.12 here (set BAYROUTE_PYTHON312)")
    (tmp_path / "broken.py").write_text("def f(:\n", encoding="utf-8")
    with pytest.raises(PackageError, match=r"could not compile the package(.|\n)*broken\.py"):
        compile_bytecode(tmp_path, interpreter)


def _fake_distribution(site: Path, name: str, files: list[str]) -> None:
    dist_info = site / f"{name}-1.0.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n", encoding="utf-8")
    for relative in files:
        (site / relative).parent.mkdir(parents=True, exist_ok=True)
        (site / relative).write_text("x", encoding="utf-8")
    records = [*files, f"{dist_info.name}/METADATA", f"{dist_info.name}/RECORD"]
    (dist_info / "RECORD").write_text("".join(f"{r},,\n" for r in records), encoding="utf-8")


def test_runtime_provided_distributions_are_removed_by_their_records(tmp_path: Path) -> None:
    _fake_distribution(tmp_path, "botocore", ["botocore/__init__.py", "botocore/data/s3.json"])
    _fake_distribution(tmp_path, "numpy", ["numpy/__init__.py"])
    assert remove_distributions(tmp_path, ["botocore"]) == ["botocore"]
    assert not (tmp_path / "botocore").exists()
    assert (tmp_path / "numpy" / "__init__.py").is_file()
    assert [p.name for p in tmp_path.glob("*.dist-info")] == ["numpy-1.0.dist-info"]


def test_prune_drops_test_suites_offline_tools_and_bytecode(tmp_path: Path) -> None:
    for relative in (
        "numpy/_core/tests/test_a.py",
        "numpy/tests/test_b.py",
        "numpy/_core/multiarray.py",
        "onnxruntime/transformers/x.py",
        "onnxruntime/capi/lib.so",
        "PIL/__pycache__/Image.cpython-312.pyc",
        "PIL/Image.py",
    ):
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).write_text("x", encoding="utf-8")
    prune(tmp_path)
    kept = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert kept == ["PIL/Image.py", "numpy/_core/multiarray.py", "onnxruntime/capi/lib.so"]


def test_zips_are_deterministic(tmp_path: Path) -> None:
    source = tmp_path / "src"
    (source / "a").mkdir(parents=True)
    (source / "a" / "b.py").write_text("print(1)\n", encoding="utf-8")
    (source / "c.txt").write_text("c", encoding="utf-8")
    first, second = tmp_path / "1.zip", tmp_path / "2.zip"
    assert write_zip(source, first) == (2, 10)
    write_zip(source, second)
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as archive:
        assert archive.namelist() == ["a/b.py", "c.txt"]


def test_limits_are_lambdas() -> None:
    ok = Package("f", Path("f.zip"), MAX_ZIPPED_BYTES, MAX_UNZIPPED_BYTES, (), 1)
    assert ok.problems() == []
    too_big = Package("f", Path("f.zip"), MAX_ZIPPED_BYTES + 1, MAX_UNZIPPED_BYTES + 1, (), 1)
    assert len(too_big.problems()) == 2
