"""The report's section "What moves the score" (used by report.py): for the GLM cloze runs of one study, each
lever against the runs it changes, paired on the same test examples (significance.paired):

  calibration              the same runs' predictions before and after (run_cls.py --calibrate), zero-shot and
                           fine-tuned
  prompt ensemble          per seed, the best config of every prompt combined (PET, Schick and Schütze 2021):
                           mean of the choices' log-probabilities, and majority vote; against the best prompt
  demonstrations, label    the best config with --num_demonstrations / --search_verbalizers against the best
  words                    config without, at the same prompt
"""

from pathlib import Path

import numpy as np
import scipy.special

from reporting import significance
from reporting.analysis import best_runs, metric_scale, prompt_table
from reporting.readings import difference_sentence
from reporting.tables import fmt_seeds

GLM_CLOZE = "glm_cloze"
MISSING = {
    "calibration": "add `--calibrate` to the run_cls.py runs (sweeps.sh: CLS_ARGS)",
    "zero-shot calibration": "add zero-shot runs with `--no-do_train --calibrate` (sweeps.sh runs them per prompt)",
    "ensemble": "fine-tune two or more prompts with the same seeds (sweeps.sh PROMPT_IDS)",
    "demonstrations":
        "add runs with `--num_demonstrations K` (sweeps.sh entry `glm_cloze@flags=--num_demonstrations=1`)",
    "label words": "add runs with `--search_verbalizers N` (sweeps.sh entry `glm_cloze@flags=--search_verbalizers=3`)",
}


def ensemble_mean(score_sets):
    """PET's ensemble of prompts: the mean over prompts of each choice's log-probability (log-softmax of its
    summed log-probabilities), [N, C], from `score_sets`: P arrays [N, C] of choice scores of the same examples."""
    log_probabilities = [scipy.special.log_softmax(np.asarray(scores, dtype=float), axis=-1) for scores in score_sets]
    return np.mean(log_probabilities, axis=0)


def ensemble_vote(score_sets):
    """Majority vote of the prompts' predictions, ties broken by `ensemble_mean`: [N] choice indices."""
    votes = sum(np.eye(np.shape(s)[-1])[np.argmax(s, -1)] for s in score_sets)
    return np.argmax(votes + 1e-6 * np.exp(ensemble_mean(score_sets)), -1)


def _rows_with(rows, predicted):
    """Prediction rows with new predicted choice indices [N] (choices in the rows' order)."""
    return [{**row, "predicted": list(row["scores"])[p]} for row, p in zip(rows, predicted)]


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
    """Calibrated vs raw predictions of the same runs (one per seed), or None without calibrated scores."""
    raw = list(_predictions(runs).values())
    if any(not rows or "calibrated_scores" not in rows[0] for rows in raw):
        return None
    calibrated = [_rows_with(rows, [np.argmax(list(row["calibrated_scores"].values())) for row in rows])
                  for rows in raw]  # fmt: skip
    return _row(lever, "calibrated", "raw", significance.runs_stats(calibrated, "cls", metric),
                significance.runs_stats(raw, "cls", metric), metric)


def ensemble_rows(plain, metric):
    """Rows: the ensembles (mean log-probability, vote) of every prompt's best config against the best prompt,
    on the seeds every prompt has; none with fewer than 2 prompts."""
    prompts = prompt_table(plain, metric)
    if len(prompts) < 2:
        return []
    by_prompt = [_predictions(plain[plain["path"].isin(paths)]) for paths in prompts["paths"]]
    seeds = sorted(set.intersection(*(set(runs) for runs in by_prompt)))
    if not seeds or any(runs[s] is None for runs in by_prompt for s in seeds):
        return []
    best = int(np.argmax(prompts["val_mean"].to_numpy()))  # on validation, as every choice of the report
    single = [by_prompt[best][s] for s in seeds]
    score_sets = {s: [[list(row["scores"].values()) for row in runs[s]] for runs in by_prompt] for s in seeds}
    mean = [_rows_with(single[i], np.argmax(ensemble_mean(score_sets[s]), -1)) for i, s in enumerate(seeds)]
    vote = [_rows_with(single[i], ensemble_vote(score_sets[s])) for i, s in enumerate(seeds)]
    name = f"best single prompt ({prompts['prompt_id'].iloc[best]})"
    rows = []
    for label, ensemble in ((f"ensemble of {len(prompts)} prompts (mean log-prob)", mean),
                            (f"ensemble of {len(prompts)} prompts (vote)", vote)):
        row = _row("prompt ensemble", label, name, significance.runs_stats(ensemble, "cls", metric),
                   significance.runs_stats(single, "cls", metric), metric)
        rows += [row] if row else []
    return rows


def variant_row(lever, label, without, with_lever, plain, metric):
    """The best config of the runs with a lever against the plain runs' best at its prompt, on their shared seeds."""
    best = best_runs(with_lever, metric)
    same_prompt = plain[plain["prompt_id"].isin(best["prompt_id"])]
    if same_prompt.empty:
        return None
    other = best_runs(same_prompt, metric)
    a, b = _predictions(best), _predictions(other)
    seeds = sorted(set(a) & set(b))
    if not seeds or any(a[s] is None or b[s] is None for s in seeds):
        return None
    return _row(lever, label, without, significance.runs_stats([a[s] for s in seeds], "cls", metric),
                significance.runs_stats([b[s] for s in seeds], "cls", metric), metric)


def lever_rows(runs, zero_shot, metric):
    """[(lever, row dict or None when its runs are missing)] for the trained runs of one study and the zero-shot
    runs (analysis.match_zero_shot), both scored."""
    def lever_of(frame, name):
        return frame["args"].map(lambda args: bool(args.get(name))).astype(bool)

    def plain_of(frame):
        return frame[~lever_of(frame, "num_demonstrations") & ~lever_of(frame, "search_verbalizers")]

    cloze = runs[(runs["method"] == GLM_CLOZE) & (runs["peft"] == "none")]
    plain = plain_of(cloze)
    found = [("zero-shot calibration", None)]
    if len(zero_shot):
        keys = ["task", "dataset", "study"]
        same_study = (zero_shot[keys] == runs.iloc[0][keys]).all(axis=1)
        zs = plain_of(zero_shot[same_study & (zero_shot["method"] == GLM_CLOZE)])
        if len(zs):
            best_prompt = zs.groupby("prompt_id")["val"].mean().idxmax()
            found = [("zero-shot calibration", calibration_row(f"calibration, zero-shot (prompt {best_prompt})",
                                                               zs[zs["prompt_id"] == best_prompt], metric))]
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
    """Markdown lines of "What moves the score" for one classification study (`lever_rows`)."""
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
