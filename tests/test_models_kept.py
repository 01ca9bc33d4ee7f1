"""A kept model's file (tlstudy.training.modelfile) and `tlstudy predict` / `tlstudy export-model` on it."""

import csv
import json
import pickle
import re
import struct

import pytest
import torch
from PIL import Image

from tlstudy import cli
from tlstudy.training import loop, modelfile, models

from conftest import XRAYS, load_data, train_model_file


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A resnet18 trained one epoch on 32 px phantoms, as a model file."""
    folder = tmp_path_factory.mktemp("model")
    data = load_data("phantom", 32, phantom_sizes=(64, 32, 32), min_val=0, use_cache=False)
    path, last, header = train_model_file(folder / "model.safetensors", data, out_features=6, eval_repeat="1,3,3,1")
    return path, last, data, header


def run(capsys, *argv):
    """cli.main(argv): (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(map(str, argv)))
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


def test_the_header_round_trips_and_the_weights_score_as_the_trial_did(trained):
    path, last, data, written = trained
    model, header = modelfile.load(path)
    assert {k: v for k, v in header.items() if k != "digest"} == written
    assert header["classes"] == ["NORMAL", "PNEUMONIA"] and header["image_size"] == 32
    assert header["out_features"] == 6 and header["eval_repeat"] == "1,3,3,1" and header["weights"] == "none"
    assert header["normalisation"]["mean"] == list(models.IMAGENET_MEAN) and header["data_fingerprint"]
    # One epoch: the kept weights are the final ones, which scored the test split in the trial.
    run = loop.RunContext(torch.device("cpu"), False, torch.contiguous_format, "finetune", "eval", False)
    logits = loop.outputs(model, data.x["test"], models.parse_repeat("1,3,3,1"), run)
    assert loop.per_image(logits, 2)["pred"] == json.loads(last["summary"]["predictions"])["best_loss"]["pred"]


def test_a_pickle_that_writes_a_file_when_loaded_is_refused_and_writes_nothing(tmp_path, capsys):
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "model.pt"
    evil.write_bytes(pickle.dumps({"state_dict": Payload()}, protocol=4))
    torch_saved = tmp_path / "saved.pt"
    torch.save({"x": Payload()}, torch_saved)
    for f in (evil, torch_saved):
        code, out, err = run(capsys, "predict", f, XRAYS)
        assert code == 2 and err.count("\n") == 1 and "never loads" in err, err
        assert not marker.exists()


def test_a_tampered_or_foreign_file_is_refused_in_one_line(trained, tmp_path, capsys):
    path = trained[0]
    raw = bytearray(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    flipped = tmp_path / "flipped.safetensors"
    raw[8 + n + 1000] ^= 0xFF  # one byte of the weights
    flipped.write_bytes(bytes(raw))
    header, tensors = modelfile.read(path)
    relabelled = tmp_path / "relabelled.safetensors"  # the header edited, the digest left as it was
    from safetensors.torch import save_file

    save_file(tensors, str(relabelled), metadata={"tlstudy": json.dumps({**header, "image_size": 224})})
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(3)}, str(foreign))
    other = tmp_path / "other.safetensors"
    save_file(tensors, str(other), metadata={"tlstudy": json.dumps({**header, "version": 99})})
    for f, why in [
        (flipped, "changed after tlstudy wrote it"),
        (relabelled, "changed after tlstudy wrote it"),
        (foreign, "not a tlstudy model"),
        (other, "another version"),
        (tmp_path / "missing.safetensors", "no model file"),
    ]:
        code, out, err = run(capsys, "predict", f, XRAYS)
        assert code == 2 and err.count("\n") == 1 and why in err, (f.name, err)


def test_predict_on_the_labelled_sample_xrays(trained, tmp_path, capsys):
    path = trained[0]
    out_csv, cams = tmp_path / "p.csv", tmp_path / "cams"
    code, out, err = run(capsys, "predict", path, XRAYS, "--out", out_csv, "--cam", cams)
    assert code == 0, err
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 16 and {r["label"] for r in rows} == {"NORMAL", "PNEUMONIA"}
    assert all(0 <= float(r["p_pneumonia"]) <= 1 for r in rows)
    assert {r["path"].split("/")[-1] for r in rows} == {p.name for p in XRAYS.glob("*/*.jpeg")}
    printed = re.search(r"accuracy ([\d.]+)% \((\d+)/16\)", out)
    assert printed, out
    right = sum(r["label"] == r["pred"] for r in rows)
    assert int(printed.group(2)) == right and float(printed.group(1)) == pytest.approx(100 * right / 16, abs=0.01)
    assert "sensitivity" in out and "specificity" in out and "AUC" in out
    pngs = sorted(cams.glob("*/*.png"))
    assert len(pngs) == 16 and {p.parent.name for p in pngs} == {"NORMAL", "PNEUMONIA"}
    img = Image.open(pngs[0])
    assert img.mode == "RGB" and min(img.size) == 256 and img.size[1] == 3 * img.size[0]  # repeat 1,3,3,1
    # Unlabelled: a single file, or a folder of images.
    code, out, _ = run(capsys, "predict", path, next(XRAYS.glob("NORMAL/*.jpeg")), "--out", out_csv)
    assert code == 0 and "accuracy" not in out and len(list(csv.DictReader(open(out_csv)))) == 1


def test_predict_refuses_bad_input_in_one_line(trained, tmp_path, capsys):
    path = trained[0]
    (tmp_path / "empty").mkdir()
    corrupt = tmp_path / "corrupt.jpeg"
    corrupt.write_bytes(b"\xff\xd8 not really a jpeg")
    text = tmp_path / "notes.png"
    text.write_text("hello")
    tiny = tmp_path / "tiny.png"
    Image.new("L", (20, 20)).save(tiny)
    for args, why in [
        ((tmp_path / "empty",), "holds no images"),
        ((corrupt,), "cannot read image"),
        ((text,), "cannot read image"),
        ((tiny,), "smaller than the model's 32 px input"),
        ((tmp_path / "nowhere",), "no image file or folder"),
        ((XRAYS, "--cam", text), "in the way of the overlays' folder"),
    ]:
        code, out, err = run(capsys, "predict", path, *args, "--out", tmp_path / "p.csv")
        assert code == 2 and err.count("\n") == 1 and why in err, (args, err)
    assert not (tmp_path / "p.csv").exists()
    code, out, err = run(capsys, "predict", path, XRAYS, "--out", tmp_path / "no" / "p.csv")
    assert code == 2 and "no folder" in err


def test_predict_reads_a_chest_xray_folder_with_its_splits(trained, xray_folder, tmp_path, capsys):
    out_csv = tmp_path / "p.csv"
    code, out, err = run(capsys, "predict", trained[0], xray_folder, "--out", out_csv)
    assert code == 0, err
    rows = list(csv.DictReader(open(out_csv)))
    assert len(rows) == 16 and all(r["label"] for r in rows)
    assert {r["path"].split("/")[-3] for r in rows} == {"train", "val", "test"}
    assert "accuracy" in out
