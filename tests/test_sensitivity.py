"""`fxforge.sensitivity.noise_floor`: int8-sized noise at every layer with a weight."""

import pytest
import torch
import torch.nn as nn
from untouched import assert_untouched, snapshot

from fxforge import sensitivity


def _call(model, x):
    return model(x)


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)).eval()


def test_the_floor_follows_the_noise_level_and_leaves_the_model_alone():
    model, x = _model(), torch.randn(16, 32)
    before = snapshot(model)
    floors = [sensitivity.noise_floor(model, x, _call, sqnr_db=db) for db in (20, 37, 60, 120)]
    assert_untouched(model, before)
    assert floors == sorted(floors, reverse=True)
    # noise at S dB on the last layer alone gives about 10^(-S/20) of its rms
    assert 1e-3 < floors[1] < 0.1 and floors[3] < 1e-5
    assert sensitivity.noise_floor(model, x, _call) == floors[1]  # seeded: the same every time


def test_relative_error_is_over_the_largest_output():
    want = {"a": torch.tensor([1.0, -4.0]), "ids": torch.tensor([1, 2])}
    got = {"a": torch.tensor([1.5, -4.0]), "ids": torch.tensor([9, 9])}
    assert sensitivity.relative_error(got, want) == pytest.approx(0.5 / 4.0)


def test_a_model_without_layers_is_refused():
    with pytest.raises(ValueError, match="no Linear"):
        sensitivity.noise_floor(nn.ReLU(), torch.randn(3), _call)
