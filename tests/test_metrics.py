"""mIoU from one confusion matrix, against hand-computed cases."""

import numpy as np
import pytest

from pole_core.metrics import ConfusionMatrix, miou, score


def test_perfect_prediction_is_one():
    gt = np.array([[0, 1], [2, 2]])
    assert miou(gt, gt, 3) == pytest.approx(1.0)


def test_hand_computed_case():
    # gt:   0 0 1 1     pred: 0 1 1 1
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 1, 1, 1])
    # class 0: TP 1, FP 0, FN 1 -> 1/2 ; class 1: TP 2, FP 1, FN 0 -> 2/3
    assert miou(gt, pred, 2) == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_ignore_label_is_not_counted():
    gt = np.array([0, 255, 1, 255])
    pred = np.array([0, 1, 1, 0])
    assert miou(gt, pred, 2) == pytest.approx(1.0)


def test_absent_classes_are_excluded_but_false_positives_count():
    gt = np.array([0, 0, 1, 1])
    pred = np.array([0, 0, 1, 1])
    cm = ConfusionMatrix(4)  # classes 2 and 3 occur nowhere
    cm.update(gt, pred)
    iou = cm.iou()
    assert np.isnan(iou[2]) and np.isnan(iou[3])
    assert cm.miou() == pytest.approx(1.0)
    # a class predicted but absent from GT has IoU 0 and lowers the mean
    cm2 = ConfusionMatrix(3)
    cm2.update(np.array([0, 0, 1, 1]), np.array([0, 2, 1, 1]))
    assert cm2.iou()[2] == 0.0
    assert cm2.miou() == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_accumulates_over_images_not_mean_of_images():
    cm = ConfusionMatrix(2)
    cm.update(np.array([1, 1, 1, 1]), np.array([1, 1, 1, 1]))  # image 1: class1 perfect
    cm.update(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]))  # image 2: misses one pixel
    # class 0: TP 3, FP 1, FN 0 -> 3/4 ; class 1: TP 4, FN 1 -> 4/5
    assert cm.miou() == pytest.approx((3 / 4 + 4 / 5) / 2)


def test_score_reports_percent_and_names():
    out = score([(np.array([0, 1]), np.array([0, 1]))], ["cat"])
    assert out["miou"] == pytest.approx(100.0)
    assert set(out["per_class"]) == {"background", "cat"}
    assert out["n_images"] == 1


def test_out_of_range_label_is_an_error():
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="outside"):
        cm.update(np.array([0, 3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="differ"):
        cm.update(np.array([0, 1]), np.array([0]))
