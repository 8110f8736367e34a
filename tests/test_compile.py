"""torch.compile of the training step (app/engine/compiled.py): the auto rule, eager steps for
other batch sizes, the fallback to eager when compiling fails, and one real compiled run
(inductor, 32 px) against the same run eager."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from functorch.compile import make_boxed_func
from torch import nn
from torch._dynamo.backends.common import aot_autograd

from app.engine import TrainConfig, fit, load_checkpoint
from app.engine.compiled import BREAK_EVEN_IMAGES, CompiledStep, decide, training_work
from tests.helpers import TINY


def _auto(**kw: Any) -> Any:
    args: dict[str, Any] = {"device_type": "cpu", "world_size": 1, "epochs_left": 5,
                            "train_images": 2000, "image_size": 224}
    return decide("auto", **{**args, **kw})


def test_auto_compiles_only_jobs_past_the_break_even() -> None:
    cpu = BREAK_EVEN_IMAGES["cpu"]
    # The work is counted in images at 224 px: a step's cost grows with the pixels.
    assert training_work(5, 2000, 224) == 10_000 and training_work(5, 2000, 112) == 2_500
    assert training_work(0, 2000, 224) == 0
    below = _auto(epochs_left=1, train_images=cpu)
    assert not below.compiled and below.work_images == cpu and below.break_even_images == cpu
    above = _auto(epochs_left=1, train_images=cpu + 1)
    assert above.compiled and "exceed" in above.reason
    # The same images at half the side are a quarter of the work.
    assert not _auto(epochs_left=2, train_images=cpu, image_size=112).compiled
    # A resumed run counts only the epochs it has left.
    assert not _auto(epochs_left=0, train_images=10 * cpu).compiled
    # The measured figure for the machine (TRAIN_COMPILE_BREAK_EVEN) replaces the default.
    assert _auto(epochs_left=1, train_images=1000, image_size=224, break_even=999).compiled
    assert not _auto(epochs_left=1, train_images=1000, break_even=1000).compiled
    # Each device type has its own figure.
    cuda = BREAK_EVEN_IMAGES["cuda"]
    assert _auto(device_type="cuda", epochs_left=1, train_images=cuda + 1).compiled
    assert not _auto(device_type="cuda", epochs_left=1, train_images=cuda).compiled
    assert not _auto(device_type="mps", train_images=10**9).compiled
    # Several CPU processes (DDP over gloo, a development mode) are never compiled by auto;
    # several GPUs follow the rule.
    assert not _auto(world_size=2, train_images=10**9).compiled
    assert _auto(device_type="cuda", world_size=2, train_images=10**9).compiled
    # on and off do as they say, whatever the job.
    assert decide("on", device_type="cpu", world_size=2, epochs_left=1, train_images=1,
                  image_size=32).compiled
    assert not decide("off", device_type="cuda", world_size=1, epochs_left=10**3,
                      train_images=10**6, image_size=224).compiled
    with pytest.raises(ValueError, match="compile must be one of auto, on, off"):
        decide("yes", device_type="cpu", world_size=1, epochs_left=1, train_images=1,
               image_size=32)


class _Small(nn.Module):
    """A convolution, BatchNorm (running statistics: state a failed step must not leave
    changed) and a head: enough for the compiled paths, quick to trace."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.relu(self.bn(self.conv(x))).mean((2, 3)))


def _train(net: nn.Module, run: Callable[[int, Callable[[nn.Module], torch.Tensor]],
                                         torch.Tensor], sizes: list[int]) -> list[float]:
    """SGD steps on seeded batches of ``sizes``, each through ``run``; the losses."""
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    gen = torch.Generator().manual_seed(0)
    losses = []
    for n in sizes:
        x, y = torch.randn(n, 3, 8, 8, generator=gen), torch.randint(0, 2, (n,), generator=gen)
        opt.zero_grad(set_to_none=True)

        def step(m: nn.Module, x: torch.Tensor = x, y: torch.Tensor = y) -> torch.Tensor:
            loss = F.cross_entropy(m(x), y)
            loss.backward()
            return loss

        losses.append(float(run(n, step).detach()))
        opt.step()
    return losses


