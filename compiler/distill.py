"""Knowledge distillation: fine-tune a (pruned) student to reproduce a teacher's outputs.

    pruned = fxforge.prune_channels(model, 0.5, example_inputs=x)
    student = fxforge.distill(pruned, model, loader, epochs=3)   # a fine-tuned copy
    fast = fxforge.compile(student, "cpu")                        # the zeroed channels go here

Pruning costs accuracy; training the pruned model on the teacher's soft targets (Hinton et al.,
"Distilling the Knowledge in a Neural Network") wins most of it back, without labels. An ordinary
training loop would let some zeroed entries move (the beta of a pruned batch norm that no ReLU
follows, the zeroed rows of a layer whose inputs are not zero), and a channel with one nonzero
entry can no longer be removed by `remove-pruned-channels`: so every parameter entry that is
exactly zero in the student when `distill` starts is kept exactly zero (its gradient is zeroed,
and it is zeroed again after every optimizer step). Pruned batch norms keep gamma = beta = 0, so
their outputs stay 0 whatever their running statistics learn in training mode.

The student and the teacher are never modified: the student is deep-copied before training; the
teacher runs under `torch.no_grad` in eval mode, its modules' training flags restored after (a
teacher on another device than the training is copied there, as moving a module is in place).
"""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from fxforge.errors import InputError, OptionError

LOSSES = ("kl", "mse")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "constant")


def distill(student: torch.nn.Module, teacher: Any, data: Iterable, *, epochs: int = 3,
            lr: float = 1e-3, temperature: float = 4.0, alpha: float = 1.0, loss: str = "kl",
            optimizer: str = "adam", schedule: str = "cosine",
            device: str | torch.device | None = None,
            keep_zeros: bool = True, seed: int = 0, progress: bool | None = None,
            history: list | None = None) -> torch.nn.Module:
    """A copy of `student` trained for `epochs` passes over `data` to match `teacher`; in eval
    mode, on `device`.

    data: re-read every epoch (a list of batches, a DataLoader). Each item is
        * a tensor, a dict of keyword inputs, or a 1-tuple/list `(inputs,)`: inputs only;
        * a 2-tuple/list `(inputs, labels)` (what a DataLoader over a `TensorDataset(x, y)`
          yields), where inputs is a tensor, a tuple/list of positional inputs or a dict of
          keyword inputs, and labels are class indices (`None`: no labels).
        A model with several positional inputs and no labels takes `((a, b), None)`. An iterator
        (a generator) can be read once only, so it is refused when epochs > 1.
    teacher: an nn.Module, or any callable (a compiled model); its output must be one tensor of
        the shape of the student's (checked on every batch, `InputError` naming both shapes).
    loss: "kl" is the soft-target loss: KL(softmax(teacher / T) || softmax(student / T)) over
        the last dimension, averaged over the other ones and scaled by T^2 (so its gradients
        keep their size whatever T); "mse" is the mean squared error of the logits (T unused).
    alpha: the weight of that loss; 1 - alpha weights the cross-entropy of the student's logits
        with the labels. The default 1.0 ignores labels; alpha < 1 with a batch that has none
        is an `OptionError` rather than a silent change of the objective.
    optimizer: "adam", or "sgd" (momentum 0.9), at learning rate `lr`, over the student's
        parameters that require grad (frozen ones stay frozen). schedule "cosine" takes the
        learning rate from `lr` down to about 0 along the run, step by step (epoch by epoch when
        the data has no len()), which settles a short fine-tune better than "constant".
    device: where training runs; None is the student's device. Batches are moved there.
    keep_zeros: keep every exactly-zero parameter entry of the student at zero (pruned channels
        stay removable). A student trained from scratch has exactly-zero batch-norm betas at
        initialization: pass False there.
    seed: the RNG is seeded with it inside `torch.random.fork_rng` (dropout, a shuffling
        DataLoader): two calls give the same result, and the caller's RNG state is unchanged.
    progress: a tqdm bar with the running loss; None shows it only when stderr is a terminal.
    history: a list that receives the mean batch loss of every epoch.
    """
    _check_options(student, teacher, epochs, lr, temperature, alpha, loss, optimizer, schedule,
                   seed, history)
    if isinstance(data, Iterator) and epochs > 1:
        raise OptionError(f"epochs={epochs} reads the data {epochs} times, but a "
                          f"{type(data).__name__} can be read only once: pass a list of batches "
                          "or a DataLoader")
    device = torch.device(device) if device is not None else next(
        (t.device for t in (*student.parameters(), *student.buffers())), torch.device("cpu"))
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    result = copy.deepcopy(student).to(device)
    params = [p for p in result.parameters() if p.requires_grad]
    if not params:
        raise OptionError("the student has no parameter that requires grad: nothing to train")
    masks = {p: p.detach() == 0 for p in params if keep_zeros and bool((p == 0).any())}
    with contextlib.ExitStack() as stack:
        fork = [device.index] if device.type == "cuda" else []
        stack.enter_context(torch.random.fork_rng(devices=fork))
        torch.manual_seed(seed)
        teacher = _teacher_on(teacher, device, stack)
        opt = (torch.optim.Adam(params, lr=lr) if optimizer == "adam"
               else torch.optim.SGD(params, lr=lr, momentum=0.9))
        per_epoch = _length(data)
        bar = _bar(per_epoch * epochs or None, progress)
        stack.callback(bar.close)
        result.train()
        for epoch in range(epochs):
            total, batches = 0.0, 0
            for item in data:
                if schedule == "cosine":  # from lr down to ~0 over the run
                    done = epoch + (min(batches / per_epoch, 1.0) if per_epoch else 0.0)
                    for group in opt.param_groups:
                        group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * done / epochs))
                args, kwargs, labels = _split(item, batches)
                args, kwargs = _to(args, device), {k: _to(v, device) for k, v in kwargs.items()}
                with torch.no_grad():
                    target = teacher(*args, **kwargs)
                out = result(*args, **kwargs)
                _check_outputs(out, target, batches)
                value = _loss(out, target, labels, loss, temperature, alpha, device, batches)
                opt.zero_grad(set_to_none=True)
                value.backward()
                _step(opt, masks)
                total, batches = total + value.item(), batches + 1
                bar.set_postfix(epoch=epoch + 1, loss=f"{total / batches:.4f}", refresh=False)
                bar.update(1)
            if batches == 0:
                raise InputError(f"the data yielded no batch in epoch {epoch + 1}")
            bar.refresh()  # each epoch's loss is shown, however fast the epoch was
            if history is not None:
                history.append(total / batches)
    for p in result.parameters():
        p.grad = None
    return result.eval()


