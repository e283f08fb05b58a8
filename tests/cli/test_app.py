"""The top-level ``--help``: every command in its stage's panel, in the data flow's order, on one summary each."""

import re

from typer.testing import CliRunner

from llm_embedder.cli import app
from llm_embedder.cli.app import ORDER, STAGES

runner = CliRunner()


def test_every_command_has_a_stage():
    registered = {info.name for info in [*app.registered_commands, *app.registered_groups]}
    assert registered == set(ORDER), "a new command needs its place in llm_embedder.cli.app.STAGES"


def test_help_lists_the_commands_by_stage_in_data_flow_order():
    result = runner.invoke(app, ["--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    panels = [title for title in STAGES if any(title in line for line in lines)]
    assert panels == list(STAGES)
    listed = [match.group(1) for line in lines if (match := re.match(r"│ (\w+) ", line)) and "--help" not in line]
    assert listed == ORDER
    # one line each at this width: the docstrings' own line breaks are joined
    train = next(line for line in lines if line.startswith("│ train "))
    assert "homogeneous batches, each task's loss and instructions (recipe §2)." in train


def test_a_command_help_wraps_whole_paragraphs_not_the_docstring_lines():
    result = runner.invoke(app, ["index", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(line.strip() for line in result.output.splitlines())
    # the docstring breaks its line after "OUT gets"; at 200 columns the help must not
    lines = [line for line in result.output.splitlines() if "OUT gets" in line]
    assert lines and "OUT gets embeddings.memmap" in lines[0], result.output
    assert "Streams the corpus (memory stays flat)" in text


def test_a_flag_shows_no_value_type():
    """typer 0.29 showed `--json <bool>`, as if `--json true` were how to give it (`true` then became a query)."""
    result = runner.invoke(app, ["search", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    flag = next(line for line in lines if "--json " in line and "│" in line)
    assert "<bool>" not in flag and "JSON lines instead of a table." in flag
    assert "<path>" in next(line for line in lines if "--index" in line)  # options that take a value still show it
    assert "<bool>" not in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output


def test_version_prints_the_installed_version() -> None:
    """There was no --version ("No such option")."""
    from importlib.metadata import version

    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout == f"llm-embedder {version('llm-embedder')}\n"


def test_a_usage_error_is_one_line_like_every_other_error(tmp_path) -> None:
    """A bad option value, an unknown option or a missing argument printed typer's five-line boxed panel, where
    every other bad input prints one `error:` line."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    for args, message in ((["encode", "x", "--batch-size", "-1"],
                           "error: Invalid value for '--batch-size': Input should be greater than or equal to 1 "
                           "(see 'llm-embedder encode --help')"),
                          (["score"], "error: Missing argument 'input'. (see 'llm-embedder score --help')")):
        proc = subprocess.run([sys.executable, "-m", "llm_embedder", *args], capture_output=True, text=True,
                              cwd=tmp_path, env=env, timeout=120)
        assert proc.returncode == 2 and proc.stderr.replace("python -m llm_embedder", "llm-embedder") == message + "\n"
    proc = subprocess.run([sys.executable, "-m", "llm_embedder"], capture_output=True, text=True, cwd=tmp_path,
                          env=env, timeout=120)
    assert proc.returncode == 2 and "Usage:" in proc.stdout and proc.stderr == ""  # no arguments: the help alone


def test_an_os_error_python_raised_reads_as_a_sentence(tmp_path) -> None:
    """`tasks --task-file DIR` printed "error: [Errno 21] Is a directory: 'DIR'"."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "llm_embedder", "tasks", "--task-file", str(tmp_path)],
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=120)
    assert proc.returncode == 2 and proc.stderr == f"error: Is a directory: {tmp_path}\n"


def test_every_out_and_model_option_has_its_short_flag():
    """-o and -m were on some commands only (export, data, score; encode's -m but not its -o)."""
    import typer

    group = typer.main.get_command(app)
    commands = {}
    for name, command in group.commands.items():
        for sub_name, sub in getattr(command, "commands", {name: command}).items():
            commands[f"{name} {sub_name}" if sub is not command else name] = sub
    short = {"--out": "-o", "--model": "-m"}
    missing = [f"{name} {option}" for name, command in commands.items() for param in command.params
               for option, flag in short.items() if option in param.opts and flag not in param.opts]
    assert missing == []
    used = {flag: sorted(name for name, command in commands.items() for param in command.params if flag in param.opts)
            for flag in short.values()}
    assert used == {"-o": ["ablate", "data build", "data import", "demo", "encode", "evaluate", "export", "index",
                           "mine", "score", "train"],
                    "-m": ["augment", "encode", "evaluate", "export", "index", "mine", "search", "serve"]}


def test_the_count_cap_is_not_shown_as_a_range_but_still_refuses():
    """Every whole-number option is capped at 2**31 - 1 (a 40-digit --max-steps trained for ~1e35 hours); its help
    read [1<=x<=2147483647], split over two lines at 80 columns. It shows the lower bound alone."""
    for command in ("train", "evaluate", "score", "search"):
        help_text = runner.invoke(app, [command, "--help"], env={"COLUMNS": "80"}).output
        assert "2147483647" not in help_text and "21474836" not in help_text, command
    assert "[x>=1]" in runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"}).output
    refused = runner.invoke(app, ["train", "--max-steps", str(2**31)])
    assert refused.exit_code == 2 and "2147483647" in refused.output
