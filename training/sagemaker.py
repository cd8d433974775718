"""SageMaker training jobs through boto3 ``create_training_job`` (no ``sagemaker`` SDK).

Two kinds of job:

- **script mode** (``script``): this repository's training code in the AWS PyTorch training container. The
  ``bayroute/`` and ``training/`` packages, ``sagemaker_entry.py`` at the root and a ``requirements.txt`` go to
  S3 as ``sourcedir.tar.gz``; the container's training toolkit downloads it (``sagemaker_submit_directory``),
  installs the requirements and runs ``sagemaker_program`` with the other hyperparameters as ``--name value``
  arguments. The entry reads the ``train`` channel (``SM_CHANNEL_TRAIN``, folder per class) and writes
  ``model.onnx`` and ``MODEL_CARD.md`` to ``SM_MODEL_DIR``, which SageMaker uploads as ``model.tar.gz``.
- **built-in image classification** (``builtin-image-classification``): the original system's algorithm, fed
  the ``.lst`` + images channels of ``training.lst`` (``train``, ``validation``, ``train_lst``,
  ``validation_lst``, all ``application/x-image``).

Request builders are pure functions; ``submit_*`` upload with an injected S3 client and submit with an injected
SageMaker client. Submitting a job is all this module does: it never waits for one or reports it as trained.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import re
import tarfile
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from training.folder import load_folder_dataset
from training.lst import IMAGE_CHANNELS, LST_CHANNELS, export_lst_channels
from training.split import DEFAULT_SPLIT_SEED, DEFAULT_VAL_FRACTION, stratified_split

REPO_ROOT = Path(__file__).resolve().parents[1]
SOURCE_PACKAGES = ("bayroute", "training")
ENTRY_POINT = "sagemaker_entry.py"  # at the root of the source tarball, so ``training`` and ``bayroute`` import
SOURCE_ARCHIVE = "sourcedir.tar.gz"
# What the container lacks for training and export; versions come from constraints.txt, torch is the container's.
CONTAINER_REQUIREMENTS = ("onnx", "onnxscript", "onnxruntime")

SCRIPT = "script"
BUILTIN_IMAGE_CLASSIFICATION = "builtin-image-classification"
ALGORITHMS = (SCRIPT, BUILTIN_IMAGE_CLASSIFICATION)
DEFAULT_INSTANCE = {SCRIPT: "ml.m5.xlarge", BUILTIN_IMAGE_CLASSIFICATION: "ml.g4dn.xlarge"}
DEFAULT_FRAMEWORK_VERSION = "2.5"
DEFAULT_PYTHON = "py311"
X_IMAGE = "application/x-image"

# AWS Deep Learning Containers: one account serves most regions (sagemaker-python-sdk image_uri_config).
DLC_ACCOUNT = "763104351884"
DLC_ACCOUNT_EXCEPTIONS = {
    "af-south-1": "626614931356",
    "ap-east-1": "871362719292",
    "ap-northeast-3": "364406365360",
    "cn-north-1": "727897471807",
    "cn-northwest-1": "727897471807",
    "eu-south-1": "692866216735",
    "me-south-1": "217643126080",
    "us-gov-west-1": "442386744353",
    "us-iso-east-1": "886529160074",
}
# The built-in image-classification algorithm's registry per region (sagemaker-python-sdk image_uri_config).
IMAGE_CLASSIFICATION_ACCOUNTS = {
    "ap-east-1": "286214385809",
    "ap-northeast-1": "501404015308",
    "ap-northeast-2": "306986355934",
    "ap-south-1": "991648021394",
    "ap-southeast-1": "475088953585",
    "ap-southeast-2": "544295431143",
    "ca-central-1": "469771592824",
    "cn-north-1": "390948362332",
    "cn-northwest-1": "387376663083",
    "eu-central-1": "813361260812",
    "eu-north-1": "669576153137",
    "eu-west-1": "685385470294",
    "eu-west-2": "644912444149",
    "eu-west-3": "749696950732",
    "me-south-1": "249704162688",
    "sa-east-1": "855470959533",
    "us-east-1": "811284229777",
    "us-east-2": "825641698319",
    "us-gov-west-1": "226302683700",
    "us-iso-east-1": "490574956308",
    "us-west-1": "632365934929",
    "us-west-2": "433757028032",
}
# Lines the entry script prints; CloudWatch metrics of the job are parsed from them.
SCRIPT_METRICS = [
    {"Name": "train:loss", "Regex": r"train_loss=([0-9.]+)"},
    {"Name": "validation:accuracy", "Regex": r"val_accuracy=([0-9.]+)"},
    {"Name": "validation:ece", "Regex": r"val_ece=([0-9.]+)"},
]
_JOB_NAME = re.compile(r"^[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}$")


class SageMakerRequestError(ValueError):
    """The job cannot be described as asked (unknown region or algorithm, bad name, bad data)."""


@dataclass(frozen=True)
class JobPlacement:
    """Where a job runs and where its inputs and outputs live."""

    job_name: str
    role_arn: str
    region: str
    bucket: str
    prefix: str  # S3 key prefix; the job's inputs go under PREFIX/JOB_NAME/
    instance_type: str
    max_runtime_s: int = 3600
    volume_gb: int = 30

    def __post_init__(self) -> None:
        if not _JOB_NAME.match(self.job_name):
            raise SageMakerRequestError(f"job name {self.job_name!r}: 1-63 letters, digits and inner hyphens")
        if not self.role_arn.startswith("arn:") or ":role/" not in self.role_arn:
            raise SageMakerRequestError(f"role {self.role_arn!r} is not an IAM role ARN")

    def key(self, *parts: str) -> str:
        return "/".join(p.strip("/") for p in (self.prefix, self.job_name, *parts) if p)

    @property
    def output_uri(self) -> str:
        return "s3://" + "/".join(p.strip("/") for p in (self.bucket, self.prefix, "output") if p)


@dataclass(frozen=True)
class SubmittedJob:
    job_name: str
    job_arn: str
    request: dict[str, Any]

    @property
    def model_artifact_uri(self) -> str:
        """Where SageMaker will put ``model.tar.gz`` if the job completes."""
        return f"{self.request['OutputDataConfig']['S3OutputPath']}/{self.job_name}/output/model.tar.gz"


def default_job_name(algorithm: str, now: dt.datetime | None = None) -> str:
    stamp = (now or dt.datetime.now(dt.UTC)).strftime("%Y%m%d-%H%M%S")
    short = "script" if algorithm == SCRIPT else "builtin-ic"
    return f"bayroute-{short}-{stamp}"


def is_gpu_instance(instance_type: str) -> bool:
    """ml.p* and ml.g* instances carry NVIDIA GPUs."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return family[:1] in {"p", "g"}


