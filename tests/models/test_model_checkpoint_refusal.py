"""A refused pickle shows only segpipe's safe advice: never torch's 'weights_only=False will likely succeed'."""

from __future__ import annotations

import os
import pickle
import warnings

import pytest
import torch

from models.checkpoint import load_state_dict_file
from pipeline.errors import CheckpointError


class _Touch:
    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _refusal(path) -> str:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as err:
            load_state_dict_file(path)
    assert [str(w.message) for w in caught if "pickle protocol" in str(w.message)] == []
    message = str(err.value)
    assert message.startswith(f"{path}: refused to load: ")
    for unsafe in ("weights_only", "Re-running", "add_safe_globals", "will likely succeed"):
        assert unsafe not in message, message
    assert err.value.__cause__ is None and err.value.__suppress_context__
    assert "in a trusted environment" in message and "save_file(model.state_dict(), 'weights.safetensors')" in message
    return message


def test_a_whole_pickled_model_is_refused_with_our_advice_only(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(torch.nn.Conv2d(4, 3, 1), path)
    message = _refusal(path)
    assert "references 'torch.nn.modules.conv.Conv2d'" in message and "torch.save(model)" in message


@pytest.mark.parametrize("protocol", [2, 4])
def test_a_code_carrying_pickle_never_runs_and_warns_nothing(tmp_path, protocol):
    marker = tmp_path / "RAN"
    path = tmp_path / f"evil{protocol}.pt"
    with path.open("wb") as f:
        pickle.dump({"weight": torch.zeros(1), "x": _Touch(marker)}, f, protocol=protocol)
    message = _refusal(path)
    assert not marker.exists()
    assert "the pickle references" in message or "opcode" in message
