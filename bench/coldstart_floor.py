"""The floor under infer's cold start (run as ``python -m bench.coldstart_floor MODEL [--botocore]``, fresh).

What any in-Lambda ONNX function must do before its first answer, with none of bayroute's code: import numpy and
ONNX Runtime, and load the model. With ``--botocore``, also what the design before the signed capture write
(``bayroute.adapters.signed_s3``) needed first: import botocore and create an S3 client (as
``bayroute.adapters.aws.aws_client`` does: botocore alone, one session), so that a run shows both floors side by
side. Prints one JSON line of wall-clock stamps (``time.time()``): the first line of this module, after the
imports, after the client (the same stamp as the imports without ``--botocore``), after the model.
"""

import time

started = time.time()

import json  # noqa: E402  (the imports are what is being timed)
import os  # noqa: E402
import sys  # noqa: E402

import numpy  # noqa: E402, F401  (ONNX Runtime imports it too; named to say that it is part of the floor)
import onnxruntime  # noqa: E402

WITH_BOTOCORE = "--botocore" in sys.argv[2:]
if WITH_BOTOCORE:
    import botocore.session
    from botocore.config import Config


def main() -> None:
    imported = time.time()
    client = imported
    if WITH_BOTOCORE:
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
