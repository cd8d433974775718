"""serialize: the inbox object → the model's small PNG input, passed inline (or staged when it would not fit).

The original photo never travels between steps: the object is read once here (size limit enforced again,
pinned to the version or eTag that ingest admitted), decoded safely by :func:`bayroute.imaging.prepare_image`
and resized to the model input. The resulting PNG (a few KB at 32x32) goes inline, base64, in the state; if
the payload would exceed ``limits.max_payload_bytes`` (a larger model input), the PNG is staged in the
capture bucket and the state carries its location instead. ``infer`` accepts both forms.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Protocol

from bayroute.config import Settings
from bayroute.domain import WorkflowRequest
from bayroute.errors import PayloadTooLarge
from bayroute.imaging import prepare_image

PNG = "image/png"


class ObjectReader(Protocol):
    def read(
        self, bucket: str, key: str, *, max_bytes: int, version_id: str | None = None, etag: str | None = None
    ) -> bytes: ...


class ObjectWriter(Protocol):
    def put_bytes(self, bucket: str, key: str, body: bytes, content_type: str) -> None: ...


def staging_key(settings: Settings, request: WorkflowRequest) -> str:
    """Where a staged payload lives: one per object and attempt, so a retry overwrites its own."""
    return f"{settings.prefixes.staging}/{request.object.execution_name(request.attempt)}.png"


class Serialize:
    def __init__(self, settings: Settings, *, inbox: ObjectReader, staging: ObjectWriter) -> None:
        self._settings = settings
        self._inbox = inbox
        self._staging = staging

    def run(self, state: dict[str, Any]) -> dict[str, Any]:
        """``{"request"}`` → ``{"image", "input_stats"}``; raises the image's named error when it is unusable."""
        request = WorkflowRequest.from_state(state)
        ref = request.object
        limits = self._settings.limits
        data = self._inbox.read(
            ref.bucket, ref.key, max_bytes=limits.max_object_bytes, version_id=ref.version_id, etag=ref.etag or None
        )
        size = self._settings.model_input_size
        prepared = prepare_image(data, size=size, max_pixels=limits.max_image_pixels)
        if len(prepared.png) > limits.max_request_bytes:
            raise PayloadTooLarge(
                f"the {size}x{size} PNG is {len(prepared.png)} bytes, over the endpoint's request limit",
                bytes=len(prepared.png),
                limit=limits.max_request_bytes,
            )
        inline = {
            "content_type": PNG,
            "encoding": "base64",
            "data": base64.b64encode(prepared.png).decode("ascii"),
            "width": size,
            "height": size,
        }
        output = {"image": inline, "input_stats": prepared.stats.to_dict()}
        if len(json.dumps(output)) <= limits.max_payload_bytes:
            return output
        key = staging_key(self._settings, request)
        self._staging.put_bytes(self._settings.names.capture_bucket, key, prepared.png, PNG)
        staged = {
            "content_type": PNG,
            "s3": {"bucket": self._settings.names.capture_bucket, "key": key},
            "width": size,
            "height": size,
        }
        return {"image": staged, "input_stats": prepared.stats.to_dict()}
