import math

import pytest
import torch

from tlstudy.errors import UserError
from tlstudy.training import loop
from tlstudy.training.models import IMAGENET_MEAN, IMAGENET_STD, augment, parse_repeat, to_input


@pytest.mark.parametrize("repeat, shape", [((1, 3, 1, 1), (5, 3, 8, 10)), ((1, 3, 3, 1), (5, 3, 24, 10))])
def test_repeat_shapes_and_normalisation(repeat, shape):
    x = torch.randint(0, 256, (5, 1, 8, 10), dtype=torch.uint8)
    out = to_input(x, repeat)
    assert out.shape == shape
    # Same as the report's x.repeat(*factors) followed by per-channel ImageNet normalisation.
    ref = x.float().div(255).repeat(*repeat)
    ref = (ref - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    torch.testing.assert_close(out, ref)


@pytest.mark.parametrize(
    "text, factors", [("1,3,3,1", (1, 3, 3, 1)), ("1 3 1 1", (1, 3, 1, 1)), ([1, 3, 1, 2], (1, 3, 1, 2))]
)
def test_parse_repeat_takes_text_spaces_or_a_list(text, factors):
    assert parse_repeat(text) == factors


@pytest.mark.parametrize("bad", ["1,3,3", "1,3,x,1", "2,3,1,1", "1,1,1,1", "1,3,0,1", None])
def test_malformed_repeat_is_a_user_error(bad):
    with pytest.raises(UserError, match="repeat"):
        parse_repeat(bad)


def test_augment_keeps_shape_and_changes_pixels():
    x = torch.rand(8, 1, 32, 32) * 255
    out = augment(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and not torch.allclose(out, x)
    # A constant image stays constant: border padding, no black corners.
    c = torch.full((4, 1, 16, 16), 100.0)
    torch.testing.assert_close(augment(c, torch.Generator().manual_seed(1)), c)


def test_test_metrics_against_hand_computed_values():
    # 8 samples, 2 classes, out_features 3: index 2 is no class and counts as wrong.
    y = [0, 0, 0, 1, 1, 1, 1, 1]
    pred = [0, 1, 2, 1, 1, 1, 0, 1]
    logits = torch.full((8, 3), -5.0)
    logits[torch.arange(8), torch.tensor(pred)] = 5.0
    # Distinct scores for the AUC: P(class 1 | first two outputs).
    logits[:, 1] += torch.tensor([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7])
    m = loop.test_metrics(logits, y, num_classes=2)
    assert m["correct"] == 5 and m["total"] == 8 and m["acc"] == 5 / 8
    assert m["specificity"] == pytest.approx(1 / 3)  # NORMAL: 1 of 3 right
    assert m["sensitivity"] == pytest.approx(4 / 5)  # PNEUMONIA: 4 of 5 right
    assert m["balanced_acc"] == pytest.approx((1 / 3 + 4 / 5) / 2)
    assert m["confusion_matrix"] == [[1, 1, 1], [1, 4, 0]]
    # Scores by sample: NORMAL 0, 1, 0.5 (sample 2 ties at -5/-4.8 -> ~0.55); PNEUMONIA high except sample 6.
    p1 = torch.softmax(logits[:, :2], 1)[:, 1].tolist()
    pos, neg = [p1[i] for i in range(3, 8)], [p1[i] for i in range(3)]
    auc = sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / 15
    assert m["auc"] == pytest.approx(auc)
    assert not math.isnan(m["auc"])


def test_correct_count_is_the_number_of_right_argmax_predictions():
    out = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert loop.correct_count(out, torch.tensor([0, 1, 1])).item() == 2
