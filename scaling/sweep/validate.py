"""Follow-up stage: a real run at k x the sweep's largest budget checks the law's prediction.

A spec asks for it with

    [followup]
    validate = [10]       # multiples of the sweep's largest compute budget (each > 1)

and a [sweep.compute] axis. After the sweep's other stages (scaling.sweep.stages drives it), for
each multiple k:

1. Fit rows: the results of the sweep's own points (points added by bracketing or seeds
   included), cooldown trunks and validation points excluded, written to
   `<sweep>/validate/fit_rows.csv` (plain rows of results.csv).
2. Allocation: Chinchilla's Approach 3, L = E + A/N^alpha + B/D^beta, fitted once by
   `python -m analysis fit --law chinchilla --predict C --predict-at N:D ...` in a fresh
   process (scaling never imports analysis; cf. scaling.cli's report), gives the
   compute-optimal N_opt at C = k x C_max (N as the table's accounting counts it, N_total
   under "total"; the allocation minimises the law along the table's own C(N, D),
   analysis/fits/prediction.py) and the predicted loss at every size the snap could choose.
3. Snap: among the shapes of the largest budget's shape rule (or its preset ladder), the
   one whose N (the accounting's) is nearest N_opt in log; D = C / (training FLOPs charged
   per token) under the spec's accounting (C_exact under "total"), steps rounded as for
   every point. The point is planned by its source point's own [sweep] table
   (`SweepSpec.resize`: warm-up rule, lr or lr law, evaluations, overrides; under a
   cooldown rule a plain wsd run), with no tokens_per_param_range, in group "validate".
4. Prediction, before training: the fit's loss at the snapped (N, D) with its 95 %
   prediction interval (parameter bootstrap plus the law's misspecification), kept in
   point.json's `requested["validate"]` with the target C, the law, N_opt unsnapped and
   the fit's size.
5. The point is an ordinary sweep point with its own stable id (a killed run resumes).
   A rerun recomputes the same decision from the same results: point estimates do not
   depend on the bootstrap and its seed is fixed. A point.json that already holds the
   prediction of the same point keeps it, so the record stays the one made before training.

The analysis leaves validation points out of every fit and compares them with the
prediction in the report (analysis/validation.py).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from scaling.config.presets import presets_of
from scaling.sweep.points import Point, SweepSpec
from scaling.sweep.spec import SpecError

log = logging.getLogger(__name__)

GROUP = "validate"
STAGE = "validate"
LAW = "chinchilla"
ALLOCATION = ("Approach 3 (L = E + A/N^alpha + B/D^beta fitted on the sweep's results): "
              "N_opt along the table's own C(N, D), snapped to the nearest shape of the shape "
              "rule, D from C under the accounting")
SEED = 0  # the fit's bootstrap seed: fixed, so a rerun makes the same decision
N_BOOT = 200
LEVEL = 0.95
SNAP_STEPS = 12  # past the candidates' range: targets N_opt x 2^(k/8), k = -12..12
POINT_FILE = "point.json"
FINISHED = ("done", "diverged", "failed")

# What a fit subprocess is: (argv list) -> (exit status, stdout text). Tests replace it.
Runner = Callable[[list[str]], tuple[int, str]]


def check_validate(path: Path | str, value: Any, has_budgets: bool) -> list[float]:
    """followup.validate: a non-empty list of distinct numbers > 1, and a [sweep.compute] axis."""
    ok = (isinstance(value, list) and value
          and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                  and math.isfinite(v) and v > 1 for v in value)
          and len({float(v) for v in value}) == len(value))
    if not ok:
        raise SpecError(f"{path}: followup.validate = {value!r}: expected a non-empty list of "
                        "distinct numbers > 1 (multiples of the sweep's largest compute budget), "
                        "e.g. [10]")
    if not has_budgets:
        raise SpecError(f"{path}: followup.validate trains the law's compute-optimal model at a "
                        "multiple of the largest budget: it needs a [sweep.compute] axis")
    return [float(v) for v in value]


def is_validation(p: Point) -> bool:
    return p.group == GROUP or p.requested.get("stage") == STAGE


# --------------------------------------------------------------------------------------
# Fitting in a fresh process
# --------------------------------------------------------------------------------------


def fit_rows(results: pd.DataFrame) -> pd.DataFrame:
    """The rows the law is fitted on: the sweep's results table less cooldown trunks (role
    "trunk") and validation points (group "validate"), sorted by point id."""
    rows = results
    if "group" in rows:
        rows = rows[rows["group"].astype(str) != GROUP]
    if "role" in rows:
        rows = rows[rows["role"].astype(str) != "trunk"]
    return rows.sort_values("point_id", kind="stable").reset_index(drop=True)


def run_fit(args: list[str]) -> tuple[int, str]:
    """`python -m analysis fit ARGS --json` in a fresh process: (exit status, stdout)."""
    cmd = [sys.executable, "-m", "analysis", "fit", *args]
    root = str(Path(__file__).resolve().parents[2])  # the analysis package, installed or not
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode and proc.stderr.strip():
        log.warning("%s", proc.stderr.strip().splitlines()[-1])
    return proc.returncode, proc.stdout


def _fit_json(runner: Runner, args: list[str]) -> dict:
    code, out = runner(args)
    try:
        res = json.loads(out.strip().splitlines()[-1]) if out.strip() else {}
    except json.JSONDecodeError:
        res = {}
    if code or not isinstance(res, dict) or "error" in res:
        why = res.get("error") if isinstance(res, dict) and res.get("error") else \
            f"exit status {code}, no JSON on stdout"
        raise RuntimeError(f"python -m analysis fit {' '.join(args)}: {why}")
    return res


def allocation(fit: dict, C: float) -> dict:
    """{"N_opt", "D_opt", "loss_opt" (+ _low/_high)} of budget C from a `fit --predict C` JSON."""
    for key in ("compute_optimal", "predictions"):
        for rec in fit.get(key) or []:
            if isinstance(rec, dict) and "N_opt" in rec and math.isclose(
                    float(rec.get("C", math.nan)), C, rel_tol=1e-9):
                return {k: rec[k] for k in rec if k != "C"}
    raise RuntimeError(f"the fit's JSON has no compute-optimal allocation for C = {C:.4g}")


def prediction(fit: dict, N: float, D: float) -> dict:
    """The `fit --predict-at N:D` record at (N, D): loss, low, high, ..."""
    for rec in fit.get("predictions") or []:
        if isinstance(rec, dict) and "loss" in rec and math.isclose(
                float(rec.get("N", math.nan)), N, rel_tol=1e-6) and math.isclose(
                float(rec.get("D", math.nan)), D, rel_tol=1e-6):
            return dict(rec)
    raise RuntimeError(f"the fit's JSON has no prediction at N = {N:.6g}, D = {D:.6g}")


# --------------------------------------------------------------------------------------
# Planning
# --------------------------------------------------------------------------------------


def source_point(spec: SweepSpec, points: list[Point], results: pd.DataFrame) -> Point:
    """The point a validation run is planned from: of the largest budget's points (trunks
    aside), the one with the lowest final eval loss (plan order on ties or without losses)."""
    budgets = [p.compute_budget for p in points if p.compute_budget is not None
               and p.role != "trunk" and not is_validation(p)]
    if not budgets:
        raise SpecError(f"{spec.path}: followup.validate needs IsoFLOP points (a [sweep.compute] "
                        "axis)")
    top = max(budgets)
    cands = [p for p in points if p.compute_budget == top and p.role != "trunk"
             and not is_validation(p) and p.point_id in spec.resizers]
    if not cands:
        raise SpecError(f"{spec.path}: followup.validate: no point of the largest budget "
                        f"({top:.4g}) can be re-planned at another size")
    loss = {}
    if len(results) and "final_eval_loss" in results:
        for pid, st, v in zip(results["point_id"], results["status"], results["final_eval_loss"]):
            if st == "done" and pd.notna(v) and math.isfinite(float(v)):
                loss[pid] = float(v)
    order = {p.point_id: i for i, p in enumerate(cands)}
    return min(cands, key=lambda p: (loss.get(p.point_id, math.inf), order[p.point_id]))


def candidates(spec: SweepSpec, src: Point, budget: float, n_lo: float, n_hi: float
               ) -> list[Point]:
    """The source planned at `budget` at every size of its ladder with N (the accounting's)
    about within [n_lo, n_hi], sorted by N.

    Sizes: the source's preset ladder (every preset of its family), or its shape rule
    applied to non-embedding targets 2^(k/8) apart over the range (rescaled by the source's
    non-embedding share of N). A size that does not fit the budget is skipped; none fitting
    is a SpecError naming followup.validate.
    """
    if "preset" in src.requested:
        sizes = [{"preset": name} for name in presets_of(src.config.model.arch)]
    else:
        ratio = src.n_params / src.n_accounted  # non-embedding share, at the source's size
        steps = max(0, math.ceil(8 * math.log2(n_hi / n_lo)))
        sizes = [{"n_target": n_lo * ratio * 2.0 ** (k / 8.0)} for k in range(steps + 1)]
    made: dict[str, Point] = {}
    reasons = []
    for size in sizes:
        try:
            p, why_not = spec.resize(src, budget=budget, **size)
        except SpecError as e:  # e.g. a warm-up of N tokens longer than the run's decay start
            p, why_not = None, str(e)
        if p is None:
            reasons.append(why_not)
            continue
        made.setdefault(p.point_id, p)
    if not made:
        raise SpecError(f"{spec.path}: followup.validate: no model size fits C = {budget:.4g}: "
                        + "; ".join(sorted(set(reasons))[:3]))
    return sorted(made.values(), key=lambda p: (p.n_accounted, p.point_id))


def nearest(cands: list[Point], n_opt: float) -> Point:
    """The candidate whose N (the accounting's) is nearest `n_opt` in log (the smaller on a tie)."""
    return min(cands, key=lambda p: (round(abs(math.log(p.n_accounted / n_opt)), 12),
                                     p.n_accounted))


def snap(spec: SweepSpec, src: Point, n_opt: float, budget: float) -> Point:
    """The point at `budget` whose N is nearest `n_opt`, among the sizes of the ladder
    within a factor 2^(SNAP_STEPS/8) of it."""
    r = 2.0 ** (SNAP_STEPS / 8.0)
    return nearest(candidates(spec, src, budget, n_opt / r, n_opt * r), n_opt)


def as_validation(p: Point, record: dict) -> Point:
    """`p` as the validation point: group "validate", a label saying so, the record kept."""
    m = p.config.model
    name = f"validate_x{record['multiple']:g}_{m.n_layer}x{m.d_model}_D{p.tokens}"
    cfg = p.config.replace({"name": name})
    return dataclasses.replace(p, config=cfg, group=GROUP,
                               requested={**p.requested, "stage": STAGE, "validate": record})


def _recorded(sweep_dir: Path, pid: str) -> dict | None:
    """The validate record of an existing point.json of `pid` (the prediction made first)."""
    try:
        meta = json.loads((sweep_dir / "points" / pid / POINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    rec = (meta.get("requested") or {}).get("validate") if isinstance(meta, dict) else None
    ok = isinstance(rec, dict) and "loss" in (rec.get("prediction") or {})
    return rec if ok else None


def plan_validation(spec: SweepSpec, sweep_dir: Path, results: pd.DataFrame,
                    runner: Runner = run_fit) -> tuple[list[Point], dict]:
    """(the validation points, the stage's report) from the sweep's results table.

    Nothing trains here; `runner` runs `python -m analysis fit` (module docstring).
    """
    multiples = spec.followup["validate"]
    points = list(spec.points)
    rows = fit_rows(results)
    waiting = [pid for pid, st in zip(rows["point_id"], rows["status"]) if st not in FINISHED]
    report: dict[str, Any] = {"multiples": multiples, "law": LAW, "allocation": ALLOCATION,
                              "fit_rows": int(len(rows)), "points": []}
    if waiting:
        report["skipped"] = f"{len(waiting)} point(s) of the sweep have not finished"
        return [], report
    if not (rows["status"] == "done").any():
        report["skipped"] = "no point of the sweep finished with status done"
        return [], report
    src = source_point(spec, points, results)
    c_max = max(p.compute_budget for p in points
                if p.compute_budget is not None and p.role != "trunk" and not is_validation(p))
    vdir = sweep_dir / "validate"
    vdir.mkdir(exist_ok=True)
    table = vdir / "fit_rows.csv"
    text = rows.to_csv(index=False)
    if not table.exists() or table.read_text() != text:
        table.write_text(text)
    budgets = [k * c_max for k in multiples]
    # One fit answers both questions: N_opt of each budget (`--predict C`) and the loss of
    # every size the snap could choose (`--predict-at`), sizes from the largest budget's
    # smallest N to k x its largest (N_opt grows as C^a with a < 1)
    top = [p.n_accounted for p in points if p.compute_budget == c_max and p.role != "trunk"]
    cands = {k: candidates(spec, src, C, min(top), max(top) * k)
             for k, C in zip(multiples, budgets)}
    targets = [(float(p.n_accounted), float(p.tokens)) for ps in cands.values() for p in ps]
    fit_args = ["--law", LAW, str(table), "--predict", *map(repr, budgets), "--predict-at",
                *(f"{n!r}:{d!r}" for n, d in targets), "--n-boot", str(N_BOOT),
                "--seed", str(SEED), "--json"]
    try:
        fit = _fit_json(runner, fit_args)
        fit_error = None
    except RuntimeError as e:  # perhaps --predict-at is refused: N_opt alone, no prediction
        fit_error = str(e)
        log.warning("followup.validate: %s; fitting again for N_opt alone", e)
        fit = _fit_json(runner, ["--law", LAW, str(table), "--predict", *map(repr, budgets),
                                 "--n-boot", "0", "--seed", str(SEED), "--json"])
    out = []
    for k, C in zip(multiples, budgets):
        opt = allocation(fit, C)
        n_opt = float(opt["N_opt"])
        point = nearest(cands[k], n_opt)
        tried = cands[k]
        if point.point_id in (cands[k][0].point_id, cands[k][-1].point_id):  # at an edge
            point = snap(spec, src, n_opt, C)
            tried = [point] + tried
        record = _recorded(sweep_dir, point.point_id)
        if record is None:
            N, D = float(point.n_accounted), float(point.tokens)
            try:
                if fit_error:
                    raise RuntimeError(fit_error)
                try:
                    pred = prediction(fit, N, D)
                except RuntimeError:  # snapped outside the candidates: ask for it
                    pred = prediction(_fit_json(runner, [
                        "--law", LAW, str(table), "--predict-at", f"{N!r}:{D!r}", "--n-boot",
                        str(N_BOOT), "--seed", str(SEED), "--json"]), N, D)
            except RuntimeError as e:  # the run is still worth having: the report predicts
                log.warning("validation run x%g: no prediction before training: %s", k, e)
                pred = {"error": str(e)}
            pred["made_before_training"] = not (
                sweep_dir / "points" / point.point_id / "result.json").exists()
            record = {
                "multiple": k, "C_target": C, "largest_budget": c_max,
                "accounting": spec.accounting, "law": LAW, "allocation": ALLOCATION,
                "N_opt": n_opt, "D_opt": opt.get("D_opt"), "loss_opt": opt.get("loss_opt"),
                "N_opt_interval": [opt.get("N_opt_low"), opt.get("N_opt_high")],
                "N": N, "D": D, "C": point.flops, "shape": f"{point.config.model.n_layer}x"
                f"{point.config.model.d_model}", "N_non_embedding": point.n_params,
                "N_total": point.n_params_total,
                "shapes_tried": [{"N": n, "shape": sh} for n, sh in sorted(
                    {(q.n_accounted, f"{q.config.model.n_layer}x{q.config.model.d_model}")
                     for q in tried})],
                "prediction": pred, "level": LEVEL,
                "fit": {"rows": int(len(rows)), "table": "validate/fit_rows.csv",
                        "n_boot": N_BOOT, "seed": SEED, "source_point": src.point_id},
            }
        vp = as_validation(point, record)
        out.append(vp)
        report["points"].append({"id": vp.point_id, "label": vp.label, **{
            key: record.get(key) for key in ("multiple", "C_target", "N_opt", "N", "D", "shape")},
            "predicted": record["prediction"].get("loss"),
            "low": record["prediction"].get("low"), "high": record["prediction"].get("high")})
        log.info("validation run x%g: C = %.4g, N_opt = %.4g -> %s (N = %d, D = %d), predicted "
                 "loss %.4f [%.4f, %.4f]", k, C, record["N_opt"], record["shape"], record["N"],
                 record["D"], record["prediction"].get("loss", math.nan),
                 record["prediction"].get("low", math.nan),
                 record["prediction"].get("high", math.nan))
    return out, report


def run_validate(spec: SweepSpec, sweep_dir: Path, execute: Callable[[list[Point]], pd.DataFrame],
                 results: pd.DataFrame, runner: Runner = run_fit) -> tuple[dict, pd.DataFrame]:
    """Plan the validation points (`plan_validation`), run them; (report, results)."""
    new, report = plan_validation(spec, sweep_dir, results, runner)
    if report.get("skipped"):
        log.warning("followup.validate skipped: %s", report["skipped"])
    if new:
        results = execute(new)
    return report, results


def guess(spec: SweepSpec) -> list[tuple[float, Point]]:
    """(multiple, a guessed validation point) per multiple, for `plan` and its time estimate.

    Before the sweep has run there is no fit: the size guessed is the largest budget's
    middle size (in the accounting's N) times sqrt(k), the exponent a ~ 0.5 of Chinchilla;
    the stage itself decides from the law (`plan_validation`).
    """
    multiples = spec.followup.get("validate") or []
    if not multiples:
        return []
    src = source_point(spec, list(spec.points), pd.DataFrame())
    top = [p for p in spec.points if p.compute_budget == src.compute_budget
           and p.role != "trunk" and not is_validation(p)]
    mid = sorted(p.n_accounted for p in top)[len(top) // 2]
    out = []
    for k in multiples:
        try:
            p = snap(spec, src, mid * math.sqrt(k), k * src.compute_budget)
        except SpecError:
            continue
        out.append((k, p))
    return out
