"""Run ONE trial of the study, without Ray: python study/trial.py --arch resnet18 --epochs 3

Every trial setting of tlstudy.config.DEFAULTS is a flag (--lr, --mode frozen,
--train-repeat 1,3,3,1, ...). Prints the per-epoch table and the final metrics;
--json FILE writes them.
"""
import argparse
import json
import sys
import warnings

from tlstudy import data as tldata
from tlstudy.errors import ArgumentParser, UserError, run_cli
from tlstudy.config import DEFAULTS
from tlstudy.train import fit, resolve


def parse_args(argv):
    p = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data")
    g.add_argument("--data", default="phantom",
                   help="'phantom' (embedded synthetic data), a chest_xray folder, a .npz file or a folder of .npy arrays")
    g.add_argument("--image-size", type=int, default=64, help="pixels per side (the report used 224)")
    g.add_argument("--phantom-sizes", default="600,150,200", help="train,val,test sizes of the phantom data")
    g.add_argument("--max-train", type=int, help="a stratified subset of train of this size (as the study's profiles)")
    g.add_argument("--min-val", type=int, default=tldata.MIN_VAL,
                   help="a smaller val split is replaced by a stratified 10%% of train")
    g.add_argument("--skip-bad-images", action="store_true", help="skip unreadable images instead of stopping")
    g.add_argument("--data-seed", type=int, default=0, help="seeds the phantom, the val split and the train subset")
    g = p.add_argument_group("trial (tlstudy.config.DEFAULTS)")
    for key, default in DEFAULTS.items():
        flag = "--" + key.replace("_", "-")
        if isinstance(default, bool):
            g.add_argument(flag, action=argparse.BooleanOptionalAction, default=default)
        elif key in ("amp", "channels_last"):
            g.add_argument(flag, choices=("auto", "on", "off"), default=default, help=f"default: {default}")
        else:
            g.add_argument(flag, type=type(default), default=default, help=f"default: {default}")
    p.add_argument("--json", metavar="FILE", help="write the config, every epoch and the summary here")
    return p.parse_args(argv)


def _pct(v):
    return "n/a" if v is None else f"{v:.2%}"


def main(argv=None):
    args = parse_args(argv)
    config = {k: getattr(args, k) for k in DEFAULTS}
    resolve(config)  # a configuration mistake should not wait for the data to load
    try:
        n_train, n_val, n_test = (int(v) for v in args.phantom_sizes.split(","))
    except ValueError:
        raise UserError(f"--phantom-sizes {args.phantom_sizes!r} must be three integers: train,val,test") from None
    data = tldata.load(args.data, args.image_size, seed=args.data_seed, min_val=args.min_val,
                       phantom_sizes={"train": n_train, "val": n_val, "test": n_test},
                       skip_bad_images=args.skip_bad_images)
    if args.max_train:
        data = tldata.subsample_train(data, args.max_train, args.data_seed)
    info = data.info()
    print(f"data: {info['data_source']}  train/val/test {info['n_train']}/{info['n_val']}/{info['n_test']}"
          f"  {info['image_size']} px  classes {info['classes']}")
    if data.val_note:
        print(f"note: {data.val_note}")
    if data.skipped:
        print(f"note: skipped {len(data.skipped)} unreadable images, e.g. {data.skipped[0]}")

    print(f"{'epoch':>5} {'train_loss':>10} {'train_acc':>9} {'val_loss':>9} {'val_acc':>8} {'lr':>9} {'sec':>6}")
    epochs = []
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        for rec in fit(config, data):
            epochs.append({k: v for k, v in rec.items() if k != "summary"})
            print(f"{rec['epoch']:>5} {rec['train_loss']:>10.4f} {rec['train_acc']:>9.2%} {rec['val_loss']:>9.4f}"
                  f" {rec['val_acc']:>8.2%} {rec['lr']:>9.2e} {rec['epoch_s']:>6.1f}", flush=True)
    summary = rec["summary"]
    print(f"best val loss: Epoch {summary['best_epoch']}/{summary['epochs']} ({summary['best_val_loss']:.4f})")
    for tag in ("best", "final"):
        print(f"test ({tag} checkpoint): acc {summary[f'test_{tag}_acc']:.2%}"
              f" ({summary[f'test_{tag}_correct']}/{summary[f'test_{tag}_total']})"
              f"  balanced {summary[f'test_{tag}_balanced_acc']:.2%}  AUC {summary[f'test_{tag}_auc']:.3f}"
              f"  sensitivity {_pct(summary[f'test_{tag}_sensitivity'])}"
              f"  specificity {_pct(summary[f'test_{tag}_specificity'])}"
              f"  confusion {summary[f'test_{tag}_confusion_matrix']}")
    print(f"weights: {summary['weights_source']}  device: {summary['device']}  bf16: {summary['amp']}"
          f"  time: {summary['wall_s']:.1f} s (start-up {summary['startup_s']:.1f} s)")
    if args.json:
        try:
            with open(args.json, "w") as f:
                json.dump({"config": config, "epochs": epochs, "summary": summary}, f, indent=1)
        except OSError as e:
            raise UserError(f"cannot write {args.json}: {e.strerror}") from None
        print(f"wrote {args.json}")


if __name__ == "__main__":
    sys.exit(run_cli(main))
