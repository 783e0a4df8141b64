"""Specification of sweeps.sh: the grid it expands, the folders it names, skipping, failures,
parallel slots, Slurm arrays; then a real 2-point sweep with run_cls.py and report.py."""

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

import report

REPO = Path(__file__).resolve().parents[1]
SWEEPS = REPO / "sweeps.sh"
SHARED = REPO.parent / "shared"
needs_shared = pytest.mark.skipif(not (SHARED / "data" / "trec").is_dir(), reason="../shared/data not present")

# A small grid: glm_cloze 2 prompts x 2 lr x 1 bs x 2 seeds = 8; LoRA with its own lr and one
# prompt: 1 x 1 x 1 x 2 = 2; a linear head without prompt: 2 lr x 2 seeds = 4; then the zero-shot
# runs of GLM's 2 prompts (LoRA's prompt 0 among them). 16 runs.
GRID_ENV = {
    "LEARNING_RATES": "1e-5 3e-5", "BATCH_SIZES": "8", "PROMPT_IDS": "0 1", "SEEDS": "1 2",
    "CLS_METHODS": "glm_cloze glm_cloze+lora@lr=1e-3@prompt=0 baseline:roberta-tiny:linear_head@prompt=none",
}  # fmt: skip

FAKE_PYTHON = """#!/usr/bin/env bash
# A stand-in interpreter: fails for --seed 2, else writes a results.json that records its slot.
out="" seed=""
while (($#)); do case $1 in --output_dir) out=$2; shift ;; --seed) seed=$2; shift ;; esac; shift; done
echo "fake run in $out"
if [[ $seed == 2 ]]; then echo "boom" >&2; exit 3; fi
printf '{"cuda": "%s", "omp": "%s"}\\n' "${CUDA_VISIBLE_DEVICES-unset}" "${OMP_NUM_THREADS-unset}" > "$out/results.json"
"""


