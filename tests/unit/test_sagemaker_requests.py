from __future__ import annotations

import datetime as dt
import io
import json
import tarfile
from pathlib import Path

import pytest

from training.sagemaker import (
    JobPlacement,
    SageMakerRequestError,
    builtin_hyperparameters,
    builtin_request,
    container_requirements,
    default_job_name,
    image_classification_image,
    is_gpu_instance,
    pytorch_training_image,
    script_mode_request,
    source_tarball,
)

ROLE = "arn:aws:iam::123456789012:role/bayroute-training"


def _placement(**overrides: object) -> JobPlacement:
    fields: dict[str, object] = {
        "job_name": "bayroute-script-1",
        "role_arn": ROLE,
        "region": "eu-west-1",
        "bucket": "b",
        "prefix": "bayroute/training",
        "instance_type": "ml.m5.xlarge",
    }
    fields.update(overrides)
    return JobPlacement(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("instance", "gpu"),
    [("ml.m5.xlarge", False), ("ml.c5.2xlarge", False), ("ml.g4dn.xlarge", True), ("ml.p3.2xlarge", True)],
)
def test_gpu_instances(instance: str, gpu: bool) -> None:
    assert is_gpu_instance(instance) is gpu


def test_pytorch_image_per_region_and_processor() -> None:
    assert pytorch_training_image("eu-west-1", "ml.m5.xlarge") == (
        "763104351884.dkr.ecr.eu-west-1.amazonaws.com/pytorch-training:2.5-cpu-py311"
    )
    assert pytorch_training_image("us-east-1", "ml.g5.xlarge", "2.6", "py312") == (
        "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.6-gpu-py312"
    )
    assert pytorch_training_image("af-south-1", "ml.m5.xlarge").startswith("626614931356.dkr.ecr.af-south-1.")
    assert ".amazonaws.com.cn/" in pytorch_training_image("cn-north-1", "ml.m5.xlarge")


def test_image_classification_image() -> None:
    assert (
        image_classification_image("us-west-2") == "433757028032.dkr.ecr.us-west-2.amazonaws.com/image-classification:1"
    )
    with pytest.raises(SageMakerRequestError, match="no known image-classification image in mars-1"):
        image_classification_image("mars-1")


def test_placement_validates_name_and_role() -> None:
    with pytest.raises(SageMakerRequestError, match="job name"):
        _placement(job_name="has_underscore")
    with pytest.raises(SageMakerRequestError, match="not an IAM role ARN"):
        _placement(role_arn="bayroute-training")
    placement = _placement(prefix="/p/q/")
    assert placement.key("data", "train") == "p/q/bayroute-script-1/data/train"
    assert placement.output_uri == "s3://b/p/q/output"


def test_default_job_name_is_valid() -> None:
    name = default_job_name("builtin-image-classification", dt.datetime(2025, 1, 2, 3, 4, 5, tzinfo=dt.UTC))
    assert name == "bayroute-builtin-ic-20250102-030405"
    _placement(job_name=name)


def test_script_mode_request() -> None:
    request = script_mode_request(
        _placement(),
        image_uri="img",
        source_uri="s3://b/src.tar.gz",
        train_uri="s3://b/train",
        hyperparameters={"epochs": 30, "device": "auto"},
    )
    hp = request["HyperParameters"]
    assert json.loads(hp["sagemaker_program"]) == "sagemaker_entry.py"
    assert json.loads(hp["sagemaker_submit_directory"]) == "s3://b/src.tar.gz"
    assert json.loads(hp["sagemaker_region"]) == "eu-west-1"
    assert (hp["epochs"], hp["device"]) == ("30", '"auto"')  # JSON-encoded, as the training toolkit expects
    assert all(isinstance(value, str) for value in hp.values())
    assert request["InputDataConfig"][0]["ChannelName"] == "train"
    assert request["InputDataConfig"][0]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/train"
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://b/bayroute/training/output"}
    assert request["ResourceConfig"] == {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 30}
    assert {m["Name"] for m in request["AlgorithmSpecification"]["MetricDefinitions"]} >= {"validation:accuracy"}


def test_builtin_request_and_hyperparameters() -> None:
    params = builtin_hyperparameters(800, (3, 32, 32), epochs=12, learning_rate=0.01)
    assert params == {
        "num_classes": "2",
        "num_training_samples": "800",
        "image_shape": "3,32,32",
        "epochs": "12",
        "learning_rate": "0.01",
        "mini_batch_size": "32",
        "num_layers": "18",
        "use_pretrained_model": "1",
        "augmentation_type": "crop_color_transform",
    }
    uris = {name: f"s3://b/{name}" for name in ("train", "validation", "train_lst", "validation_lst")}
    request = builtin_request(_placement(), image_uri="ic", channel_uris=uris, hyperparameters=params)
    channels = {c["ChannelName"]: c for c in request["InputDataConfig"]}
    assert set(channels) == set(uris)
    assert {c["ContentType"] for c in channels.values()} == {"application/x-image"}
    assert channels["train_lst"]["DataSource"]["S3DataSource"]["S3Uri"] == "s3://b/train_lst"
    assert "MetricDefinitions" not in request["AlgorithmSpecification"]  # built-in algorithms define their own
    with pytest.raises(SageMakerRequestError, match="needs channels"):
        builtin_request(_placement(), image_uri="ic", channel_uris={"train": "s3://b/t"}, hyperparameters=params)
    with pytest.raises(SageMakerRequestError, match="exceeds the 10 samples"):
        builtin_hyperparameters(10, (3, 32, 32))


def test_container_requirements_pin_our_versions(tmp_path: Path) -> None:
    constraints = tmp_path / "constraints.txt"
    constraints.write_text("# comment\nonnx==1.2.3\nonnxruntime==4.5\ntorch==9.9\nonnxscript==0.1\n")
    assert container_requirements(constraints) == "onnx==1.2.3\nonnxscript==0.1\nonnxruntime==4.5\n"
    constraints.write_text("onnx==1.2.3\n")
    with pytest.raises(SageMakerRequestError, match="pins no version"):
        container_requirements(constraints)


def test_source_tarball_holds_packages_and_entry_at_root() -> None:
    with tarfile.open(fileobj=io.BytesIO(source_tarball()), mode="r:gz") as archive:
        names = set(archive.getnames())
        requirements = archive.extractfile("requirements.txt")
        assert requirements is not None
        pins = requirements.read().decode().split()
    assert {"sagemaker_entry.py", "training/train.py", "training/pipeline.py", "bayroute/model/metrics.py"} <= names
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert [p.split("==")[0] for p in pins] == ["onnx", "onnxscript", "onnxruntime"]
