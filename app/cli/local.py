"""The engine in this process: ``hotdog train``, ``evaluate``, ``predict``, ``export``,
``review-local``."""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.cli.exit_codes import EXIT_OK
from app.cli.options import AddCommand, add_train_options, train_config
from app.cli.output import EpochTable, emit_json, progress_bar
from app.engine.callback import BatchProgress, Callback, EpochMetrics, StartInfo
from app.engine.config import INIT_IMAGENET, INIT_SCRATCH, TrainConfig

if TYPE_CHECKING:
    from app.engine.metrics import Evaluation
    from app.engine.predict import Predictor

# torch and the engine's computing modules are imported by the commands that compute, not
# here: every command's parser is built from this module, and a client command (which
# only talks to a service) then starts without loading torch.

TRAIN_EPILOG = """examples:
  hotdog demo-data data/demo
  hotdog train data/demo --out model.pt                      # fine-tune from ImageNet
  hotdog train data/demo --out scratch.pt --init scratch     # lr 0.064, head x1
  hotdog train data/demo --out small.pt --image-size 64 --epochs 3
  hotdog train data/demo --out model.pt --epochs 10 --resume-from model.last.pt

lr and head multiplier default by --init: 0.0064 and x10 for pretrained starts (d2l's
5e-5 on a summed loss of batch 128), 0.064 and x1 from scratch.
While training, model.last.pt (next to --out) holds the last finished epoch and
model.best.pt the best one on the validation split; both are removed when the run
succeeds. --out holds the kept model (--select: the best epoch on the validation split
by default when there is one, else the last).
"""


class _TrainReport(Callback):
    """``hotdog train``'s progress: a bar on stderr and, unless --json, the epoch table."""

    def __init__(self, show: bool) -> None:
        self.show = show
        self.table = EpochTable()
        self.bar: Any = None

    def on_start(self, info: StartInfo) -> None:
        cfg = info.config
        if self.show:
            val = (f"validating on {info.val_count} ({info.val_source}), " if info.val_count
                   else "no validation split, ")
            print(f"training on {info.train_count} images, {val}testing on {info.test_count}, "
                  f"classes {', '.join(info.classes)}; {info.device} {info.precision}; "
                  f"init {cfg.init}, lr {cfg.lr:g} (head x{cfg.head_lr_mult:g}), "
                  f"batch {cfg.batch_size}, image size {cfg.image_size}", flush=True)
        total = info.batches_per_epoch * (info.epochs - info.start_epoch)
        self.bar = progress_bar(total=total, unit="batch")

    def on_batch(self, progress: BatchProgress) -> None:
        self.bar.set_description(f"epoch {progress.epoch}/{progress.epochs}")
        self.bar.update(1)

    def on_epoch(self, m: EpochMetrics) -> None:
        if self.show:
            self.table.add(m.to_dict())


def cmd_train(args: argparse.Namespace) -> int:
    from app.engine.train import best_beside, fit

    config = train_config(args)
    out = Path(args.out)
    last = out.with_name(out.stem + ".last.pt")
    report = _TrainReport(show=not args.json)
    try:
        result = fit(args.data_dir, config, out, callback=report,
                     resume_from=args.resume_from, epoch_checkpoint=last)
    finally:
        if report.bar is not None:
            report.bar.close()
    last.unlink(missing_ok=True)
    best_beside(last).unlink(missing_ok=True)
    ev = result.evaluation
    assert ev is not None  # fit evaluates the final model
    if args.json:
        emit_json({
            "checkpoint": str(result.checkpoint),
            "classes": result.classes,
            "epochs": [m.to_dict() for m in result.history],
            "selected_epoch": result.selected_epoch,
            "note": result.note,
            "test_acc": result.test_acc,
            "evaluation": ev.to_dict(),
            "params": result.config.to_dict(),
        })
    else:
        kept = result.selected
        val = ("" if kept is None or kept.val_acc is None
               else f"validation accuracy {kept.val_acc:.3f}, ")
        if result.note:
            print(f"note: {result.note}")
        print(f"kept the model of epoch {result.selected_epoch}: {val}test accuracy "
              f"{ev.accuracy:.3f} (balanced {ev.balanced_accuracy:.3f}, macro F1 "
              f"{ev.macro_f1:.3f}); checkpoint written to {result.checkpoint}")
        if ev.calibration:
            print(calibration_text(ev.calibration))
    return EXIT_OK


