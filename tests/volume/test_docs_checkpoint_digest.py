"""The checkpoint digest recorded with every run works on each Python the README promises (3.10+).

``hashlib.file_digest`` is Python 3.11+; the digest must not depend on it, or every run of a model
with a checkpoint (``segpipe demo`` included) fails on Python 3.10.
"""

from __future__ import annotations

import hashlib

from pipeline.volume import made_with


def test_checkpoint_digest_without_hashlib_file_digest(tmp_path, monkeypatch):
    weights = tmp_path / "weights.safetensors"
    payload = bytes(range(256)) * 9000  # > 2 MB: more than one read
    weights.write_bytes(payload)
    monkeypatch.delattr(hashlib, "file_digest", raising=False)  # as on Python 3.10
    assert made_with._checkpoint(weights) == {"checkpoint_sha256": hashlib.sha256(payload).hexdigest()}
