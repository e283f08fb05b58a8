"""The scoring job over a JSONL file: resumable, shardable over torchrun processes, with provenance.

Design for byte-identical resumes and shards: the scoreable records are cut into *chunks* of about
``chunk_pairs`` pairs, a pure function of the input and the arguments. Batches never cross a chunk, so
a record's batch mates (and its float scores) are the same whether the run was resumed or sharded. Chunk k
goes to rank k % world. Finished records are appended (flushed per record) to OUT, or to
``OUT.rank<r>-of-<w>.part`` under torchrun; a restart counts the complete lines already there (dropping a
trailing partial line), recomputes at most the one interrupted chunk and writes only what is missing.
Under torchrun rank 0 merges the parts in input order after a barrier. Provenance (LLM, template per task,
reward, settings, dates, package version) lives in the sidecar ``OUT.meta.json``, so records stay
identical across runs; a restart with other settings is refused unless ``overwrite`` is set.

``reuse`` names earlier outputs (complete, scored with the same LLM and settings): a record found there, the
same record with the same task template, takes its scores from there and is not sent to the LLM. Growing a
training subset (the demo's ``train_records``) then costs only the new records. Reused scores equal fresh ones
up to float rounding, since their batch mates differ.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import Any

from llm_embedder import __version__
from llm_embedder.data.validate import Problem, raise_problems, validate_records
from llm_embedder.io import (
    DataError,
    as_recorded,
    atomic_write,
    check_output_file,
    exclusive,
    file_sha256,
    iter_jsonl,
)
from llm_embedder.reward.records import KeyFitter, RecordPairs, build_all, unscorable
from llm_embedder.reward.scorer import ScoreStats, score_pairsets, with_scores


def meta_path(out: Path) -> Path:
    return out.with_name(out.name + ".meta.json")


def part_path(out: Path, rank: int, world: int) -> Path:
    return out if world == 1 else out.with_name(f"{out.name}.rank{rank}-of-{world}.part")


def dist_info() -> tuple[int, int]:
    """(rank, world size) of an initialised torch.distributed group, else (0, 1)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def barrier() -> None:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def count_done(path: Path) -> int:
    """Complete, valid JSON lines at the start of ``path``; anything after them (a partial line) is cut off."""
    if not path.exists():
        return 0
    data = path.read_bytes()
    done, good_end, pos = 0, 0, 0
    while True:
        nl = data.find(b"\n", pos)
        if nl < 0:
            break
        try:
            json.loads(data[pos:nl])
        except ValueError:
            break
        done, good_end, pos = done + 1, nl + 1, nl + 1
    if good_end < len(data):
        with path.open("rb+") as handle:
            handle.truncate(good_end)
    return done


def make_chunks(pairsets: list[RecordPairs], chunk_pairs: int) -> list[list[int]]:
    """Indices of scoreable records, cut greedily into chunks of at least ``chunk_pairs`` pairs."""
    chunks: list[list[int]] = []
    current: list[int] = []
    pairs = 0
    for i, ps in enumerate(pairsets):
        if not ps.prompts:
            continue
        current.append(i)
        pairs += len(ps.prompts)
        if pairs >= chunk_pairs:
            chunks.append(current)
            current, pairs = [], 0
    if current:
        chunks.append(current)
    return chunks


def run_settings(in_path: Path, lm: Any, pairsets: list[RecordPairs], **args: Any) -> dict[str, Any]:
    """What must match for a restart to continue an earlier run."""
    templates = {ps.task.name: ps.task.reward_template for ps in pairsets if ps.prompts}
    return {
        "input": in_path.name,
        "input_sha256": file_sha256(in_path),
        "llm": lm.name,
        "llm_path": str(getattr(lm, "path", "")),
        "llm_version": getattr(lm, "version", None),  # a fine-tuned-in-place LLM's scores are not the old ones
        "dtype": str(getattr(lm, "dtype", "")),
        "max_length": lm.max_length,
        "templates": dict(sorted(templates.items())),
        "reward": f"rank-aware (N={args['rank_aware']})" if args["rank_aware"] else "mean answer log-prob",
        **args,
    }


# Settings that runs of earlier versions did not record: compared only where the earlier run has them.
LATER_SETTINGS = ("llm_version",)


