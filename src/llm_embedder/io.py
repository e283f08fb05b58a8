"""Small, strict file helpers shared by every stage: JSONL reading with file:line errors, atomic writes."""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sys
import tempfile
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


def file_sha256(path: str | Path) -> str:
    """The hex SHA-256 of a file's bytes: what the caches and model stamps name a file's content by."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class JsonlError(DataError):
    """One bad line of a JSONL file (not UTF-8, malformed JSON, not an object); the parts stay available."""

    def __init__(self, source: str, line: int, field: str, reason: str):
        super().__init__(f"{source}:{line}: {reason}")
        self.source, self.line, self.field, self.reason = source, line, field, reason


def require_file(path: str | Path, option: str | None = None) -> Path:
    """``path`` as a Path if it is an existing file, else a one-line error (prefixed by ``option``, e.g. --corpus)."""
    path = Path(path)
    prefix = f"{option}: " if option else ""
    if path.is_dir():
        raise IsADirectoryError(f"{prefix}{path} is a directory, expected a JSONL file")
    if not path.exists():
        raise FileNotFoundError(f"{prefix}file not found: {path}")
    return path


def as_recorded(settings: dict[str, Any], old: dict[str, Any], later: Iterable[str]) -> dict[str, Any]:
    """``settings`` as an earlier run could have recorded them: without those of ``later`` (added to the record
    since) that its record ``old`` lacks, so that a run of an earlier version compares equal on the rest."""
    return {k: v for k, v in settings.items() if k not in later or k in old}


def same_file(a: str | Path, b: str | Path) -> bool:
    """Whether two paths name one file (through links and ``..`` too)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return a.samefile(b)
    return a.resolve() == b.resolve()


def check_output_file(path: str | Path, option: str = "--out", inputs: Iterable[str | Path] = ()) -> Path:
    """Refuse, before any work, an output file path that cannot be written: a directory, one under a file, or
    one of the job's ``inputs`` (writing it would replace what is being read). Missing parent folders are fine:
    the writers create them."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{option} {path} is a directory; give a file path")
    for source in inputs:
        if same_file(path, source):
            raise FileExistsError(f"{option} {path} is the input file {source}; give another path (writing it "
                                  "would replace the input)")
    refuse_under_a_file(path, option)
    return path


def refuse_under_a_file(path: Path, option: str) -> None:
    """Refuse a path that cannot be made because a folder above it is a file (Python's raw "[Errno 20] Not a
    directory" would come only once the job came to write)."""
    blocking = next((parent for parent in path.parents if parent.exists() and not parent.is_dir()), None)
    if blocking is not None:
        raise NotADirectoryError(f"{option} {path}: {blocking} is a file, not a folder")


def check_output_dir(path: str | Path, markers: Iterable[str], what: str, option: str = "--out") -> Path:
    """Refuse, before any work, an output folder that is a file, or that holds files (hidden ones aside) and none
    of ``markers``, the names a folder of ``what`` has: writing there would mix our files with another's and
    replace any of the same name (a corpus named docs.jsonl, a base model's weights)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{option} {path} is a file; give a folder")
    refuse_under_a_file(path, option)
    if path.is_dir():
        entries = sorted(entry.name for entry in path.iterdir() if not entry.name.startswith("."))
        if entries and not any((path / marker).exists() for marker in markers):
            shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
            raise FileExistsError(f"{option} {path} already holds files that are not {what} ({shown}); give a new "
                                  "or empty folder")
    return path


def finite_json(value: Any) -> Any:
    """``value`` with every NaN or infinite float as null, for JSON output (a server response, `search --json`): JSON
    has no such numbers, and an index built before they were refused can hold them in a document's fields (the
    server answered such a hit with a 500, `search --json` printed NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: finite_json(item) for key, item in value.items()}
    if isinstance(value, list):
        return [finite_json(item) for item in value]
    return value


GZIP_MAGIC = b"\x1f\x8b"