def sweep(*args, env=None, check=True):
    """Run sweeps.sh with a clean grid environment (nothing inherited from the caller's shell)."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    for name in ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "TASKS", "LAUNCHER", "PYTHON", "OUT", "JOBS"):
        base.pop(name, None)
    base["CUDA_VISIBLE_DEVICES"] = ""  # no GPU unless a test says so
    done = subprocess.run(["bash", str(SWEEPS), *args], env={**base, **(env or {})}, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    if check:
        assert done.returncode == 0, done.stderr + done.stdout
    return done


def commands(stdout):
    return [line for line in stdout.splitlines() if line and not line.startswith("#")]


def output_dir(command):
    return Path(re.search(r"--output_dir (\S+)", command).group(1))


# ----------------------------------------------------------------------------- the grid


def test_dry_run_prints_one_command_per_grid_point_with_its_own_output_dir(tmp_path):
    out = sweep("--task", "cls", "--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout
    lines = commands(out)

    assert len(lines) == 16
    dirs = {output_dir(line).relative_to(tmp_path).as_posix() for line in lines}
    assert len(dirs) == 16
    assert "cls_trec/glm_cloze/p1_lr3e-5_bs8_seed2" in dirs
    assert {d for d in dirs if "zero_shot" in d} == {"cls_trec/glm_cloze_zero_shot/p0_seed1",
                                                     "cls_trec/glm_cloze_zero_shot/p1_seed1"}  # fmt: skip
    assert {d for d in dirs if "lora" in d} == {f"cls_trec/glm_cloze_lora/p0_lr1e-3_bs8_seed{s}" for s in (1, 2)}
    assert "cls_trec/baseline_roberta-tiny_linear_head/pnone_lr1e-5_bs8_seed1" in dirs
    assert not list(tmp_path.iterdir())  # a dry run writes nothing


def test_each_method_entry_becomes_the_right_script_and_flags(tmp_path):
    lines = commands(sweep("--task", "cls", "--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout)
    glm = next(line for line in lines if "/glm_cloze/p1_lr3e-5_bs8_seed2" in line)
    lora = next(line for line in lines if "glm_cloze_lora" in line)
    head = next(line for line in lines if "linear_head" in line)

    assert glm.startswith("python run_cls.py --model_name_or_path BAAI/glm-roberta-large ")
    for flag in ("--dataset_name trec", "--prompt_id 1", "--learning_rate 3e-5", "--per_device_train_batch_size 8",
                 "--seed 2", "--num_train_epochs 3"):  # fmt: skip
        assert flag in glm
    assert "--peft lora --lora_r 8" in lora and "--learning_rate 1e-3" in lora
    assert head.startswith("python run_baseline.py --task cls --method linear_head --model_name_or_path roberta-tiny ")
    assert "--prompt_id" not in head


def test_generation_and_ptuning_entries(tmp_path):
    env = {"GEN_METHODS": "glm_gen+ptuning_v2@lr=5e-3 baseline:facebook/bart-large:seq2seq", "SEEDS": "1",
           "PROMPT_IDS": "0", "BATCH_SIZES": "16", "LEARNING_RATES": "1e-5"}  # fmt: skip
    lines = commands(sweep("--task", "gen", "--dry-run", "--out", str(tmp_path), env=env).stdout)

    assert len(lines) == 3  # and the zero-shot run of prompt 0
    assert lines[0].startswith("python run_gen.py ") and "--peft ptuning_v2 --pre_seq_len 16" in lines[0]
    assert output_dir(lines[2]) == tmp_path / "gen_e2e_nlg_cleaned/glm_gen_zero_shot/p0_seed1"
    assert output_dir(lines[0]) == tmp_path / "gen_e2e_nlg_cleaned/glm_gen_ptuning_v2/p0_lr5e-3_bs16_seed1"
    assert "--task gen --method seq2seq --model_name_or_path facebook/bart-large" in lines[1]
    assert output_dir(lines[1]).parent.name == "baseline_facebook_bart-large_seq2seq"


def test_zero_shot_runs_evaluate_each_glm_prompt_once_untrained(tmp_path):
    env = {**GRID_ENV, "CLS_METHODS": "glm_cloze+lora@prompt=2,0@seed=7,8 glm_cloze baseline:roberta-tiny:mlm_prompt"}
    lines = commands(sweep("--task", "cls", "--dry-run", "--out", str(tmp_path), env=env).stdout)
    zero_shot = [line for line in lines if "--no-do_train" in line]

    # Prompts 2 and 0 of the LoRA entry (its first seed, 7), then prompt 1 of glm_cloze; none for the baseline.
    assert [output_dir(line).relative_to(tmp_path).as_posix() for line in zero_shot] == [
        "cls_trec/glm_cloze_zero_shot/p2_seed7", "cls_trec/glm_cloze_zero_shot/p0_seed7",
        "cls_trec/glm_cloze_zero_shot/p1_seed1"]  # fmt: skip
    assert lines[-3:] == zero_shot  # after every trained run
    assert zero_shot[0] == (f"python run_cls.py --model_name_or_path BAAI/glm-roberta-large --no-do_train --dataset_name "
                            f"trec --prompt_id 2 --seed 7 --num_train_epochs 3 --output_dir {zero_shot[0].split()[-1]}")
    assert not any("--peft" in line or "--learning_rate" in line for line in zero_shot)


def test_count_and_task_all(tmp_path):
    assert sweep("--task", "cls", "--count", env=GRID_ENV).stdout.strip() == "16"
    env = {**GRID_ENV, "GEN_METHODS": "glm_gen"}  # 2 prompts x 2 lr x 1 bs x 2 seeds, 2 zero-shot
    assert sweep("--task", "all", "--count", env=env).stdout.strip() == "26"


def test_launcher_replaces_python(tmp_path):
    env = {**GRID_ENV, "LAUNCHER": "accelerate launch --num_processes 1"}
    line = commands(sweep("--dry-run", "--out", str(tmp_path), env=env).stdout)[0]
    assert line.startswith("accelerate launch --num_processes 1 run_cls.py ")


@pytest.mark.parametrize(
    "env, message",
    [({"CLS_METHODS": "glm_gen"}, "generation method"), ({"CLS_METHODS": "bert"}, "unknown method entry"),
     ({"CLS_METHODS": "glm_cloze+adapters"}, "unknown PEFT"), ({"CLS_METHODS": "glm_cloze@steps=3"}, "unknown option")],
)  # fmt: skip
def test_a_bad_method_entry_stops_before_any_run(tmp_path, env, message):
    done = sweep("--dry-run", "--out", str(tmp_path), env=env, check=False)
    assert done.returncode == 2 and message in done.stderr


def fake_shared(tmp_path):
    """A SHARED folder with (empty) copies of the files the cpu-demo preset reads."""
    shared = tmp_path / "shared"
    for name in ("trec/train.csv", "trec/test.csv", "e2e_nlg_cleaned/train.csv", "e2e_nlg_cleaned/validation.csv",
                 "e2e_nlg_cleaned/test.csv"):  # fmt: skip
        (shared / "data" / name).parent.mkdir(parents=True, exist_ok=True)
        (shared / "data" / name).write_text("")
    return shared


def test_cpu_demo_preset_covers_both_tasks_with_3_prompts_2_lrs_2_batch_sizes_2_seeds(tmp_path):
    shared = fake_shared(tmp_path)
    out = tmp_path / "runs"
    lines = commands(sweep("--preset", "cpu-demo", "--dry-run", "--out", str(out), env={"SHARED": str(shared)}).stdout)
    dirs = [output_dir(line).relative_to(out).parts for line in lines]

    methods = {(task, method) for task, method, _ in dirs}
    assert methods == {("cls_trec", "glm_cloze"), ("cls_trec", "glm_cloze_ptuning_v2"),
                       ("cls_trec", "baseline_roberta-tiny_linear_head"), ("gen_e2e_nlg_cleaned", "glm_gen"),
                       ("gen_e2e_nlg_cleaned", "glm_gen_ptuning_v2"), ("gen_e2e_nlg_cleaned", "baseline_t5-tiny_seq2seq"),
                       ("cls_trec", "glm_cloze_zero_shot"), ("gen_e2e_nlg_cleaned", "glm_gen_zero_shot")}
    for task in ("cls_trec", "gen_e2e_nlg_cleaned"):
        glm = [run for t, m, run in dirs if t == task and m in ("glm_cloze", "glm_gen")]
        assert len(glm) == 3 * 2 * 2 * 2
        assert {run.split("_")[0] for run in glm} == {"p0", "p1", "p2"}
    assert all("--model_name_or_path glm-tiny" in line for line in lines if "run_cls.py" in line)
    assert all("--max_train_steps" in line and str(shared / "data") in line for line in lines)


@pytest.mark.parametrize("dry_run", [True, False])
def test_cpu_demo_without_its_data_stops_before_the_first_run_with_one_line(tmp_path, dry_run):
    env = {"SHARED": str(tmp_path / "fresh_clone_has_none"), "PYTHON": fake_python(tmp_path)}
    done = sweep("--preset", "cpu-demo", "--task", "all", "--out", str(tmp_path / "runs"),
                 *(["--dry-run"] if dry_run else []), env=env, check=False)  # fmt: skip

    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(f"sweeps.sh: missing data file(s): {tmp_path}/fresh_clone_has_none/data/trec/train.csv ")
    assert "set SHARED=DIR" in done.stderr and "--preset cpu-offline, which needs no files" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_a_missing_data_file_of_ones_own_grid_is_named(tmp_path):
    env = {**GRID_ENV, "CLS_DATA_ARGS": f"--train_file {SWEEPS} --test_file data/nope.csv"}  # relative: to the repo
    done = sweep("--dry-run", "--out", str(tmp_path), env=env, check=False)
    assert done.returncode == 2
    assert done.stderr.strip() == "sweeps.sh: missing data file(s): data/nope.csv (named in *_DATA_ARGS / *_ARGS)."


def test_the_shots_axis_draws_each_k_per_shot_seed_and_trains_on_the_full_data_once(tmp_path):
    env = {"LEARNING_RATES": "1e-5", "BATCH_SIZES": "8", "PROMPT_IDS": "0", "SEEDS": "1", "GEN_METHODS": "glm_gen",
           "CLS_METHODS": "glm_cloze baseline:roberta-tiny:linear_head@prompt=none"}  # fmt: skip
    lines = commands(sweep("--task", "all", "--shots", "8 full", "--shot_seeds", "0 1", "--dry-run", "--out",
                           str(tmp_path), env=env).stdout)  # fmt: skip
    dirs = [output_dir(line).relative_to(tmp_path).as_posix() for line in lines]

    assert dirs == [
        "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed1_k8_shots0", "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed1_k8_shots1",
        "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed1",
        "cls_trec/baseline_roberta-tiny_linear_head/pnone_lr1e-5_bs8_seed1_k8_shots0",
        "cls_trec/baseline_roberta-tiny_linear_head/pnone_lr1e-5_bs8_seed1_k8_shots1",
        "cls_trec/baseline_roberta-tiny_linear_head/pnone_lr1e-5_bs8_seed1",
        "gen_e2e_nlg_cleaned/glm_gen/p0_lr1e-5_bs8_seed1",  # generation has no K axis
        "cls_trec/glm_cloze_zero_shot/p0_seed1", "gen_e2e_nlg_cleaned/glm_gen_zero_shot/p0_seed1"]  # fmt: skip
    assert "--seed 1 --num_shots 8 --shots_seed 1 --num_train_epochs 3" in lines[1]
    assert sum("--num_shots" in line for line in lines) == 4


def test_a_bad_shots_value_stops_before_any_run(tmp_path):
    done = sweep("--shots", "8 all", "--dry-run", "--out", str(tmp_path), env=GRID_ENV, check=False)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.strip() == "sweeps.sh: --shots takes numbers of examples per class and 'full', got 'all'"


def test_cpu_fewshot_preset_draws_k_8_16_64_three_times_and_the_full_data_for_4_lines(tmp_path):
    out = tmp_path / "runs"
    lines = commands(sweep("--preset", "cpu-fewshot", "--dry-run", "--out", str(out),
                           env={"SHARED": str(fake_shared(tmp_path))}).stdout)  # fmt: skip
    runs = [output_dir(line).relative_to(out).parts for line in lines]

    assert len(lines) == 4 * (3 * 3 + 1) + 2  # (glm_cloze x 2 prompts, 2 heads) x (3 K x 3 draws + full), 2 zero-shot
    shots = [re.search(r"--num_shots (\d+) --shots_seed (\d+)", line) for line in lines]
    assert {match.groups() for match in shots if match} == {(k, s) for k in ("8", "16", "64") for s in ("1", "2", "3")}
    assert {method for _, method, _ in runs} == {"glm_cloze", "baseline_glm-tiny_linear_head",
                                                 "baseline_roberta-tiny_linear_head", "glm_cloze_zero_shot"}
    assert all("--max_train_steps 60" in line and "run_gen.py" not in line for line in lines)


def test_cpu_insight_preset_runs_each_lever_and_its_zero_shot_in_folders_of_their_own(tmp_path):
    out = tmp_path / "runs"
    lines = commands(sweep("--preset", "cpu-insight", "--dry-run", "--out", str(out),
                           env={"SHARED": str(fake_shared(tmp_path))}).stdout)  # fmt: skip
    runs = [output_dir(line).relative_to(out).parts for line in lines]

    methods = [method for _, method, _ in runs]
    assert {m: methods.count(m) for m in methods} == {
        "glm_cloze": 6, "glm_cloze_num_demonstrations_1": 2, "glm_cloze_search_verbalizers_3": 2,
        "glm_cloze_zero_shot": 3, "glm_cloze_zero_shot_num_demonstrations_1": 1,
        "glm_cloze_zero_shot_search_verbalizers_3": 1,
    }  # fmt: skip
    assert all("--calibrate" in line for line in lines)
    assert all(("--num_demonstrations=1" in line) == ("demonstrations" in str(output_dir(line))) for line in lines)
    assert all(("--search_verbalizers=3" in line) == ("search" in str(output_dir(line))) for line in lines)


def test_a_flags_option_adds_its_flags_to_every_run_of_the_entry_and_nothing_else(tmp_path):
    lines = commands(sweep("--dry-run", "--out", str(tmp_path), env={
        "LEARNING_RATES": "1e-5", "BATCH_SIZES": "8", "PROMPT_IDS": "0", "SEEDS": "1",
        "CLS_METHODS": "glm_cloze glm_cloze@flags=--calibrate,--num_demonstrations=2"}).stdout)  # fmt: skip
    assert [str(output_dir(line).relative_to(tmp_path)) for line in lines] == [
        "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed1", "cls_trec/glm_cloze_calibrate_num_demonstrations_2/p0_lr1e-5_bs8_seed1",
        "cls_trec/glm_cloze_zero_shot/p0_seed1", "cls_trec/glm_cloze_zero_shot_calibrate_num_demonstrations_2/p0_seed1"]
    assert [line.count("--calibrate --num_demonstrations=2") for line in lines] == [0, 1, 0, 1]


def test_cpu_offline_preset_needs_no_files(tmp_path):
    out = tmp_path / "runs"
    env = {"SHARED": str(tmp_path / "none")}
    lines = commands(sweep("--preset", "cpu-offline", "--task", "all", "--dry-run", "--out", str(out), env=env).stdout)

    assert len(lines) == 64 + 2 * 3  # and the zero-shot runs of 3 prompts per task
    tasks = {output_dir(line).relative_to(out).parts[0] for line in lines}
    assert tasks == {"cls_fine_foods", "gen_hhs_breaches"}
    assert not any("_file" in line for line in lines)
    assert all("--model_name_or_path glm-tiny" in line for line in lines if "run_baseline.py" not in line)


# ----------------------------------------------------------------------------- running


def fake_python(tmp_path):
    path = tmp_path / "fake_python.sh"
    path.write_text(FAKE_PYTHON)
    path.chmod(0o755)
    return str(path)


def test_existing_results_are_skipped(tmp_path):
    first = output_dir(commands(sweep("--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout)[0])
    first.mkdir(parents=True)
    (first / "results.json").write_text("{}")

    out = sweep("--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout

    assert len(commands(out)) == 15
    assert f"# skip (results.json exists): {first}" in out.splitlines()


def test_a_killed_run_with_checkpoints_is_resumed_from_the_latest(tmp_path):
    before = commands(sweep("--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout)
    (output_dir(before[1]) / "step_2").mkdir(parents=True)
    (output_dir(before[1]) / "step_2" / "training_state.json").write_text("{}")

    after = commands(sweep("--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout)

    assert after[1] == before[1] + " --resume_from_checkpoint latest"
    assert after[:1] + after[2:] == before[:1] + before[2:]


def test_a_failing_run_is_logged_and_the_sweep_goes_on_then_resumes(tmp_path):
    env = {**GRID_ENV, "CLS_METHODS": "glm_cloze", "PROMPT_IDS": "0", "LEARNING_RATES": "1e-5",
           "PYTHON": fake_python(tmp_path)}  # seeds 1 (works) and 2 (fails), zero-shot seed 1  # fmt: skip
    out = tmp_path / "runs"

    done = sweep("--out", str(out), env=env, check=False)

    assert done.returncode == 1
    assert "2 done, 0 skipped, 1 failed" in done.stdout
    failed_log = out / "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed2/sweep.log"
    assert f"log: {failed_log}" in done.stdout
    assert "boom" in failed_log.read_text()
    assert str(failed_log) in (out / "failed_runs.txt").read_text()
    assert (out / "cls_trec/glm_cloze/p0_lr1e-5_bs8_seed1/results.json").exists()

    again = sweep("--out", str(out), env=env, check=False)  # the killed or failed sweep resumes
    assert "0 done, 2 skipped, 1 failed" in again.stdout


def test_everything_failing_still_runs_every_point(tmp_path):
    env = {**GRID_ENV, "PYTHON": "false"}
    done = sweep("--out", str(tmp_path), env=env, check=False)
    assert done.returncode == 1 and "0 done, 0 skipped, 16 failed" in done.stdout
    assert len((tmp_path / "failed_runs.txt").read_text().splitlines()) == 16


def test_parallel_jobs_get_one_gpu_slot_each(tmp_path):
    env = {**GRID_ENV, "CLS_METHODS": "glm_cloze", "SEEDS": "1", "PYTHON": fake_python(tmp_path),
           "CUDA_VISIBLE_DEVICES": "3,5"}  # 2 prompts x 2 lr + 2 zero-shot = 6 runs on 2 slots  # fmt: skip
    done = sweep("--jobs", "2", "--out", str(tmp_path / "runs"), env=env)

    assert "6 done, 0 skipped, 0 failed" in done.stdout
    slots = [json.loads(p.read_text())["cuda"] for p in sorted((tmp_path / "runs").rglob("results.json"))]
    assert sorted(slots) == ["3", "3", "3", "5", "5", "5"]


def test_parallel_jobs_without_gpu_share_the_cpu_threads(tmp_path):
    env = {**GRID_ENV, "CLS_METHODS": "glm_cloze", "SEEDS": "1", "PYTHON": fake_python(tmp_path)}
    sweep("--jobs", "2", "--out", str(tmp_path / "runs"), env=env)
    threads = {json.loads(p.read_text())["omp"] for p in (tmp_path / "runs").rglob("results.json")}
    assert threads == {str(max(1, len(os.sched_getaffinity(0)) // 2))}  # nproc / jobs


def test_slurm_array_task_runs_one_grid_point(tmp_path):
    every = commands(sweep("--dry-run", "--out", str(tmp_path), env=GRID_ENV).stdout)
    one = commands(sweep("--dry-run", "--out", str(tmp_path), env={**GRID_ENV, "SLURM_ARRAY_TASK_ID": "5"}).stdout)
    assert one == [every[5]]

    env = {**GRID_ENV, "SLURM_ARRAY_TASK_ID": "16", "PYTHON": fake_python(tmp_path)}
    beyond = sweep("--out", str(tmp_path), env=env, check=False)
    assert beyond.returncode == 2 and "grid has 16 points" in beyond.stderr

    env = {**GRID_ENV, "SLURM_ARRAY_TASK_ID": "0", "PYTHON": fake_python(tmp_path)}
    ran = sweep("--out", str(tmp_path), env=env)
    assert "1 done, 0 skipped, 0 failed, of 1 run(s)" in ran.stdout
    assert len(list(tmp_path.rglob("results.json"))) == 1


# ----------------------------------------------------------------------------- a real sweep


@needs_shared
def test_a_real_two_point_sweep_and_its_report(tmp_path):
    tokenizer = SHARED / "tokenizers" / "glm-roberta-large"
    env = {
        "MODEL": "glm-tiny", "TOKENIZER": str(tokenizer) if tokenizer.is_dir() else "train",
        "CLS_METHODS": "glm_cloze", "LEARNING_RATES": "1e-4 1e-3", "BATCH_SIZES": "4", "PROMPT_IDS": "0", "SEEDS": "1",
        "CLS_DATA_ARGS": f"--train_file {SHARED}/data/trec/train.csv --test_file {SHARED}/data/trec/test.csv",
        "COMMON_ARGS": "--max_train_steps 4 --eval_steps 2 --max_train_samples 32 --max_eval_samples 16 "
                       "--max_test_samples 16 --per_device_eval_batch_size 16",
    }  # fmt: skip
    out = tmp_path / "runs"
    start = time.perf_counter()
    done = sweep("--task", "cls", "--jobs", "2", "--out", str(out), env=env, check=False)
    assert done.returncode == 0, done.stdout + "".join(p.read_text()[-3000:] for p in out.rglob("sweep.log"))
    assert "3 done, 0 skipped, 0 failed" in done.stdout  # and the zero-shot run

    report.main([str(out)])

    results = {p.parent.name: json.loads(p.read_text()) for p in out.rglob("results.json")}
    assert set(results) == {"p0_lr1e-4_bs4_seed1", "p0_lr1e-3_bs4_seed1", "p0_seed1"}
    zero_shot = 100 * results.pop("p0_seed1")["test"]["accuracy"]
    val = {name: 100 * r["validation"]["accuracy"] for name, r in results.items()}
    low, high = "p0_lr1e-4_bs4_seed1", "p0_lr1e-3_bs4_seed1"
    best = high if val[high] > val[low] else low  # chosen on validation; a tie goes to the first config (smaller lr)
    text = (out / "report" / "report.md").read_text()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
    for name in results:
        lr = "1e-4" if "1e-4" in name else "1e-3"
        row = ["0", lr, "4", "1", f"{val[name]:.2f}", ""]
        assert ([f"**{cell}**" for cell in row[:-1]] + ["**best**"] if name == best else row) in rows
    test = 100 * results[best]["test"]["accuracy"]
    assert f"**test {test:.2f}**" in text
    assert ["glm_cloze", "glm-tiny", "none", f"p 0, lr {best.split('_')[1][2:]}, bs 4", "1", f"{val[best]:.2f}",
            f"{zero_shot:.2f}", f"{test:.2f}"] in [row[:8] for row in rows]  # the zero-shot score next to the tuned one
    # The interval is read from the run's predictions_test.jsonl and must hold the score run_cls.py computed.
    low, high = map(float, re.search(r"on test it scores [\d.]+ \(95% CI \[([\d.]+), ([\d.]+)\] over 16 test", text).groups())
    assert low <= test <= high
    summary = json.loads((out / "report" / "summary.json").read_text())["cls/trec"][0]
    assert summary["test_mean"] == pytest.approx(100 * results[best]["test"]["accuracy"])
    for figure in ("heatmap_cls_trec_glm_cloze_glm-tiny.png", "curves_cls_trec.png", "confusion_cls_trec_glm_cloze_glm-tiny.png"):
        data = (out / "report" / figure).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert r"\toprule" in (out / "report" / "tables.tex").read_text()
    print(f"real 2-point sweep + report: {time.perf_counter() - start:.0f} s")
