"""`make package`, for real: pip installs the Lambda runtime's wheels (cached in .bayroute-cache/wheels).

Builds the smallest function and the infer function (ONNX Runtime, numpy, Pillow, the model: the one that
could break Lambda's limits) for arm64 and checks them; then proves the packaging complete by running the
same infer package built for x86_64 under a bare Python 3.12 (no site-packages; boto3 alone beside it, as
the Lambda runtime provides it), classifying an image with the packaged model.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from infra.package import CACHE_DIR, MAX_UNZIPPED_BYTES, MAX_ZIPPED_BYTES, install, package

pytestmark = pytest.mark.slow

ELF_MACHINE = {0xB7: "arm64", 0x3E: "x86_64"}


def elf_machine(data: bytes) -> str:
    assert data[:4] == b"\x7fELF", "not an ELF file"
    return ELF_MACHINE.get(int.from_bytes(data[18:20], "little"), "other")


def python312() -> str | None:
    """A CPython 3.12 interpreter, like the Lambda runtime's (BAYROUTE_PYTHON312 names one explicitly)."""
    candidates = [os.environ.get("BAYROUTE_PYTHON312"), shutil.which("python3.12")]
    candidates += sorted(glob.glob(str(Path.home() / ".pyenv" / "versions" / "3.12*" / "bin" / "python3.12")))
    for candidate in candidates:
        if not candidate:
            continue
        probe = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"], capture_output=True)
        if probe.returncode == 0 and probe.stdout.strip() == b"(3, 12)":
            return candidate
    return None


def test_arm64_packages_fit_lambda_and_hold_what_the_handler_needs(tmp_path: Path) -> None:
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
    with zipfile.ZipFile(infer.path) as archive:
        names = set(archive.namelist())
        assert {"services/infer/handler.py", "infra/settings.json", "models/default/model.onnx"} <= names
        assert not any(name.startswith(("boto3/", "botocore/")) or "__pycache__" in name for name in names)
        libraries = [name for name in names if name.startswith("onnxruntime/capi/") and ".so" in name]
        assert libraries
        assert {elf_machine(archive.read(name)[:20]) for name in libraries} == {"arm64"}
    with zipfile.ZipFile(threshold.path) as archive:
        assert not any(name.startswith(("onnxruntime/", "numpy/", "models/")) for name in archive.namelist())


def test_the_packaged_infer_function_classifies_on_python_312(tmp_path: Path) -> None:
    interpreter = python312()
    if interpreter is None:
        pytest.skip("no CPython 3.12 here (set BAYROUTE_PYTHON312) to run the packaged code like Lambda does")
    built = package("infer", arch="x86_64", out=tmp_path, archive=False)
    sdk = tmp_path / "runtime-sdk"
    install(["boto3"], sdk, "x86_64", CACHE_DIR)
    script = f"""
import io, json, sys
sys.path[:0] = [{str(built.path)!r}, {str(sdk)!r}]
import services.infer.handler
from PIL import Image
from bayroute.adapters.endpoint import endpoint_from_settings
from bayroute.config import load_settings
settings = load_settings()
image = io.BytesIO()
Image.new("RGB", (48, 40), (30, 90, 200)).save(image, "PNG")
answer = endpoint_from_settings(settings).invoke(image.getvalue(), "image/png")
print(json.dumps({{"labels": answer.labels, "probabilities": answer.probabilities, "model": str(settings.model_path)}}))
"""
    environment = {
        "PATH": os.environ.get("PATH", ""),
        "BAYROUTE_INFERENCE_BACKEND": "lambda",
        "POWERTOOLS_TRACE_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    # -S: no site-packages, so only the package and the runtime's SDK can satisfy an import.
    result = subprocess.run(
        [interpreter, "-S", "-c", script], capture_output=True, text=True, env=environment, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer["labels"] == ["bicycle", "motorcycle"]
    assert abs(sum(answer["probabilities"]) - 1.0) < 1e-3
    assert answer["model"].startswith(str(built.path))