def decode_line(raw: bytes, source: str, line_no: int) -> str:
    """One line's bytes as text; bad UTF-8 names the file, line, byte and column. A BOM on line 1 is dropped."""
    if line_no == 1 and raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as err:
        if line_no == 1 and raw.startswith(GZIP_MAGIC):
            raise JsonlError(source, line_no, "encoding", "a gzip-compressed file; decompress it first (gunzip), "
                             "compressed input is not read") from None
        column = len(raw[: err.start].decode("utf-8")) + 1  # in characters, as an editor counts
        reason = f"not valid UTF-8 (byte 0x{raw[err.start]:02x} at column {column})"
        raise JsonlError(source, line_no, "encoding", reason) from None


def read_text(path: Path) -> str:
    """A UTF-8 file's whole text, decoded line by line so that bad UTF-8 names the file and line (``read_text``
    names neither); a BOM on line 1 is dropped."""
    return "".join(decode_line(raw, str(path), line_no)
                   for line_no, raw in enumerate(path.read_bytes().splitlines(keepends=True), start=1))


def iter_text_lines(path: str | Path, option: str | None = None) -> Iterator[str]:
    """Stream a UTF-8 text file's lines, without line endings; bad UTF-8 names the file and line."""
    path = require_file(path, option)
    with path.open("rb") as handle:
        for line_no, raw in enumerate(handle, start=1):
            yield decode_line(raw, str(path), line_no).rstrip("\r\n")


def iter_jsonl(
    path: str | Path, *, option: str | None = None, on_error: Callable[[JsonlError], None] | None = None,
    unique_keys: bool = True, on_read: Callable[[int], None] | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """Stream (line number, record) for each non-blank line; a bad line raises JsonlError naming file and line.

    ``option`` names the command-line option the path came from in errors; with ``on_error`` bad lines are
    passed to it and skipped instead; a key given twice in a line makes it a bad line (json.loads keeps the last
    silently) unless ``unique_keys`` is False; ``on_read`` is told the bytes of each line as it is read (a
    progress bar).
    """
    path = require_file(path, option)
    with path.open("rb") as handle:  # bytes, decoded per line: bad UTF-8 gets a file:line error, memory stays flat
        lines = handle if on_read is None else reported_lines(handle, on_read)
        yield from parse_jsonl_lines(lines, str(path), on_error, unique_keys)


def reported_lines(lines: Iterable[bytes], on_read: Callable[[int], None]) -> Iterator[bytes]:
    """``lines`` as they are, telling ``on_read`` the bytes of each."""
    for line in lines:
        on_read(len(line))
        yield line


TOO_DEEP = "nested too deeply"
MAX_DEPTH = 500  # brackets deep a line may go before ``too_deep_line`` names it (Python's parsers stop near 1000)


def too_deep_line(text: str) -> int | None:
    """The line of ``text`` (JSON, or YAML's flow style) where brackets outside quoted strings first go more than
    MAX_DEPTH deep, for a parser's RecursionError, which names no place; None where they never do."""
    depth, line, quote, escaped, previous = 0, 1, "", False, "\n"
    for char in text:
        if char == "\n":
            line += 1
        if quote:
            if escaped:
                escaped = False
            elif char == "\\" and quote == '"':
                escaped = True
            elif char == quote:
                quote = ""
        elif char in "\"'" and previous in " \t\n[{,:":  # a quoted string starts (not it's, inside a word)
            quote = char
        elif char in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                return line
        elif char in "]}":
            depth -= 1
        previous = char
    return None


def is_digit_limit(err: BaseException) -> bool:
    """Whether ``err`` is Python's refusal of an integer of more than ``sys.get_int_max_str_digits()`` digits (a
    plain ValueError, raised from inside json.loads, PyYAML or int(), naming no place)."""
    return isinstance(err, ValueError) and "integer string conversion" in str(err)


def too_many_digits() -> str:
    return f"integer too large (more than {sys.get_int_max_str_digits()} digits)"


def parse_limit(path: str | Path, text: str, err: BaseException) -> str | None:
    """``FILE:LINE: nested too deeply`` for a RecursionError of parsing a whole file's ``text``, ``FILE:LINE:
    integer too large`` for Python's refusal of a number of too many digits (just ``FILE:`` where the line is
    not found), None for another error."""
    if isinstance(err, RecursionError):
        line, reason = too_deep_line(text), TOO_DEEP
    elif is_digit_limit(err):
        found = re.search(rf"\d{{{sys.get_int_max_str_digits() + 1},}}", text)
        line, reason = (text.count("\n", 0, found.start()) + 1 if found else None), too_many_digits()
    else:
        return None
    return f"{path}:{line}: {reason}" if line else f"{path}: {reason}"


class _DuplicateKey(Exception):
    """A key an object of one line gives twice (raised by ``_unique_keys``)."""


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An ``object_pairs_hook`` that refuses a key given twice (json.loads keeps the last, silently)."""
    record: dict[str, Any] = {}
    for key, value in pairs:
        if key in record:
            raise _DuplicateKey(key)
        record[key] = value
    return record


def json_document(text: str, source: str | Path) -> Any:
    """A whole JSON file's ``text`` parsed, refusing a key given twice in an object (json.loads keeps the last
    silently) as ``FILE:LINE: duplicate key``, the line being the key's second occurrence where it is found."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys)
    except _DuplicateKey as err:
        key = str(err.args[0])
        found = list(re.finditer(re.escape(json.dumps(key)) + r"\s*:", text))
        where = f"{source}:{text.count(chr(10), 0, found[1].start()) + 1}" if len(found) > 1 else str(source)
        raise DataError(f"{where}: duplicate key {key!r} (JSON keeps only its last value)") from None


