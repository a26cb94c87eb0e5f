"""What a downstream task is: single-label classification, multi-label recognition (Charades)
and repetition counting (UCF-RC, SEVERE's task shift). Per task: the training target of a
list's label, the loss, a video's prediction from its views, and the metrics its literature
reports.

    target(task, label, nb_classes): multi-hot for multi_label, a float count for counting
    loss(task): (outputs, targets) -> loss, for the linear probe (fine-tuning: criterion)
    merge_views(views, num_videos, task): each video's mean prediction over its views
    metrics(task, predictions, labels): top-1/top-5, mAP as Charades reports it, or the
        count's normalised mean absolute error and off-by-one accuracy
"""
import numpy as np
import torch
import torch.nn.functional as F

from lists import TASKS  # noqa: F401  (the names, where the lists parse their labels)

HEADLINE = {"classification": "top1", "multi_label": "mAP", "counting": "mae_normalised"}


def headline(task, metrics):
    """The one figure a log line gives: 'top-1 61.20%', 'mAP 32.50%', 'normalised MAE 0.170'."""
    value = metrics[HEADLINE[task]]
    return {"classification": f"top-1 {value:.2f}%", "multi_label": f"mAP {value:.2f}%",
            "counting": f"normalised MAE {value:.3f}"}[task]


def outputs(task, nb_classes):
    """The model's outputs: one per class, one count."""
    return 1 if task == "counting" else nb_classes


def target(task, label, nb_classes):
    if task == "multi_label":
        hot = np.zeros(nb_classes, np.float32)
        hot[list(label)] = 1.0
        return hot
    return np.float32(label) if task == "counting" else label


def count_loss(outputs, counts):
    """The squared error of the count (L1 left tiny models at the median count: measured on
    tests/test_tasks.py's bouncing balls)."""
    return F.mse_loss(outputs[:, 0].float(), counts.float())


def loss(task):
    return {"classification": F.cross_entropy, "counting": count_loss,
            "multi_label": F.binary_cross_entropy_with_logits}[task]


def view_prediction(task, logits):
    """One view's prediction: class probabilities, independent per-class probabilities, or
    the count."""
    if task == "counting":
        return logits[:, :1]
    return torch.sigmoid(logits) if task == "multi_label" else F.softmax(logits, dim=1)


def merge_views(views, num_videos, task="classification"):
    """Each video's mean over its decodable views of view_prediction -> (predictions [V', K],
    labels [V', ...], the V' videos' indices; the others had no decodable view). A view seen
    twice (the padding of a sharded evaluation) counts once."""
    values = view_prediction(task, torch.from_numpy(views["logits"]).float()).numpy()
    labels = np.zeros((num_videos, *views["label"].shape[1:]), views["label"].dtype)
    labels[views["video"]] = views["label"]
    sums, seen, pairs = np.zeros((num_videos, values.shape[1])), np.zeros(num_videos, int), set()
    for video, view, ok, value in zip(views["video"], views["view"], views["ok"], values):
        if ok and (video, view) not in pairs:
            pairs.add((video, view))
            sums[video] += value
            seen[video] += 1
    scored = seen > 0
    return sums[scored] / seen[scored, None], labels[scored], np.flatnonzero(scored)


def metrics(task, predictions, labels):
    return {"classification": classification_metrics, "multi_label": multi_label_metrics,
            "counting": counting_metrics}[task](predictions, labels)


def classification_metrics(probs, labels):
    """top-1, top-5, class-mean top-1 and each class's top-1 (classes present), in percent."""
    if len(labels) == 0:
        return dict(top1=0.0, top5=0.0, class_mean_top1=0.0, per_class_top1={})
    order = np.argsort(-probs, axis=1)
    top1 = order[:, 0] == labels
    top5 = (order[:, :5] == labels[:, None]).any(axis=1)
    per_class = {int(c): 100 * float(top1[labels == c].mean()) for c in np.unique(labels)}
    return dict(top1=100 * top1.mean(), top5=100 * top5.mean(),
                class_mean_top1=float(np.mean(list(per_class.values()))),
                per_class_top1=per_class)


def average_precision(scores, positives):
    """Non-interpolated AP of one class: the mean, over its positives, of the precision among
    the videos scored at least as high (ties count together, as scikit-learn's)."""
    order = np.argsort(-scores, kind="stable")
    scores, positives = scores[order], positives[order].astype(bool)
    last_of_tie = np.r_[scores[1:] != scores[:-1], True]
    hits, ranks = np.cumsum(positives)[last_of_tie], np.flatnonzero(last_of_tie) + 1
    new_hits = np.diff(np.r_[0, hits])
    return float(np.sum(new_hits * hits / ranks) / positives.sum())


def multi_label_metrics(probs, labels):
    """mAP in percent as Charades reports it: the mean over the classes with at least one
    positive video of each class's AP (per_class_ap: those APs)."""
    present = [c for c in range(labels.shape[1]) if labels[:, c].any()] if len(labels) else []
    per_class = {c: 100 * average_precision(probs[:, c], labels[:, c]) for c in present}
    return dict(mAP=float(np.mean(list(per_class.values()))) if per_class else 0.0,
                per_class_ap=per_class)


def counting_metrics(counts, labels):
    """The counting literature's: mean absolute error divided by the true count (MAE in the
    tables; videos with a count of 0 are left out of it), off-by-one accuracy (the rounded
    count within 1 of the truth, percent), and the plain mean absolute error."""
    predicted, true = counts[:, 0], labels.astype(float)
    counted = true > 0
    return dict(mae_normalised=float(np.mean(np.abs(predicted - true)[counted] / true[counted]))
                if counted.any() else 0.0,
                off_by_one_accuracy=100 * float(np.mean(np.abs(np.round(predicted) - true) <= 1))
                if len(true) else 0.0,
                mae=float(np.mean(np.abs(predicted - true))) if len(true) else 0.0)
