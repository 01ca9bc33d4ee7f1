import numpy as np
import pytest

from tlstudy.data import phantom


def _grid(size):
    t = (np.arange(size) + 0.5) / size * 2 - 1
    v, u = np.meshgrid(t, t, indexing="ij")
    return u, v


def _lung_minus_abdomen(x):
    """Per image: mean intensity over the lung fields minus a patch of abdomen below the heart."""
    u, v = _grid(x.shape[-1])
    lungs = (np.abs(np.abs(u) - 0.38) < 0.14) & (np.abs(v + 0.06) < 0.35)
    abdomen = (np.abs(u) < 0.12) & (v > 0.6)
    x = x[:, 0].astype(np.float64)
    return x[:, lungs].mean(1) - x[:, abdomen].mean(1)


@pytest.mark.parametrize("shifted", [False, True])
def test_deterministic_and_an_image_depends_only_on_its_index_and_label(shifted):
    a, ya = phantom.make_split(12, 48, 5, shifted, 0.4)
    b, yb = phantom.make_split(12, 48, 5, shifted, 0.4)
    assert a.tobytes() == b.tobytes() and np.array_equal(ya, yb)
    # Image i depends only on (seed, shifted, i) and its label, not on how many images the split has.
    c, yc = phantom.make_split(30, 48, 5, shifted, 0.4)
    same = np.flatnonzero(yc[:12] == ya)
    assert len(same) >= 3 and all(np.array_equal(c[i], a[i]) for i in same)
    d, _ = phantom.make_split(12, 48, 6, shifted, 0.4)
    assert not np.array_equal(d, a)
    assert len({im.tobytes() for im in a}) == len(a)  # no two images alike


def test_shifted_flag_changes_the_images():
    a, _ = phantom.make_split(4, 48, 5, False, 0.4)
    b, _ = phantom.make_split(4, 48, 5, True, 0.4)
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("size", [32, 64, 224])
def test_shape_dtype_and_range(size):
    x, y = phantom.make_split(6, size, 0, False, 0.5)
    assert x.shape == (6, 1, size, size) and x.dtype == np.uint8
    assert y.shape == (6,) and y.dtype == np.int64 and set(y) <= {0, 1}
    # Dark background and bright bone both present, but not clipped wholesale.
    assert x.min() < 30 and x.max() > 180
    assert (x == 255).mean() < 0.02 and (x == 0).mean() < 0.1
    assert x.reshape(6, -1).std(1).min() > 20


def test_same_phantom_at_any_size():
    # The parameters do not depend on the size: 128 px averaged down to 64 px is close to 64 px.
    a, _ = phantom.make_split(6, 64, 0, False, 0.5)
    b, _ = phantom.make_split(6, 128, 0, False, 0.5)
    b = b[:, 0].reshape(6, 64, 2, 64, 2).astype(np.float64).mean((2, 4))
    same = np.abs(b - a[:, 0]).mean()
    other = np.abs(a[1:, 0].astype(np.float64) - a[:-1, 0]).mean()
    assert same < 8 and same < other / 3


@pytest.mark.parametrize("fraction", [0.26, 0.7])
def test_class_balance(fraction):
    _, y = phantom.make_split(400, 16, 1, False, fraction)
    # Exact counts, as Kermany's splits have them, in a shuffled order.
    assert (y == 0).sum() == round(400 * fraction)
    assert 0 < fraction < 1 and not np.array_equal(y, np.sort(y)) or fraction in (0, 1)
    assert set(phantom.make_split(20, 16, 1, False, 1.0)[1]) == {0}
    assert set(phantom.make_split(20, 16, 1, False, 0.0)[1]) == {1}


def test_pneumonia_brightens_the_lungs():
    x, y = phantom.make_split(160, 32, 3, False, 0.5)
    d = _lung_minus_abdomen(x)
    assert 40 < (y == 1).sum() < 120
    assert d[y == 1].mean() - d[y == 0].mean() > 8


