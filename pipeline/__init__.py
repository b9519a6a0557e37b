"""segpipe library: readers and writers, grid maths, the block-streaming engine, statistics.

No Prefect import here; flows in ``flows/`` wire these functions together.
"""

from pipeline.errors import CheckpointError, EngineError, InputError, ModelSpecError, SegpipeError

__all__ = ["SegpipeError", "InputError", "ModelSpecError", "CheckpointError", "EngineError"]
