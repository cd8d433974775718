"""The floor under infer's cold start (run as ``python -m bench.coldstart_floor MODEL``, in a fresh process).

What any in-Lambda ONNX function of this design must do before its first answer, with none of bayroute's code:
import numpy, ONNX Runtime and botocore, create the S3 client it reads the staged image and writes the capture
record with (as ``bayroute.adapters.aws.aws_client`` does: botocore alone, one session), and load the model.
Prints one JSON line of wall-clock stamps (``time.time()``): the first line of this module, after the imports,
after the client, after the model.
"""

import time

started = time.time()

import json  # noqa: E402  (the imports are what is being timed)
import os  # noqa: E402
import sys  # noqa: E402

import botocore.session  # noqa: E402
import numpy  # noqa: E402, F401  (ONNX Runtime imports it too; named to say that it is part of the floor)
import onnxruntime  # noqa: E402
from botocore.config import Config  # noqa: E402


def main() -> None:
    imported = time.time()
    botocore.session.Session().create_client(
        "s3",
        region_name=os.environ.get("AWS_REGION", "us-east-1"),
        endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or None,
        config=Config(retries={"total_max_attempts": 1}),
    )
    client = time.time()
    onnxruntime.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    loaded = time.time()
    print(json.dumps({"started": started, "imported": imported, "client": client, "loaded": loaded}))


if __name__ == "__main__":
    main()
