"""The one exception type of the data layer."""
from __future__ import annotations

from sam2_train.engine.errors import UserError


class DatasetError(UserError):
    """Bad or missing input data. The message names the file and what was expected.

    Training scripts catch it and print ``str(err)`` as one line (no traceback). When the error
    is raised inside a DataLoader worker, PyTorch re-creates it in the main process with the
    worker's traceback in the message; the constructor strips that back to the original line.
    """

    def __init__(self, message: str = ""):
        message = str(message)
        if "Original Traceback" in message:
            for line in reversed(message.strip().splitlines()):
                for prefix in ("dataset.errors.DatasetError: ", "DatasetError: "):
                    if line.startswith(prefix):
                        message = line[len(prefix):]
                        break
                else:
                    continue
                break
        message = " ".join(message.split("\n")).strip()
        super().__init__(message)
