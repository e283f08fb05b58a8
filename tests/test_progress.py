import io
import re

from rich.console import Console

from llm_embedder.progress import LoggedProgress

LINE = re.compile(r"^scoring: (\d+)/10 \((\d+)%\), 0:\d\d(, ~0:\d\d left)?$")


def lines(buffer: io.StringIO) -> list[str]:
    return [line for line in buffer.getvalue().splitlines() if line.startswith("scoring:")]


def run(console: Console, log_every: float, **kwargs) -> None:
    with LoggedProgress(console=console, log_every=log_every, **kwargs) as progress:
        task = progress.add_task("scoring", total=10)
        for _ in range(10):
            progress.advance(task)


def test_a_log_gets_plain_lines_as_the_job_goes():
    buffer = io.StringIO()
    run(Console(file=buffer, width=120), log_every=0)
    got = lines(buffer)
    assert all(LINE.match(line) for line in got), got
    assert [int(LINE.match(line).group(1)) for line in got] == list(range(1, 11))  # one per update, and the end
    assert "left" in got[0] and "left" not in got[-1] and got[-1].startswith("scoring: 10/10 (100%)")
    assert "━" not in buffer.getvalue()  # the lines, not rich's bars printed once more at the end


def test_between_lines_it_waits_log_every_but_always_says_when_done():
    buffer = io.StringIO()
    run(Console(file=buffer, width=120), log_every=3600)
    assert [line.split(",")[0] for line in lines(buffer)] == ["scoring: 10/10 (100%)"]


def test_a_terminal_or_a_disabled_bar_gets_no_plain_lines():
    for console, kwargs in [(Console(file=io.StringIO(), force_terminal=True, width=120), {}),
                            (Console(file=io.StringIO(), width=120), {"disable": True})]:
        run(console, log_every=0, **kwargs)
        assert lines(console.file) == []
    terminal = Console(file=io.StringIO(), force_terminal=True, width=120)
    run(terminal, log_every=0)
    assert "━" in terminal.file.getvalue()  # a terminal keeps its live bar


def test_a_restarted_task_and_one_without_a_total_are_logged():
    buffer = io.StringIO()
    with LoggedProgress(console=Console(file=buffer, width=120), log_every=0) as progress:
        prompts = progress.add_task("LLM prompts", total=None)
        progress.update(prompts, completed=3)
        progress.update(prompts, completed=2, total=2)  # the first system's prompts are done
        progress.update(prompts, completed=0, total=4)  # the next system's begin
        progress.update(prompts, completed=4)
    got = [line.split(",")[0] for line in buffer.getvalue().splitlines() if line.startswith("LLM prompts:")]
    assert got == ["LLM prompts: 3 done", "LLM prompts: 2/2 (100%)", "LLM prompts: 0/4 (0%)", "LLM prompts: 4/4 (100%)"]


def test_log_start_says_when_a_task_starts_and_where_a_restarted_one_starts_again():
    """A job done in one step (a small corpus in one batch) said nothing in a log until it ended."""
    buffer = io.StringIO()
    with LoggedProgress(console=Console(file=buffer, width=120), log_every=3600, log_start=True) as progress:
        task = progress.add_task("scoring", total=10)
        assert lines(buffer) == ["scoring: 0/10 (0%), 0:00"]
        progress.update(task, completed=10)
        progress.update(task, completed=4, total=8)  # restarted (as evaluate's bar for its next system)
        progress.update(task, completed=8)
        waiting = progress.add_task("scoring", total=10, start=False)
        assert len(lines(buffer)) == 4  # not before it starts
        progress.start_task(waiting)
    assert [line.split(",")[0] for line in lines(buffer)] == [
        "scoring: 0/10 (0%)", "scoring: 10/10 (100%)", "scoring: 4/8 (50%)", "scoring: 8/8 (100%)",
        "scoring: 0/10 (0%)"]


def test_progress_goes_to_stderr_unless_told_otherwise(capsys):
    """index's, score's and evaluate's bars (and evaluate's notes beside them) went to stdout, encode's and train's to
    stderr: stdout is left to what a command outputs (evaluate's table, search --json's lines)."""
    from llm_embedder.progress import count_progress

    with count_progress(log_start=True) as bar:
        job = bar.add_task("encoding qa keys", total=2)
        bar.update(job, completed=2)
    with LoggedProgress(log_every=3600) as progress:
        task = progress.add_task("evaluating", total=1)
        progress.console.print("task qa: nothing to measure")
        progress.advance(task)
    out, err = capsys.readouterr()
    assert out == ""
    assert "encoding qa keys: 0/2 (0%)" in err and "encoding qa keys: 2/2 (100%)" in err
    assert "evaluating: 1/1 (100%)" in err and "task qa: nothing to measure" in err
