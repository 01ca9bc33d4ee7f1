"""Seeds until decided: the looks of a study run with --seeds auto, and the level of each.

The study runs K replicates per cell, judges its claims, and gives the cells of every claim
still undecided `tlstudy.settings.SEED_STEP` more replicates, in rounds, until each claim is decided or its cells
reach --max-seeds M. Testing at every look with alpha would make the error rate across the looks
exceed alpha, so each look gets its own share of alpha from an alpha-spending function
(Lan & DeMets 1983) of the power family (Kim & DeMets 1987; Jennison & Turnbull 2000, section 7.3),
    spent(t) = alpha * t^RHO,  t = seeds per cell at the look / M  (the information fraction),
and look l tests at alpha_l = spent(t_l) - spent(t_{l-1}). The shares are spent by a union bound
(Bonferroni over the looks), which needs nothing of the dependence between looks: the chance of
any false verdict, over all looks and claims, is at most sum_l alpha_l = alpha, since each look's
Holm correction holds its family of claims at alpha_l. RHO = 2 spends little early (at 3 of 8
seeds, 0.007 of 0.05) and most where the evidence is. The looks are planned (K, K + STEP, ...,
M), so their levels are fixed before any data; a rerun replays the same plan.

A claim decided at a look keeps its verdict; a claim whose cells reach M undecided is
"inconclusive", with the smallest effect it could have detected (statistics.compare's mde).
bench/sequential.py simulates the error rate across looks and the seeds spent against a fixed
design of equal power.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from tlstudy.errors import UserError
from tlstudy.names import CELL, ROUNDS
from tlstudy.spaces import Cell

RHO = 2.0


def spent(t: float, alpha: float, rho: float = RHO) -> float:
    """The error rate spent by information fraction t (0..1)."""
    return alpha * min(1.0, max(0.0, t)) ** rho


def levels(looks: list[int], alpha: float, rho: float = RHO) -> list[float]:
    """Each look's share of alpha: the increments of `spent` at seeds / max(seeds)."""
    t = np.asarray(looks, dtype=float) / looks[-1]
    s = [spent(x, alpha, rho) for x in t]
    return [s[0]] + [b - a for a, b in zip(s, s[1:])]


def look_of(seeds: int, looks: list[int]) -> int:
    """The index of the look a cell with `seeds` replicates has reached (-1: not the first yet)."""
    return int(np.searchsorted(looks, seeds, side="right")) - 1


DECIDED = ("supported", "contradicted")


def current(rounds: dict | None, alpha: float) -> tuple[float, dict, int]:
    """(level, decided, look) for judging the claims now: a fixed design's alpha and no looks, or
    the latest look's level, with the claims every recorded look decided (claim -> (verdict, look))."""
    looks = (rounds or {}).get("looks", [])
    if not looks:
        return alpha, {}, 0
    decided: dict[str, tuple[str, int]] = {}
    for look in looks:
        for claim, verdict in look["verdicts"].items():
            if verdict in DECIDED and claim not in decided:
                decided[claim] = (verdict, look["look"])
    return looks[-1]["alpha"], decided, looks[-1]["look"]


def check_plan(rounds: dict | None, looks: list[int]) -> None:
    """A study's looks are planned once: refuse a rerun that would change the plan (and the levels)."""
    if rounds and rounds.get("looks") and rounds.get("plan") != looks:
        planned = rounds["plan"]
        raise UserError(
            f"this study's rounds were planned for {planned[0]} to {planned[-1]} seeds per cell and have begun; "
            f"rerun with --seeds auto --max-seeds {planned[-1]} (or --new-study to start again)"
        )


def next_round(study: Any, space: Any, settings: Any, targets: dict) -> dict | None:
    """After a round: judge the claims at this look's level, record the look in the study (the
    dashboard shows it with the study's attributes), and give the cells of the claims still undecided
    the next round's seeds. None when every claim is decided or the plan is spent."""
    from tlstudy.analysis import claims as tlclaims
    from tlstudy.analysis import report

    looks, rounds = settings.looks, dict(study.user_attrs.get(ROUNDS) or {})
    check_plan(rounds, looks)
    alphas, done = levels(looks, settings.alpha), list(rounds.get("looks", []))
    i = len(done)
    if i >= len(looks):
        return None
    _, decided, _ = current(rounds, settings.alpha)
    results = Path(settings.results)
    frames = report.study_frames(study, space, results / "artifacts")
    current_ = {space.name: (study, frames)}
    inputs = report.claim_inputs(study._storage, current_, results)  # Optuna: no public storage getter
    judged = tlclaims.evaluate(
        tlclaims.load(), **inputs, margin=settings.margin, alpha=alphas[i], decided=decided, look=i + 1
    )
    verdicts = dict(zip(judged.claim.astype(str), judged.verdict))
    open_cells = set()
    for c in tlclaims.load().to_dict("records"):
        if verdicts.get(c["claim"]) != "inconclusive" or c["metric"] == "s_per_step":
            continue
        for side in ("a", "b"):
            if c[f"study_{side}"] == space.name:
                mine, _ = tlclaims.select(frames[1], Cell.parse(c[f"cell_{side}"]).as_dict())
                open_cells |= set(mine[CELL].astype(str))
    grow = {cell: looks[i + 1] for cell in open_cells if cell in targets} if i + 1 < len(looks) else {}
    new = {**targets, **{c: max(targets[c], k) for c, k in grow.items()}}
    record = {"look": i + 1, "seeds": looks[i], "alpha": alphas[i], "verdicts": verdicts}
    study.set_user_attr(ROUNDS, {"plan": looks, "levels": alphas, "looks": done + [record], "targets": new})
    said = ", ".join(f"{k} {v}" for k, v in verdicts.items() if v != "void") or "every claim void"
    then = f"next: {len(grow)} cells to {looks[i + 1]} seeds" if grow else "done"
    print(
        f"look {i + 1} of {len(looks)} ({looks[i]} seeds per cell, level {alphas[i]:.3g}): {said}; {then}", flush=True
    )
    return new if grow else None