def pytorch_training_image(
    region: str, instance_type: str, framework_version: str = DEFAULT_FRAMEWORK_VERSION, python: str = DEFAULT_PYTHON
) -> str:
    account = DLC_ACCOUNT_EXCEPTIONS.get(region, DLC_ACCOUNT)
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    processor = "gpu" if is_gpu_instance(instance_type) else "cpu"
    return f"{account}.dkr.ecr.{region}.{domain}/pytorch-training:{framework_version}-{processor}-{python}"


def image_classification_image(region: str) -> str:
    try:
        account = IMAGE_CLASSIFICATION_ACCOUNTS[region]
    except KeyError as exc:
        known = ", ".join(sorted(IMAGE_CLASSIFICATION_ACCOUNTS))
        raise SageMakerRequestError(f"no known image-classification image in {region}; known: {known}") from exc
    domain = "amazonaws.com.cn" if region.startswith("cn-") else "amazonaws.com"
    return f"{account}.dkr.ecr.{region}.{domain}/image-classification:1"


def _channel(name: str, uri: str, content_type: str | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "ChannelName": name,
        "DataSource": {
            "S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
        },
        "CompressionType": "None",
        "InputMode": "File",
    }
    if content_type:
        channel["ContentType"] = content_type
    return channel


def _base_request(
    placement: JobPlacement, image_uri: str, channels: list[dict[str, Any]], hyperparameters: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "TrainingJobName": placement.job_name,
        "AlgorithmSpecification": {"TrainingImage": image_uri, "TrainingInputMode": "File"},
        "RoleArn": placement.role_arn,
        "HyperParameters": dict(hyperparameters),
        "InputDataConfig": channels,
        "OutputDataConfig": {"S3OutputPath": placement.output_uri},
        "ResourceConfig": {
            "InstanceType": placement.instance_type,
            "InstanceCount": 1,
            "VolumeSizeInGB": placement.volume_gb,
        },
        "StoppingCondition": {"MaxRuntimeInSeconds": placement.max_runtime_s},
        "Tags": [{"Key": "project", "Value": "bayroute"}],
    }


