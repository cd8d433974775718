"""``bayroute train --on sagemaker``: submit a SageMaker training job; it does not wait for the job.

``--algorithm script`` (default) runs this repository's training recipe in the AWS PyTorch training container;
``--algorithm builtin-image-classification`` runs the original system's built-in algorithm on ``.lst`` channels
(see ``training.sagemaker``). Prints one JSON object naming the submitted job.

Mount either as its own command, ``app.command("train-cloud")(cloud_train_command)``, or from ``bayroute train``
by handing its ``--on sagemaker`` invocations to ``cloud_train_command`` with the same options.
"""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import boto3
import typer
from boto3.exceptions import Boto3Error
from botocore.exceptions import BotoCoreError, ClientError

from training.folder import FolderDatasetError
from training.sagemaker import (
    BUILTIN_IMAGE_CLASSIFICATION,
    DEFAULT_FRAMEWORK_VERSION,
    DEFAULT_INSTANCE,
    SCRIPT,
    JobPlacement,
    SageMakerRequestError,
    SubmittedJob,
    default_job_name,
    submit_builtin,
    submit_script_mode,
)

TARGETS = ("sagemaker",)


class Algorithm(StrEnum):
    script = SCRIPT
    builtin_image_classification = BUILTIN_IMAGE_CLASSIFICATION


def cloud_train_command(
    data: Annotated[Path, typer.Option(help="Folder-per-class training images: DIR/<class>/*.png|jpg.")],
    bucket: Annotated[str, typer.Option(help="S3 bucket for the source, the data and the model artifact.")],
    role: Annotated[str, typer.Option(help="ARN of the IAM role SageMaker runs the job as.")],
    on: Annotated[str, typer.Option("--on", help="Where to train: sagemaker.")] = "sagemaker",
    algorithm: Annotated[Algorithm, typer.Option(help="script: our recipe; or the built-in algorithm.")] = (
        Algorithm.script
    ),
    region: Annotated[str | None, typer.Option(help="AWS region (default: the AWS configuration's).")] = None,
    instance_type: Annotated[
        str | None,
        typer.Option(
            help=f"Default: {DEFAULT_INSTANCE[SCRIPT]} (script), "
            f"{DEFAULT_INSTANCE[BUILTIN_IMAGE_CLASSIFICATION]} (built-in)."
        ),
    ] = None,
    prefix: Annotated[str, typer.Option(help="S3 key prefix for inputs and outputs.")] = "bayroute/training",
    job_name: Annotated[str | None, typer.Option(help="Default: bayroute-<algorithm>-<UTC time>.")] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the recipe's; 30 for built-in).")] = None,
    seed: Annotated[int, typer.Option(help="Training seed (script mode).")] = 0,
    learning_rate: Annotated[float, typer.Option(help="Built-in algorithm only.")] = 0.001,
    mini_batch_size: Annotated[int, typer.Option(min=1, help="Built-in algorithm only.")] = 32,
    framework_version: Annotated[str, typer.Option(help="PyTorch container version.")] = DEFAULT_FRAMEWORK_VERSION,
    image_uri: Annotated[str | None, typer.Option(help="Training image instead of the region's default.")] = None,
    max_runtime: Annotated[int, typer.Option(min=60, help="Seconds before SageMaker stops the job.")] = 3600,
) -> None:
    """Upload the data and submit a SageMaker training job (create_training_job); prints the job, never waits."""
    if on not in TARGETS:
        raise typer.BadParameter(f"must be one of {', '.join(TARGETS)}", param_hint="--on")
    region = region or boto3.session.Session().region_name
    if not region:
        raise typer.BadParameter(
            "no region given and none configured (AWS_DEFAULT_REGION or ~/.aws/config)", param_hint="--region"
        )
    try:
        placement = JobPlacement(
            job_name=job_name or default_job_name(algorithm.value),
            role_arn=role,
            region=region,
            bucket=bucket,
            prefix=prefix,
            instance_type=instance_type or DEFAULT_INSTANCE[algorithm.value],
            max_runtime_s=max_runtime,
        )
        sagemaker = boto3.client("sagemaker", region_name=region)
        s3 = boto3.client("s3", region_name=region)
        job: SubmittedJob
        if algorithm is Algorithm.script:
            hyperparameters: dict[str, object] = {"seed": seed}
            if epochs is not None:
                hyperparameters["epochs"] = epochs
            job = submit_script_mode(
                sagemaker,
                s3,
                placement,
                data,
                hyperparameters=hyperparameters,
                image_uri=image_uri,
                framework_version=framework_version,
            )
        else:
            job = submit_builtin(
                sagemaker,
                s3,
                placement,
                data,
                image_uri=image_uri,
                epochs=epochs or 30,
                learning_rate=learning_rate,
                mini_batch_size=mini_batch_size,
            )
    except (SageMakerRequestError, FolderDatasetError, ClientError, BotoCoreError, Boto3Error) as exc:
        typer.secho(f"cannot submit the training job: {exc}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=1) from exc
    typer.echo(
        json.dumps(
            {
                "status": "submitted",
                "job_name": job.job_name,
                "job_arn": job.job_arn,
                "algorithm": algorithm.value,
                "training_image": job.request["AlgorithmSpecification"]["TrainingImage"],
                "instance_type": placement.instance_type,
                "model_artifact_uri_when_complete": job.model_artifact_uri,
            }
        )
    )
