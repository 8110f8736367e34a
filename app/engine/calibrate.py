"""Calibrated probabilities by temperature scaling (Guo et al., "On Calibration of Modern
Neural Networks", ICML 2017): one scalar T, fitted after training on the validation
split's logits by minimising the negative log-likelihood of ``softmax(logits / T)`` with
LBFGS. Dividing every logit by the same T > 0 never changes which class is largest, so the
labels stay exactly as they were; only the probabilities move.

The expected calibration error (:func:`expected_calibration_error`, 15 equal-width
confidence bins as in the paper) is measured on the test split before and after, and
reported: it is never used to choose T.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

ECE_BINS = 15
# T is kept in this range: a tiny validation split that the model classifies perfectly
# would otherwise drive T towards 0 (ever sharper, and ever more wrongly sure on test).
MIN_TEMPERATURE, MAX_TEMPERATURE = 0.05, 20.0


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """The T minimising the NLL of ``softmax(logits / T)`` on these logits (1.0 when there
    is nothing to fit or the logits are not finite)."""
    if len(targets) == 0 or not bool(torch.isfinite(logits).all()):
        return 1.0
    # clone(): tensors made in inference mode cannot take part in autograd themselves
    x, y = logits.detach().cpu().double().clone(), targets.detach().cpu().long().clone()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) > 0
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(x / log_t.exp(), y)
        loss.backward()  # type: ignore[no-untyped-call]
        return loss

    optimizer.step(closure)  # type: ignore[no-untyped-call]
    t = float(log_t.detach().exp())
    if not math.isfinite(t):
        return 1.0
    return min(MAX_TEMPERATURE, max(MIN_TEMPERATURE, t))


def expected_calibration_error(probs: torch.Tensor, targets: torch.Tensor,
                               bins: int = ECE_BINS) -> float:
    """Sum over equal-width confidence bins of (share of images in the bin) x |accuracy -
    mean confidence| in the bin; confidence is the top class's probability."""
    if len(targets) == 0:
        return float("nan")
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == targets).double()
    # Bin b holds confidences in (b/bins, (b+1)/bins]; a confidence of 0 joins the first.
    index = (confidence.double() * bins).ceil().long().clamp(1, bins) - 1
    error = 0.0
    for b in range(bins):
        members = index == b
        count = int(members.sum())
        if count:
            gap = correct[members].mean() - confidence[members].double().mean()
            error += count / len(targets) * abs(float(gap))
    return error


def calibration_report(test_logits: torch.Tensor, test_targets: torch.Tensor,
                       temperature: float | None, val_images: int) -> dict[str, Any]:
    """What a job records: the temperature (``calibrated`` false and T = 1 without a
    validation split) and the test split's ECE before and after applying it."""
    t = temperature if temperature is not None else 1.0
    before = expected_calibration_error(torch.softmax(test_logits, dim=1), test_targets)
    after = expected_calibration_error(torch.softmax(test_logits / t, dim=1), test_targets)
    return {"calibrated": temperature is not None, "temperature": t, "bins": ECE_BINS,
            "ece_before": before, "ece_after": after, "val_images": val_images}
