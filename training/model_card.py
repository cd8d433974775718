"""MODEL_CARD.md written next to each trained model, from the metadata stored in the ONNX file."""

from __future__ import annotations

import json
from typing import Any


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}%"


def render_model_card(metadata: dict[str, str], *, model_bytes: int, total_time_s: float) -> str:
    training: dict[str, Any] = json.loads(metadata["training"])
    validation: dict[str, Any] = training["validation"]
    config: dict[str, Any] = training["config"]
    labels: list[str] = json.loads(metadata["labels"])
    height, width = json.loads(metadata["input_size"])
    operating_point = validation["precision_0.99"]
    time_to_target = next(v for k, v in training.items() if k.startswith("time_to_val_accuracy"))
    threshold_rows = "\n".join(
        f"| {t} | {_percent(row['automation_rate'])} | {_percent(row['precision'])} |"
        for t, row in validation["thresholds"].items()
    )
    recipe = ", ".join(f"{k}={v}" for k, v in config.items())
    teachers = ""
    if config["teacher_width"] > 0:
        accuracies = ", ".join(_percent(a) for a in training["teacher_val_accuracy"])
        teachers = (
            f"\n- Distillation: {config['teachers']} teacher(s) of width {config['teacher_width']} trained first "
            f"({config['teacher_epochs']} epochs, validation accuracy {accuracies}); the served width-{config['width']}"
            " network learned their flip-averaged probabilities on the same augmented batches."
        )
    members = config.get("ensemble", 1)  # cards of models trained before the option existed lack it
    ensemble = ""
    if members > 1:
        accuracies = ", ".join(_percent(a) for a in training["member_val_accuracy"])
        ensemble = (
            f"\n- Seed ensemble: {members} members (seeds {training['seed']} to {training['seed'] + members - 1}),"
            f" each the recipe above (validation accuracy {accuracies}); the graph runs them as one network with"
            " grouped convolutions, averages their logits, then applies the one temperature fitted on those"
            " averaged validation logits."
        )
    threshold_99 = operating_point["threshold"]
    tta = "no test-time augmentation, " if metadata["tta"] == "none" else f"{metadata['tta']} test-time augmentation, "
    reached = (
        "Validation accuracy never reached 90%."
        if time_to_target is None
        else f"Validation accuracy first reached 90% after {time_to_target:.0f} s."
    )
    return f"""# Model card: {metadata["model_version"]}

Classifies a {height}x{width} RGB photo of a delivery vehicle as one of {", ".join(f"`{c}`" for c in labels)}.

## Data
- `{training["data"]}`: the CIFAR-100 train images of fine labels 8 (bicycle) and 48 (motorcycle),
  {training["n_train"] + training["n_val"]} images, read from the class folders (the class is the folder).
- Split: `training.split.stratified_split` (per class, seeded, 20%): {training["n_train"]} for training,
  {training["n_val"]} for validation. The validation images also fit the temperature and the drift baseline.
- The 200 CIFAR-100 test images of these classes were never seen; held-out numbers are measured separately.

## How it was made
```
{training["command"]}
```
- Seed {training["seed"]}, {training["epochs"]} epochs, device `{training["device"]}`.
- Training took {training["wall_time_s"]:.0f} s wall time ({training["cpu_time_s"]:.0f} CPU-seconds,
  {training["threads"]} torch threads, system load {training["load_average_1min"]} at the end); the whole command
  (data, training, export, checks) {total_time_s:.0f} s. {reached}
- Recipe (`training.train.TrainConfig`): {recipe}.{teachers}{ensemble}
- Served graph: uint8 NHWC in; normalisation, {tta}temperature
  {float(metadata["temperature"]):.3f} and softmax inside; ONNX opset 18, {model_bytes / 1e6:.2f} MB, single file.
  ONNX Runtime was checked against PyTorch at export (max abs difference < 1e-4).

## Validation metrics ({validation["n"]} images, calibrated probabilities)
- accuracy {_percent(validation["accuracy"])}, NLL {validation["nll"]:.4f}, ECE (15 bins) {_percent(validation["ece"])}
- per-class recall: {", ".join(f"{c} {_percent(r)}" for c, r in validation["per_class_recall"].items())}
- lowest threshold with 99% precision: {"none" if threshold_99 is None else f"{threshold_99:.4f}"},
  routing {_percent(operating_point["automation_rate"])} of images automatically

| threshold | automation rate | precision |
|---|---|---|
{threshold_rows}

## Intended use
Routing delivery drivers to a bicycle or motorcycle loading bay from one photo, with a confidence threshold:
images below it go to a person. Probabilities are temperature-calibrated, so the threshold means what it says
on data like the validation split.

## Limitations
- Trained on 800 low-resolution (32x32) CIFAR images; real camera photos are larger and are downscaled by the
  caller, and their distribution differs: watch the drift baseline (`baseline` metadata) before trusting the
  thresholds on new traffic.
- Knows two classes only: anything else (cars, people, empty frames) still gets one of the two labels, often
  with high confidence.
- Validation has 200 images, so each metric above carries a few points of sampling error, and the temperature
  was fitted on the same images it is reported on.
"""
