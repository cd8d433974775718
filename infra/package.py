"""``make package``: one deployment zip per Lambda function, ``build/lambda/<function>.zip``.

Each zip holds what its handler imports and nothing else (``infra.codegraph.import_closure``):
- the first-party modules it reaches (``services/<function>/``, the ``bayroute`` modules), at their paths;
- ``infra/settings.json`` (``bayroute.config`` reads it beside the package) and, when the code loads the
  ONNX model (``bayroute.model.onnx_model``), the default model file;
- the third-party distributions of the packages it imports, for the Lambda runtime (python3.12, arm64 by
  default), installed by pip from wheels only (``--platform manylinux_2_28_aarch64 ... --only-binary=:all:``)
  at the versions ``constraints.txt`` pins. Wheels are cached in ``.bayroute-cache/wheels/<arch>``: pip is
  asked offline first, and downloads only what the cache lacks;
- bytecode for every Python file in it, ``__pycache__/<module>.cpython-312.pyc``, compiled by a CPython 3.12
  (``runtime_python()``: pyc files are specific to the interpreter's minor version). Lambda's ``/var/task`` is
  read-only, so the runtime cannot cache bytecode there: without these files every cold start compiles every
  module it imports from source (infer's imports take about twice as long). They are hash-based and
  unchecked, as the zip's fixed timestamps would make timestamp-based ones look stale, and name their sources
  relative to the package root, so the same input still gives the same zip. ``--no-bytecode``
  (``bytecode=False``) packages without them where no CPython 3.12 is at hand.

Left out on purpose: the AWS SDK (boto3, botocore and their dependencies), which the Lambda Python runtime
provides; any bytecode pip or a wheel brings (it is for the build machine's Python, not the runtime's);
numpy's test suites and ONNX Runtime's offline tools (``transformers``, ``quantization``, ``tools``,
``datasets``: ``import onnxruntime`` and an inference session load only ``onnxruntime.capi``).

A zip over Lambda's limits fails the build: 50 MB zipped (direct upload) or 250 MB unzipped.
Zips are deterministic (sorted entries, fixed timestamps), so an unchanged function is not uploaded again.
"""

from __future__ import annotations

import argparse
import fnmatch
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from importlib.metadata import packages_distributions
from pathlib import Path

from bayroute.config import load_settings
from infra.codegraph import REPO_ROOT, handler_module, import_closure, module_path

BUILD_DIR = REPO_ROOT / "build" / "lambda"
CACHE_DIR = REPO_ROOT / ".bayroute-cache" / "wheels"
CONSTRAINTS = REPO_ROOT / "constraints.txt"
SETTINGS_RELATIVE = Path("infra") / "settings.json"
FUNCTIONS = ("ingest", "serialize", "infer", "threshold", "monitor", "replay")
PYTHON_VERSION = "3.12"
RUNTIME_PYTHON_VARIABLE = "BAYROUTE_PYTHON312"
# Lambda's python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux_2_28 wheels and older fit.
PLATFORMS = {
    "arm64": ("manylinux_2_28_aarch64", "manylinux2014_aarch64"),
    "x86_64": ("manylinux_2_28_x86_64", "manylinux2014_x86_64"),
}
MAX_ZIPPED_BYTES = 50 * 1024 * 1024
MAX_UNZIPPED_BYTES = 250 * 1024 * 1024
# The Lambda Python runtime ships the AWS SDK; vendoring it would add ~17 MB zipped to every function.
RUNTIME_PROVIDED = frozenset({"boto3", "botocore", "s3transfer", "jmespath", "python-dateutil", "six", "urllib3"})
PRUNED = (
    "*/__pycache__",
    "numpy/tests",
    "numpy/*/tests",
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
)
ZIP_TIME = (2020, 1, 1, 0, 0, 0)
MODEL_MODULE = "bayroute.model.onnx_model"
PARSER_MODULE = "aws_lambda_powertools.utilities.parser"


class PackageError(RuntimeError):
    """A function cannot be packaged, or its package breaks Lambda's limits."""


