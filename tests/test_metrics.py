from __future__ import annotations

import pytest
import torch

from app.engine.metrics import confusion_matrix, evaluation_from


def test_evaluation_counts_on_a_known_set() -> None:
    classes = ["cat", "dog", "hotdog"]
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 0, 1, 1, 2, 0, 2, 1])
    ev = evaluation_from(classes, targets, preds, loss=0.5)
    assert ev.confusion == [[2, 1, 0], [0, 2, 0], [1, 1, 2]]
    assert ev.accuracy == pytest.approx(6 / 9) and ev.count == 9 and ev.loss == 0.5
    cat, dog, hotdog = ev.per_class
    assert cat.precision == pytest.approx(2 / 3) and cat.recall == pytest.approx(2 / 3)
    assert cat.support == 3
    assert dog.precision == pytest.approx(2 / 4) and dog.recall == pytest.approx(1.0)
    assert dog.f1 == pytest.approx(2 * 0.5 * 1.0 / 1.5)
    assert hotdog.precision == pytest.approx(1.0) and hotdog.recall == pytest.approx(0.5)
    assert ev.macro_f1 == pytest.approx((cat.f1 + dog.f1 + hotdog.f1) / 3)
    assert ev.to_dict()["per_class"][2]["label"] == "hotdog"


def test_class_never_predicted_has_zero_precision_not_nan() -> None:
    ev = evaluation_from(["a", "b"], torch.tensor([0, 1]), torch.tensor([0, 0]), loss=0.0)
    assert ev.per_class[1].precision == 0.0 and ev.per_class[1].f1 == 0.0


def test_confusion_matrix_shape_includes_absent_classes() -> None:
    cm = confusion_matrix(torch.tensor([0]), torch.tensor([0]), 4)
    assert cm.shape == (4, 4) and int(cm.sum()) == 1


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_with_images() -> None:
    classes = ["cat", "dog", "hotdog", "pizza"]  # no pizza in the set: left out of the mean
    targets = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    preds = torch.tensor([0, 1, 0, 1, 1, 2, 0, 2, 1])
    ev = evaluation_from(classes, targets, preds, loss=0.5)
    assert ev.balanced_accuracy == pytest.approx((2 / 3 + 1.0 + 0.5) / 3)
    assert ev.to_dict()["balanced_accuracy"] == ev.balanced_accuracy
    # A majority-class guess: accuracy 0.9, balanced accuracy 0.5.
    guess = evaluation_from(["a", "b"], torch.tensor([0] * 9 + [1]), torch.zeros(10), loss=0.0)
    assert guess.accuracy == pytest.approx(0.9) and guess.balanced_accuracy == 0.5