def parse_jsonl_line(line: str | bytes, source: str, line_no: int,
                     unique_keys: bool = True) -> dict[str, Any] | None:
    """One JSONL line as a record (None when blank); raises JsonlError naming the source and line. With
    ``unique_keys`` (the default: every reader refuses what data check refuses) a key given twice in an object is
    an error.
    NaN, Infinity and -Infinity, which Python's json reads but JSON has not, are refused naming the field, except
    in NAN_FIELDS (teacher_scores)."""
    if isinstance(line, bytes):
        line = decode_line(line, source, line_no)
    elif line_no == 1:
        line = line.removeprefix("\ufeff")
    if not line.strip():
        return None
    literals: list[str] = []  # NaN, Infinity, -Infinity: Python's json reads them, JSON has no such numbers

    def constant(name: str) -> float:
        literals.append(name)
        return float(name)

    try:
        record = json.loads(line, object_pairs_hook=_unique_keys if unique_keys else None, parse_constant=constant)
    except json.JSONDecodeError as err:
        hint = ""
        if "\r" in line.rstrip("\r\n"):  # a file whose lines end in CR alone (classic Mac) reads as one line
            hint = "; the file's lines end in CR alone: convert them to LF (or CRLF) line endings"
        raise JsonlError(source, line_no, "json", f"malformed JSON: {err.msg} (column {err.colno}){hint}") from None
    except _DuplicateKey as err:
        key = str(err.args[0])
        raise JsonlError(source, line_no, key, f"duplicate key {key!r} (JSON keeps only its last value)") from None
    except RecursionError:  # Python's parser recurses per bracket: a line of ~1000 nested lists or objects
        raise JsonlError(source, line_no, "json", TOO_DEEP) from None
    except ValueError as err:  # Python's int() refuses more than 4300 digits with a plain ValueError
        if not is_digit_limit(err):
            raise
        raise JsonlError(source, line_no, "json", too_many_digits()) from None
    if not isinstance(record, dict):
        raise JsonlError(source, line_no, "json", f"expected a JSON object, got {type(record).__name__}")
    if literals:
        for key, value in record.items():
            try:
                literal = None if key in NAN_FIELDS else _non_finite(value)
            except RecursionError:
                raise JsonlError(source, line_no, "json", TOO_DEEP) from None
            if literal is not None:
                raise JsonlError(source, line_no, key, f"{literal} is not JSON in field {key!r} (numbers must be "
                                 "finite; write null or leave the field out)")
    return record


