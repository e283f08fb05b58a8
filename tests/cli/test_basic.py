import json
import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.embedder import Embedder

runner = CliRunner()


def run_cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The CLI as users start it: a real process."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "llm_embedder", *args], input=stdin, capture_output=True, text=True, env=env,
        timeout=300,
    )


def test_every_command_has_help():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    commands = [c.name for c in app.registered_commands] + [g.name for g in app.registered_groups]
    assert {"encode", "tasks", "demo"} <= set(commands)
    for command in commands:
        sub = runner.invoke(app, [command, "--help"])
        assert sub.exit_code == 0, command
        assert "Usage" in sub.output


def test_tasks_lists_all_six():
    result = runner.invoke(app, ["tasks"])
    assert result.exit_code == 0
    for name in ("qa", "icl", "chat", "lrlm", "tool", "convsearch"):
        assert name in result.output


def test_encode_lines_to_npy_matches_library(tiny_embedder_dir, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("first line\nsecond line\n")
    out = tmp_path / "vectors.npy"
    result = runner.invoke(
        app, ["encode", str(source), "--task", "chat", "--role", "key", "--model", str(tiny_embedder_dir),
              "--out", str(out)],
    )
    assert result.exit_code == 0, result.output
    expected = Embedder(tiny_embedder_dir, device="cpu").encode_keys(["first line", "second line"], "chat")
    np.testing.assert_allclose(np.load(out), expected, atol=1e-6)


def test_encode_out_makes_its_folder_and_refuses_a_directory(tiny_embedder_dir, tmp_path):
    source = tmp_path / "texts.txt"
    source.write_text("first line\n")
    out = tmp_path / "new" / "vectors.npy"
    args = ["encode", str(source), "--task", "qa", "--model", str(tiny_embedder_dir), "--out"]
    assert runner.invoke(app, [*args, str(out)]).exit_code == 0 and np.load(out).shape[0] == 1
    (tmp_path / "dir.npy").mkdir()
    result = runner.invoke(app, [*args, str(tmp_path / "dir.npy")])
    assert isinstance(result.exception, IsADirectoryError) and "is a directory" in str(result.exception)
    lines = tmp_path / "texts.jsonl"
    lines.write_text('{"text": "first"}\n')
    result = runner.invoke(app, ["encode", str(lines), "--model", str(tiny_embedder_dir), "--out", str(lines)])
    assert isinstance(result.exception, FileExistsError) and lines.read_text() == '{"text": "first"}\n'


def test_encode_refuses_an_existing_out_before_the_model_loads_unless_overwrite(tiny_embedder_dir, tmp_path,
                                                                                monkeypatch):
    """encode replaced an existing --out without a word, where `data import` refuses unless given --overwrite."""
    source = tmp_path / "texts.txt"
    source.write_text("first line\n")
    out = tmp_path / "vectors.npy"
    out.write_bytes(b"earlier vectors")
    args = ["encode", str(source), "--model", str(tiny_embedder_dir), "--out", str(out)]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before --out was checked")

    with monkeypatch.context() as patch:
        patch.setattr(Embedder, "__init__", no_loading)
        result = runner.invoke(app, args)
    assert isinstance(result.exception, FileExistsError), result.output
    assert str(result.exception) == f"--out {out} exists; give --overwrite to replace it"
    assert out.read_bytes() == b"earlier vectors"
    result = runner.invoke(app, [*args, "--overwrite"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == 1


@pytest.mark.parametrize("suffix", [".npy", ".jsonl"])
def test_encode_out_is_replaced_only_once_written(tiny_embedder_dir, tmp_path, monkeypatch, suffix):
    """--out was written in place: a run that died while writing left a truncated file, and the earlier good output
    was already gone. Now a temp file is renamed over it once complete."""
    from llm_embedder.cli import basic

    source = tmp_path / "texts.txt"
    source.write_text("first line\nsecond line\n")
    out = tmp_path / f"vectors{suffix}"
    args = ["encode", str(source), "--model", str(tiny_embedder_dir), "--out", str(out)]
    assert runner.invoke(app, args).exit_code == 0
    good = out.read_bytes()
    args.append("--overwrite")
    real_save, real_dumps = np.save, json.dumps
    written = []  # what the dying run wrote before it died

    def save_half(file, array, *args, **kwargs):  # the first bytes, then the run dies
        handle = open(file, "wb") if isinstance(file, str | os.PathLike) else file
        written.append(handle.write(b"\x93NUMPY"))
        handle.flush()
        raise KeyboardInterrupt

    def dumps_once(obj, *args, **kwargs):  # the first line, then the run dies (other JSON, as loading writes, goes)
        if isinstance(obj, dict) and "embedding" in obj:
            if written:
                raise KeyboardInterrupt
            written.append(obj)
        return real_dumps(obj, *args, **kwargs)

    monkeypatch.setattr(np, "save", save_half)
    monkeypatch.setattr(basic.json, "dumps", dumps_once)
    result = runner.invoke(app, args)
    monkeypatch.setattr(np, "save", real_save)
    monkeypatch.setattr(basic.json, "dumps", real_dumps)
    assert result.exit_code != 0 and written  # it died while writing
    assert out.read_bytes() == good  # the earlier output stays whole
    assert sorted(p.name for p in tmp_path.iterdir()) == ["texts.txt", f"vectors{suffix}"]  # no temp file left


def test_encode_max_length_cuts_long_texts(tiny_embedder_dir, tmp_path):
    long_text = "a long text " + " ".join(f"word{i}" for i in range(40))
    source = tmp_path / "texts.txt"
    source.write_text(f"short one\n{long_text}\n")
    vectors = {}
    for name, extra in (("default", []), ("cut", ["--max-length", "8"])):
        out = tmp_path / f"{name}.npy"
        result = runner.invoke(app, ["encode", str(source), "--model", str(tiny_embedder_dir), "--out", str(out),
                                     *extra])
        assert result.exit_code == 0, result.output
        vectors[name] = np.load(out)
    cut = Embedder(tiny_embedder_dir, device="cpu", query_max_length=8).encode_queries(["short one", long_text], "qa")
    np.testing.assert_allclose(vectors["cut"], cut, atol=1e-6)
    assert not np.allclose(vectors["cut"][1], vectors["default"][1], atol=1e-3)
    result = runner.invoke(app, ["encode", str(source), "--model", str(tiny_embedder_dir), "--max-length", "0"])
    assert result.exit_code == 2 and "--max-length" in result.output


def test_encode_jsonl_field_from_stdin_to_stdout(tiny_embedder_dir):
    stdin = json.dumps({"body": "alpha"}) + "\n" + json.dumps({"body": "beta"}) + "\n"
    result = runner.invoke(app, ["encode", "--field", "body", "--model", str(tiny_embedder_dir)], input=stdin)
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in result.stdout.splitlines() if line.strip()]
    assert [line["text"] for line in lines] == ["alpha", "beta"]
    assert len(lines[0]["embedding"]) == 32


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        (["encode", "--task", "nope"], "x\n", "known tasks: qa, icl, chat"),
        (["encode", "--task", "nope"], "x\n", "(a task of your own is known from --task-file, or from a model"),
        (["encode", "--role", "doc"], "x\n", "role must be one of"),
        (["encode", "--field", "text"], '{"text": "ok"}\n{"text": \n', "<stdin>:2: malformed JSON"),
        (["encode", "--field", "text"], '{"text": "ok"}\n{"other": 1}\n', "<stdin>:2: missing field 'text'"),
        (["encode", "missing-file.txt"], None, "input file not found: missing-file.txt"),
        (["encode", "--max-length", "1000"], "x\n", "give at most 512"),
    ],
)
def test_cli_errors_are_one_clear_line(tiny_embedder_dir, args, stdin, message):
    result = run_cli(*args, "--model", str(tiny_embedder_dir), stdin=stdin)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_missing_model_error_names_aliases(tmp_path):
    result = run_cli("encode", "--model", str(tmp_path / "absent"), stdin="x\n")
    assert result.returncode == 2
    assert "absent" in result.stderr and "minilm" in result.stderr