def _eager(n: int, step: Callable[[nn.Module], torch.Tensor], net: nn.Module) -> torch.Tensor:
    return step(net)


def test_other_batch_sizes_run_eagerly_without_a_second_compile() -> None:
    graphs: list[int] = []

    def counting(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        graphs.append(len(gm.graph.nodes))
        return gm.forward

    torch.manual_seed(0)
    net = _Small()
    stepper = CompiledStep(net, net, backend=counting)
    _train(net, stepper.run, [8, 8, 3, 8])
    assert len(graphs) == 1  # compiled once, for the batches of 8
    assert (stepper.batch_size, stepper.compiled_steps, stepper.eager_steps) == (8, 3, 1)
    assert stepper.active and stepper.failure is None


def test_a_compile_failure_trains_on_eagerly_from_the_same_batch() -> None:
    def failing_backward(gm: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
        raise RuntimeError("no compiler for the backward")

    # The forward compiles and runs (BatchNorm's statistics move), then the backward's
    # compile fails: the step must be redone eagerly from the state before it.
    backend = aot_autograd(fw_compiler=lambda gm, _: make_boxed_func(gm.forward),
                           bw_compiler=failing_backward)
    torch.manual_seed(0)
    net = _Small()
    reference = copy.deepcopy(net)
    stepper = CompiledStep(net, net, backend=backend)
    sizes = [8, 8, 5]
    got = _train(net, stepper.run, sizes)
    want = _train(reference, lambda n, step: _eager(n, step, reference), sizes)
    assert not stepper.active and "no compiler for the backward" in (stepper.failure or "")
    assert stepper.record()["failure"] == stepper.failure and stepper.eager_steps == 3
    assert got == want
    for (name, a), b in zip(net.state_dict().items(), reference.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_a_compiled_run_matches_eager_and_its_checkpoint_resumes(color_dataset: Path,
                                                                 tmp_path: Path) -> None:
    # The one test that really compiles (inductor): fp32, so "the same results" is tight.
    def run(name: str, **kw: Any) -> Any:
        cfg = TrainConfig(**TINY, epochs=1, precision="fp32", **kw)
        return fit(color_dataset, cfg, tmp_path / f"{name}.pt",
                   epoch_checkpoint=tmp_path / f"{name}.last.pt")

    eager, compiled = run("eager", compile="off"), run("compiled", compile="on")
    e, c = (load_checkpoint(r.checkpoint) for r in (eager, compiled))
    assert c["compute"]["compile"]["compiled"] is True, c["compute"]["compile"]
    assert c["compute"]["compile"]["failure"] is None
    assert c["compute"]["compile"]["batch_size"] == 8  # the last batch of 6 ran eagerly
    assert c["compute"]["compile"]["first_step_seconds"] > 0
    assert e["compute"]["compile"] == {"mode": "off", "compiled": False,
                                       "reason": "compile off", "work_images": None,
                                       "break_even_images": None}
    # The same file: the same keys everywhere, the plain model's state dict.
    assert c.keys() == e.keys() and c["model"].keys() == e["model"].keys()
    assert not any("_orig_mod" in k for k in c["model"])
    # fp32 sums in another order: close, not bit-equal. (Test and validation losses are left
    # out: after two steps from scratch the BatchNorm running statistics make them ~1e8 and
    # chaotic; the train loss and the weights are what the step computes.)
    assert c["metrics"]["train_loss"] == pytest.approx(e["metrics"]["train_loss"], rel=1e-2)

    def flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([v.double().flatten() for v in state.values() if v.is_floating_point()])

    got, want = flat(c["model"]), flat(e["model"])
    assert (got - want).norm() <= 2e-2 * want.norm()  # ~2e-3 measured
    # A compiled run's checkpoint resumes (here eagerly) as any other.
    resumed = fit(color_dataset, TrainConfig(**TINY, epochs=2, precision="fp32", compile="off"),
                  tmp_path / "resumed.pt", resume_from=tmp_path / "compiled.last.pt")
    assert [m.epoch for m in resumed.history] == [1, 2]
    assert resumed.history[0].train_loss == c["history"][0]["train_loss"]
