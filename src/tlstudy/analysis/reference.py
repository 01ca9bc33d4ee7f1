"""The report's own numbers beside this study's: its Table 1 rebuilt from the model objects, and
its tables (reference/homework4.csv) next to this study's cells."""

import pandas as pd

from tlstudy.analysis.tables import CELL_KEYS, label, report_columns
from tlstudy.names import CELL
from tlstudy.spaces import reference_dir

REFERENCE = reference_dir() / "homework4.csv"


# ---------------------------------------------------------------- Table 1


def architecture_table(per_trial, image_size):
    """Table 1 from the model objects: stages, blocks per stage, convolutions per block,
    parameters and forward GFLOPs at the study's input size (torch's FLOP counter, 2 per
    multiply-add; built on the meta device, so nothing is computed)."""
    import torch
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    rows = []
    for arch in sorted(per_trial.arch.dropna().unique()) if "arch" in per_trial else []:
        with torch.device("meta"):
            model = torchvision.models.get_model(arch, num_classes=2).eval()
        stages = [getattr(model, f"layer{i}") for i in range(1, 5) if hasattr(model, f"layer{i}")]
        with FlopCounterMode(display=False) as counter:
            model(torch.empty(1, 3, image_size, image_size, device="meta"))
        rows.append(
            {
                "arch": arch,
                "stages": len(stages),
                "blocks per stage": "=>".join(str(len(s)) for s in stages),
                "convs per block": sum(isinstance(c, torch.nn.Conv2d) for c in stages[0][0].children())
                if stages
                else None,
                "parameters (M)": round(sum(p.numel() for p in model.parameters()) / 1e6, 2),
                f"GFLOPs at {image_size} px": round(counter.get_total_flops() / 1e9, 3),
            }
        )
    return pd.DataFrame(rows)


# ---------------------------------------------------------------- the report's numbers


def reference():
    if not REFERENCE.is_file():
        return pd.DataFrame()
    return pd.read_csv(REFERENCE, comment="#", dtype={"train_repeat": str, "eval_repeat": str})


def _match(rows, ref_row, keys):
    mask = pd.Series(True, index=rows.index)
    for k in keys:
        if k in rows and not pd.isna(ref_row.get(k)):
            mask &= rows[k].astype(str) == str(ref_row[k])
    return rows[mask]


def report_tables(rows, ref, tasks, axes):
    """The report's tables whose rows all come from `tasks`, rebuilt from this study's cells:
    {table number: (the report's rows as text, this study's rows as text)}."""
    out = {}
    for table, r in ref.groupby("table", sort=True):
        if set(r.task) != set(tasks):
            continue
        mine, theirs = [], []
        for _, ref_row in r.iterrows():
            hit = _match(rows, ref_row, [k for k in CELL_KEYS if k in axes])
            name = label(ref_row, axes)
            theirs.append({CELL: name, **report_columns(ref_row)})
            mine.append({CELL: name, **(report_columns(hit.iloc[0]) if len(hit) else {})})
        out[int(table)] = (pd.DataFrame(theirs), pd.DataFrame(mine))
    return out


def side_by_side(rows, ref, tasks, axes):
    """For each cell the report has: its row, then this study's row."""
    out, seen = [], set()
    for _, ref_row in ref[ref.task.isin(tasks)].iterrows():
        name = label(ref_row, axes)
        if name in seen:
            continue
        seen.add(name)
        hit = _match(rows, ref_row, [k for k in CELL_KEYS if k in axes])
        out.append({CELL: name, "source": "report (one run)", **report_columns(ref_row)})
        out.append(
            {CELL: name, "source": "this study (replicates)", **(report_columns(hit.iloc[0]) if len(hit) else {})}
        )
    return pd.DataFrame(out)