def script_mode_request(
    placement: JobPlacement, *, image_uri: str, source_uri: str, train_uri: str, hyperparameters: Mapping[str, Any]
) -> dict[str, Any]:
    """The create_training_job request for script mode.

    Values are JSON-encoded as the SageMaker SDK does (``"sagemaker_entry.py"`` with its quotes); the training
    toolkit decodes them again before passing ``--name value`` to the entry script.
    """
    encoded = {name: json.dumps(value) for name, value in hyperparameters.items()}
    encoded.update(
        {
            "sagemaker_program": json.dumps(ENTRY_POINT),
            "sagemaker_submit_directory": json.dumps(source_uri),
            "sagemaker_region": json.dumps(placement.region),
            "sagemaker_container_log_level": "20",
            "sagemaker_job_name": json.dumps(placement.job_name),
        }
    )
    request = _base_request(placement, image_uri, [_channel("train", train_uri)], encoded)
    request["AlgorithmSpecification"]["MetricDefinitions"] = SCRIPT_METRICS
    return request


def builtin_hyperparameters(
    num_training_samples: int,
    image_shape: tuple[int, int, int],
    *,
    num_classes: int = 2,
    epochs: int = 30,
    learning_rate: float = 0.001,
    mini_batch_size: int = 32,
    num_layers: int = 18,
    use_pretrained_model: bool = True,
) -> dict[str, str]:
    """The image-classification algorithm's hyperparameters (all strings, as the API takes them)."""
    if mini_batch_size > num_training_samples:
        raise SageMakerRequestError(f"mini_batch_size {mini_batch_size} exceeds the {num_training_samples} samples")
    return {
        "num_classes": str(num_classes),
        "num_training_samples": str(num_training_samples),
        "image_shape": ",".join(map(str, image_shape)),
        "epochs": str(epochs),
        "learning_rate": repr(learning_rate),
        "mini_batch_size": str(mini_batch_size),
        "num_layers": str(num_layers),
        "use_pretrained_model": "1" if use_pretrained_model else "0",
        "augmentation_type": "crop_color_transform",
    }


def builtin_request(
    placement: JobPlacement, *, image_uri: str, channel_uris: Mapping[str, str], hyperparameters: Mapping[str, str]
) -> dict[str, Any]:
    """The create_training_job request for the built-in algorithm with ``.lst`` + image channels."""
    missing = [name for name in (*IMAGE_CHANNELS, *LST_CHANNELS) if name not in channel_uris]
    if missing:
        raise SageMakerRequestError(f"the built-in algorithm needs channels {missing}")
    channels = [_channel(name, channel_uris[name], X_IMAGE) for name in (*IMAGE_CHANNELS, *LST_CHANNELS)]
    return _base_request(placement, image_uri, channels, hyperparameters)


def container_requirements(constraints: Path = REPO_ROOT / "constraints.txt") -> str:
    """``requirements.txt`` for the container: our pins of what it lacks (torch and numpy stay the container's)."""
    pins = {}
    for line in constraints.read_text(encoding="utf-8").splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() in CONTAINER_REQUIREMENTS and version:
            pins[name.lower()] = f"{name.lower()}=={version}"
    missing = [name for name in CONTAINER_REQUIREMENTS if name not in pins]
    if missing:
        raise SageMakerRequestError(f"{constraints} pins no version of {missing}")
    return "".join(f"{pins[name]}\n" for name in CONTAINER_REQUIREMENTS)


