"""Training-job submission against moto: the requests SageMaker receives and the objects S3 holds.

moto records the job (and reports it Completed at once); nothing here runs or claims a training run.
"""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws
from PIL import Image
from typer.main import Typer
from typer.testing import CliRunner

from bayroute.commands.cloud_train import cloud_train_command
from training.lst import parse_lst
from training.sagemaker import JobPlacement, submit_builtin, submit_script_mode

REGION = "eu-west-1"
BUCKET = "bayroute-training-test"

app = Typer()
app.command()(cloud_train_command)


@pytest.fixture
def aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Fake credentials, a bucket and a role; yields the role ARN."""
    for name, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": REGION,
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        boto3.client("s3", region_name=REGION).create_bucket(
            Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": REGION}
        )
        role = boto3.client("iam", region_name=REGION).create_role(
            RoleName="bayroute-training",
            AssumeRolePolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": []}),
        )
        yield role["Role"]["Arn"]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    for class_index, name in enumerate(["bicycle", "motorcycle"]):
        for i in range(10):
            path = tmp_path / "data" / name / f"bike_s_{i:03d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (class_index * 200, i * 20, 50)).save(path)
    return tmp_path / "data"


def _keys(prefix: str) -> list[str]:
    s3 = boto3.client("s3", region_name=REGION)
    return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", [])]


def _body(key: str) -> bytes:
    body: bytes = boto3.client("s3", region_name=REGION).get_object(Bucket=BUCKET, Key=key)["Body"].read()
    return body


def _describe(name: str) -> dict[str, Any]:
    described: dict[str, Any] = boto3.client("sagemaker", region_name=REGION).describe_training_job(
        TrainingJobName=name
    )
    return described


def _placement(role: str, name: str, instance: str = "ml.m5.xlarge") -> JobPlacement:
    return JobPlacement(job_name=name, role_arn=role, region=REGION, bucket=BUCKET, prefix="bt", instance_type=instance)


def test_script_mode_job(aws: str, data: Path) -> None:
    sagemaker, s3 = boto3.client("sagemaker", region_name=REGION), boto3.client("s3", region_name=REGION)
    job = submit_script_mode(sagemaker, s3, _placement(aws, "bayroute-script-t1"), data, hyperparameters={"epochs": 3})
    described = _describe("bayroute-script-t1")
    assert described["TrainingJobArn"] == job.job_arn
    assert described["RoleArn"] == aws
    assert described["AlgorithmSpecification"]["TrainingImage"] == (
        f"763104351884.dkr.ecr.{REGION}.amazonaws.com/pytorch-training:2.5-cpu-py311"
    )
    hp = described["HyperParameters"]
    source_uri = json.loads(hp["sagemaker_submit_directory"])
    assert source_uri == f"s3://{BUCKET}/bt/bayroute-script-t1/source/sourcedir.tar.gz"
    assert json.loads(hp["sagemaker_program"]) == "sagemaker_entry.py"
    assert hp["epochs"] == "3"
    (channel,) = described["InputDataConfig"]
    assert channel["ChannelName"] == "train"
    train_uri = channel["DataSource"]["S3DataSource"]["S3Uri"]
    assert train_uri == f"s3://{BUCKET}/bt/bayroute-script-t1/data/train"
    assert described["OutputDataConfig"]["S3OutputPath"] == f"s3://{BUCKET}/bt/output"

    # The channel holds the class folders; the source tarball the entry script and both packages.
    uploaded = _keys("bt/bayroute-script-t1/data/train/")
    assert len(uploaded) == 20
    assert "bt/bayroute-script-t1/data/train/motorcycle/bike_s_003.png" in uploaded
    with tarfile.open(fileobj=io.BytesIO(_body(source_uri.removeprefix(f"s3://{BUCKET}/"))), mode="r:gz") as archive:
        names = set(archive.getnames())
    assert {"sagemaker_entry.py", "requirements.txt", "training/pipeline.py", "training/folder.py"} <= names


def test_gpu_instance_gets_the_gpu_image(aws: str, data: Path) -> None:
    sagemaker, s3 = boto3.client("sagemaker", region_name=REGION), boto3.client("s3", region_name=REGION)
    submit_script_mode(sagemaker, s3, _placement(aws, "bayroute-gpu", "ml.g4dn.xlarge"), data, hyperparameters={})
    described = _describe("bayroute-gpu")
    assert described["AlgorithmSpecification"]["TrainingImage"].endswith("pytorch-training:2.5-gpu-py311")
    assert described["ResourceConfig"]["InstanceType"] == "ml.g4dn.xlarge"


def test_builtin_image_classification_job(aws: str, data: Path) -> None:
    sagemaker, s3 = boto3.client("sagemaker", region_name=REGION), boto3.client("s3", region_name=REGION)
    submit_builtin(sagemaker, s3, _placement(aws, "bayroute-ic", "ml.g4dn.xlarge"), data, epochs=5, mini_batch_size=8)
    described = _describe("bayroute-ic")
    assert described["AlgorithmSpecification"]["TrainingImage"] == (
        f"685385470294.dkr.ecr.{REGION}.amazonaws.com/image-classification:1"
    )
    hp = described["HyperParameters"]
    # 10 images per class, 20% of each held out for validation.
    assert (hp["num_classes"], hp["num_training_samples"], hp["image_shape"]) == ("2", "16", "3,32,32")
    assert (hp["epochs"], hp["mini_batch_size"], hp["use_pretrained_model"]) == ("5", "8", "1")
    channels = {c["ChannelName"]: c for c in described["InputDataConfig"]}
    assert set(channels) == {"train", "validation", "train_lst", "validation_lst"}
    assert {c["ContentType"] for c in channels.values()} == {"application/x-image"}

    for split, count in (("train", 16), ("validation", 4)):
        lst_prefix = channels[f"{split}_lst"]["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
        image_prefix = channels[split]["DataSource"]["S3DataSource"]["S3Uri"].removeprefix(f"s3://{BUCKET}/")
        (lst_key,) = _keys(lst_prefix + "/")
        entries = parse_lst(_body(lst_key).decode())
        assert len(entries) == count
        image_keys = set(_keys(image_prefix + "/"))
        assert {f"{image_prefix}/{e.path}" for e in entries} == image_keys  # every line names an uploaded image
        assert all(["bicycle", "motorcycle"][e.label] == e.path.split("/")[0] for e in entries)


def test_cli_submits_and_prints_the_job(aws: str, data: Path) -> None:
    args = ["--data", str(data), "--bucket", BUCKET, "--role", aws, "--job-name", "bayroute-cli", "--epochs", "2"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["status"] == "submitted" and printed["job_name"] == "bayroute-cli"
    assert printed["job_arn"] == _describe("bayroute-cli")["TrainingJobArn"]
    assert printed["model_artifact_uri_when_complete"] == (
        f"s3://{BUCKET}/bayroute/training/output/bayroute-cli/output/model.tar.gz"
    )
    hp = _describe("bayroute-cli")["HyperParameters"]
    assert (hp["epochs"], hp["seed"]) == ("2", "0")

    result = CliRunner().invoke(
        app,
        [
            *args[:-4],
            "--job-name",
            "bayroute-cli-ic",
            "--algorithm",
            "builtin-image-classification",
            "--mini-batch-size",
            "8",
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["instance_type"] == "ml.g4dn.xlarge"


def test_cli_reports_missing_bucket_and_bad_data(aws: str, data: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["--data", str(data), "--bucket", "no-such-bucket", "--role", aws])
    assert result.exit_code == 1 and "cannot submit the training job" in result.output
    assert "NoSuchBucket" in result.output or "does not exist" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(app, ["--data", str(tmp_path / "empty"), "--bucket", BUCKET, "--role", aws])
    assert result.exit_code == 1 and "no class folders" in result.output
    assert _keys("") == []  # nothing uploaded for a data folder that fails to load
    result = CliRunner().invoke(app, ["--data", str(data), "--bucket", BUCKET, "--role", aws, "--on", "ec2"])
    assert result.exit_code == 2 and "sagemaker" in result.output
