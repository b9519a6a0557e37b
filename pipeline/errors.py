"""One exception hierarchy for segpipe.

Every message names the file (or value), the problem and the fix, e.g.
``scene.tif: 3 bands, model 'landcover-unet' needs 4 (set in_channels or pick bands with --bands)``.
"""

from __future__ import annotations

from pathlib import Path


class SegpipeError(Exception):
    """Base class of every error segpipe raises on purpose."""


class InputError(SegpipeError):
    """A user-supplied file or value is unusable.

    Args:
        path: the file (or value) at fault; a URL is kept without its credentials (:func:`pipeline.urls.public_url`).
        problem: what is wrong with it.
        fix: what the user can do about it.
        transient: the same input may well work a moment later (a remote server that failed or could
            not be reached): flows retry such an error, as they retry I/O errors.
    """

    def __init__(self, path: str | Path, problem: str, fix: str = "", *, transient: bool = False) -> None:
        from pipeline.urls import public_url

        self.path = public_url(path)  # a signed URL's credentials are never shown
        self.problem = public_url(problem)
        self.fix = public_url(fix)
        self.transient = transient
        message = f"{self.path}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)


class ModelSpecError(InputError):
    """A model spec (YAML or catalog entry) is invalid."""


class CheckpointError(InputError):
    """A checkpoint is missing, unsafe or does not fit the model."""


class EngineError(SegpipeError):
    """The inference engine was configured inconsistently."""
