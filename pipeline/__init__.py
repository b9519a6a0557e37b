"""segpipe library: readers and writers, grid maths, the block-streaming engine, statistics.

No Prefect import here; flows in ``flows/`` wire these functions together. Only the errors are
imported with the package; the rest is imported from its module (so ``segpipe --help`` stays fast).

Public API by module:

- :mod:`pipeline.errors`: ``SegpipeError``, ``InputError``, ``ModelSpecError``, ``CheckpointError``, ``EngineError``
- :mod:`pipeline.engine`: ``run_engine``, ``EngineConfig``, ``EngineReport``, ``auto_device``, ``plan_for``
  (the types live in :mod:`pipeline.engine_types`; per-window work in :mod:`pipeline.windows`)
- :mod:`pipeline.grid`: ``WindowGrid``, ``BlockPlan`` (pure window-grid and block-grid maths)
- :mod:`pipeline.distributed`: ``run_engine_dask``, ``ZarrRef``; :mod:`pipeline.dask_client`: ``dask_client``
- :mod:`pipeline.stats_store`: ``lock``, ``open_stats``, ``replace_store``, ``recover``, ``fixed_width_strings``
- :mod:`pipeline.outputs`: ``prepare_output_dir``, ``output_write_error``, ``check_stats_store``, ``temporary_name``,
  ``stale_temporaries``, ``remove_stale_temporaries``
- :mod:`pipeline.work_lock`: ``work_lock``
- :mod:`pipeline.raster`, :mod:`pipeline.volume`, :mod:`pipeline.demo`: the raster, volume and demo pipelines (their
  ``__init__`` lists their API); :mod:`pipeline.cli`: the ``segpipe`` command line.
"""

from pipeline.errors import CheckpointError, EngineError, InputError, ModelSpecError, SegpipeError

__all__ = ["SegpipeError", "InputError", "ModelSpecError", "CheckpointError", "EngineError"]
