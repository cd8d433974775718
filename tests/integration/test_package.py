"""`make package`, for real: pip installs the Lambda runtime's wheels (cached in .bayroute-cache/wheels).

Builds the smallest function and the infer function (ONNX Runtime, numpy, Pillow, the model: the one that
could break Lambda's limits) for arm64 and checks them, bytecode included; then proves the packaging complete
by running the same infer zip built for x86_64, unpacked as Lambda unpacks it, under a bare Python 3.12 (no
site-packages; boto3 alone beside it, as the Lambda runtime provides it), classifying an image with the
packaged model without compiling any of the package's modules from source.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
import zipfile
from pathlib import Path, PurePosixPath

import pytest

from infra.package import CACHE_DIR, MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES, install, package, runtime_python

pytestmark = pytest.mark.slow

ELF_MACHINE = {0xB7: "arm64", 0x3E: "x86_64"}
# A pyc's flags word: bit 0 hash-based, bit 1 checked against the source (PEP 552). 1: unchecked hash.
UNCHECKED_HASH = 1


def elf_machine(data: bytes) -> str:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return ELF_MACHINE.get(int.from_bytes(data[18:20], "little"), "other")


@pytest.fixture(scope="module")
def interpreter() -> str:
    found = runtime_python()
    if found is None:
        pytest.skip("no CPython 3.12 here (set BAYROUTE_PYTHON312) to compile the package's bytecode with")
    return found


def cached_name(source: str) -> str:
    path = PurePosixPath(source)
    return str(path.parent / "__pycache__" / f"{path.stem}.cpython-312.pyc")


def test_arm64_packages_fit_lambda_and_hold_what_the_handler_needs(tmp_path: Path, interpreter: str) -> None:
    threshold = package("threshold", out=tmp_path)
    infer = package("infer", out=tmp_path)
    for built in (threshold, infer):
        mb = 2**20
        print(
            f"\n{built.function}: {built.zipped_bytes / mb:.1f} MB zipped, {built.unzipped_bytes / mb:.1f} MB unzipped"
        )
    for built in (threshold, infer):
        assert built.problems() == []
        assert built.zipped_bytes <= MAX_ZIPPED_BYTES and built.unzipped_bytes <= MAX_UNZIPPED_BYTES
    magic = subprocess.run(
        [interpreter, "-c", "import importlib.util, sys; sys.stdout.write(importlib.util.MAGIC_NUMBER.hex())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    with zipfile.ZipFile(infer.path) as archive:
        names = set(archive.namelist())
        assert {"services/infer/handler.py", "infra/settings.json", "models/default/model.onnx"} <= names
        assert not any(name.startswith(("boto3/", "botocore/")) for name in names)
        libraries = [name for name in names if name.startswith("onnxruntime/capi/") and ".so" in name]
        assert libraries
        assert {elf_machine(archive.read(name)[:20]) for name in libraries} == {"arm64"}
        # Every module, first- and third-party, has the runtime's bytecode; no other bytecode ships.
        sources = {name for name in names if name.endswith(".py")}
        compiled = {name for name in names if name.endswith(".pyc")}
        assert {"services/infer/handler.py", "bayroute/config.py", "numpy/__init__.py", "PIL/Image.py"} <= sources
        assert "onnxruntime/capi/onnxruntime_inference_collection.py" in sources
        assert compiled == {cached_name(source) for source in sources}
        for name in (cached_name("services/infer/handler.py"), cached_name("onnxruntime/__init__.py")):
            header = archive.read(name)[:8]
            assert header[:4].hex() == magic
            assert int.from_bytes(header[4:8], "little") == UNCHECKED_HASH
    with zipfile.ZipFile(threshold.path) as archive:
        assert not any(name.startswith(("onnxruntime/", "numpy/", "models/")) for name in archive.namelist())


def test_the_same_input_gives_the_same_zip_wherever_it_is_built(tmp_path: Path, interpreter: str) -> None:
    first = package("threshold", out=tmp_path / "first")
    second = package("threshold", out=tmp_path / "second")
    assert first.path.read_bytes() == second.path.read_bytes()
    # The bytecode names its sources relative to the package, not the staging folder it was compiled in.
    with zipfile.ZipFile(first.path) as archive:
        handler = archive.read(cached_name("services/threshold/handler.py"))
    assert b"services/threshold/handler.py" in handler
    assert str(tmp_path).encode() not in handler


def unpack_as_lambda_does(archive_path: Path, task: Path) -> None:
    """Extract the zip keeping its entries' timestamps, as /var/task keeps them."""
    with zipfile.ZipFile(archive_path) as archive:
        for info in archive.infolist():
            extracted = Path(archive.extract(info, task))
            stamp = time.mktime((*info.date_time, 0, 0, -1))
            os.utime(extracted, (stamp, stamp))


def test_the_packaged_infer_function_classifies_on_python_312_from_its_bytecode(
    tmp_path: Path, interpreter: str
) -> None:
    built = package("infer", arch="x86_64", out=tmp_path / "build")
    task = tmp_path / "task"
    unpack_as_lambda_does(built.path, task)
    sdk = tmp_path / "runtime-sdk"
    install(["boto3"], sdk, "x86_64", CACHE_DIR)
    script = f"""
import importlib.machinery, io, json, sys

# Every module compiled from source goes through this method; one read from its bytecode does not.
compiled_from_source = []
compile_source = importlib.machinery.SourceFileLoader.source_to_code
def counting(self, data, path, *, _optimize=-1):
    compiled_from_source.append(path)
    return compile_source(self, data, path, _optimize=_optimize)
importlib.machinery.SourceFileLoader.source_to_code = counting

task = {str(task)!r}
sys.path[:0] = [task, {str(sdk)!r}]
import services.infer.handler
import onnxruntime
from PIL import Image
from bayroute.adapters.endpoint import endpoint_from_settings
from bayroute.config import load_settings
settings = load_settings()
image = io.BytesIO()
Image.new("RGB", (48, 40), (30, 90, 200)).save(image, "PNG")
answer = endpoint_from_settings(settings).invoke(image.getvalue(), "image/png")
from_task = sorted(
    name for name, module in list(sys.modules.items()) if (getattr(module, "__file__", None) or "").startswith(task)
)
print(json.dumps({{
    "labels": answer.labels,
    "probabilities": answer.probabilities,
    "model": str(settings.model_path),
    "modules_from_task": from_task,
    "compiled_from_source": [path for path in compiled_from_source if path.startswith(task)],
}}))
"""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "BAYROUTE_INFERENCE_BACKEND": "lambda",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # -S: no site-packages, so only the package and the runtime's SDK can satisfy an import.
    # -B: like /var/task, nothing can be written: bytecode is either in the package or compiled every time.
    result = subprocess.run(
        [interpreter, "-S", "-B", "-c", script],
        capture_output=True,
        text=True,
        env=environment,
        cwd=tmp_path,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["labels"] == ["bicycle", "motorcycle"]
    assert abs(sum(answer["probabilities"]) - 1.0) < 1e-3
    assert answer["model"].startswith(str(task))
    assert {"services.infer.handler", "bayroute.config", "numpy", "onnxruntime", "PIL.Image"} <= set(
        answer["modules_from_task"]
    )
    assert answer["compiled_from_source"] == []