def print_evaluation(ev: Evaluation) -> None:
    width = max(8, *(len(c) for c in ev.classes))
    print(f"accuracy {ev.accuracy:.4f} on {ev.count} images, balanced accuracy "
          f"{ev.balanced_accuracy:.4f}, macro F1 {ev.macro_f1:.4f}, loss {ev.loss:.4f}")
    print("confusion matrix (rows: true class, columns: predicted)")
    print(" " * width + " " + " ".join(f"{c[:width]:>{width}}" for c in ev.classes))
    for label, row in zip(ev.classes, ev.confusion, strict=True):
        print(f"{label:>{width}} " + " ".join(f"{n:>{width}}" for n in row))
    print(f"{'class':>{width}} {'precision':>9} {'recall':>7} {'f1':>6} {'support':>7}")
    for r in ev.per_class:
        print(f"{r.label:>{width}} {r.precision:>9.3f} {r.recall:>7.3f} {r.f1:>6.3f} "
              f"{r.support:>7}")
    if ev.calibration:
        print(calibration_text(ev.calibration))


def calibration_text(c: dict[str, Any]) -> str:
    """The temperature and the expected calibration error it changes."""
    if not c["calibrated"]:
        return (f"probabilities: plain softmax (no validation split to calibrate on); "
                f"ECE {c['ece_before']:.4f}")
    return (f"probabilities: calibrated, temperature {c['temperature']:.3f} (fitted on "
            f"{c['val_images']} validation images); ECE {c['ece_before']:.4f} before, "
            f"{c['ece_after']:.4f} after ({c['bins']} bins)")


def _predictor(args: argparse.Namespace) -> Predictor:
    from app.engine.predict import Predictor

    return Predictor(args.checkpoint, device=args.device, precision=args.precision,
                     runtime=args.runtime)


def cmd_evaluate(args: argparse.Namespace) -> int:
    ev, preds = _predictor(args).evaluate_folder(args.data_dir, split=args.split)
    if args.json:
        obj: dict[str, Any] = {"test_acc": ev.accuracy, "split": args.split, **ev.to_dict()}
        if args.per_image:
            obj["predictions"] = [p.to_dict() for p in preds]
        emit_json(obj)
    else:
        print_evaluation(ev)
        if args.per_image:
            for p in preds:
                print(f"{p.filename}\t{p.label}\t{p.probabilities[p.label]:.4f}")
    return EXIT_OK


def probabilities_text(probabilities: dict[str, float]) -> str:
    """Every class's probability, as ``hotdog predict`` and ``classify`` print them."""
    return "  ".join(f"{c} {v:.3f}" for c, v in probabilities.items())


def cmd_predict(args: argparse.Namespace) -> int:
    predictor = _predictor(args)
    paths = [Path(p) for p in args.images]
    if args.crop == "full":
        import torch

        from app.engine.explain import load_full_image

        batch = torch.stack([load_full_image(p, predictor.preprocessing, name=str(p))
                             for p in paths])
        preds = predictor.report(predictor.probabilities(batch), list(args.images))
    else:
        preds = predictor.predict(paths, names=list(args.images))
    rows = [p.to_dict() for p in preds]
    written: list[Path | None] = [None] * len(rows)
    if args.explain:
        from app.engine.explain import Explainer

        explainer = Explainer(args.checkpoint)
        for row, path in zip(rows, paths, strict=True):
            row["explanation"] = explainer.explain(path, row["label"], crop=args.crop).to_dict()
        written = list(write_overlays(rows, args.images, args.explain))
    if args.json:
        emit_json({"model": str(args.checkpoint), "calibrated": predictor.calibrated,
                   "temperature": predictor.temperature, "crop": args.crop,
                   "predictions": rows})
    else:
        for row, out in zip(rows, written, strict=True):
            print(f"{row['filename']}: {row['label']}  "
                  f"({probabilities_text(row['probabilities'])})")
            if out is not None:
                print(f"  {explanation_text(row['explanation'])}; overlay {out}")
    return EXIT_OK


def add_explain_options(p: argparse.ArgumentParser, metavar: str, help: str) -> None:
    p.add_argument("--explain", default=None, metavar=metavar, help=help)
    p.add_argument("--crop", choices=("center", "full"), default="center",
                   help="center: Resize + CenterCrop (the recipe); full: the whole photo "
                   "resized to the model's square input")


