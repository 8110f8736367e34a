"""The experiment and its data: ``hotdog demo`` (app.experiment), ``demo-data``,
``fetch-d2l``."""

from __future__ import annotations

import argparse
import os
from dataclasses import asdict, fields
from pathlib import Path

from app.cli.exit_codes import EXIT_OK
from app.cli.options import AddCommand, add_service_options, add_train_options
from app.cli.output import Output, emit_json, progress_bar
from app.client import Client
from app.engine.config import PRETRAINED_HEAD_LR_MULT, PRETRAINED_LR, SCRATCH_LR
from app.experiment import (
    FINE_TUNE,
    MODE_CHOICES,
    SCRATCH,
    START_CHOICES,
    TRAIN_PARAMS,
    DemoConfig,
    DemoResult,
    NoiseResult,
    describe_init,
    run_label_noise,
    run_local,
    run_service,
)


def cmd_demo(args: argparse.Namespace) -> int:
    cfg = DemoConfig(**{f.name: getattr(args, f.name) for f in fields(DemoConfig)})
    out = Output(json_mode=args.json)
    if cfg.label_noise > 0:
        if args.mode == "service":
            raise ValueError("--label-noise runs in this process (--mode local): the "
                             "relabelled copy of the data is made here")
        noise = run_label_noise(cfg, out)
        if args.json:
            emit_json(noise.to_dict())
        else:
            print_noise_result(noise, out)
        return EXIT_OK
    with Client(args.url, api_key=args.api_key) as client:
        mode = args.mode
        if mode == "auto":
            mode = "service" if client.reachable() else "local"
            if mode == "local":
                out.say(f"no hotdog service answers at {args.url}: training in this process")
        if mode == "service":
            out.say(f"using the hotdog service at {args.url}")
            result = run_service(cfg, client, out, interval=args.interval)
        else:
            result = run_local(cfg, out)
    if args.json:
        emit_json(result.to_dict())
    else:
        print_result(result, out)
    return EXIT_OK


def comparison_table(result: DemoResult) -> str:
    """Per epoch, the fine-tune's and the scratch run's train loss and test accuracy."""
    def cell(value: float | None, fmt: str) -> str:
        return f"{value:{fmt}}" if value is not None else f"{'-':>{fmt[1:].split('.')[0]}}"

    lines = [f"{'':5} {FINE_TUNE:^20}  {SCRATCH:^20}",
             f"{'epoch':>5} {'train loss':>10} {'test acc':>9}  {'train loss':>10} "
             f"{'test acc':>9}"]
    for r in result.rows():
        lines.append(
            f"{r['epoch']:>5} {cell(r['fine_tune_train_loss'], '>10.4f')} "
            f"{cell(r['fine_tune_test_acc'], '>9.3f')}  "
            f"{cell(r['scratch_train_loss'], '>10.4f')} {cell(r['scratch_test_acc'], '>9.3f')}"
        )
    return "\n".join(lines)


def print_result(result: DemoResult, out: Output) -> None:
    fine, scratch = result.fine_tune, result.scratch
    out.say("")
    if result.note:
        out.say(f"note: {result.note}")
    out.say(f"{FINE_TUNE}: from {describe_init(fine.init)}"
            + (f" (job {fine.job_id})" if fine.job_id else "")
            + f", lr {fine.lr:g}, new head at x{fine.head_lr_mult:g}")
    out.say(f"{SCRATCH}:   from {describe_init(scratch.init)}"
            + (f" (job {scratch.job_id})" if scratch.job_id else "")
            + f", lr {scratch.lr:g}, head x{scratch.head_lr_mult:g}")
    out.say(comparison_table(result))
    out.say(f"final test accuracy: {FINE_TUNE} {fine.test_acc:.3f}, "
            f"{SCRATCH} {scratch.test_acc:.3f}")
    out.say(f"curves written to {result.png}")


def print_noise_result(result: NoiseResult, out: Output) -> None:
    """The three fine-tunes side by side per epoch, then the review's hits."""
    out.say("")
    if result.note:
        out.say(f"note: {result.note}")
    names = [r.name for r in result.runs]
    out.say(f"test accuracy of the fine-tune on {', '.join(names)} labels "
            f"({round(100 * result.label_noise)} % of the training labels flipped)")
    out.say(f"{'epoch':>5} " + " ".join(f"{n:>10}" for n in names))
    for row in result.rows():
        out.say(f"{row['epoch']:>5} " + " ".join(
            f"{row[f'{n}_test_acc']:>10.3f}" if row[f"{n}_test_acc"] is not None
            else f"{'-':>10}" for n in names))
    out.say("final   " + ", ".join(f"{r.name} {r.test_acc:.3f}" for r in result.runs))
    out.say(f"label review ({result.backbone}, {result.review_seconds:.1f} s): flagged "
            f"{result.flagged}, of which {result.found} flipped (precision "
            f"{result.precision:.2f}, recall {result.recall:.2f} of {result.flipped} "
            f"flipped; precision of the top {result.flipped}: {result.precision_at_k:.2f}); "
            f"{result.relabelled_correctly} moved back to their true class")


