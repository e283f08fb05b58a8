"""Wire the pieces into sentence-transformers' trainer: homogeneous batches, a loss per dataset, logging.

``SentenceTransformerTrainer`` (HF Trainer underneath) does the loop, AdamW + linear warm-up/decay,
checkpoints, ``resume_from_checkpoint``, DDP under torchrun (gloo on CPU, nccl on CUDA) and fp16 on CUDA.
We override only: the multi-dataset batch sampler (``sampler.HomogeneousBatchSampler``), the data collator
(``collator.GroupCollator``: one query column and one flattened key column, so a variable group size needs
no fixed per-key columns) and ``compute_loss`` (to record each step's dataset, task and loss per rank in
``OUT/logs/steps.rank<r>.jsonl``). The loss is a dict keyed by dataset name, so the trainer picks each
batch's loss from the dataset's task recipe in the registry.

``plain_tasks`` tokenises those tasks as plain text (and the model saves empty prompts for them).
Ablations (``TrainConfig``): ``instructions=False`` tokenises plain text; ``homogeneous=False`` draws batches
uniformly from all datasets (``sampler.MixedBatchSampler``, one process only), the collator splits a batch by
task and the loss is the count-weighted mean of each task subgroup's loss (in-batch negatives stay within a
subgroup); ``hard_labels`` and ``loss_override`` change each task's loss (``TrainConfig.loss_for``).

``train(resume=True)`` goes on from the newest complete checkpoint (``latest_checkpoint``), only with the data and
settings the run started with (``RUN_STAMP``, ``check_resumable``), and trains nothing for a finished run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

from llm_embedder.io import LOCK_FILE, atomic_write, check_output_dir, exclusive, file_sha256, same_file
from llm_embedder.train.card import CARD_NAME
from llm_embedder.train.config import TrainConfig
from llm_embedder.train.examples import TrainingFile, load_training_files
from llm_embedder.train.once import STARTED_STAMP, TRAINED_STAMP, read_stamp

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
LOG_DIR = "logs"
CONFIG_FILE = "train_config.json"  # written with the final model
# HF's ``Trainer._save_checkpoint`` writes a checkpoint's model, then these (and the RNG state), then the trainer
# state last: a folder without all of them, or with a torn trainer state, is a save cut off by a kill
TRAINER_STATE = "trainer_state.json"
CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt")
RUN_STAMP = "run_inputs.json"  # written as a run starts: its settings and data, compared on --resume
# The options --resume may change: where and how fast the same steps are computed (device, mixed precision,
# gradient checkpointing: the same maths, rounded as that hardware rounds) and how often progress is logged and
# checkpoints are saved and kept. All else (data, base model, hyper-parameters, tasks, ablation switches, number
# of processes) decides what the steps compute: a run resumed with another value would be neither run.
RESUME_MAY_CHANGE = ("out", "resume", "device", "fp16", "cpu_bf16", "gradient_checkpointing", "save_steps",
                     "save_total_limit", "logging_steps")
BY_CONTENT = ("data", "task_files")  # compared by the files' content (a run folder may move), not by their paths


class TrainingDivergedError(ValueError):
    """The loss became NaN or infinite: the weights are lost, so training stops before any model is saved."""


class CheckpointUnreadableError(ValueError):
    """A complete-looking checkpoint whose files cannot be read back (truncated or corrupted on disk)."""


@contextmanager
def reading_checkpoint(checkpoint: str | None, what: str) -> Iterator[None]:
    """Turn a failure to read ``what`` from ``checkpoint`` (a truncated ``optimizer.pt``: torch's long zip-archive
    error and traceback) into one line naming the checkpoint and saying to remove it; running out of memory is not
    the file's fault and is raised as it is."""
    import pickle

    import torch

    try:
        yield
    except torch.OutOfMemoryError:
        raise
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError, KeyError) as err:
        cause = " ".join(str(err).split()).split(". ")[0][:160] or type(err).__name__  # its first sentence
        raise CheckpointUnreadableError(
            f"--resume: cannot read the {what} of {checkpoint} ({cause}); remove that checkpoint folder to resume "
            "from the one before it") from None


