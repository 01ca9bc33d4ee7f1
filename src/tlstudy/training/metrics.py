"""The metrics of a trial's predictions: counts, test metrics, per-image scores.

Predictions are the argmax over ALL outputs, as the report did (with 6 or 10 outputs an index that
is no class is an error); class 1 (PNEUMONIA) is positive. The training loop (tlstudy.training.loop)
scores the test split with them, and `tlstudy predict` a user's labelled images.
"""

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score


def correct_count(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """How many argmax predictions in a batch are right, as a tensor: summing on the device
    avoids a host sync per batch."""
    return (output.argmax(1) == target).sum()


def test_metrics(logits: torch.Tensor, target: torch.Tensor, num_classes: int) -> dict:
    """Accuracy (correct / total), balanced accuracy, ROC AUC, sensitivity, specificity and
    the confusion matrix (rows: true classes; columns: every output index)."""
    logits = torch.as_tensor(logits).float()
    y = np.asarray(target)
    pred = logits.argmax(1).numpy()
    out_features = logits.shape[1]
    recall = recall_score(y, pred, labels=list(range(num_classes)), average=None, zero_division=0)
    # Scores for AUC: probabilities over the real classes only, renormalised.
    prob = torch.softmax(logits[:, :num_classes], 1).numpy()
    if len(np.unique(y)) < 2 or not np.isfinite(prob).all():  # one class, or a diverged model's logits
        auc = float("nan")
    elif num_classes == 2:
        auc = roc_auc_score(y, prob[:, 1])
    else:
        auc = roc_auc_score(y, prob, multi_class="ovr", labels=list(range(num_classes)))
    cm = confusion_matrix(y, pred, labels=list(range(out_features)))[:num_classes]
    return {
        "acc": float((pred == y).mean()),
        "correct": int((pred == y).sum()),
        "total": int(len(y)),
        "balanced_acc": float(recall.mean()),
        "auc": float(auc),
        "sensitivity": float(recall[1]) if num_classes == 2 else None,
        "specificity": float(recall[0]) if num_classes == 2 else None,
        "confusion_matrix": cm.tolist(),
    }


def per_image(logits: torch.Tensor, num_classes: int) -> dict:
    """Per test image: the predicted output index (argmax over all outputs) and the class-1
    (PNEUMONIA) score, a probability renormalised over the real classes; for predictions.csv."""
    logits = torch.as_tensor(logits).float()
    prob = torch.softmax(logits[:, :num_classes], 1)
    return {
        "pred": logits.argmax(1).tolist(),
        "score": [round(v, 5) for v in prob[:, min(1, num_classes - 1)].tolist()],
    }