def changed_settings(old: dict[str, Any], new: dict[str, Any], keys: Sequence[str] | None = None) -> list[str]:
    """The settings (``keys``, or all of both) whose values differ between two runs, sorted."""
    new = as_recorded(new, old, LATER_SETTINGS)
    if old.get("llm_version") is not None and old.get("llm_version") == new.get("llm_version"):
        # the LLM is known by its weights (a bundled alias's package, a folder's weight files): where they lie (another
        # user's model cache, as in a run dir copied from another machine; a folder moved) does not change a score
        new = {**new, "llm_path": old.get("llm_path")}
    return sorted(k for k in (keys if keys is not None else set(old) | set(new)) if old.get(k) != new.get(k))


# The settings that decide a record's scores (batch sizes and chunking only change float rounding).
SCORE_SETTINGS = ("llm", "llm_path", "llm_version", "dtype", "max_length", "reward", "rank_aware", "key_max_tokens",
                  "default_task")


def record_key(record: dict[str, Any], template: str | None) -> str:
    """What must be equal for two records to get the same scores: the record without them, and its template."""
    rest = {k: v for k, v in record.items() if k != "teacher_scores"}
    return json.dumps([template, rest], sort_keys=True, ensure_ascii=False)


def reusable_scores(
    paths: list[Path], settings: dict[str, Any], default_task: str | None
) -> tuple[dict[str, list[float]], list[str], list[str]]:
    """Scores of the records in earlier outputs that were scored like this run: (record key -> scores, the
    files used, the files skipped with why)."""
    known: dict[str, list[float]] = {}
    used, skipped = [], []
    for path in paths:
        meta_file = meta_path(path)
        if not path.exists() or not meta_file.exists():
            skipped.append(f"{path.name} (no output with its {meta_file.name})")
            continue
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
        old = meta.get("settings", {})
        diff = changed_settings(old, settings, SCORE_SETTINGS)
        if not meta.get("complete") or diff:
            skipped.append(f"{path.name} ({'other ' + ', '.join(diff) if diff else 'incomplete'})")
            continue
        templates = old.get("templates", {})
        for _, record in iter_jsonl(path):
            if isinstance(record.get("teacher_scores"), list):
                template = templates.get(record.get("task") or default_task)
                known[record_key(record, template)] = record["teacher_scores"]
        used.append(path.name)
    return known, used, skipped