DEMO_EPILOG = f"""examples:
  hotdog demo                          # service at $HOTDOG_URL if it answers, else in-process
  hotdog demo --mode local --epochs 12 --image-size 96 --out data/demo-big
  hotdog demo --url http://gpu-box:8000 --image-size 224 --epochs 5 --batch-size 128
  hotdog demo --json > demo.json       # the table and both runs as JSON; progress on stderr
  hotdog demo --label-noise 0.1        # clean vs 10 % flipped labels vs relabelled after review

Both runs see the same data, epochs, batch and seed. The fine-tune trains the pretrained
backbone at lr {PRETRAINED_LR:g} and its new, random head {PRETRAINED_HEAD_LR_MULT:g}x faster (it
must move further); from scratch every layer is random, so all train at one larger rate,
{SCRATCH_LR:g} (a 10x head diverges there).
Without ImageNet weights the fine-tune starts from a model trained first on a different
synthetic task (--start pretext forces this). Generated data, checkpoints and curves.png go
to --out; a second run reuses the data. The defaults take about 70 s on an idle 2-core
CPU.

--label-noise P (in this process): flips P of the training labels (seeded) in a copy of
the data, fine-tunes on the clean and the noisy copy, reviews the noisy labels (the
fine-tune's starting backbone, k-fold logistic regression, cleanlab), relabels the flagged
images as suggested in another copy, fine-tunes on it and prints the three side by side.

"""


def cmd_demo_data(args: argparse.Namespace) -> int:
    from app.datasets.archive import zip_dataset
    from app.datasets.synthetic import generate_demo_dataset

    out = Path(args.out)
    total = 2 * (args.train_per_class + args.test_per_class)
    with progress_bar(total=total, unit="img", desc="generating") as bar:
        summary = generate_demo_dataset(
            out, train_per_class=args.train_per_class, test_per_class=args.test_per_class,
            seed=args.seed, progress=lambda done, _total: bar.update(done - bar.n),
        )
    if args.zip:
        summary["zip"] = str(zip_dataset(out, out.with_suffix(".zip")))
    if args.json:
        emit_json(summary)
    else:
        counts = summary["counts"]
        print(f"wrote {out}: train {counts['train']}, test {counts['test']}")
        if args.zip:
            print(f"zipped to {summary['zip']}")
    return EXIT_OK


def cmd_fetch_d2l(args: argparse.Namespace) -> int:
    from app.datasets.d2l import fetch_d2l

    path = fetch_d2l(args.out)
    if args.json:
        emit_json({"path": str(path)})
    else:
        print(f"d2l hotdog dataset extracted to {path}")
    return EXIT_OK


def register_data(command: AddCommand) -> None:
    p = command("demo-data", cmd_demo_data, "write a synthetic hotdog / not-hotdog ImageFolder "
                "dataset (photo-like JPEGs)",
                "examples:\n  hotdog demo-data data/demo\n"
                "  hotdog demo-data data/tiny --train-per-class 8 --test-per-class 4 --zip\n\n")
    p.add_argument("out", metavar="OUT", help="folder to create (must not exist or be empty)")
    p.add_argument("--train-per-class", type=int, default=100)
    p.add_argument("--test-per-class", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zip", action="store_true", help="also write OUT.zip, ready to upload")


def register(command: AddCommand) -> None:
    p = command("demo", cmd_demo, "the seed's experiment: fine-tune vs from scratch on "
                "synthetic hotdog photos, side by side, with a PNG of both curves", DEMO_EPILOG)
    defaults = DemoConfig()
    p.add_argument("--out", type=Path, default=Path(os.environ.get("DATA_DIR", "data"))
                   / "demo-run", help="folder for the generated data, checkpoints and "
                   "curves.png")
    p.add_argument("--png", type=Path, default=None, help="write the curves here instead "
                   "of OUT/curves.png")
    # Both runs' training parameters: TrainConfig's help and ranges, the demo's defaults.
    add_train_options(p, None, asdict(defaults), only=TRAIN_PARAMS)
    p.add_argument("--train-per-class", type=int, default=defaults.train_per_class,
                   help="generated training photos per class")
    p.add_argument("--test-per-class", type=int, default=defaults.test_per_class,
                   help="generated test photos per class")
    p.add_argument("--pretext-epochs", type=int, default=defaults.pretext_epochs,
                   help="epochs of the other-task model, when there are no ImageNet weights")
    p.add_argument("--pretext-per-class", type=int, default=defaults.pretext_per_class,
                   help="its training images per food")
    p.add_argument("--start", choices=START_CHOICES, default=defaults.start,
                   help="the fine-tune's start: ImageNet when available (auto), ImageNet or "
                   "fail (imagenet), or the other-task model (pretext)")
    p.add_argument("--label-noise", type=float, default=defaults.label_noise, metavar="P",
                   help="instead: flip this share of the training labels (e.g. 0.1), show the "
                   "drop in test accuracy, review the labels, relabel and retrain (local)")
    p.add_argument("--mode", choices=MODE_CHOICES, default="auto",
                   help="service: through the service at --url; local: in this process; "
                   "auto: the service if it answers, else local")
    add_service_options(p)
    p.add_argument("--interval", type=float, default=1.0,
                   help="seconds between polls of the service")

    p = command("fetch-d2l", cmd_fetch_d2l, "download and verify d2l's real hotdog dataset "
                "(needs internet)", "examples:\n  hotdog fetch-d2l data/hotdog\n\n")
    p.add_argument("out", metavar="OUT")