def distributed_env() -> tuple[int, int]:
    """(rank, world size) from the torchrun environment, before the process group exists."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def dropped(f: TrainingFile) -> str:
    """Which of a file's records did not become examples, and why (e.g. ``8 of 8 records dropped (8 by the lrlm
    task's teacher_scores_margin 0.1 filter)``), or '' where none was dropped."""
    from llm_embedder.tasks import get_task

    task = get_task(f.task)
    filters = " / ".join(f"{name} {value}" for name in ("teacher_scores_margin", "teacher_scores_min")
                         if (value := getattr(task, name)) is not None) or "teacher-score"
    reasons = [(f.filtered, f"by the {f.task} task's {filters} filter"), (f.unlabelled, "for lack of a labelled "
               "positive (hard labels)"), (f.truncated, f"past the {f.task} task's max_sample_num")]
    parts = [f"{count} {why}" for count, why in reasons if count]
    return f"{f.records - len(f.examples)} of {f.records} records dropped ({', '.join(parts)})" if parts else ""


def check_batches(files: list[TrainingFile], batch_size: int, world_size: int) -> dict[str, int]:
    """Global batches per epoch for each dataset; a run with none at all is an error, saying whether filters left
    no examples (a smaller batch would not help) or the batch is larger than the data."""
    global_size = batch_size * world_size
    batches = {f.name: len(f.examples) // global_size for f in files}
    for f in files:
        if batches[f.name] == 0:
            note = f" ({dropped(f)})" if dropped(f) else ""
            log.warning("%s: %d examples < one global batch of %d%s; it will not be trained on",
                        f.path, len(f.examples), global_size, note)
    if not any(f.examples for f in files):
        raise ValueError("no training examples: every record was dropped: "
                         + "; ".join(f"{f.path}: {dropped(f)}" for f in files))
    if not any(batches.values()):
        raise ValueError(
            f"no dataset has a full global batch of {global_size} examples "
            f"(batch size {batch_size} x {world_size} processes); lower --batch-size"
        )
    return batches


def _make_trainer_class():
    from sentence_transformers import SentenceTransformerTrainer
    from transformers import TrainerCallback

    from llm_embedder.train.sampler import HomogeneousBatchSampler, MixedBatchSampler

    class LLMEmbedderTrainer(SentenceTransformerTrainer):
        """SentenceTransformerTrainer with homogeneous batches and a per-rank step log."""

        step_log_dir: Path | None = None
        dataset_tasks: dict[str, str] = {}
        homogeneous: bool = True
        interleave_tasks: bool = True

        # a checkpoint read back on --resume: a file that cannot be read is named in one line
        def _load_from_checkpoint(self, resume_from_checkpoint, *args):
            with reading_checkpoint(resume_from_checkpoint, "model"):
                return super()._load_from_checkpoint(resume_from_checkpoint, *args)

        def _load_optimizer_and_scheduler(self, checkpoint):
            with reading_checkpoint(checkpoint, "optimizer or scheduler state"):
                return super()._load_optimizer_and_scheduler(checkpoint)

        def _load_scaler(self, checkpoint):
            with reading_checkpoint(checkpoint, "fp16 scaler state"):
                return super()._load_scaler(checkpoint)

        def _load_rng_state(self, checkpoint):
            with reading_checkpoint(checkpoint, "random number generator state"):
                return super()._load_rng_state(checkpoint)

        def get_multi_dataset_batch_sampler(self, dataset, batch_samplers, generator=None, seed=0):
            sampler_class = HomogeneousBatchSampler if self.homogeneous else MixedBatchSampler
            self.homogeneous_sampler = sampler_class(
                dataset, batch_samplers, generator=generator, seed=seed,
                per_device_batch_size=self.args.per_device_train_batch_size, world_size=self.args.world_size,
                interleave=self.interleave_tasks,
            )
            return self.homogeneous_sampler

        def mixed_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """Count-weighted mean of the per-task losses of a mixed batch; (loss, {task: loss})."""
            total, count, parts = 0, 0, {}
            for sub in inputs["subbatches"]:
                name = sub.get("dataset_name")
                n = len(sub["query_input_ids"])
                loss = super().compute_loss(model, dict(sub), False, num_items_in_batch)
                total, count = total + n * loss, count + n
                parts[self.dataset_tasks.get(name, name)] = float(loss.detach())
            loss = total / count
            return ((loss, {}) if return_outputs else loss), parts

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            name, parts = inputs.get("dataset_name"), None
            if "subbatches" in inputs:
                name = "mixed"
                result, parts = self.mixed_loss(model, inputs, return_outputs, num_items_in_batch)
            else:
                result = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            loss = result[0] if isinstance(result, tuple) else result
            if model.training and self.step_log_dir is not None:
                self.current_task = self.dataset_tasks.get(name, name)
                self.current_loss = float(loss.detach())
                record = {
                    "step": self.state.global_step + 1, "rank": self.args.process_index, "dataset": name,
                    "task": self.current_task, "loss": self.current_loss,
                }
                if parts is not None:
                    record["task_losses"] = parts
                with step_log_path(self.step_log_dir, self.args.process_index).open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(record) + "\n")
                if not math.isfinite(self.current_loss):  # HF's progress shows only finite losses: stop here
                    raise TrainingDivergedError(
                        f"training diverged: the loss became {self.current_loss} at step {record['step']} "
                        f"({self.current_task} batch); the final model was not saved; train anew with a lower --lr")
            return result

    class EpochSync(TrainerCallback):
        """Set the sampler's epoch from the global step at each epoch start (also after a resume).

        The HF loop's own ``set_epoch`` does not reach a batch sampler inside accelerate's
        ``SkipBatchSampler(BatchSamplerShard(...))`` on a multi-process resume; the epoch, hence the batch
        order, must match the interrupted run's.
        """

        def __init__(self, trainer) -> None:
            self.trainer = trainer

        def on_epoch_begin(self, args, state, control, **kwargs):
            sampler = getattr(self.trainer, "homogeneous_sampler", None)
            if sampler is not None and len(sampler):
                steps_per_epoch = len(sampler) // sampler.world_size // args.gradient_accumulation_steps
                sampler.set_epoch(state.global_step // max(steps_per_epoch, 1))

    class ResumedIntervals(TrainerCallback):
        """Checkpoint and log at this run's ``save_steps`` and ``logging_steps``, also after a resume.

        The HF loop reloads both from the checkpoint's trainer state (warning that the arguments differ) and
        saves and logs at the interrupted run's intervals; a resume may change them (``RESUME_MAY_CHANGE``).
        """

        def on_train_begin(self, args, state, control, **kwargs):
            for name in ("save_steps", "logging_steps"):
                wanted, recorded = getattr(args, name), getattr(state, name)
                if wanted != recorded:
                    if state.is_world_process_zero:
                        log.warning("--resume: %s %s (the checkpoint's %s) from step %d", name, wanted, recorded,
                                    state.global_step)
                    setattr(state, name, wanted)

    LLMEmbedderTrainer.EpochSync = EpochSync
    LLMEmbedderTrainer.ResumedIntervals = ResumedIntervals
    return LLMEmbedderTrainer


def build_trainer(config: TrainConfig, files: list[TrainingFile]):
    """The configured trainer (model loaded, datasets built); ``train()`` not yet called."""
    import torch
    from datasets import Dataset, DatasetDict
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainingArguments

    from llm_embedder.llm.fast import cpu_has_bf16
    from llm_embedder.models import check_device, resolve_embedder_path
    from llm_embedder.train.collator import GroupCollator
    from llm_embedder.train.losses import loss_for_task
    from llm_embedder.train.progress import PlainTrainingProgress, plain_progress_wanted

    out = Path(config.out)
    world_size = distributed_env()[1]
    plain_progress = plain_progress_wanted()  # off a terminal, plain lines instead of tqdm's bar
    device = check_device(config.device)
    cuda = torch.cuda.is_available() and (device or "cuda").startswith("cuda")
    device = device or ("cuda" if cuda else "cpu")
    model = SentenceTransformer(str(resolve_embedder_path(config.base)), device=device, local_files_only=True)
    # our card is TRAINING_CARD.md: no widget examples (a tqdm bar in every log, draws from the global random);
    # sentence-transformers 6.2 does not read generate_widget_examples on this path, so the call itself is replaced
    model.model_card_data.generate_widget_examples = False
    model.model_card_data.set_widget_examples = lambda dataset: None
    train_dataset = DatasetDict({f.name: Dataset.from_list(f.examples) for f in files if f.examples})
    losses = {f.name: loss_for_task(f.task, model, config.temperature, config.loss_for(f.task))
              for f in files if f.name in train_dataset}
    dataset_tasks = {f.name: f.task for f in files}
    args = SentenceTransformerTrainingArguments(
        output_dir=str(out / CHECKPOINT_DIR),
        max_steps=config.max_steps,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.lr,
        warmup_steps=config.warmup_ratio,  # a float < 1 is a ratio of max_steps (transformers v5)
        weight_decay=config.weight_decay,
        lr_scheduler_type="linear",
        fp16=bool(config.fp16 and cuda),
        bf16=bool(config.cpu_bf16 and not cuda and cpu_has_bf16()),
        use_cpu=not cuda,
        **({"gradient_checkpointing": True} if config.gradient_checkpointing else {}),
        save_strategy="steps",
        save_steps=config.save_steps,
        save_total_limit=config.save_total_limit,
        logging_steps=config.logging_steps,
        seed=config.seed,
        data_seed=config.seed,
        dataloader_drop_last=True,
        dataloader_num_workers=0,
        remove_unused_columns=False,
        report_to="none",
        ddp_backend=None if cuda or world_size == 1 else "gloo",
        disable_tqdm=plain_progress,
    )
    collator = GroupCollator(
        preprocess_fn=model.preprocess, dataset_tasks=dataset_tasks,
        query_max_length=config.query_max_length, key_max_length=config.key_max_length,
        use_instructions=config.instructions, plain_tasks=frozenset(config.plain_tasks),
        saved_prompts=dict(model.prompts or {}), mixed=not config.homogeneous,
    )
    callbacks = []
    if config.self_paced:
        from llm_embedder.train.self_paced import SelfPacedLRCallback

        callbacks.append(SelfPacedLRCallback(interval=config.self_paced_interval))
    trainer_class = _make_trainer_class()
    trainer = trainer_class(
        model=model, args=args, train_dataset=train_dataset, loss=losses, data_collator=collator,
        callbacks=callbacks,
    )
    trainer.add_callback(trainer_class.EpochSync(trainer))
    trainer.add_callback(trainer_class.ResumedIntervals())
    if plain_progress:  # HF prints every logged loss dict in place of the bar; the lines say it, every 30 s
        from transformers.trainer_callback import PrinterCallback

        trainer.remove_callback(PrinterCallback)
        trainer.add_callback(PlainTrainingProgress(f"training {'/'.join(out.parts[-2:])}"))
    trainer.dataset_tasks = dataset_tasks
    trainer.homogeneous = config.homogeneous
    trainer.interleave_tasks = config.interleave_tasks
    trainer.step_log_dir = out / LOG_DIR
    if config.base_mix:  # taken before training (or a resumed checkpoint) changes the weights
        from llm_embedder.train.base_mix import snapshot

        trainer.start_weights = snapshot(model)
    for callback in callbacks:
        callback.trainer = trainer
    return trainer


def checkpoint_dirs(out: Path) -> list[Path]:
    """Every ``OUT/checkpoints/checkpoint-N`` folder, complete or not, oldest step first."""
    folder = out / CHECKPOINT_DIR
    if not folder.is_dir():
        return []
    found = [(int(match.group(1)), path) for path in folder.iterdir()
             if path.is_dir() and (match := re.fullmatch(r"checkpoint-(\d+)", path.name))]
    return [path for _, path in sorted(found)]


def checkpoint_state(checkpoint: Path) -> dict[str, Any] | None:
    """A checkpoint's trainer state (``global_step``, ``max_steps``, ...), or None where the checkpoint is
    incomplete: its save was cut off (``TRAINER_STATE`` comes last), so the trainer cannot resume from it."""
    if not all((checkpoint / name).is_file() for name in CHECKPOINT_FILES):
        return None
    state = read_stamp(checkpoint / TRAINER_STATE)  # None if missing or torn
    return state if isinstance(state, dict) and isinstance(state.get("global_step"), int) else None


def latest_checkpoint(out: Path, say: bool = True) -> str | None:
    """The newest complete checkpoint in ``OUT/checkpoints``, or None.

    Newer incomplete ones (a kill while a checkpoint was saved) are skipped, and ``say`` logs one line naming
    them: resuming from one fails on its missing files, on every retry. Each is left in place; the trainer writes
    that step's checkpoint into it again, whole, when it gets there.
    """
    skipped: list[str] = []
    for checkpoint in reversed(checkpoint_dirs(out)):
        if checkpoint_state(checkpoint) is not None:
            break
        skipped.append(checkpoint.name)
    else:
        checkpoint = None
    if skipped and say and distributed_env()[0] == 0:
        goes_on = f"resuming from {checkpoint.name}" if checkpoint else "no complete checkpoint"
        log.warning("%s: skipped incomplete %s (no %s, %s: its save was cut off); %s", out / CHECKPOINT_DIR,
                    ", ".join(reversed(skipped)), TRAINER_STATE, " or ".join(CHECKPOINT_FILES), goes_on)
    return str(checkpoint) if checkpoint is not None else None


def step_log_path(folder: Path, rank: int) -> Path:
    """Where ``rank`` logs each step's dataset, task and loss (one JSON line per step)."""
    return folder / f"steps.rank{rank}.jsonl"


def start_step_log(folder: Path, rank: int, world_size: int, start_step: int) -> None:
    """Keep this rank's step log only up to ``start_step`` (the checkpoint resumed from; 0 for a run from scratch).

    A killed run's records past its last checkpoint are of steps this run does again (or, killed before any
    checkpoint, of a run that never finished); appended to, the log would count them in the card and the curves.
    Rank 0 also drops the logs of ranks this run lacks. A line torn by a kill is dropped too.
    """
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        for path in folder.glob("steps.rank*.jsonl"):
            if (match := re.fullmatch(r"steps\.rank(\d+)\.jsonl", path.name)) and int(match.group(1)) >= world_size:
                path.unlink()
    path = step_log_path(folder, rank)
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").split("\n"):
        try:
            if int(json.loads(line)["step"]) <= start_step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    with atomic_write(path) as handle:
        handle.writelines(kept)


def run_inputs(config: TrainConfig, files: list[TrainingFile], world_size: int) -> dict[str, Any]:
    """What a run's checkpoints depend on (``RUN_STAMP``, JSON): the settings --resume may not change, the number
    of processes, and each data and task file (in order) by path and SHA-256, as the demo's stamps name them."""
    digests: dict[str, str] = {}

    def stamped(paths: list[str]) -> list[dict[str, str]]:
        return [{"file": path, "sha256": digests.setdefault(path, file_sha256(path))} for path in paths]

    from llm_embedder.models import model_version

    settings = {name: value for name, value in config.to_dict().items()
                if name not in RESUME_MAY_CHANGE + BY_CONTENT}
    return json.loads(json.dumps({  # as read back from the file (tuples as lists)
        "settings": {**settings, "world_size": world_size, "base_version": model_version(config.base)},
        "data": stamped([str(f.path) for f in files]), "task_files": stamped(list(config.task_files)),
    }))


def _shown(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _files_differ(name: str, recorded: Any, current: list[dict[str, str]]) -> str | None:
    """How ``current`` files differ from a record of them (path and digest each), or None if the same content."""
    if not isinstance(recorded, list) or not all(isinstance(r, dict) for r in recorded):
        return None  # nothing comparable recorded
    if [r.get("sha256") for r in recorded] == [c["sha256"] for c in current]:
        return None  # the same content, wherever it is now
    paths = [r.get("file") for r in recorded]
    if paths == [c["file"] for c in current]:
        changed = [c["file"] for r, c in zip(recorded, current, strict=True) if r.get("sha256") != c["sha256"]]
        return f"{name}: content of {', '.join(changed)} changed since the run started"
    return f"{name}: {', '.join(map(str, paths)) or '-'} (now {', '.join(c['file'] for c in current) or '-'})"


def _same_base(a: str, b: str) -> bool:
    """Whether two base arguments name one model folder (``tiny/st``, ``tiny/st/``, its absolute path, a link)."""
    from llm_embedder.models import resolve_embedder_path

    try:
        return same_file(resolve_embedder_path(a), resolve_embedder_path(b))
    except FileNotFoundError:
        return a == b


def _base_differs(recorded: dict[str, Any], current: dict[str, Any]) -> str | None:
    """How the base model differs from the run's, or None: by its weight files' version (``base_version``) where
    both record one, so the same folder typed otherwise or moved is the same base and one whose weights changed is
    not; by the folder it names where the run's record is of an earlier version, which has no version."""
    from llm_embedder.models import EMBEDDER_ALIASES

    if "base" not in recorded:
        return None
    old, new = recorded["base"], current["base"]
    if old == new and old in EMBEDDER_ALIASES:  # a bundled model's package, reinstalled (new file times)
        return None
    old_version, new_version = recorded.get("base_version"), current.get("base_version")
    if old_version is not None and new_version is not None:
        if old_version == new_version:
            return None
        if _same_base(old, new):
            return f"base: the weights of {new} changed since the run started"
    elif _same_base(old, new):
        return None
    return f"base {_shown(old)} (now {_shown(new)})"


def resume_differences(out: Path, current: dict[str, Any], config: TrainConfig,
                       resume_from: str | None) -> tuple[list[str], str]:
    """What differs between ``current`` (``run_inputs``) and what ``out`` recorded of the run being resumed, and
    where that record is. A run folder of an earlier version has no ``RUN_STAMP``: then what it has is compared,
    the settings of its finished model's ``CONFIG_FILE`` (data by path, as given) and its checkpoint's max_steps."""
    differ: list[str] = []
    recorded = read_stamp(out / RUN_STAMP)
    if isinstance(recorded, dict) and isinstance(recorded.get("settings"), dict):
        where, settings = out / RUN_STAMP, recorded["settings"]
        for name in BY_CONTENT:
            found = _files_differ(name, recorded.get(name), current[name])
            differ += [found] if found else []
    else:
        old = read_stamp(out / CONFIG_FILE)
        where, settings = out / CONFIG_FILE, {}
        if isinstance(old, dict):
            settings = {name: value for name, value in old.items() if name not in RESUME_MAY_CHANGE}
            for name in BY_CONTENT:
                given = getattr(config, name)
                if name in settings and settings.pop(name) != given:
                    differ.append(f"{name}: {', '.join(map(str, old[name])) or '-'} (now {', '.join(given) or '-'})")
        state = checkpoint_state(Path(resume_from)) if resume_from else None
        if state is not None and "max_steps" in state and "max_steps" not in settings:
            where, settings["max_steps"] = Path(resume_from) / TRAINER_STATE, state["max_steps"]
    base = _base_differs(settings, current["settings"])
    differ += [base] if base else []
    for name, value in current["settings"].items():
        if name in settings and name not in ("base", "base_version") and settings[name] != value:
            differ.append(f"{name} {_shown(settings[name])} (now {_shown(value)})")
    return differ, str(where)


def check_resumable(out: Path, current: dict[str, Any], config: TrainConfig, resume_from: str | None) -> None:
    """Refuse, in one line, to resume a run on other data (by content) or settings than it was started with: it
    would be neither run, and its card and config would describe one that never happened."""
    differ, where = resume_differences(out, current, config, resume_from)
    if differ:
        raise ValueError(f"--resume: {out} holds a run on other data or settings ({where}): {'; '.join(differ)}; "
                         "resume it with the same arguments (data and settings), or give another --out to train anew")


def train(config: TrainConfig) -> Path:
    """Validate all data, train, and write the model (with prompts), TRAINING_CARD.md and loss_curves.png."""
    from llm_embedder.models import check_device, check_max_lengths, resolve_embedder_path

    check_device(config.device)  # a device this machine lacks fails before any data is read
    resolve_embedder_path(config.base)  # so does a base that is no model (a typo, a data folder)
    # and a max length beyond its positions (saving the trained model refused it, leaving a half-saved model)
    check_max_lengths(config.base, {"query_max_length": config.query_max_length,
                                    "key_max_length": config.key_max_length})
    if not config.data:
        raise ValueError("no training data given (--data FILE_OR_DIR ...)")
    if not config.out:
        raise ValueError("no output directory given (--out runs/NAME)")
    # a folder of another kind is refused; one this trainer or the demo started (or finished) is its own
    out = check_output_dir(config.out, (CONFIG_FILE, RUN_STAMP, CHECKPOINT_DIR, LOG_DIR, TRAINED_STAMP,
                                        STARTED_STAMP), "a training run")
    rank, _ = distributed_env()
    with exclusive(out / LOCK_FILE, f"the training run {out}") if rank == 0 else nullcontext():
        return _train(config, out)


def _train(config: TrainConfig, out: Path) -> Path:
    """``train`` once its output folder is checked and held."""
    from llm_embedder.tasks import register_tasks_from_file

    for task_file in config.task_files:
        register_tasks_from_file(task_file)
    config.check_task_names()  # an unknown name fails here, before any data is read
    rank, world_size = distributed_env()
    if world_size > 1 and not config.homogeneous:
        raise ValueError("homogeneous=False (mixed batches) runs in one process only")
    files = load_training_files(config.data, config.group_size, config.seed, hard_labels=config.hard_labels,
                                loss_override=config.loss_override)  # all validation happens here
    batches = check_batches(files, config.batch_size, world_size)
    if not config.resume and checkpoint_dirs(out):
        raise ValueError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    resume_from = latest_checkpoint(out) if config.resume else None
    current = run_inputs(config, files, world_size)
    if config.resume:
        check_resumable(out, current, config, resume_from)
    state = checkpoint_state(Path(resume_from)) if resume_from else None
    trained = state is not None and state["global_step"] >= config.max_steps  # no step left to train
    if trained and all((out / name).is_file() for name in (CONFIG_FILE, CARD_NAME)):
        if rank == 0:
            log.warning("--resume: %s is already complete (step %d of %d trained, final model saved); nothing to "
                        "train or write", out, state["global_step"], config.max_steps)
        return out
    if rank == 0 and (resume_from is None or read_stamp(out / RUN_STAMP) is None):
        out.mkdir(parents=True, exist_ok=True)
        with atomic_write(out / RUN_STAMP) as handle:  # what later --resume calls compare with
            json.dump(current, handle, indent=2)
    start_step_log(out / LOG_DIR, rank, world_size, state["global_step"] if state else 0)
    if config.resume and resume_from is None:
        log.warning("--resume: no complete checkpoint in %s, starting from scratch", out / CHECKPOINT_DIR)
    started = time.time()
    trainer = build_trainer(config, files)
    if trained:  # cut off after its last checkpoint, before the final model was saved: save that checkpoint's
        # (the HF loop, resumed at max_steps, would train one step past it)
        from transformers import TrainerState

        if rank == 0:
            log.warning("--resume: %s was cut off after its last step (%s); saving the final model from it",
                        out, Path(resume_from).name)
        trainer._load_from_checkpoint(resume_from)  # what the HF loop's resume does
        trainer.state = TrainerState.load_from_json(str(Path(resume_from) / TRAINER_STATE))
    else:
        if resume_from is not None:
            for callback in trainer.callback_handler.callbacks:
                if hasattr(callback, "load"):
                    callback.load(resume_from)
        trainer.train(resume_from_checkpoint=resume_from)
    if trainer.is_world_process_zero():
        save_outputs(trainer, config, files, batches, world_size, time.time() - started, resume_from)
    if trainer.args.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
    return out


def precision(args) -> str:
    """The mixed precision the steps ran in, as the card says it (``fp16`` is asked for by default but takes effect
    on CUDA only, ``cpu_bf16`` on a CPU with bf16 matmuls only)."""
    return "fp16 (CUDA)" if args.fp16 else "bf16 (CPU)" if args.bf16 else "off (fp32)"


def save_outputs(trainer, config: TrainConfig, files, batches: dict[str, int], world_size: int,
                 seconds: float, resumed_from: str | None) -> None:
    """Model with every task's prompts (via ``Embedder.save``), the training card and loss curves."""
    from llm_embedder.embedder import Embedder
    from llm_embedder.train.card import write_training_card

    out = Path(config.out)
    if config.base_mix:
        from llm_embedder.train.base_mix import mix_into

        mix_into(trainer.model, trainer.start_weights, config.base_mix)
    # the length Embedder.save records, set before sentence-transformers writes its card (which keeps it)
    trainer.model.max_seq_length = max(config.query_max_length, config.key_max_length)
    trainer.model.save(str(out))
    Embedder(out, device="cpu", query_max_length=config.query_max_length,
             key_max_length=config.key_max_length).save(out, plain_tasks=config.trained_plain())
    config.save(out / CONFIG_FILE)
    extra: dict[str, Any] = {"world_size": world_size, "seconds": seconds, "resumed_from": resumed_from,
                             "global_step": trainer.state.global_step, "precision": precision(trainer.args)}
    write_training_card(out, config, files, batches, extra)