@dataclass(frozen=True)
class Package:
    function: str
    path: Path
    zipped_bytes: int
    unzipped_bytes: int
    requirements: tuple[str, ...]
    files: int

    def problems(self) -> list[str]:
        found = []
        if self.zipped_bytes > MAX_ZIPPED_BYTES:
            found.append(f"{self.zipped_bytes / 2**20:.1f} MB zipped > {MAX_ZIPPED_BYTES / 2**20:.0f} MB")
        if self.unzipped_bytes > MAX_UNZIPPED_BYTES:
            found.append(f"{self.unzipped_bytes / 2**20:.1f} MB unzipped > {MAX_UNZIPPED_BYTES / 2**20:.0f} MB")
        return found


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@cache
def _owners() -> Mapping[str, list[str]]:
    """Import name -> the distributions providing it, from this environment's installed metadata."""
    return packages_distributions()


def _is_runtime_python(candidate: str) -> bool:
    probe_code = "import sys; print(sys.implementation.name, '%d.%d' % sys.version_info[:2])"
    try:
        probe = subprocess.run(
            [candidate, "-I", "-c", probe_code], capture_output=True, text=True, check=False, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0 and probe.stdout.split() == ["cpython", PYTHON_VERSION]


def runtime_python(environ: Mapping[str, str] = os.environ) -> str | None:
    """A CPython of the Lambda runtime's version (``PYTHON_VERSION``), to compile its bytecode and run its code.

    ``BAYROUTE_PYTHON312`` names one explicitly, and must then be one; otherwise ``python3.12`` on ``PATH``,
    then pyenv's 3.12 versions. None when there is none.
    """
    explicit = environ.get(RUNTIME_PYTHON_VARIABLE)
    if explicit:
        if not _is_runtime_python(explicit):
            raise PackageError(
                f"{RUNTIME_PYTHON_VARIABLE}={explicit} is not a CPython {PYTHON_VERSION} interpreter: point it at "
                "one, or unset it to look on PATH and in pyenv"
            )
        return explicit
    pyenv_root = Path(environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates = [shutil.which(f"python{PYTHON_VERSION}", path=environ.get("PATH"))]
    candidates += sorted(
        glob.glob(str(pyenv_root / "versions" / f"{PYTHON_VERSION}*" / "bin" / f"python{PYTHON_VERSION}"))
    )
    return next((c for c in candidates if c and _is_runtime_python(c)), None)


def _no_runtime_python_error() -> PackageError:
    return PackageError(
        f"no CPython {PYTHON_VERSION} found to compile the package's bytecode (looked for ${RUNTIME_PYTHON_VARIABLE}, "
        f"python{PYTHON_VERSION} on PATH and pyenv's versions). Lambda's /var/task is read-only, so without "
        "bytecode in the zip every cold start compiles each imported module from source (infer's imports take "
        "about twice as long). "
        f"Install Python {PYTHON_VERSION} or set {RUNTIME_PYTHON_VARIABLE} to one; or package without bytecode: "
        "`python -m infra.package --no-bytecode` (package(..., bytecode=False))."
    )


def requirements(function: str) -> tuple[str, ...]:
    """The distributions to install for ``function``: those of the third-party packages its code imports."""
    closure = import_closure(handler_module(function))
    owners = _owners()
    found: set[str] = set()
    for top in sorted(closure.third_party):
        distributions = owners.get(top)
        if not distributions:
            raise PackageError(f"{function} imports {top!r}, which no installed distribution provides")
        for distribution in distributions:
            name = _canonical(distribution)
            if name in RUNTIME_PROVIDED:
                continue
            if name == "aws-lambda-powertools":
                # Every handler traces (aws-xray-sdk); the parser extra (pydantic) only when the code parses.
                uses_parser = any(module.startswith(PARSER_MODULE) for module in closure.external_modules)
                name += "[parser,tracer]" if uses_parser else "[tracer]"
            found.add(name)
    return tuple(sorted(found))


def first_party_files(function: str) -> list[Path]:
    """Source files and data the function needs, relative to the repository root."""
    closure = import_closure(handler_module(function))
    files = {SETTINGS_RELATIVE}
    for module in closure.modules:
        path = module_path(module)
        if path is not None:
            files.add(path.relative_to(REPO_ROOT))
    if MODEL_MODULE in closure.modules:
        model = load_settings(env={}).model_path
        if not model.is_file():
            raise PackageError(f"{function} loads the ONNX model, but {model} is missing")
        files.add(model.relative_to(REPO_ROOT))
    return sorted(files)


def _pip(arguments: Sequence[str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pip", "--disable-pip-version-check", *arguments]
    return subprocess.run(command, capture_output=True, text=True, check=False)


def _platform_arguments(arch: str) -> list[str]:
    arguments = []
    for platform in PLATFORMS[arch]:
        arguments += ["--platform", platform]
    return [
        *arguments,
        "--python-version",
        PYTHON_VERSION,
        "--implementation",
        "cp",
        "--only-binary=:all:",
        "--constraint",
        str(CONSTRAINTS),
    ]


def install(requirements: Sequence[str], target: Path, arch: str, cache: Path = CACHE_DIR) -> None:
    """pip-install ``requirements`` for the Lambda runtime into ``target``, from the wheel cache if it can."""
    if not requirements:
        return
    wheels = cache / arch
    wheels.mkdir(parents=True, exist_ok=True)
    common = [*_platform_arguments(arch), *requirements]
    offline = ["install", "--no-compile", "--target", str(target), "--no-index", "--find-links", str(wheels)]
    if _pip([*offline, *common]).returncode == 0:
        return
    shutil.rmtree(target, ignore_errors=True)
    download = _pip(["download", "--dest", str(wheels), *common])
    if download.returncode != 0:
        raise PackageError(f"pip could not download {', '.join(requirements)} for {arch}:\n{download.stderr}")
    retry = _pip([*offline, *common])
    if retry.returncode != 0:
        raise PackageError(f"pip could not install {', '.join(requirements)} for {arch}:\n{retry.stderr}")


def remove_distributions(site: Path, names: Iterable[str]) -> list[str]:
    """Delete the files of installed distributions ``names`` (by their RECORD); the names removed."""
    wanted = {_canonical(name) for name in names}
    removed = []
    for dist_info in sorted(site.glob("*.dist-info")):
        metadata = (dist_info / "METADATA").read_text(encoding="utf-8", errors="replace")
        match = re.search(r"^Name: (.+)$", metadata, re.MULTILINE)
        if match is None or _canonical(match.group(1).strip()) not in wanted:
            continue
        for line in (dist_info / "RECORD").read_text(encoding="utf-8").splitlines():
            relative = line.split(",", 1)[0]
            path = (site / relative).resolve()
            if path.is_file() and path.is_relative_to(site.resolve()):
                path.unlink()
        shutil.rmtree(dist_info, ignore_errors=True)
        removed.append(match.group(1).strip())
    for directory in sorted((p for p in site.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        if not any(directory.iterdir()):
            directory.rmdir()
    return removed


def prune(site: Path, patterns: Sequence[str] = PRUNED) -> None:
    for directory in sorted(p for p in site.rglob("*") if p.is_dir()):
        relative = directory.relative_to(site).as_posix()
        if directory.exists() and any(fnmatch.fnmatch(relative, pattern) for pattern in patterns):
            shutil.rmtree(directory)
    for compiled in site.rglob("*.pyc"):
        compiled.unlink()


def compile_bytecode(root: Path, interpreter: str) -> None:
    """Compile every Python file under ``root`` with ``interpreter`` (the runtime's CPython), beside its source.

    Unchecked-hash pycs: the runtime uses them whatever the files' timestamps (the zip's are all 2020).
    ``-d ""``: each pyc names its source relative to ``root``, not this machine's staging path.
    """
    # -I: none of this environment's PYTHON* settings (PYTHONPYCACHEPREFIX would write the pycs elsewhere,
    # PYTHONOPTIMIZE would make .opt-1 ones the runtime never reads) and nothing from the working directory.
    command = [
        interpreter,
        "-I",
        "-m",
        "compileall",
        "-q",
        "--invalidation-mode",
        "unchecked-hash",
        "-d",
        "",
        str(root),
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackageError(
            f"{interpreter} could not compile the package in {root}:\n{result.stdout[-3000:]}{result.stderr}"
        )


def write_zip(source: Path, destination: Path) -> tuple[int, int]:
    """Zip ``source`` deterministically; (files, unzipped bytes)."""
    files = sorted(p for p in source.rglob("*") if p.is_file())
    total = 0
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=6) as archive:
        for path in files:
            info = zipfile.ZipInfo(path.relative_to(source).as_posix(), date_time=ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            mode = 0o755 if os.access(path, os.X_OK) else 0o644
            info.external_attr = (0o100000 | mode) << 16
            data = path.read_bytes()
            total += len(data)
            archive.writestr(info, data, compresslevel=6)
    return len(files), total


def package(
    function: str,
    *,
    arch: str = "arm64",
    out: Path = BUILD_DIR,
    cache: Path = CACHE_DIR,
    archive: bool = True,
    bytecode: bool = True,
) -> Package:
    """Build ``out/<function>.zip`` from the staging folder ``out/<function>/`` (kept for inspection).

    ``archive=False`` stops at the staging folder (the package's sizes are then those of the folder, and
    ``zipped_bytes`` is 0): for running the packaged code, not for deploying it. ``bytecode=False`` leaves
    out the runtime's bytecode (slower cold starts), and with it the need for a CPython 3.12 here.
    """
    if module_path(handler_module(function)) is None:
        raise PackageError(f"services/{function}/handler.py does not exist")
    if arch not in PLATFORMS:
        raise PackageError(f"architecture must be one of {sorted(PLATFORMS)}, got {arch!r}")
    interpreter = runtime_python() if bytecode else None
    if bytecode and interpreter is None:
        raise _no_runtime_python_error()
    staging = out / function
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    needed = requirements(function)
    install(needed, staging, arch, cache)
    remove_distributions(staging, RUNTIME_PROVIDED)
    prune(staging)
    for relative in first_party_files(function):
        target = staging / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(REPO_ROOT / relative, target)
    if interpreter is not None:
        compile_bytecode(staging, interpreter)
    if not archive:
        contents = [p for p in staging.rglob("*") if p.is_file()]
        return Package(function, staging, 0, sum(p.stat().st_size for p in contents), needed, len(contents))
    zip_path = out / f"{function}.zip"
    files, unzipped = write_zip(staging, zip_path)
    return Package(
        function=function,
        path=zip_path,
        zipped_bytes=zip_path.stat().st_size,
        unzipped_bytes=unzipped,
        requirements=needed,
        files=files,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Build one Lambda deployment zip per function.")
    parser.add_argument("functions", nargs="*", help="functions to package (default: every written handler)")
    parser.add_argument("--arch", choices=sorted(PLATFORMS), default="arm64")
    parser.add_argument("--out", type=Path, default=BUILD_DIR)
    parser.add_argument("--json", action="store_true", help="print the sizes as JSON")
    parser.add_argument(
        "--no-bytecode",
        dest="bytecode",
        action="store_false",
        help=f"leave out the runtime's bytecode: no CPython {PYTHON_VERSION} needed, slower cold starts",
    )
    args = parser.parse_args(argv)
    functions = args.functions or [name for name in FUNCTIONS if module_path(handler_module(name)) is not None]
    skipped = sorted(set(FUNCTIONS) - set(functions)) if not args.functions else []
    try:
        packages = [package(f, arch=args.arch, out=args.out, bytecode=args.bytecode) for f in functions]
    except PackageError as error:
        print(f"cannot package: {error}", file=sys.stderr)
        return 1
    failures = [f"{p.function}: {problem}" for p in packages for problem in p.problems()]
    if args.json:
        print(json.dumps([{**vars(p), "path": str(p.path)} for p in packages], indent=2))
    else:
        print(f"{'function':<10} {'zipped MB':>10} {'unzipped MB':>12} {'files':>6}  requirements")
        for p in packages:
            print(
                f"{p.function:<10} {p.zipped_bytes / 2**20:>10.1f} {p.unzipped_bytes / 2**20:>12.1f} "
                f"{p.files:>6}  {' '.join(p.requirements) or '-'}"
            )
        if skipped:
            print(f"not packaged (no handler yet): {', '.join(skipped)}")
    for failure in failures:
        print(f"over Lambda's limits: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
