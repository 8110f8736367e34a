"""Evaluating a model on a labelled set: logits for every image, then the metrics of
:mod:`app.engine.metrics`. Training (each epoch, on one process or sharded over several)
and ``Predictor.evaluate_folder`` both go through here, so their figures agree."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from app.engine.device import DevicePlan
from app.engine.distributed import Distributed
from app.engine.metrics import Evaluation, evaluation_from
from app.engine.presets import Preprocessing, normalize_batch

Batches = Iterable[tuple[torch.Tensor, torch.Tensor]]


@torch.inference_mode()
def run_inference(
    model: nn.Module, loader: Batches, plan: DevicePlan, pre: Preprocessing
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (float32, CPU) and targets for every sample of ``loader``, in order."""
    model.eval()
    all_logits, all_targets = [], []
    for images, targets in loader:
        x = normalize_batch(
            images, pre.mean, pre.std, device=plan.device, channels_last=plan.channels_last
        )
        with plan.autocast():
            logits = model(x)
        all_logits.append(logits.float().cpu())
        all_targets.append(torch.as_tensor(targets))
    if not all_logits:
        return torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(all_logits), torch.cat(all_targets)


def evaluate(
    model: nn.Module, loader: Batches, plan: DevicePlan, pre: Preprocessing, classes: list[str]
) -> Evaluation:
    logits, targets = run_inference(model, loader, plan, pre)
    return evaluation_from_logits(classes, logits, targets)


def infer_sharded(
    model: nn.Module,
    loader: Batches,
    plan: DevicePlan,
    pre: Preprocessing,
    ddp: Distributed,
    samples: Sequence[tuple[Path, int]],
    num_classes: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`run_inference` over several processes, ``loader`` holding this rank's shard
    (images rank::N of ``samples``). Every rank first takes rank 0's buffers (BatchNorm
    statistics), so all hold the model rank 0 saves; the logits are gathered back into
    dataset order: the logits of the whole set, identical on every rank."""
    ddp.sync_buffers(model)
    logits, _ = run_inference(model, loader, plan, pre)
    full = ddp.gather_rows(logits, len(samples), num_classes)
    targets = torch.tensor([label for _, label in samples], dtype=torch.long)
    return full, targets


def evaluation_from_logits(
    classes: list[str], logits: torch.Tensor, targets: torch.Tensor
) -> Evaluation:
    loss = F.cross_entropy(logits, targets).item() if len(targets) else float("nan")
    return evaluation_from(classes, targets, logits.argmax(1), loss)
