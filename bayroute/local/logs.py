"""Where the local stack's logs go: one file per stack, as CloudWatch Logs would hold them on AWS.

The functions' Powertools loggers write JSON lines to stdout, moto logs every failed execution, and
Python warnings go to stderr; in the foreground of `bayroute up` or `bayroute demo` the user should see
outcomes, not that. This moves all of it to ``DIR/.bayroute/stack.log`` and puts it back afterwards.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TextIO


def send_logs_to(path: Path) -> Callable[[], None]:
    """Redirect every console log handler (root, moto, Powertools) to ``path``; returns the undo."""
    path.parent.mkdir(parents=True, exist_ok=True)
    stream: TextIO = path.open("a", encoding="utf-8")
    file_handler = logging.StreamHandler(stream)
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    saved_root = (list(root.handlers), root.level)
    root.handlers = [file_handler]
    root.setLevel(logging.INFO)
    logging.captureWarnings(True)
    swapped: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    for logger in list(logging.Logger.manager.loggerDict.values()):
        if not isinstance(logger, logging.Logger):
            continue
        for handler in logger.handlers:
            if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stdout, sys.stderr):
                swapped.append((handler, handler.setStream(stream)))  # type: ignore[arg-type]

    def restore() -> None:
        for handler, original in swapped:
            handler.setStream(original)
        root.handlers, level = saved_root
        root.setLevel(level)
        logging.captureWarnings(False)
        stream.close()

    return restore
