"""The report's sentences (used by report.py): what each table and figure of report.md shows, in words. The
numbers come from analysis.py, significance.py and error_analysis.py; these functions only phrase them.
"""

import itertools
import math

import numpy as np
import pandas as pd

from reporting import significance
from reporting.analysis import FULL_DATA, METRIC_NAMES, PROMPT_METHODS, higher_is_better, metric_label, system_label
from reporting.significance import paired
from reporting.tables import fmt_ci, fmt_k, fmt_lr, fmt_mean_std, fmt_prompt, fmt_seeds, fmt_shots

# Picking the shortest choice this many points more often than the gold answer is shortest: following length.
LENGTH_FOLLOWING_POINTS = 20


def difference_sentence(a, b, difference, p, seeds):
    """ "A beats B by 1.80 points on test (p = 0.031, significant at 0.05; 3 vs 2 seeds)"."""
    verdict = "**significant**" if p < significance.ALPHA else "not significant"
    verb = "beats" if difference > 0 else "trails" if difference < 0 else "ties with"
    by = f" by {abs(difference):.2f} points" if difference else ""
    return f"{a} {verb} {b}{by} on test ({significance.fmt_p(p)}, {verdict} at {significance.ALPHA}; {seeds})"


def comparison_reading(table, trivial, zero_shot=None):
    """Sentences under the comparison table (significance.add_tests_against_best, analysis.add_zero_shot): the
    best system, its test score, its gain over zero-shot (`zero_shot`: significance.zero_shot_test of the best
    row), its paired tests against the others, and the trivial baselines."""
    row = table[table["best"]].iloc[0]
    name = system_label(row)
    tied = table[~table["best"] & (table["val_mean"] == row["val_mean"])]
    tied = [system_label(other) for _, other in tied.iterrows()]
    validation = fmt_mean_std(row["val_mean"], row["val_std"]) + (f", tied with {', '.join(tied)}" if tied else "")
    if row["test_hidden"]:
        return [f"**Reading.** {name} is best on validation ({validation}); the test labels are hidden, so no test "
                "score is reported."]
    text = f"**Reading.** {name} is best on validation ({validation}); on test it scores " + \
        fmt_mean_std(row["test_mean"], row["test_std"])
    if row["test_examples"]:
        text += f" (95% CI {fmt_ci(row['test_ci'])} over {row['test_examples']} test examples)"
    lines = [f"{text}, {fmt_seeds(row['n_seeds'])}."]
    if row["zs_n_seeds"] and not row["zs_test_hidden"]:
        before = f"the same model and prompt zero-shot ({fmt_mean_std(row['zs_test_mean'], row['zs_test_std'])})"
        if zero_shot is None:
            gain = row["test_mean"] - row["zs_test_mean"]
            lines.append(f"- Fine-tuned, it scores {gain:+.2f} points against {before}.")
        else:
            seeds = f"{fmt_seeds(row['n_seeds'])} vs {fmt_seeds(row['zs_n_seeds'])}"
            lines.append(f"- {difference_sentence('Fine-tuned, it', before, *zero_shot, seeds)}.")
    for _, other in table[~table["best"] & table["p_vs_best"].notna()].iterrows():
        seeds = f"{fmt_seeds(row['n_seeds'])} vs {fmt_seeds(other['n_seeds'])}"
        sentence = difference_sentence("It", system_label(other), -other["diff_vs_best"], other["p_vs_best"], seeds)
        lines.append(f"- {sentence}.")
    for baseline, (_, test) in trivial.items():
        if np.isfinite(test):
            same = ": the best system does no better" if np.isclose(test, row["test_mean"]) else ""
            lines.append(f"- The {baseline.replace('_', ' ')} baseline scores {test:.2f} on the same test set{same}.")
    return lines


def prompt_pair_readings(prompts, stats, metric):
    """Bullets: the paired test of every pair of prompts at their best config, the higher on test first."""
    lines = []
    for a, b in itertools.combinations(prompts.index, 2):
        if prompts.loc[b, "test_mean"] > prompts.loc[a, "test_mean"]:
            a, b = b, a
        result = paired(stats[a], stats[b], metric)
        if result is None:
            continue
        names = [f"{word} {fmt_prompt(prompts.loc[i, 'prompt_id'])} ({prompts.loc[i, 'prompt_name']})"
                 for word, i in (("Prompt", a), ("prompt", b))]  # fmt: skip
        seeds = f"{fmt_seeds(prompts.loc[a, 'n_seeds'])} vs {fmt_seeds(prompts.loc[b, 'n_seeds'])}"
        lines.append(f"- {difference_sentence(*names, *result, seeds)}.")
    return lines