NAN_FIELDS = ("teacher_scores",)  # score writes what the LLM gives (NaN too) and replaces stale ones; data check
# and train refuse non-finite scores there with their own message


def _non_finite(value: Any) -> str | None:
    """The JSON-like literal (NaN, Infinity, -Infinity) of the first non-finite float in ``value``, else None."""
    if isinstance(value, float):
        if math.isfinite(value):
            return None
        return "NaN" if math.isnan(value) else "Infinity" if value > 0 else "-Infinity"
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((found for found in map(_non_finite, items) if found is not None), None)


def parse_jsonl_lines(
    lines: Iterable[str | bytes], source: str, on_error: Callable[[JsonlError], None] | None = None,
    unique_keys: bool = True,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(line number, record) for each non-blank line (text or UTF-8 bytes); bad lines raise, or go to ``on_error``."""
    for line_no, line in enumerate(lines, start=1):
        try:
            record = parse_jsonl_line(line, source, line_no, unique_keys)
        except JsonlError as err:
            if on_error is None:
                raise
            on_error(err)
            continue
        if record is not None:
            yield line_no, record


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL file."""
    return [record for _, record in iter_jsonl(path)]


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> Path:
    """Write records atomically: a temporary file in the same folder, then a rename."""
    path = Path(path)
    with atomic_write(path) as handle:
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False) + "\n")
    return path


LOCK_FILE = ".lock"  # a job's lock inside the folder it writes (hidden: check_output_dir ignores it)


class RunInProgressError(FileExistsError):
    """Another process is writing the same output (``exclusive``)."""


@contextmanager
def exclusive(lock: str | Path, what: str) -> Iterator[None]:
    """Hold ``lock`` (a file, removed on exit) while writing ``what``: a second run on the same output, say the
    same command started again while the first still runs, is refused instead of interleaving its writes.

    An OS lock (``flock``) is released when its process dies, so a killed run never blocks the next one. Where
    the OS has no ``flock`` (Windows), nothing is locked.
    """
    try:
        import fcntl
    except ImportError:
        yield
        return
    lock = Path(lock)
    made = not lock.parent.exists()  # removed again if the run leaves it empty (it failed before writing)
    lock.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~current_umask())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise RunInProgressError(f"{what} is being written by another run (it holds {lock}); let that run "
                                     "finish, or stop it, then run this again") from None
        try:
            held = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            held = False
        if held:  # not a file the run before us removed as we opened it
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        lock.unlink(missing_ok=True)
        os.close(fd)
        if made and not any(lock.parent.iterdir()):
            lock.parent.rmdir()


def current_umask() -> int:
    """The process's file-creation mask (read without changing it), for files made 0600 by mkstemp."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


class atomic_write:  # noqa: N801 - used as a context manager like open()
    """``with atomic_write(path) as f:`` writes to a temp file and renames it over ``path`` on success."""

    def __init__(self, path: str | Path, mode: str = "w"):
        self.path = Path(path)
        self.mode = mode

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.chmod(self.tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        encoding = None if "b" in self.mode else "utf-8"
        self.handle = os.fdopen(fd, self.mode, encoding=encoding)
        return self.handle

    def __exit__(self, exc_type, exc, tb):
        self.handle.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


def check_template(template: str, option: str) -> list[str]:
    """The record fields a ``str.format`` template names, e.g. ``'{title} {text}'``; refuses, naming ``option``,
    what a record template cannot mean: bad syntax, a positional field (``{}``, ``{0}``), an attribute or item
    (``{text.upper}``, ``{a[0]}``), a conversion other than ``!s``/``!r``/``!a``, or no field at all."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise ValueError(f"{option} {template!r}: {err}") from None
    fields = []
    for _, name, _, conversion in parsed:
        if name is None:
            continue
        if not name.isidentifier():
            raise ValueError(f"{option} {template!r}: {{{name}}} is not a field name; write {{field}} for a record's "
                             "field, e.g. '{title} {text}'")
        if conversion not in (None, "s", "r", "a"):
            raise ValueError(f"{option} {template!r}: unknown conversion !{conversion} (use !s, !r or !a)")
        fields.append(name)
    if not fields:
        raise ValueError(f"{option} {template!r} names no field; e.g. '{{title}} {{text}}'")
    return fields