def write_overlays(rows: Sequence[Mapping[str, Any]], images: list[str], out: str
                   ) -> list[Path]:
    """Each row's explanation overlay as a PNG: ``out`` itself for one photo named *.png,
    else ``out/<photo name>.png`` (a folder made if needed). Temp name, then rename."""
    import base64

    target = Path(out)
    if len(rows) == 1 and target.suffix.lower() == ".png":
        files = [target]
    else:
        target.mkdir(parents=True, exist_ok=True)
        files = [target / f"{Path(name).stem}.png" for name in images]
        if len(set(files)) != len(files):  # photos of one name in different folders
            files = [target / f"{i:03d}-{Path(name).stem}.png" for i, name in enumerate(images)]
    for row, path in zip(rows, files, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_bytes(base64.b64decode(row["explanation"]["overlay_png"]))
        tmp.replace(path)
    return files


def explanation_text(e: Mapping[str, Any]) -> str:
    coverage = "n/a" if e["crop_coverage"] is None else f"{e['crop_coverage']:.0%}"
    peak = "none" if e["peak"] is None else f"({e['peak'][0]}, {e['peak'][1]})"
    text = f"heatmap of {e['class']}: peak {peak}, {coverage} inside the crop"
    return text + (f"; warning: {e['warning']}" if e["warning"] else "")


def cmd_export(args: argparse.Namespace) -> int:
    from app.engine.checkpoint import load_checkpoint
    from app.engine.export import SUFFIXES, dataset_images, export_verified, random_images
    from app.engine.presets import Preprocessing

    ckpt_path = Path(args.checkpoint)
    pre = Preprocessing.from_dict(load_checkpoint(ckpt_path)["preprocessing"])
    out = Path(args.out) if args.out else ckpt_path.with_name(
        ckpt_path.stem + SUFFIXES[args.format])
    if args.data:
        images, on = dataset_images(ckpt_path, args.data, limit=args.verify_images), args.data
    else:
        images, on = random_images(pre, args.verify_images), "random pixels"
    record = export_verified(ckpt_path, images, out, fmt=args.format)
    if record.error:
        raise ValueError(f"{args.format} export failed: {record.error}")
    if args.json:
        emit_json({"format": args.format, "out": str(out), "bytes": out.stat().st_size,
                   "verified_on": on, **record.to_dict()})
    else:
        print(f"wrote {out} ({args.format}, {out.stat().st_size / 1e6:.1f} MB): probabilities "
              f"equal PyTorch's within {record.max_abs_diff:.1e} on {record.images} images "
              f"({on})")
        print(f"input: uint8 RGB, N x {pre.image_size} x {pre.image_size} x 3, the shorter "
              f"side resized to {pre.resize_size} then centre-cropped; outputs: logits, "
              "probabilities")
    return EXIT_OK


class _ReviewProgress(Callback):
    """``hotdog review-local``'s bar over the embedding pass."""

    def __init__(self) -> None:
        self.bar: Any = None

    def on_batch(self, progress: BatchProgress) -> None:
        if self.bar is None:
            self.bar = progress_bar(total=progress.batches, unit="batch", desc="embedding")
        self.bar.update(1)


def cmd_review_local(args: argparse.Namespace) -> int:
    from app.engine.review import ReviewConfig, choose_backbone, review_labels, write_review

    if args.checkpoint is None and args.init is None:
        args.init = INIT_IMAGENET
    config = ReviewConfig(folds=args.folds, seed=args.seed, batch_size=args.batch_size,
                          device=args.device, precision=args.precision,
                          max_listed=args.limit)
    backbone = choose_backbone(args.checkpoint, start=args.init, prefer=args.backbone,
                               image_size=args.image_size, seed=args.seed)
    progress = _ReviewProgress()
    try:
        review = review_labels(args.data_dir, backbone, config, callback=progress)
    finally:
        if progress.bar is not None:
            progress.bar.close()
    if args.out:
        write_review(review, args.out)
    if args.json:
        emit_json({"data_dir": str(args.data_dir), **review.to_dict(),
                   "summary": review.summary()})
        return EXIT_OK
    s = review.summary()
    print(f"label review of {args.data_dir}: {s['images']} training images, backbone: "
          f"{s['backbone']}; out-of-sample accuracy {s['cv_accuracy']:.3f} ({s['folds']} "
          f"folds); {s['flagged']} flagged, {s['outliers']} outliers "
          f"({sum(s['seconds'].values()):.1f} s)")
    if review.issues:
        print(f"{'rank':>4} {'id':>6} {'given':<14} {'suggested':<14} {'conf':>5}  path")
    for i in review.issues:
        print(f"{i.rank:>4} {i.image_id:>6} {i.label[:14]:<14} {i.suggested[:14]:<14} "
              f"{i.confidence:>5.2f}  {i.path}")
    if review.outliers:
        print("outliers (the most unusual first):")
    for o in review.outliers:
        print(f"     {o.image_id:>6} {o.label[:14]:<14} {'':<14} {o.score:>5.2f}  {o.path}")
    if args.out:
        print(f"written to {args.out}")
    return EXIT_OK


def _runtime_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto")
    p.add_argument("--runtime", choices=("torch", "onnx", "onnx_int8"), default="torch",
                   help="torch: eager PyTorch; onnx: ONNX Runtime on the .onnx file beside "
                   "CKPT (exported in memory when there is none); onnx_int8: the verified "
                   ".int8.onnx file beside CKPT")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="torch runtime: auto is bf16 autocast where it measures faster than "
                   "fp32, else fp32 (onnx always computes in fp32)")


