"""The report's section "What moves the score" (used by report.py, issue #26): for the GLM cloze runs of one study, each
lever against the run it changes, on the same test examples with the paired test of significance.py.

  raw vs calibrated        the same runs' predictions before and after contextual calibration
                           (run_cls.py --calibrate: predictions_test.jsonl "calibrated_scores"),
                           zero-shot (the prompt best on validation) and fine-tuned (the best config)
  ensemble vs best prompt  per seed, the best config of every prompt combined (PET, Schick and
                           Schütze 2021): mean of the choices' log-probabilities, and majority vote
  demonstrations           the best config with --num_demonstrations against the best config without,
                           at the same prompt
  searched label words     the same with --search_verbalizers

A row whose runs are missing says which command adds them.
"""

from pathlib import Path

import numpy as np

from reporting import significance
from reporting.analysis import best_runs, metric_scale, prompt_table
from reporting.readings import difference_sentence
from reporting.tables import fmt_seeds

GLM_CLOZE = "glm_cloze"
MISSING = {
    "calibration": "add `--calibrate` to the run_cls.py runs (sweeps.sh: CLS_ARGS)",
    "zero-shot calibration": "add zero-shot runs with `--no-do_train --calibrate` (sweeps.sh runs them per prompt)",
    "ensemble": "fine-tune two or more prompts with the same seeds (sweeps.sh PROMPT_IDS)",
    "demonstrations": "add runs with `--num_demonstrations K` (sweeps.sh entry `glm_cloze@flags=--num_demonstrations=1`)",
    "label words": "add runs with `--search_verbalizers N` (sweeps.sh entry `glm_cloze@flags=--search_verbalizers=3`)",
}


def log_probabilities(scores):
    """[..., C] choice scores (summed log-probabilities) -> log-probabilities of the choice distribution."""
    scores = np.asarray(scores, dtype=float)
    top = scores.max(-1, keepdims=True)
    return scores - top - np.log(np.exp(scores - top).sum(-1, keepdims=True))


def ensemble_mean(score_sets):
    """PET's ensemble of prompts: the mean over prompts of each choice's log-probability, [N, C], from
    `score_sets`: P arrays [N, C] of choice scores of the same examples (choices in label order)."""
    return np.mean([log_probabilities(scores) for scores in score_sets], axis=0)


def ensemble_vote(score_sets):
    """Majority vote of the prompts' predictions, ties broken by `ensemble_mean`: [N] choice indices."""
    votes = sum(np.eye(np.shape(s)[-1])[np.argmax(s, -1)] for s in score_sets)
    return np.argmax(votes + 1e-6 * np.exp(ensemble_mean(score_sets)), -1)


def _rows_with(rows, scores):
    """Prediction rows re-predicted from new choice scores [N, C] (choices in the rows' order)."""
    predicted = np.argmax(scores, -1)
    return [{**row, "predicted": list(row["scores"])[p]} for row, p in zip(rows, predicted)]


def _calibrated_rows(rows):
    """The rows as calibrated predictions, or None when the run saved no calibrated scores."""
    if not rows or "calibrated_scores" not in rows[0]:
        return None
    return _rows_with(rows, [list(row["calibrated_scores"].values()) for row in rows])


def _stats(runs_rows, metric):
    """significance.prediction_stats of prediction rows of several seeds: (array (seeds, n, k), key)."""
    stats = [significance.example_stats(rows, "cls", metric) for rows in runs_rows]
    return np.stack([s for s, _ in stats]), stats[0][1]


def _predictions(runs):
    """{replicate (seed, shots seed): prediction rows} of runs (None when a run has none)."""
    return {replicate: significance.read_predictions(Path(path).parent, "cls")
            for replicate, path in zip(runs["replicate"], runs["path"])}


def _row(lever, a, b, stats_a, stats_b, metric):
    """A table row comparing side a (the lever) with side b, or None when they cannot be paired."""
    result = significance.paired(stats_a, stats_b, metric)
    if result is None:
        return None
    scale = metric_scale(metric)
    score_a, score_b = (scale * significance.seed_mean_score(s[0], metric) for s in (stats_a, stats_b))
    seeds = fmt_seeds(stats_a[0].shape[0])
    return {"lever": lever, "a": a, "b": b, "score_a": score_a, "score_b": score_b, "difference": result[0],
            "p": result[1], "reading": difference_sentence(a, b, *result, seeds)}


def calibration_row(lever, runs, metric):
    """Calibrated vs raw predictions of the same runs (one per seed)."""
    raw = list(_predictions(runs).values())
    if any(rows is None for rows in raw):
        return None
    calibrated = [_calibrated_rows(rows) for rows in raw]
    if any(rows is None for rows in calibrated):
        return None
    return _row(lever, "calibrated", "raw", _stats(calibrated, metric), _stats(raw, metric), metric)