def check_template_values(template: str, record: dict[str, Any], where: str, option: str) -> None:
    """Refuse a list or an object in a field ``template`` names: ``str.format`` would write it as Python's repr
    (``['Paris', 'France']``) into the text. The error names ``where`` (file:line), the field and ``option``."""
    import string

    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError:  # bad syntax: check_template names it, and format fails on it
        return
    for _, name, _, _ in parsed:
        value = record.get(name) if name else None
        if isinstance(value, list | dict):
            raise DataError(f"{where}:{name}: must be a string or a number, got {type(value).__name__} ({option} "
                            f"{template!r} names it)")


def fill_template(template: str, record: dict[str, Any], where: str, option: str) -> str:
    """``template`` over ``record``'s fields (None as ""; a list or an object refused); errors name ``where``
    (file:line) and ``option``."""
    check_template_values(template, record, where, option)
    try:
        return template.format(**{k: ("" if v is None else v) for k, v in record.items()})
    except KeyError as err:
        raise DataError(f"{where}: missing field {err.args[0]!r} used by {option} {template!r}") from None
    except (ValueError, TypeError) as err:  # a format spec that does not fit the value, e.g. {text:d}
        raise DataError(f"{where}: {option} {template!r}: {err}") from None


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping: PyYAML keeps the last one silently, so a
    setting written twice in train.yaml or a task file would be used with whichever came last."""


def _unique_mapping(loader: UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
    first: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults``: its keys may be overridden
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            seen = key in first
        except TypeError:  # an unhashable key: construct_mapping says so
            continue
        if seen:
            raise yaml.constructor.ConstructorError(problem=f"{key!r} is given twice (first on line {first[key]})",
                                                    problem_mark=key_node.start_mark)
        first[key] = key_node.start_mark.line + 1
    return loader.construct_mapping(node, deep=deep)


UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _unique_mapping)


def yaml_error(path: str | Path, err: Exception, what: str = "YAML", text: str | None = None) -> str:
    """One line for a YAML parse error: ``FILE:LINE:COLUMN: cannot parse WHAT: problem`` (PyYAML's own message
    spans several lines and names "<unicode string>" instead of the file). A character YAML refuses (NUL, a
    control character) has only a position into ``text``, the parsed text, which gives its line and column."""
    if isinstance(err, yaml.reader.ReaderError) and text is not None and isinstance(err.character, int):
        line = text.count("\n", 0, err.position) + 1
        column = err.position - (text.rfind("\n", 0, err.position) + 1) + 1
        code = err.character  # a code point (a byte for bytes input, never given here)
        name = "NUL" if code == 0 else f"control character #x{code:04x}" if code < 0x20 or 0x7f <= code < 0xa0 \
            else f"character #x{code:04x}"
        return f"{path}:{line}:{column}: cannot parse {what}: {name} not allowed in YAML"
    mark, problem = getattr(err, "problem_mark", None), getattr(err, "problem", None)
    if mark is None or not problem:
        return f"{path}: cannot parse {what}: {' '.join(str(err).split())}"
    return f"{path}:{mark.line + 1}:{mark.column + 1}: cannot parse {what}: {problem}"


def blank_kind(text: str) -> str | None:
    """How a text has nothing to embed, for a message (``is empty``, ``holds only whitespace``, ``holds only
    invisible characters (U+200B)``: format characters such as zero-width spaces, which tokenizers drop), or None
    for a text that has something. Embedded, such a text is the instruction alone: a vector near everything."""
    if not text:
        return "is empty"
    if not text.strip():
        return "holds only whitespace"
    if all(ch.isspace() or unicodedata.category(ch) == "Cf" for ch in text):  # stops at the first visible one
        codes = sorted({f"U+{ord(ch):04X}" for ch in text if not ch.isspace()})
        return f"holds only invisible characters ({', '.join(codes[:3])})"
    return None
