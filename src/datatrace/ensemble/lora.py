"""LoRA members: a copy of a trained base model with low-rank adapters, fine-tuned briefly (needs ``peft``).

Each member copies the base, freezes every base weight, injects rank-``rank`` LoRA adapters (peft) into the chosen
``nn.Linear`` modules and fine-tunes only the adapters for ``steps`` minibatch Adam steps on the training loss, with its
own seed for the adapter initialisation and the data order. Attribution gradients are then taken w.r.t. the adapter
parameters only (the base weights have ``requires_grad=False``), so the feature dimension is the adapter size. The
base model passed in is never modified.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..data import Data, to_device
from ..errors import InputError
from ..task import Task


def lora_targets(model: nn.Module, targets: Sequence[str] | None) -> list[str]:
    """The ``nn.Linear`` module names to adapt: ``targets`` (checked) or every ``nn.Linear`` of the model."""
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if targets is None:
        if not linear:
            raise InputError(f"kind='lora': {type(model).__name__} has no nn.Linear module to adapt.")
        return linear
    targets = [targets] if isinstance(targets, str) else list(targets)
    bad = [t for t in targets if t not in linear]
    if bad or not targets:
        raise InputError(f"LoRA target modules {bad or targets} match no nn.Linear module; candidates: {linear}.")
    return targets


def import_peft():
    """``(LoraConfig, inject_adapter_in_model)`` from peft, or an error naming the extra that provides it."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError("kind='lora' needs peft: pip install 'datatrace[llm]'.") from err
    return LoraConfig, inject_adapter_in_model


def lora_member(
    base: nn.Module,
    train: Data,
    task: Task,
    *,
    targets: Sequence[str],
    rank: int,
    steps: int,
    lr: float,
    batch_size: int,
    seed: int,
) -> nn.Module:
    """A fine-tuned LoRA copy of ``base`` (in ``eval()`` mode, only adapter parameters trainable)."""
    LoraConfig, inject_adapter_in_model = import_peft()  # noqa: N806
    model = copy.deepcopy(base)
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = inject_adapter_in_model(
            LoraConfig(r=rank, lora_alpha=rank, target_modules=list(targets), lora_dropout=0.0), model
        )
    adapters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(adapters, lr=lr)
    order = torch.Generator().manual_seed(seed)
    model.train()
    n = len(train)
    per_epoch = -(-n // batch_size)
    for step in range(steps):
        if step % per_epoch == 0:
            perm = torch.randperm(n, generator=order)
        idx = perm[(step % per_epoch) * batch_size :][:batch_size]
        batch = to_device(train.batch(idx), next(iter(adapters)).device)
        optimizer.zero_grad()
        task.loss(model, batch).mean().backward()
        optimizer.step()
    return model.eval()


def adapter_names(model: nn.Module) -> list[str]:
    """Names of the trainable (adapter) parameters of a LoRA member."""
    return [n for n, p in model.named_parameters() if p.requires_grad]