def ensemble_rows(plain, metric):
    """Ensembles (mean log-probability, vote) of the best config of every prompt against the best
    prompt, on the seeds every prompt has. Returns a list of rows (empty with fewer than 2 prompts)."""
    prompts = prompt_table(plain, metric)
    if len(prompts) < 2:
        return []
    replicate_of = dict(zip(plain["path"], plain["replicate"]))
    by_prompt = [{replicate_of[p]: significance.read_predictions(Path(p).parent, "cls") for p in paths}
                 for paths in prompts["paths"]]
    seeds = sorted(set.intersection(*(set(runs) for runs in by_prompt)))
    if not seeds or any(runs[s] is None for runs in by_prompt for s in seeds):
        return []
    best = int(np.argmax(prompts["val_mean"].to_numpy()))  # on validation, as every choice of the report
    single = [by_prompt[best][s] for s in seeds]
    score_sets = {s: [[list(row["scores"].values()) for row in runs[s]] for runs in by_prompt] for s in seeds}
    mean = [_rows_with(single[i], ensemble_mean(score_sets[s])) for i, s in enumerate(seeds)]
    vote = [[{**row, "predicted": list(row["scores"])[p]} for row, p in zip(single[i], ensemble_vote(score_sets[s]))]
            for i, s in enumerate(seeds)]  # fmt: skip
    name = f"best single prompt ({prompts['prompt_id'].iloc[best]})"
    rows = []
    for label, ensemble in ((f"ensemble of {len(prompts)} prompts (mean log-prob)", mean),
                            (f"ensemble of {len(prompts)} prompts (vote)", vote)):
        row = _row("prompt ensemble", label, name, _stats(ensemble, metric), _stats(single, metric), metric)
        rows += [row] if row else []
    return rows


def variant_row(lever, label, without, with_lever, plain, metric):
    """The best config of the runs with a lever against the best config of the plain runs at the
    same prompt, paired on the seeds both have."""
    best = best_runs(with_lever, metric)
    same_prompt = plain[plain["prompt_id"].isin(best["prompt_id"])]
    if same_prompt.empty:
        return None
    other = best_runs(same_prompt, metric)
    a, b = _predictions(best), _predictions(other)
    seeds = sorted(set(a) & set(b))
    if not seeds or any(a[s] is None or b[s] is None for s in seeds):
        return None
    return _row(lever, label, without, _stats([a[s] for s in seeds], metric),
                _stats([b[s] for s in seeds], metric), metric)


def lever_rows(runs, zero_shot, metric):
    """The section's rows for the trained runs of one study and the zero-shot runs (analysis.match_zero_shot,
    with scores: analysis.add_scores) of any study: list of (lever, row dict or None when its runs are missing)."""
    cloze = runs[(runs["method"] == GLM_CLOZE) & (runs["peft"] == "none")]
    study = runs.iloc[0]
    if len(zero_shot):
        zero_shot = zero_shot[(zero_shot[["task", "dataset", "study"]] == study[["task", "dataset", "study"]]).all(axis=1)]

    def lever_of(frame, name):
        return frame["args"].map(lambda args: bool(args.get(name))).astype(bool)

    plain = cloze[~lever_of(cloze, "num_demonstrations") & ~lever_of(cloze, "search_verbalizers")]
    found = []
    zs = zero_shot[zero_shot["method"] == GLM_CLOZE] if len(zero_shot) else zero_shot
    if len(zs):
        zs = zs[~lever_of(zs, "num_demonstrations") & ~lever_of(zs, "search_verbalizers")]
    if len(zs):
        by_prompt = zs.groupby("prompt_id")["val"].mean()
        best_prompt = by_prompt.idxmax()
        found.append(("zero-shot calibration", calibration_row(f"calibration, zero-shot (prompt {best_prompt})",
                                                               zs[zs["prompt_id"] == best_prompt], metric)))
    else:
        found.append(("zero-shot calibration", None))
    found.append(("calibration", calibration_row("calibration, fine-tuned", best_runs(plain, metric), metric)
                  if len(plain) else None))
    ensembles = ensemble_rows(plain, metric) if len(plain) else []
    found += [("ensemble", row) for row in ensembles] or [("ensemble", None)]
    for name, flag, label, without in (
            ("demonstrations", "num_demonstrations", "with demonstrations", "without"),
            ("label words", "search_verbalizers", "searched label words", "hand-written label words")):
        with_lever = cloze[lever_of(cloze, flag)]
        found.append((name, variant_row(name, label, without, with_lever, plain, metric)
                      if len(with_lever) and len(plain) else None))
    return found


def lever_section(runs, zero_shot, metric):
    """Markdown lines of "What moves the score" for one classification study (`runs`: its trained runs,
    `zero_shot`: the zero-shot runs, both with scores: analysis.add_scores)."""
    lines = ["### What moves the score", "",
             "Each lever against what it changes, on the same test examples (mean over seeds; paired "
             "randomization test). Calibration compares the same runs' predictions before and after; the ensemble "
             "combines the saved scores of each prompt's best configuration per seed; demonstrations and searched "
             "label words compare their best configuration (chosen on validation) with the best one without, at "
             "the same prompt.", "",
             "| Lever | A | B | A test | B test | A − B | p |", "|---|---|---|---|---|---|---|"]
    readings, missing = [], []
    for name, row in lever_rows(runs, zero_shot, metric):
        if row is None:
            missing.append(f"- {name}: no runs to compare; {MISSING[name]}.")
            continue
        lines.append(f"| {row['lever']} | {row['a']} | {row['b']} | {row['score_a']:.2f} | {row['score_b']:.2f} | "
                     f"{row['difference']:+.2f} | {significance.fmt_p(row['p'])} |")
        readings.append(f"- {row['lever']}: {row['reading']}.")
    return lines + [""] + readings + ([""] + missing if missing else []) + [""]