def _step(opt: torch.optim.Optimizer, masks: dict[torch.Tensor, torch.Tensor]) -> None:
    """An optimizer step that leaves the masked (originally zero) entries at exactly zero: their
    gradients are zeroed first, so Adam's and SGD's updates of them are 0, and they are zeroed
    again after the step so that the guarantee does not rest on the optimizer's arithmetic."""
    with torch.no_grad():
        for p, mask in masks.items():
            if p.grad is not None:
                p.grad.masked_fill_(mask, 0)
        opt.step()
        for p, mask in masks.items():
            p.masked_fill_(mask, 0)


# --- options ------------------------------------------------------------------------------------


def _check_options(student, teacher, epochs, lr, temperature, alpha, loss, optimizer, schedule,
                   seed, history) -> None:
    if not isinstance(student, torch.nn.Module):
        raise OptionError(f"distill() trains a torch.nn.Module student, got "
                          f"{type(student).__name__}")
    if not callable(teacher):
        raise OptionError(f"teacher must be an nn.Module or a callable, got "
                          f"{type(teacher).__name__}")
    if isinstance(epochs, bool) or not isinstance(epochs, numbers.Integral) or epochs < 1:
        raise OptionError(f"epochs must be a positive int, got {epochs!r}")
    for name, value in (("lr", lr), ("temperature", temperature)):
        if not _real(value) or not 0 < value < math.inf:
            raise OptionError(f"{name} must be a positive finite number, got {value!r}")
    if not _real(alpha) or not 0 <= alpha <= 1:
        raise OptionError(f"alpha (the weight of the soft loss; 1 - alpha weights the labels' "
                          f"cross-entropy) must be in [0, 1], got {alpha!r}")
    if loss not in LOSSES:
        raise OptionError(f"unknown loss {loss!r}; use 'kl' (soft targets at the temperature) "
                          "or 'mse' (logits)")
    if optimizer not in OPTIMIZERS:
        raise OptionError(f"unknown optimizer {optimizer!r}; use 'adam' or 'sgd'")
    if schedule not in SCHEDULES:
        raise OptionError(f"unknown schedule {schedule!r}; use 'cosine' or 'constant'")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise OptionError(f"seed must be an int, got {type(seed).__name__}")
    if history is not None and not isinstance(history, list):
        raise OptionError(f"history must be a list (it receives each epoch's mean loss), got "
                          f"{type(history).__name__}")


