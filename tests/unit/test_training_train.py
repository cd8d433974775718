"""The training loop on a synthetic red-vs-blue task: it learns, it is reproducible, distillation and ensembles run."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from training.folder import FolderDataset  # noqa: E402
from training.model import LogitMean  # noqa: E402
from training.train import TrainConfig, resolve_device, train  # noqa: E402


def _red_blue(n_per_class: int = 40) -> FolderDataset:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 120, (2 * n_per_class, 32, 32, 3), dtype=np.uint8)
    images[:n_per_class, :, :, 0] += 120  # class 0 is reddish
    images[n_per_class:, :, :, 2] += 120  # class 1 is bluish
    labels = np.array([0] * n_per_class + [1] * n_per_class, dtype=np.int64)
    paths = [Path(f"{i}.png") for i in range(len(labels))]
    return FolderDataset(images=images, labels=labels, classes=["bicycle", "motorcycle"], paths=paths)


FAST = TrainConfig(
    epochs=4, width=4, batch_size=16, peak_lr=0.05, cutout_size=0, cutmix_alpha=0.0, ema_decay=0.0, seed=1, ensemble=1
)


@pytest.mark.slow
def test_training_learns_an_easy_task_reproducibly() -> None:
    run = train(_red_blue(), FAST, device="cpu")
    assert run.val_metrics["accuracy"] >= 0.9
    assert run.val_indices.size == 16 and run.train_indices.size == 64
    assert np.allclose(run.val_probabilities.sum(axis=1), 1.0, atol=1e-6)
    assert len(run.history) == 4 and run.history[-1].completed == run.history[-1].total == 4
    assert run.temperature > 0
    assert not run.model.training

    again = train(_red_blue(), FAST, device="cpu")
    for a, b in zip(run.model.state_dict().values(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    assert np.array_equal(run.val_probabilities, again.val_probabilities)


@pytest.mark.slow
def test_distillation_trains_teachers_first_then_the_student() -> None:
    config = TrainConfig(
        epochs=2, width=4, batch_size=16, peak_lr=0.05, teacher_width=4, teacher_epochs=1, teachers=2,
        cutmix_alpha=1.0, mixup_alpha=0.4, mix_probability=1.0, ema_decay=0.9, ensemble=1,
    )  # fmt: skip
    seen: list[str] = []
    run = train(_red_blue(), config, device="cpu", on_epoch=lambda stats: seen.append(stats.phase))
    assert seen == ["teacher 1", "teacher 2", "student", "student"]
    assert len(run.teacher_val_accuracy) == 2
    assert run.summary()["config"]["teacher_width"] == 4


@pytest.mark.slow
def test_seed_ensemble_serves_the_logit_mean_of_the_single_seed_runs() -> None:
    tiny = TrainConfig(
        epochs=1, width=4, batch_size=16, cutout_size=0, cutmix_alpha=0.0, ema_decay=0.0, seed=5, ensemble=1
    )
    seen: list[str] = []
    run = train(_red_blue(), replace(tiny, ensemble=2), device="cpu", on_epoch=lambda stats: seen.append(stats.phase))
    assert seen == ["member 1 student", "member 2 student"]
    assert run.history[-1].completed == run.history[-1].total == 2
    assert isinstance(run.model, LogitMean) and len(run.model.members) == 2
    assert run.summary()["ensemble"] == 2 and len(run.summary()["member_val_accuracy"]) == 2

    # Member k is exactly the single-model run of seed + k, and the ensemble's output is their mean logits.
    singles = [train(_red_blue(), replace(tiny, seed=seed), device="cpu").model for seed in (5, 6)]
    for member, single in zip(run.model.members, singles, strict=True):
        for a, b in zip(member.state_dict().values(), single.state_dict().values(), strict=True):
            assert torch.equal(a, b)
    images = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = (singles[0](images) + singles[1](images)) / 2
        assert torch.allclose(run.model(images), expected, atol=1e-6)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"epochs": 0}, "epochs"),
        ({"teacher_width": 8, "teacher_epochs": 0}, "teacher"),
        ({"distill_weight": 1.5}, "distill_weight"),
        ({"ensemble": 0}, "ensemble"),
    ],
)
def test_bad_configs_are_rejected(changes: dict[str, int | float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes)  # type: ignore[arg-type]


def test_cuda_is_never_a_silent_fallback() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="CUDA"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"