def test_encode_names_the_file_and_line_of_bad_utf8(tmp_path, tiny_embedder_dir):
    source = tmp_path / "texts.txt"
    source.write_bytes(b"first line\n" + "caf\xe9 au lait\n".encode("latin-1"))
    result = run_cli("encode", str(source), "--model", str(tiny_embedder_dir))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{source}:2: not valid UTF-8 (byte 0xe9 at column 4)" in " ".join(result.stderr.split())


def test_encode_names_the_line_of_bad_utf8_on_stdin(tiny_embedder_dir):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "llm_embedder", "encode", "--model", str(tiny_embedder_dir)],
        input=b"fine\r\n" + "caf\xe9\n".encode("latin-1"), capture_output=True, env=env, timeout=300,
    )
    assert result.returncode == 2
    assert "<stdin>:2: not valid UTF-8 (byte 0xe9 at column 4)" in " ".join(result.stderr.decode().split())


def test_encode_refuses_an_empty_text_or_no_texts(tmp_path, tiny_embedder_dir):
    """A vector per line: a blank line would be the instruction's vector alone, and no input no vectors at all."""
    blank = tmp_path / "texts.txt"
    blank.write_text("first\n\nthird\n")
    records = tmp_path / "texts.jsonl"
    records.write_text('{"text": "a"}\n{"text": ""}\n')
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    for source, message in [(blank, f"{blank}:2: empty line (one text per line)"),
                            (records, f"{records}:2: field 'text' is empty"), (empty, f"{empty}: no texts to encode")]:
        result = run_cli("encode", str(source), "--model", str(tiny_embedder_dir))
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in " ".join(result.stderr.split())
    result = run_cli("encode", "--model", str(tiny_embedder_dir), stdin="")
    assert result.returncode == 2 and "<stdin>: no texts to encode" in result.stderr


