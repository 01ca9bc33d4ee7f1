import numpy as np
import pytest
import torch
from PIL import Image

from tlstudy.data import splits as data
from tlstudy.errors import UserError

from conftest import load_data


def test_folder_layout_loads_real_xrays_and_resplits_tiny_val(xray_folder):
    # One of Kermany's images in RGB mode: the loader must still give one channel.
    f = next((xray_folder / "train" / "NORMAL").iterdir())
    Image.open(f).convert("RGB").save(f)
    s = load_data(xray_folder, 32, seed=0, min_val=4, val_fraction=0.25)
    assert s.classes == ["NORMAL", "PNEUMONIA"]
    for split in data.SPLITS:
        assert s.x[split].dtype == torch.uint8 and s.x[split].shape[1:] == (1, 32, 32)
    # 2 val images < min_val 4: val merged into train (8 + 2) and a stratified quarter split off.
    assert len(s.y["val"]) + len(s.y["train"]) == 10
    assert len(s.y["val"]) == 3 and set(s.y["val"].tolist()) == {0, 1}  # stratified: both classes
    assert "merged into train" in s.val_note and s.info()["val_note"] == s.val_note
    assert s.y["test"].tolist() == [0, 0, 0, 1, 1, 1]
    # A real X-ray is not blank: the resize kept structure.
    assert s.x["test"].float().std() > 20


def test_folder_without_resplit_keeps_val(xray_folder):
    s = load_data(xray_folder, 24, min_val=2)
    assert s.y["val"].tolist() == [0, 1] and s.val_note == ""


def test_decoded_once_then_read_from_cache(xray_folder, monkeypatch):
    first = load_data(xray_folder, 24)
    from tlstudy.data import sources

    monkeypatch.setattr(sources, "read_image", lambda *a: pytest.fail("decoded a second time"))
    again = load_data(xray_folder, 24)
    assert torch.equal(first.x["train"], again.x["train"])
    # A change of content changes the fingerprint, so the cache is not reused.
    f = next((xray_folder / "test" / "NORMAL").iterdir())
    f.write_bytes(f.read_bytes() + b"\0")
    monkeypatch.undo()
    assert load_data(xray_folder, 24).fingerprint != first.fingerprint


def test_corrupt_image_error_names_the_file(xray_folder):
    bad = xray_folder / "test" / "PNEUMONIA" / "broken.jpeg"
    bad.write_bytes(next((xray_folder / "test" / "NORMAL").iterdir()).read_bytes()[:300])
    with pytest.raises(UserError, match="broken.jpeg"):
        load_data(xray_folder, 24)
    s = load_data(xray_folder, 24, skip_bad_images=True)
    assert len(s.skipped) == 1 and s.info()["skipped_images"] == 1 and len(s.y["test"]) == 6


def test_non_image_file_is_named(xray_folder):
    (xray_folder / "train" / "NORMAL" / "notes.txt").write_text("not an X-ray")
    with pytest.raises(UserError, match="notes.txt"):
        load_data(xray_folder, 24)


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda r: [p.unlink() for p in (r / "train" / "NORMAL").iterdir()], "empty"),
        (lambda r: __import__("shutil").rmtree(r / "test"), "test"),
        (lambda r: [__import__("shutil").rmtree(r / s / "NORMAL") for s in ("train", "val", "test")], "two classes"),
    ],
)
def test_broken_layouts(xray_folder, breakage, message):
    breakage(xray_folder)
    with pytest.raises(UserError, match=message):
        load_data(xray_folder, 24)


def test_missing_path():
    with pytest.raises(UserError, match="does not exist"):
        load_data("/no/such/chest_xray", 24)


def _arrays(rng, n, h=28):
    return rng.integers(0, 256, (n, h, h), dtype=np.uint8), np.arange(n) % 2


def test_medmnist_npz(tmp_path):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 300), ("val", 120), ("test", 50)):
        x, y = _arrays(rng, n)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = x, y[:, None]  # MedMNIST labels are N x 1
    np.savez(tmp_path / "pneumoniamnist.npz", **arrays)
    s = load_data(tmp_path / "pneumoniamnist.npz", 32)
    assert s.x["train"].shape == (300, 1, 32, 32) and len(s.y["val"]) == 120
    assert s.y["test"].tolist() == (np.arange(50) % 2).tolist()
    # Upsampling a constant image keeps its value.
    arrays["test_images"][:] = 77
    np.savez(tmp_path / "const.npz", **arrays)
    assert (load_data(tmp_path / "const.npz", 32).x["test"] == 77).all()
    del arrays["val_labels"]
    np.savez(tmp_path / "broken.npz", **arrays)
    with pytest.raises(UserError, match="val_labels"):
        load_data(tmp_path / "broken.npz", 32)