def test_consolidations_stay_inside_the_lungs():
    # The same phantom rendered with and without pneumonia (only the pixel noise differs):
    # brighter in the lungs; unchanged in the corners, the abdomen and the chest wall beside
    # the lungs, where unmasked blobs would spill over.
    u, v = _grid(64)
    lungs = (np.abs(np.abs(u) - 0.38) < 0.14) & (np.abs(v + 0.06) < 0.35)
    away = ((np.abs(u) > 0.9) & (v < -0.7)) | ((np.abs(u) < 0.12) & (v > 0.6))
    wall = (np.abs(u) > 0.74) & (np.abs(u) < 0.82) & (np.abs(v) < 0.3)
    gains, leaks, walls = [], [], []
    for i in range(20):
        sick, healthy = (
            phantom._render(np.random.default_rng([9, 0, i]), 64, p, False).astype(np.float64) for p in (True, False)
        )
        gains.append((sick - healthy)[lungs].mean())
        leaks.append(abs((sick - healthy)[away].mean()))
        walls.append((sick - healthy)[wall].mean())
    assert min(gains) > 1 and np.mean(gains) > 8
    assert max(leaks) < 2.5
    assert np.mean(walls) < 1  # about -0.4 here; about 2 without the lung mask


def test_test_shift_is_measurable(monkeypatch):
    x, y = phantom.make_split(60, 64, 4, False, 0.5)
    xs, ys = phantom.make_split(60, 64, 4, True, 0.5)
    # Burned-in R/L markers: the same shifted images drawn without them differ in one corner only,
    # brighter there, in every image.
    monkeypatch.setitem(phantom._SHIFT, "marker", False)
    plain, _ = phantom.make_split(60, 64, 4, True, 0.5)
    diff = xs.astype(int) - plain.astype(int)
    c = 64 // 4
    corners = np.zeros((64, 64), bool)
    corners[:c, :c] = corners[:c, -c:] = corners[-c:, :c] = corners[-c:, -c:] = True
    assert (diff >= 0).all() and not diff[:, 0][:, ~corners].any()
    assert ((diff[:, 0] > 0).sum((1, 2)) >= 3).all()
    # Other exposure and gamma: brighter overall (about 9 grey levels at the calibrated shift).
    assert xs.mean() - x.mean() > 5
    # Lower-contrast consolidations (0.9 of the train contrast).
    d, ds = _lung_minus_abdomen(x), _lung_minus_abdomen(xs)
    assert ds[ys == 1].mean() - ds[ys == 0].mean() < 0.95 * (d[y == 1].mean() - d[y == 0].mean())


def test_test_shift_blurs():
    # Steepest step of the row-averaged profile across the body, relative to its range:
    # about 0.13 unshifted and without the blur, about 0.11 with it.
    def sharpness(a):
        prof = a[:, 0, 48:80, :].astype(np.float64).mean(1)
        return (np.abs(np.diff(prof, axis=1)).max(1) / np.ptp(prof, axis=1)).mean()

    x, _ = phantom.make_split(30, 128, 4, False, 0.5)
    xs, _ = phantom.make_split(30, 128, 4, True, 0.5)
    assert sharpness(xs) < 0.9 * sharpness(x)


def test_test_shift_tilts_the_patient():
    def spine_slope(a):
        """Per image: |columns per row| of a line fitted to the spine's centre above the heart."""
        size = a.shape[-1]
        rows, cols = np.arange(size // 8, size * 9 // 16), np.arange(size * 3 // 8, size * 5 // 8)
        out = []
        for im in a[:, 0].astype(np.float64):
            band = im[np.ix_(rows, cols)]
            w = np.clip(band - np.median(band, axis=1, keepdims=True), 0, None) ** 2
            out.append(abs(np.polyfit(rows, (w * cols).sum(1) / w.sum(1), 1)[0]))
        return np.mean(out)

    x, _ = phantom.make_split(40, 64, 4, False, 0.5)
    xs, _ = phantom.make_split(40, 64, 4, True, 0.5)
    # tan(2.5 to 6 degrees) is 0.044 to 0.105; the upright spine measures about 0.05 (lesions blur the fit).
    assert spine_slope(xs) > 1.5 * spine_slope(x)
    assert 0.05 < spine_slope(xs) < 0.12
