"""Script-mode entry point: what the AWS PyTorch training container runs for ``bayroute train --on sagemaker``.

``training.sagemaker`` puts this file at the root of ``sourcedir.tar.gz`` (next to the ``training`` and
``bayroute`` packages, which therefore import) and names it in ``sagemaker_program``. The container passes the
job's hyperparameters as ``--epochs 30 --seed 0 ...`` and the SageMaker environment variables below; the default
recipe runs on the train channel and ``model.onnx`` + ``MODEL_CARD.md`` land in the model directory.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from training.pipeline import train_and_export
from training.train import EpochStats, TrainConfig

ENTRY_NAME = "sagemaker_entry.py"  # its name inside the source tarball, recorded in the model's training command


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=None, help="epochs (default: the recipe's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument(
        "--data", type=Path, default=Path(os.environ.get("SM_CHANNEL_TRAIN", "/opt/ml/input/data/train"))
    )
    parser.add_argument("--model-dir", type=Path, default=Path(os.environ.get("SM_MODEL_DIR", "/opt/ml/model")))
    return parser.parse_args(argv)


def _log_epoch(stats: EpochStats) -> None:
    # The job's metric definitions (training.sagemaker.SCRIPT_METRICS) parse these key=value pairs.
    print(
        f"epoch {stats.epoch}/{stats.epochs} train_loss={stats.train_loss:.4f} "
        f"val_accuracy={stats.val_accuracy:.4f} elapsed_s={stats.elapsed_s:.1f}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = TrainConfig(seed=args.seed) if args.epochs is None else TrainConfig(seed=args.seed, epochs=args.epochs)
    job = os.environ.get("TRAINING_JOB_NAME", "local")
    command = f"SageMaker job {job}: {ENTRY_NAME} {shlex.join(sys.argv[1:] if argv is None else list(argv))}"
    result = train_and_export(
        args.data, args.model_dir, config, command=command, device=args.device, on_epoch=_log_epoch
    )
    metrics = result.run.val_metrics
    print(
        f"final val_accuracy={metrics['accuracy']:.4f} val_ece={metrics['ece']:.4f} val_nll={metrics['nll']:.4f} "
        f"device={result.run.device} total_s={result.total_time_s:.1f} model={result.model_path}",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