def test_encode_refuses_a_text_of_only_whitespace(tmp_path, tiny_embedder_dir):
    """Refused like an empty line: it would be encoded as the instruction alone."""
    from llm_embedder.cli.basic import read_texts
    from llm_embedder.io import DataError

    records = tmp_path / "texts.jsonl"
    records.write_text('{"text": "a"}\n{"text": " \\t"}\n')
    with pytest.raises(DataError, match=r"texts.jsonl:2: field 'text' holds only whitespace$"):
        read_texts(records, None)
    result = run_cli("encode", "--model", str(tiny_embedder_dir), stdin="a\n   \nb\n")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "<stdin>:2: line of only whitespace (one text per line)" in " ".join(result.stderr.split())


def test_encode_and_index_know_the_tasks_a_saved_model_carries(tiny_embedder_dir, tmp_path):
    """A model saved with a user task carries it: the commands look the task up before the model loads, so
    they register the model's tasks first (they said 'unknown task')."""
    from llm_embedder.tasks import register_task, unregister_task

    register_task(name="legal_cli", query_instruction="Find the statute for: ", key_instruction="Statute: ")
    try:
        Embedder(tiny_embedder_dir, device="cpu").save(tmp_path / "legal_model")
    finally:
        unregister_task("legal_cli")
    texts = tmp_path / "texts.txt"
    texts.write_text("a statute\n")
    result = runner.invoke(app, ["encode", str(texts), "--model", str(tmp_path / "legal_model"), "--task",
                                 "legal_cli", "--out", str(tmp_path / "v.npy")])
    assert result.exit_code == 0, result.output
    unregister_task("legal_cli")  # the model registered it in this process; a fresh one would not know it
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text(json.dumps({"text": "a statute"}) + "\n")
    try:
        result = runner.invoke(app, ["index", "--task", "legal_cli", "--corpus", str(corpus), "--out",
                                     str(tmp_path / "idx"), "--model", str(tmp_path / "legal_model")])
        assert result.exit_code == 0, result.output
    finally:
        unregister_task("legal_cli")