def prompt_zero_shot_reading(prompts, metric):
    """Before and after fine-tuning, per prompt (`prompt_table` rows, analysis.add_zero_shot): the test ranges,
    each prompt's gain, and whether zero-shot validation picks the prompt best after fine-tuning; None
    without zero-shot runs."""
    zero = prompts[prompts["zs_n_seeds"] > 0]
    if zero.empty:
        return None
    names = {i: fmt_prompt(prompts.loc[i, "prompt_id"]) for i in prompts.index}
    text = "**Before and after fine-tuning.** "
    tested = zero[zero["zs_test_mean"].notna() & zero["test_mean"].notna()]
    if len(tested):
        both = ", ".join(f"prompt {names[i]} ({prompts.loc[i, 'prompt_name']})" for i in tested.index)
        if len(tested) == 1:
            i = tested.index[0]
            text += (f"Of the {len(prompts)} prompts only {both} has both a zero-shot and a fine-tuned test "
                     f"score: {tested.loc[i, 'zs_test_mean']:.2f} zero-shot, {tested.loc[i, 'test_mean']:.2f} "
                     f"fine-tuned ({tested.loc[i, 'test_mean'] - tested.loc[i, 'zs_test_mean']:+.2f} points). ")
        else:
            gains = ", ".join(f"prompt {names[i]} {tested.loc[i, 'test_mean'] - tested.loc[i, 'zs_test_mean']:+.2f}"
                              for i in tested.index)  # fmt: skip
            only = "" if len(tested) == len(prompts) else f" (of {len(prompts)}, those with both runs)"
            text += (f"Zero-shot, {both}{only} score {tested['zs_test_mean'].min():.2f} to "
                     f"{tested['zs_test_mean'].max():.2f} on test; fine-tuned, {tested['test_mean'].min():.2f} to "
                     f"{tested['test_mean'].max():.2f}. Fine-tuning changes each prompt's test score by {gains} "
                     "points. ")  # fmt: skip
    validated = zero[zero["zs_val_mean"].notna()]
    if len(validated) > 1:
        pick = pd.Series.idxmax if higher_is_better(metric) else pd.Series.idxmin
        before = pick(validated["zs_val_mean"])
        after = validated.index[validated["val_mean"] == validated.loc[pick(validated["val_mean"]), "val_mean"]]
        if len(after) == 1:
            after_text = f"prompt {names[after[0]]} after fine-tuning"
            verdict = "the same prompt" if before in after else "a different prompt"
        else:  # a tie is no ranking: say so rather than report the first of the tied prompts
            after_text = f"prompts {', '.join(names[i] for i in after)} tie after fine-tuning"
            verdict = "one of them" if before in after else "none of them"
        text += (f"On validation, prompt {names[before]} is best zero-shot and {after_text}: the zero-shot ranking "
                 f"picks {verdict}.")
    return text.strip()


def grid_reading(sensitivity, metric):
    """The sensitivity of one heatmap in sentences (analysis.grid_sensitivity)."""
    s, label = sensitivity, metric_label(metric)
    best = s["best"]
    if s["cells"] < 2:
        return f"**Sensitivity.** One configuration (validation {label} {best['val_mean']:.2f}): nothing to compare."
    text = (f"**Sensitivity** (validation {label}, {s['cells']} cells): best {best['val_mean']:.2f} at learning rate "
            f"{fmt_lr(best['learning_rate'])}, batch size {int(best['batch_size'])}; worst {s['worst']:.2f}; spread "
            f"{s['spread']:.2f} points, std across cells {s['cell_std']:.2f}.")
    if len(s["best_lr"]) > 1:
        per_size = ", ".join(f"{fmt_lr(lr)} at batch size {bs}" for bs, lr in s["best_lr"].items())
        text += f" The best learning rate {'moves' if s['lr_moves'] else 'does not move'} with batch size ({per_size})."
    if math.isnan(s["seed_std"]):
        return text + " One seed at the best cell: the seed-to-seed spread is not measured."
    return text + _seed_verdict(s["seed_std"], "at the best cell", s["cell_std"], "cells", "configuration", "grid")