def _real(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


# --- the models ---------------------------------------------------------------------------------


def _teacher_on(teacher: Any, device: torch.device, stack: contextlib.ExitStack) -> Any:
    """The teacher in eval mode on `device`: the user's module with its training flags restored
    when the stack closes, or a copy where it must move (moving is in place)."""
    if not isinstance(teacher, torch.nn.Module):
        return teacher
    tensors = [*teacher.parameters(), *teacher.buffers()]
    if any(t.device != device for t in tensors):
        return copy.deepcopy(teacher).to(device).eval()
    flags = [(m, m.training) for m in teacher.modules()]
    stack.callback(lambda: [m.train(mode) for m, mode in flags])
    return teacher.eval()


def _length(data: Iterable) -> int:
    """Batches per epoch, or 0 where the data cannot say (a generator, an IterableDataset)."""
    try:
        return len(data)  # type: ignore[arg-type]
    except TypeError:
        return 0


def _bar(total: int | None, progress: bool | None):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="distill", unit="batch", leave=False,
                disable=None if progress is None else not progress)


# --- batches and the loss -----------------------------------------------------------------------


def _split(item: Any, index: int) -> tuple[tuple, dict, torch.Tensor | None]:
    """(positional inputs, keyword inputs, labels or None) of one item of the data."""
    labels = None
    if isinstance(item, (tuple, list)) and len(item) in (1, 2):
        item, labels = item[0], (item[1] if len(item) == 2 else None)
    elif isinstance(item, (tuple, list)):
        raise InputError(f"batch {index} is a {type(item).__name__} of {len(item)} items; "
                         "distill takes inputs, (inputs,) or (inputs, labels)")
    if labels is not None and not isinstance(labels, torch.Tensor):
        raise InputError(f"the labels of batch {index} are a {type(labels).__name__}, not a "
                         "tensor of class indices")
    if isinstance(item, torch.Tensor):
        return (item,), {}, labels
    if isinstance(item, (tuple, list)):
        return tuple(item), {}, labels
    if isinstance(item, dict):
        return (), dict(item), labels
    raise InputError(f"the inputs of batch {index} are a {type(item).__name__}; use a tensor, "
                     "a tuple of positional inputs or a dict of keyword inputs")


def _to(value: Any, device: torch.device) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    return tuple(_to(v, device) for v in value) if isinstance(value, tuple) else value


def _check_outputs(out: Any, target: Any, index: int) -> None:
    for who, value in (("student", out), ("teacher", target)):
        if not isinstance(value, torch.Tensor):
            raise InputError(f"the {who} returned a {type(value).__name__} on batch {index}; "
                             "distill needs one tensor of logits (wrap the model to pick it)")
    if out.shape != target.shape or out.ndim == 0:
        raise InputError(f"the student's output of shape {tuple(out.shape)} does not match the "
                         f"teacher's of shape {tuple(target.shape)} (batch {index}); distill "
                         "needs outputs of one shape with a class dimension last")


def _loss(out: torch.Tensor, target: torch.Tensor, labels: torch.Tensor | None, kind: str,
          temperature: float, alpha: float, device: torch.device, index: int) -> torch.Tensor:
    classes = out.shape[-1]
    soft = hard = 0.0
    if alpha > 0 and kind == "mse":
        soft = F.mse_loss(out, target.to(out.dtype))
    elif alpha > 0:
        t = temperature
        soft = F.kl_div(F.log_softmax(out.reshape(-1, classes) / t, dim=-1),
                        F.softmax(target.reshape(-1, classes).to(out.dtype) / t, dim=-1),
                        reduction="batchmean") * (t * t)
    if alpha < 1 and labels is None:
        raise OptionError(f"alpha={alpha:g} gives the labels' cross-entropy a weight of "
                          f"{1 - alpha:g}, but batch {index} has no labels; yield (inputs, "
                          "labels) or use alpha=1 (soft targets only)")
    if alpha < 1 and labels.numel() != out.numel() // classes:
        raise InputError(f"batch {index} has {labels.numel()} labels for "
                         f"{out.numel() // classes} rows of logits {tuple(out.shape)}")
    if alpha < 1:
        hard = F.cross_entropy(out.reshape(-1, classes), labels.reshape(-1).to(device).long())
    return soft if alpha == 1 else hard if alpha == 0 else alpha * soft + (1 - alpha) * hard