def register(command: AddCommand) -> None:
    p = command("train", cmd_train, "fine-tune ResNet-18 on an ImageFolder dataset",
                TRAIN_EPILOG)
    p.add_argument("data_dir", metavar="DATA_DIR",
                   help="folder with train/<class>/ and test/<class>/")
    p.add_argument("--out", required=True, metavar="CKPT", help="checkpoint file to write")
    add_train_options(p, "cli", TrainConfig().to_dict())
    p.add_argument("--resume-from", metavar="CKPT", default=None,
                   help="continue a run from its .last.pt (or any checkpoint) up to --epochs")

    p = command("evaluate", cmd_evaluate, "accuracy, confusion matrix and per-class "
                "precision/recall/F1 of a checkpoint on a dataset",
                "examples:\n  hotdog evaluate model.pt data/demo\n"
                "  hotdog evaluate model.pt data/demo --json --per-image\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("data_dir", metavar="DATA_DIR")
    p.add_argument("--split", choices=("test", "train", "val"), default="test",
                   help="val: the validation images the model was chosen on (recorded in "
                   "its checkpoint)")
    p.add_argument("--per-image", action="store_true", help="also list every image's prediction")
    _runtime_options(p)

    p = command("predict", cmd_predict, "classify photos with a checkpoint",
                "examples:\n  hotdog predict model.pt lunch.jpg dinner.png\n"
                "  hotdog predict model.pt lunch.jpg --explain lunch-heatmap.png\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("images", metavar="IMAGE", nargs="+")
    add_explain_options(p, "OUT", "write the Grad-CAM overlay (the crop box drawn) to OUT.png "
                        "(one photo), or into the folder OUT")
    _runtime_options(p)

    p = command("export", cmd_export, "export a checkpoint for other runtimes (ONNX, "
                "TorchScript), verified against PyTorch",
                "The export takes decoded uint8 RGB crops (N x S x S x 3) and outputs logits "
                "and probabilities;\nits metadata records the classes and the resize and crop "
                "to apply first.\n\nexamples:\n  hotdog export model.pt                      "
                "# model.onnx beside it\n  hotdog export model.pt --format torchscript --out "
                "model.ts.pt\n  hotdog export model.pt --data data/demo    # verify on its "
                "test images\n\n")
    p.add_argument("checkpoint", metavar="CKPT")
    p.add_argument("--format", choices=("onnx", "torchscript"), default="onnx")
    p.add_argument("--out", metavar="FILE", default=None,
                   help="where to write it (default: beside CKPT, .onnx / .torchscript.pt)")
    p.add_argument("--data", metavar="DATA_DIR", default=None,
                   help="verify on this dataset's test images (default: random pixels)")
    p.add_argument("--verify-images", type=int, default=64, metavar="N",
                   help="images to compare the export with PyTorch on")
    _register_review_local(command)


def _register_review_local(command: AddCommand) -> None:
    p = command("review-local", cmd_review_local, "find likely mislabeled training images and "
                "outliers in a dataset folder, without a service",
                "examples:\n  hotdog review-local data/demo --checkpoint model.pt   # its "
                "starting backbone (or the model's own, from scratch)\n"
                "  hotdog review-local data/demo                         # ImageNet "
                "embeddings\n  hotdog review-local data/demo --checkpoint model.pt --backbone "
                "fine-tuned\n  hotdog review-local data/demo --init scratch --image-size 64   "
                "# random weights: weak\n\nEach training image is embedded once; a logistic "
                "regression in k-fold cross-validation\ngives every image out-of-sample "
                "probabilities, and cleanlab's confident learning ranks\nthe likely label "
                "errors. Images are named by their path in DATA_DIR.\n\n")
    p.add_argument("data_dir", metavar="DATA_DIR",
                   help="folder with train/<class>/ and test/<class>/")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--checkpoint", metavar="CKPT", default=None,
                       help="a model trained on these labels: the review embeds with the "
                       "backbone it started from (ImageNet, or its --init checkpoint), or "
                       "with the model itself when it started from scratch")
    start.add_argument("--init", choices=(INIT_IMAGENET, INIT_SCRATCH), default=None,
                       help="no model: embed with ImageNet weights (the default) or random "
                       "weights (scratch: a weak baseline)")
    p.add_argument("--backbone", choices=("auto", "start", "fine-tuned"), default="auto",
                   help="with --checkpoint: auto (the start, unless it is scratch), start, or "
                   "fine-tuned (the checkpoint's own backbone)")
    p.add_argument("--image-size", type=int, default=224,
                   help="without --checkpoint: the crops' side (a checkpoint has its own)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds")
    p.add_argument("--seed", type=int, default=0, help="the folds' shuffle (and scratch weights)")
    p.add_argument("--batch-size", type=int, default=64, help="images per forward pass")
    p.add_argument("--limit", type=int, default=1000, help="list at most this many of each")
    p.add_argument("--out", metavar="FILE", default=None, help="also write the review as JSON")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