def prompt_reading(sensitivity, metric):
    """The spread across prompts against the spread across seeds (analysis.prompt_sensitivity)."""
    s = sensitivity
    text = (f"**Prompt sensitivity** (validation {metric_label(metric)}, each prompt at its best configuration): the "
            f"{s['prompts']} prompts range from {s['low']:.2f} to {s['high']:.2f} (spread {s['spread']:.2f} points, "
            f"std across prompts {s['prompt_std']:.2f}).")
    if math.isnan(s["seed_std"]):
        return text + " One seed per prompt: the seed-to-seed spread is not measured."
    where = "at those configurations (root mean square)"
    return text + _seed_verdict(s["seed_std"], where, s["prompt_std"], "prompts", "prompt", "prompt")


def _seed_verdict(seed_std, where, std, across, what, noun):
    """Whether the seed-to-seed std `where` is smaller than the std across `across`, and what that means."""
    smaller = seed_std < std
    verdict = f"the {what} matters more than the seed" if smaller else f"{noun} differences are within seed noise"
    return (f" The seed-to-seed std {where}, {seed_std:.2f}, is {'' if smaller else 'not '}smaller than the std "
            f"across {across} ({std:.2f}): {verdict}.")


def per_class_reading(classes, matrix, noun="class"):
    """F1 range over classes, the class predicted most, classes never predicted and the largest confusion;
    `noun` names the classes ("choice position" for multiple choice)."""
    f1 = classes.set_index("class")["f1"]
    if f1.min() == f1.max():
        text = f"**Reading.** Every {noun} has F1 {100 * f1.min():.1f}."
    else:
        text = (f"**Reading.** Per {noun}, F1 ranges from {100 * f1.min():.1f} ({f1.idxmin()}) to "
                f"{100 * f1.max():.1f} ({f1.idxmax()}).")
    most = classes.loc[classes["predicted"].idxmax()]
    gold_share = matrix.sum(1)[classes["predicted"].idxmax()] / matrix.sum()
    text += (f" The most predicted {noun}, {most['class']}, takes {100 * most['predicted']:.1f}% of the predictions "
             f"against {100 * gold_share:.1f}% of the gold labels.")
    never = classes.loc[classes["predicted"] == 0, "class"].tolist()
    if never:
        text += f" It never predicts {', '.join(map(str, never))}."
    off = matrix * (1 - np.eye(len(matrix), dtype=int))
    if off.any():
        gold, predicted = np.unravel_index(off.argmax(), off.shape)
        text += (f" The most frequent confusion is gold {classes['class'][gold]} predicted as "
                 f"{classes['class'][predicted]} ({100 * off[gold, predicted] / matrix[gold].sum():.1f}% of the gold "
                 f"{classes['class'][gold]} examples).")
    return text


def length_following_reading(facts, length_normalized):
    """Whether the picks follow the choices' lengths (error_analysis.length_following), with the remedy."""
    predicted, gold = 100 * facts["predicted_shortest"], 100 * facts["gold_shortest"]
    text = (f"**Length.** The model picks the shortest choice (in tokens) in {predicted:.1f}% of its "
            f"{facts['predictions']} test predictions; the gold answer is the shortest in {gold:.1f}%.")
    if predicted - gold < LENGTH_FOLLOWING_POINTS:
        return text + " Its picks do not follow length."
    if length_normalized:
        return text + " Its picks follow length, although its scores were divided by the choices' lengths."
    return text + (" Its picks follow length: a choice's score is the sum of its tokens' log-probabilities, which "
                   "favours short choices; compare the shortest-choice baseline, and score with "
                   "`--length_normalize` (the mean log-probability per token).")


