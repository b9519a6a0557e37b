"""pipeline.pending: pieces wait in memory within the budget, the ones needed last go to disk, all come back exact."""

from __future__ import annotations

import numpy as np
import torch

from pipeline.engine_types import Piece
from pipeline.pending import PendingPieces

RANK = {(0, t): t for t in range(20)}.__getitem__


def piece(target: int, value: float) -> Piece:
    return Piece((0, 0), (0, target), (slice(0, 4), slice(0, 4)), torch.full((2, 4, 4), value))  # 128 bytes


def test_the_piece_needed_last_goes_to_disk_and_everything_comes_back_exact(tmp_path):
    with PendingPieces(memory_bytes=256, scratch_dir=tmp_path, rank=RANK) as pending:
        pending.add(piece(5, 5.0))
        pending.add(piece(9, 9.0))
        pending.add(piece(3, 3.0))  # needed sooner than 9: 9's piece is evicted to disk
        assert pending.pieces_on_disk == 1 and pending.bytes_in_memory == 256
        pending.add(piece(12, 12.0))  # needed after everything in memory: straight to disk
        assert pending.pieces_on_disk == 2 and pending.bytes_in_memory == 256
        got = {t: pending.pop((0, t)) for t in (3, 5, 9, 12)}
        assert pending.bytes_in_memory == 0
    for t, pieces in got.items():
        assert len(pieces) == 1
        np.testing.assert_array_equal(np.asarray(pieces[0].data), np.full((2, 4, 4), float(t), np.float32))
    assert not list(tmp_path.iterdir())  # the scratch folder is gone


def test_without_ranks_new_pieces_go_to_disk_once_the_budget_is_full(tmp_path):
    with PendingPieces(memory_bytes=256, scratch_dir=tmp_path) as pending:
        for t in (9, 5, 3):
            pending.add(piece(t, float(t)))
        assert pending.pieces_on_disk == 1 and [float(p.data[0, 0, 0]) for p in pending.pop((0, 3))] == [3.0]


def test_several_pieces_per_target_are_evicted_latest_target_first(tmp_path):
    with PendingPieces(memory_bytes=512, scratch_dir=tmp_path, rank=RANK) as pending:
        for t, v in ((7, 1.0), (7, 2.0), (8, 3.0), (8, 4.0)):
            pending.add(piece(t, v))
        pending.add(piece(2, 0.5))  # frees 128 bytes: one of target 8's pieces
        pending.add(piece(2, 0.25))  # and the other
        assert pending.pieces_on_disk == 2
        assert sorted(float(p.data[0, 0, 0]) for p in pending.pop((0, 8))) == [3.0, 4.0]
        assert sorted(float(p.data[0, 0, 0]) for p in pending.pop((0, 7))) == [1.0, 2.0]