def test_npy_folder(tmp_path):
    rng = np.random.default_rng(1)
    for split, n in (("train", 40), ("val", 10), ("test", 12)):
        x, y = _arrays(rng, n, 64)
        if split == "train":
            x = x[:, None].astype(np.float32) / 255  # N x 1 x H x W floats in [0, 1]
        np.save(tmp_path / f"x_{split}.npy", x)
        np.save(tmp_path / f"y_{split}.npy", y)
    s = load_data(tmp_path, 64, min_val=5)
    ref = np.load(tmp_path / "x_train.npy")[:, :, :, :] * 255
    assert torch.equal(s.x["train"], torch.from_numpy(ref).round().to(torch.uint8))
    assert s.x["val"].shape == (10, 1, 64, 64)
    np.save(tmp_path / "y_test.npy", np.arange(11) % 2)
    with pytest.raises(UserError, match="12 images but 11 labels"):
        load_data(tmp_path, 64, min_val=5)
    np.save(tmp_path / "y_test.npy", np.arange(12) % 3)
    with pytest.raises(UserError, match="outside the classes"):
        load_data(tmp_path, 64, min_val=5)


def kermany_folder(root, rng):
    """A chest_xray folder with Kermany's file names: 90 patients with 1-4 images each in train,
    a 4-image val split (too small: it is resplit), and a small test split."""

    def write(path, value):
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((20, 20), value, np.uint8)).save(path)

    image = 0
    for p in range(90):
        pneumonia = p % 4 != 0  # about Kermany's 1 : 3
        for k in range(int(rng.integers(1, 5))):
            image += 1
            name = (
                f"person{p}_bacteria_{image}.jpeg"
                if pneumonia
                else f"{'NORMAL2-' if p % 8 == 0 else ''}IM-{p:04d}-{k + 1:04d}.jpeg"
            )
            write(root / "train" / ("PNEUMONIA" if pneumonia else "NORMAL") / name, p)
    for cls, val, test in (
        ("NORMAL", ["IM-0900-0001.jpeg", "IM-0901-0001.jpeg"], ["IM-0950-0001.jpeg"]),
        ("PNEUMONIA", ["person900_virus_1.jpeg", "person901_virus_2.jpeg"], ["person950_virus_3.jpeg"]),
    ):
        for n in val:
            write(root / "val" / cls / n, 1)
        for n in test:
            write(root / "test" / cls / n, 2)
    return root


def test_val_split_off_train_keeps_each_patient_on_one_side(tmp_path):
    root = kermany_folder(tmp_path / "chest_xray", np.random.default_rng(0))
    s = load_data(root, 16, seed=3, min_val=50, val_fraction=0.2)
    assert "grouped by patient" in s.val_note and "patients from the file names" in s.group_note
    train, val = set(s.groups["train"]), set(s.groups["val"])
    assert train and val and not train & val and not (train | val) & set(s.groups["test"])
    # Several images per patient did occur, or the test would prove nothing.
    assert len(s.groups["train"]) > len(train)
    ratio = lambda split: float((s.y[split] == 0).float().mean())  # noqa: E731
    everything = torch.cat([s.y["train"], s.y["val"]])
    assert abs(ratio("val") - float((everything == 0).float().mean())) < 0.06
    assert len(s.y["val"]) == pytest.approx(0.2 * len(everything), rel=0.25)
    rows = s.manifest()
    assert len(rows) == sum(len(s.y[k]) for k in ("train", "val", "test"))
    by_id = {r["id"]: r for r in rows}
    assert by_id["test/NORMAL/IM-0950-0001.jpeg"] == {
        "id": "test/NORMAL/IM-0950-0001.jpeg",
        "split": "test",
        "group": "IM-0950",
        "label": "NORMAL",
        "grouping": s.group_note,
    }
    assert any(r["group"].startswith("NORMAL2-IM-") for r in rows) and any(
        r["group"].startswith("person") for r in rows
    )


def test_arrays_and_phantom_are_split_per_image_and_say_so():
    s = load_data("phantom", 16, seed=0, phantom_sizes=(40, 10, 16), min_val=20)
    assert s.ids["test"] == [f"test/{i}" for i in range(16)] and s.groups["test"] == s.ids["test"]
    assert "per image" in s.group_note and "per image" in s.val_note
    assert int((s.y["test"] == 0).sum()) == round(16 * 234 / 624)