def check_previous(out: Path, settings: dict[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The earlier run's meta if it may be continued; refuses output left by other settings."""
    meta_file = meta_path(out)
    if overwrite or not meta_file.exists():
        if not overwrite and out.exists() and out.stat().st_size:
            raise ValueError(f"{out} exists without {meta_file.name}; pass --overwrite to replace it")
        return None
    meta = json.loads(meta_file.read_text(encoding="utf-8"))
    diff = changed_settings(meta.get("settings", {}), settings)
    if diff == ["llm_version"]:
        raise ValueError(f"{out} was scored by the LLM {settings['llm_path']} before its weight files changed "
                         "(fine-tuned in place?); pass --overwrite to score it again, or use another --out")
    if diff:
        raise ValueError(
            f"{out} was started with other settings ({', '.join(diff)}); rerun with the same arguments "
            "or pass --overwrite"
        )
    return meta


def check_input(in_path: str | Path, default_task: str | None = None) -> list[tuple[int, dict[str, Any]]]:
    """The (line, record) pairs of IN; refuses, naming each problem once, what training will refuse (query ids,
    list fields, indices: ``data check``'s rules, with ``default_task`` filled in) and what scoring cannot use
    (a record with candidates and no answer). A ``default_task`` that is no task is refused first, as itself."""
    from llm_embedder.tasks import get_task

    if default_task is not None:
        get_task(default_task)  # not "field 'task'" of every record
    source = str(in_path)
    numbered = list(iter_jsonl(in_path))
    if not numbered:
        raise DataError(f"{in_path}: no records to score")
    # each record as training will read it, without the teacher_scores this run replaces (stale ones may be NaN)
    filled = [(line, {**{k: v for k, v in r.items() if k != "teacher_scores"},
                      **({"task": default_task} if default_task and "task" not in r else {})}) for line, r in numbered]
    problems: list[tuple[int, Problem | str]] = []
    for problem in validate_records(filled, source):
        if (problem.field, problem.message) == ("task", "missing field"):
            problem = replace(problem, message="missing field (set it in the record or pass --task)")
        problems.append((problem.line, problem))
    reported = {(line, problem.field) for line, problem in problems if isinstance(problem, Problem)}
    for line, record in numbered:  # and what scoring needs beyond (an answer), where that field was not named yet
        why = unscorable(record, line, source, default_task)
        if why is not None and (why.line, why.field) not in reported:
            problems.append((line, str(why)))
    problems.sort(key=lambda item: item[0])  # in line order; stable, so a line keeps its fields' order
    raise_problems([problem for _, problem in problems], source)
    return numbered


def score_file(
    in_path: str | Path,
    out_path: str | Path,
    lm: Any,
    *,
    batch_tokens: int | None = None,
    default_task: str | None = None,
    rank_aware: int = 0,
    key_max_tokens: int | None = None,
    chunk_pairs: int = 256,
    overwrite: bool = False,
    show_progress: bool = True,
    reuse: list[str | Path] | None = None,
) -> dict[str, Any]:
    """Write ``teacher_scores`` for every record of IN to OUT (see the module docstring); returns the summary.

    ``lm``: the CausalLM, or a function of no arguments that loads it, called once the input has been checked.

    ``reuse``: earlier outputs whose scores are taken for the records they hold (files scored otherwise are
    skipped, and the summary's ``reuse_skipped`` says why).
    """
    rank, _ = dist_info()
    held = exclusive(Path(f"{out_path}.lock"), str(out_path)) if rank == 0 else nullcontext()
    with held:  # a second run on the same OUT (the command started again while it runs) is refused
        return _score_file(
            in_path, out_path, lm, batch_tokens=batch_tokens, default_task=default_task, rank_aware=rank_aware,
            key_max_tokens=key_max_tokens, chunk_pairs=chunk_pairs, overwrite=overwrite,
            show_progress=show_progress, reuse=reuse,
        )


def _score_file(
    in_path: str | Path,
    out_path: str | Path,
    lm: Any,
    *,
    batch_tokens: int | None,
    default_task: str | None,
    rank_aware: int,
    key_max_tokens: int | None,
    chunk_pairs: int,
    overwrite: bool,
    show_progress: bool,
    reuse: list[str | Path] | None,
) -> dict[str, Any]:
    """``score_file`` once its output is held."""
    from llm_embedder.progress import LoggedProgress
    from llm_embedder.train.gather import sum_over_ranks

    in_path, out = Path(in_path), Path(out_path)
    check_output_file(out, inputs=[in_path])  # --overwrite would delete the input
    rank, world = dist_info()
    numbered = check_input(in_path, default_task)
    if callable(lm):  # a loader: a bad input costs no model load
        lm = lm()
    fitter = KeyFitter(lm.tokenizer, lm.max_length, key_max_tokens)
    pairsets = build_all(numbered, str(in_path), fitter, default_task)
    stats = ScoreStats()
    stats.add(pairsets)
    batch_tokens = batch_tokens or lm.batch_tokens
    settings = run_settings(
        in_path, lm, pairsets, batch_tokens=batch_tokens, default_task=default_task, rank_aware=rank_aware,
        key_max_tokens=key_max_tokens, chunk_pairs=chunk_pairs,
    )
    previous = check_previous(out, settings, overwrite)
    chunks = make_chunks(pairsets, chunk_pairs)
    summary: dict[str, Any] = {**stats.__dict__, "out": str(out), "world": world}
    if previous and previous.get("complete") and count_done(out) == stats.scored:
        return {**summary, "already_complete": True, "seconds": 0.0}
    sources = [Path(p) for p in reuse or [] if Path(p).resolve() != out.resolve()]
    known_scores, used, skipped = reusable_scores(sources, settings, default_task)
    known: dict[int, list[float]] = {}
    for i, (_, record) in enumerate(numbered if known_scores else []):  # no key per record when nothing to reuse
        scores = known_scores.get(record_key(record, pairsets[i].task.reward_template)) if pairsets[i].prompts else None
        if scores is not None and len(scores) == len(pairsets[i].prompts):
            known[i] = scores
    summary.update(reused=len(known), reuse_skipped=skipped)
    meta = {
        "settings": settings,
        "package": "llm-embedder",
        "package_version": __version__,
        "started": (previous or {}).get("started") or dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "complete": False,
    }
    if used:
        meta["reused_from"] = used
    if rank == 0:
        if overwrite:
            for p in [out, *(part_path(out, r, world) for r in range(world))]:
                p.unlink(missing_ok=True)
        with atomic_write(meta_path(out)) as handle:
            json.dump(meta, handle, indent=2)
    barrier()

    mine = [chunk for k, chunk in enumerate(chunks) if k % world == rank]
    part = part_path(out, rank, world)
    done = count_done(part)
    total_mine = sum(len(c) for c in mine)
    if done > total_mine:
        raise ValueError(f"{part} holds {done} records but this input gives {total_mine}; pass --overwrite")
    todo_pairs = 0
    seen = 0
    for chunk in mine:
        if seen + len(chunk) > done:
            todo_pairs += sum(len(pairsets[i].prompts) for i in chunk if i not in known)
        seen += len(chunk)
    start = time.time()
    reused = 0
    with LoggedProgress(disable=not show_progress or rank != 0, transient=False) as progress:
        shown = f"{in_path.parent.name}/{in_path.name}" if in_path.parent.name else in_path.name  # qa/candidates.jsonl
        bar = progress.add_task(f"scoring {shown} (rank {rank}/{world})", total=todo_pairs)
        seen = 0
        with part.open("a", encoding="utf-8") as handle:
            for chunk in mine:
                if seen + len(chunk) <= done:
                    seen += len(chunk)
                    continue
                fresh = [i for i in chunk if i not in known]  # the records no earlier output holds
                scores = dict(zip(fresh, score_pairsets(
                    [pairsets[i] for i in fresh], lm, batch_tokens=batch_tokens, rank_aware=rank_aware,
                    progress=lambda n: progress.advance(bar, n),
                ), strict=True)) if fresh else {}
                for i in chunk:
                    if seen >= done:
                        record = with_scores(numbered[i][1], known[i] if i in known else scores[i])
                        handle.write(json.dumps(record, ensure_ascii=False) + "\n")
                        handle.flush()
                        reused += i in known
                    seen += 1
    summary["reused"] = int(sum_over_ranks(reused))  # this run's: a resume does not count what was written before
    barrier()
    if rank == 0:
        if world > 1:
            merge_parts(out, chunks, world)
        meta.update(
            complete=True, finished=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"), summary=stats.__dict__
        )
        with atomic_write(meta_path(out)) as handle:
            json.dump(meta, handle, indent=2)
    barrier()
    return {**summary, "seconds": round(time.time() - start, 2)}


def merge_parts(out: Path, chunks: list[list[int]], world: int) -> None:
    """Interleave the ranks' part files back into input order (chunk k came from rank k % world).

    Records are split at b"\\n" only: ``json.dumps(ensure_ascii=False)`` leaves U+2028, U+2029 and U+0085 unescaped
    inside a record, and ``str.splitlines`` would break there. A part that does not hold exactly the records its
    rank wrote is refused, and every part is kept, so that nothing is lost.
    """
    parts = []
    for r in range(world):
        data = part_path(out, r, world).read_bytes()
        pieces = data.split(b"\n")
        partial = pieces.pop()  # b"" after a final newline, else an unterminated line, which the check refuses
        lines = [piece + b"\n" for piece in pieces]
        held = len(lines) + bool(partial)
        expected = sum(len(chunk) for k, chunk in enumerate(chunks) if k % world == r)
        if held != expected:
            todo = ("run the same command again to score the rest" if held < expected else
                    "delete that part and run the same command again (its rank scores its records anew)")
            raise RuntimeError(
                f"{part_path(out, r, world)} holds {held} lines but rank {r} wrote {expected} records; "
                f"the part files are kept, nothing was merged: {todo}"
            )
        parts.append(lines)
    cursors = [0] * world
    with atomic_write(out, "wb") as handle:
        for k, chunk in enumerate(chunks):
            r = k % world
            handle.writelines(parts[r][cursors[r] : cursors[r] + len(chunk)])
            cursors[r] += len(chunk)
    for r in range(world):
        part_path(out, r, world).unlink()