def source_tarball(repo_root: Path = REPO_ROOT) -> bytes:
    """``sourcedir.tar.gz``: the two packages, the entry script at the root and the container requirements."""

    def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        name = Path(info.name)
        if "__pycache__" in name.parts or name.suffix in {".pyc", ".pyo"} or name.name.startswith("."):
            return None
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for package in SOURCE_PACKAGES:
            archive.add(repo_root / package, arcname=package, filter=keep)
        archive.add(repo_root / "training" / "sagemaker_entry.py", arcname=ENTRY_POINT, filter=keep)
        requirements = container_requirements(repo_root / "constraints.txt").encode()
        info = tarfile.TarInfo("requirements.txt")
        info.size = len(requirements)
        archive.addfile(info, io.BytesIO(requirements))
    return buffer.getvalue()


def upload_tree(s3: Any, folder: Path, bucket: str, key_prefix: str) -> int:
    """Upload every file under ``folder`` to ``s3://bucket/key_prefix/<relative path>``; returns the count."""
    count = 0
    for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
        s3.upload_file(str(path), bucket, f"{key_prefix}/{path.relative_to(folder).as_posix()}")
        count += 1
    return count


def submit_script_mode(
    sagemaker: Any,
    s3: Any,
    placement: JobPlacement,
    data: Path,
    *,
    hyperparameters: Mapping[str, Any],
    image_uri: str | None = None,
    framework_version: str = DEFAULT_FRAMEWORK_VERSION,
) -> SubmittedJob:
    """Upload the source tarball and the folder-per-class ``data``, then create the script-mode job."""
    dataset = load_folder_dataset(data)  # fail here, not an hour later in the container
    source_key = placement.key("source", SOURCE_ARCHIVE)
    s3.put_object(Bucket=placement.bucket, Key=source_key, Body=source_tarball())
    train_key = placement.key("data", "train")
    for path, label in zip(dataset.paths, dataset.labels, strict=True):
        s3.upload_file(str(path), placement.bucket, f"{train_key}/{dataset.classes[int(label)]}/{path.name}")
    request = script_mode_request(
        placement,
        image_uri=image_uri or pytorch_training_image(placement.region, placement.instance_type, framework_version),
        source_uri=f"s3://{placement.bucket}/{source_key}",
        train_uri=f"s3://{placement.bucket}/{train_key}",
        hyperparameters=hyperparameters,
    )
    return _create(sagemaker, request)


def submit_builtin(
    sagemaker: Any,
    s3: Any,
    placement: JobPlacement,
    data: Path,
    *,
    image_uri: str | None = None,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    split_seed: int = DEFAULT_SPLIT_SEED,
    **hyperparameters: Any,
) -> SubmittedJob:
    """Split ``data`` as training does, upload the four ``.lst`` channels and create the built-in job."""
    dataset = load_folder_dataset(data)
    train_idx, val_idx = stratified_split(dataset.labels, val_fraction, split_seed)
    height, width = dataset.images.shape[1:3]
    params = builtin_hyperparameters(
        int(train_idx.size), (3, int(height), int(width)), num_classes=len(dataset.classes), **hyperparameters
    )
    channel_uris: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bayroute-lst-") as tmp:
        folders = export_lst_channels(
            dataset.images,
            dataset.labels,
            dataset.classes,
            [p.name for p in dataset.paths],
            Path(tmp),
            train_indices=train_idx,
            val_indices=val_idx,
        )
        for channel, folder in folders.items():
            key = placement.key("data", channel)
            upload_tree(s3, folder, placement.bucket, key)
            channel_uris[channel] = f"s3://{placement.bucket}/{key}"
    request = builtin_request(
        placement,
        image_uri=image_uri or image_classification_image(placement.region),
        channel_uris=channel_uris,
        hyperparameters=params,
    )
    return _create(sagemaker, request)


def _create(sagemaker: Any, request: dict[str, Any]) -> SubmittedJob:
    response = sagemaker.create_training_job(**request)
    return SubmittedJob(job_name=request["TrainingJobName"], job_arn=response["TrainingJobArn"], request=request)