def errors_reading(errors):
    """What the most confident errors share, in a sentence."""
    if errors.empty:
        return "**Reading.** No test example is predicted wrongly."
    predicted = errors["predicted"].value_counts()
    always = int((errors["wrong_seeds"] == errors["seeds"]).sum())
    text = (f"**Reading.** {predicted.iloc[0]} of these {len(errors)} errors predict {predicted.index[0]}; their "
            f"margins run from {errors['margin'].min():.2f} to {errors['margin'].max():.2f}.")
    if errors["seeds"].iloc[0] > 1:
        text += f" Wrong in every seed: {always} of {len(errors)} (systematic errors rather than seed noise)."
    return text


def lowest_bleu_reading(outputs, facts):
    """The range of the lowest sentence BLEU, empty outputs among them, and how varied the outputs are."""
    empty = int((outputs["prediction"].str.split().str.len() == 0).sum())
    text = (f"**Reading.** These outputs score sentence BLEU {outputs['mean_bleu'].min():.1f} to "
            f"{outputs['mean_bleu'].max():.1f}; empty outputs among them: {empty}.")
    return text + (f" Over all {facts['sources']} test sources the system writes {facts['distinct']:.0f} distinct "
                   f"outputs{' (mean over seeds)' if facts['outputs'] > facts['sources'] else ''}.")


def length_reading(lengths, facts):
    """Output against reference length, in a sentence."""
    output, reference = lengths.loc["output"], lengths.loc["reference"]
    ratio = output["mean"] / reference["mean"] if reference["mean"] else math.nan
    return (f"**Reading.** Outputs have {output['mean']:.1f} words on average (median {output['median']:.0f}) against "
            f"{reference['mean']:.1f} for the references (ratio {ratio:.2f}); {100 * facts['shorter']:.1f}% of the "
            f"outputs are shorter than every reference of their source and {100 * facts['longer']:.1f}% longer than "
            f"every one; empty outputs: {facts['empty']} of {facts['outputs']}.")


def few_shot_reading(curve, metric):
    """Sentences on a `few_shot_curve`: which line leads on test at the smallest and the largest K (and whether
    its band clears the runner-up's), where the lead changes hands, and the gap between the best prompt-based
    line (PROMPT_METHODS) and the best linear head at each K."""
    means, lows, highs, counts = (curve.pivot(index="line", columns="shots", values=column)
                                  for column in ("test_mean", "test_min", "test_max", "n"))  # fmt: skip
    sign = 1 if higher_is_better(metric) else -1
    worst, best = (lows, highs) if sign > 0 else (highs, lows)  # the ends of a band, for that direction
    name = METRIC_NAMES.get(metric, metric)
    leaders = {shots: (sign * means[shots]).dropna().sort_values(ascending=False).index for shots in means.columns}
    sentences = []
    for shots in dict.fromkeys([means.columns[0], means.columns[-1]]):
        first, *others = leaders[shots]
        where = "On the full training data" if shots == FULL_DATA else f"With {fmt_shots(shots)} examples per class"
        text = f"{where}, {first} leads on test {name} ({means.loc[first, shots]:.1f}"
        if others:
            second = others[0]
            if min(counts.loc[first, shots], counts.loc[second, shots]) < 2:
                verdict = "one replicate: no band to compare"
            elif sign * worst.loc[first, shots] > sign * best.loc[second, shots]:
                verdict = "the bands do not overlap"
            else:
                verdict = "their bands overlap: not a settled difference"
            text += f", next {second} {means.loc[second, shots]:.1f}; {verdict}"
        sentences.append(text + ").")
    changes = [f"{leaders[b][0]} takes the lead from {leaders[a][0]} between {fmt_k(a)} and {fmt_k(b)}"
               for a, b in zip(means.columns, means.columns[1:]) if leaders[a][0] != leaders[b][0]]
    if len(means.columns) > 1:
        sentences.append(("; ".join(changes) + ".") if changes else f"{leaders[means.columns[0]][0]} leads at every K.")
    methods = curve.drop_duplicates("line").set_index("line")["method"][means.index]
    prompted, heads = means[methods.isin(PROMPT_METHODS)], means[methods == "linear_head"]
    if len(prompted) and len(heads):
        gaps = sign * ((sign * prompted).max() - (sign * heads).max())
        listed = ", ".join(f"{gap:+.1f} at {fmt_k(shots)}" for shots, gap in gaps.dropna().items())
        sentences.append(f"Best prompt-based line minus best linear head ({name} points): {listed}.")
    return sentences
