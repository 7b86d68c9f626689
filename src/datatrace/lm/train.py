"""A small, seeded training loop for causal LMs (pretraining the tiny GPT, LoRA fine-tuning an HF model)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._utils import model_device, track
from ..data import Data, as_data, to_device
from ..errors import InputError
from ..eval.retrain import data_order
from .task import CausalLMTask


def train_causal_lm(
    model: nn.Module,
    data: Sequence[Tensor] | Data,
    *,
    steps: int,
    batch_size: int = 32,
    lr: float = 3e-3,
    weight_decay: float = 0.1,
    warmup: float = 0.1,
    seed: int = 0,
    verbose: bool = False,
) -> nn.Module:
    """Train ``model`` in place with AdamW on the mean of :class:`~datatrace.lm.CausalLMTask`'s per-example loss.

    Args:
        model: the model; only parameters with ``requires_grad`` are trained (e.g. a PEFT model's adapters).
        data: ``(input_ids, loss_mask)`` examples, e.g. a :class:`~datatrace.lm.Corpus` (or data encoded by a
            :class:`~datatrace.lm.PrefixCache`, to train the upper part of a model whose lower layers are frozen).
        steps: optimiser steps.
        batch_size: examples per step; examples are visited in a fresh random order every epoch.
        lr: peak learning rate, reached after linear warm-up over ``warmup · steps`` steps, then cosine decay to 0.
        weight_decay: AdamW decoupled weight decay of parameters with ≥ 2 dimensions (weights, embeddings); biases
            and norm gains are not decayed.
        seed: seeds the example order, a fresh one every epoch (:func:`~datatrace.eval.data_order`: subsets of one
            training set trained with the same seed visit their shared examples in the same relative order, the
            data-order half of common random numbers). The initialisation is the model's own business.
        verbose: progress bar.

    Returns:
        the model, in ``eval()`` mode.
    """
    data = as_data(data, "train")
    if steps < 1 or batch_size < 1:
        raise InputError(f"steps and batch_size must be ≥ 1, got {steps}, {batch_size}.")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise InputError("The model has no trainable parameters.")
    groups = [
        {"params": [p for p in params if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
    ]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))
    warm = max(1, round(warmup * steps))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, steps - warm)))
    )
    task, device = CausalLMTask(), model_device(model)
    epoch, pos = 0, 0
    order = data_order(data, seed, epoch)
    model.train()
    for _ in track(range(steps), "training", steps, verbose):
        if pos + batch_size > len(order):
            epoch, pos = epoch + 1, 0
            order = data_order(data, seed, epoch)
        batch = to_device(data.batch(order[pos : pos + batch_size]), device)
        pos += batch_size
        loss = task.loss(model, batch).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()