def test_encode_shows_its_progress_on_stderr_and_keeps_stdout_for_the_vectors(tiny_embedder_dir):
    """encode showed no progress below 512 texts (seconds of silence) and, above, sentence-transformers' tqdm bar
    with carriage returns in a log; it now shows the project's bar, a plain line where stderr is a log."""
    texts = [f"text number {i}" for i in range(11)]
    result = runner.invoke(app, ["encode", "--model", str(tiny_embedder_dir), "--batch-size", "2"],
                           input="\n".join(texts) + "\n")
    assert result.exit_code == 0, result.output
    assert "encoding qa queries: 11/11 (100%)" in result.stderr and "Batches" not in result.stderr
    assert "encoding qa queries: 0/11 (0%)" in result.stderr  # as it starts, before its first 8 texts
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    expected = Embedder(tiny_embedder_dir, device="cpu").encode_queries(texts, "qa")
    np.testing.assert_allclose([line["embedding"] for line in lines], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "build", "--size", "medium"], "--size must be one of small, full, got 'medium'"),
        (["export", "--model", "{model}", "--out", "{tmp}/e", "--quantize", "int4"],
         "--quantize must be int8, got 'int4'"),
        (["index", "--task", "qa", "--corpus", "{tmp}/c.jsonl", "--out", "{tmp}/i", "--model", "{model}",
          "--backend", "faiss2"], "--backend must be one of faiss, milvus, got 'faiss2'"),
        (["demo", "--split", "train"], "--split must be one of test, dev, got 'train'"),
        (["ablate", "--split", "train"], "--split must be one of test, dev, got 'train'"),
        (["encode", "{tmp}/t.txt", "--model", "{model}", "--role", "doc"],
         "--role must be one of query, key, got 'doc'"),
        *[([*command, "--model", "{model}", "--max-length", "1000"],
           "--max-length 1000 is more than model {model} can encode: 512 positions (max_position_embeddings of its "
           "config); give at most 512")
          for command in (["encode", "{tmp}/t.txt"], ["index", "--task", "qa", "--corpus", "{tmp}/c.jsonl", "--out",
                                                       "{tmp}/i"], ["serve"])],
        (["evaluate", "--data", "{tmp}/suite", "--out", "{tmp}/eval", "--model", "m={model}", "--base", "none",
          "--llm", "none", "--max-length", "1000"],
         "--max-length 1000 is more than model {model} can encode: 512 positions (max_position_embeddings of its "
         "config); give at most 512"),
    ],
)
def test_errors_name_the_option_not_the_library_parameter(tiny_embedder_dir, tmp_path, monkeypatch, args, message):
    """The library's checks named its parameters (size must be one of ('small', 'full'), backend must be ...,
    max length 1000 (query_max_length) ..., the last ones once the model had loaded): the command names its
    option, before any model loads."""
    (tmp_path / "t.txt").write_text("a text\n")
    (tmp_path / "c.jsonl").write_text('{"text": "a document"}\n')
    (tmp_path / "suite" / "qa").mkdir(parents=True)
    (tmp_path / "suite" / "qa" / "test.jsonl").write_text('{"query": "q", "pos": ["a document"], "task": "qa"}\n')

    def no_loading(*args, **kwargs):
        raise AssertionError("the model loaded before the options were checked")

    monkeypatch.setattr(Embedder, "__init__", no_loading)
    monkeypatch.chdir(tmp_path)
    fill = {"tmp": str(tmp_path), "model": str(tiny_embedder_dir)}
    result = runner.invoke(app, [arg.format(**fill) for arg in args])
    assert isinstance(result.exception, ValueError), result.output
    assert str(result.exception) == message.format(**fill)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.jsonl", "suite", "t.txt"]  # nothing written


def test_device_is_worded_once_for_every_command():
    """--device's help was worded five ways (``cpu or cuda.`` on mine, without the default or cuda:N)."""
    import typer

    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():
        for sub_name, sub in getattr(command, "commands", {name: command}).items():
            commands[sub_name if sub is not command else name] = sub
    helps = {name: param.help for name, command in commands.items() for param in command.params
             if param.name == "device"}
    assert set(helps) == {"encode", "index", "score", "serve", "evaluate", "train", "mine"}
    assert len(set(helps.values())) == 1, helps
    assert set(helps.values()) == {"cpu, cuda, cuda:N or mps (default: cuda if present, else cpu)."}
