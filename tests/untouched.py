"""Is the user's model untouched? A snapshot of its tensors (identity, type, value), its module
tree and its flags, compared after a compile, a call or a failure."""

from __future__ import annotations

import torch
import torch.nn as nn


def snapshot(model: nn.Module) -> dict:
    return {"tensors": {k: (id(t), type(t), t.detach().clone())
                        for k, t in model.state_dict(keep_vars=True).items()},
            "modules": [(k, id(m), m.training, type(m._modules), type(m._parameters))
                        for k, m in model.named_modules()]}


def assert_untouched(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["modules"] == before["modules"]
    assert after["tensors"].keys() == before["tensors"].keys()
    for key, (ident, kind, value) in before["tensors"].items():
        now_id, now_kind, now_value = after["tensors"][key]
        assert (now_id, now_kind) == (ident, kind), key
        torch.testing.assert_close(now_value, value, rtol=0, atol=0, equal_nan=True, msg=key)
