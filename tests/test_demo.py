import numpy as np
from rich.console import Console

from llm_embedder.demo import load_demo_corpus, run_demo


def test_showcase_reports_first_hits_and_hits_in_the_top_k(tiny_embedder_dir, tiny_embedder):
    console = Console(record=True, width=200)
    shares = run_demo(model=str(tiny_embedder_dir), k=2, console=console)
    corpus = load_demo_corpus()
    assert set(shares) == set(corpus)
    for task, data in corpus.items():
        scores = tiny_embedder.encode_queries(data["queries"], task) @ tiny_embedder.encode_keys(data["keys"], task).T
        top = np.argsort(-scores, axis=1)[:, :2]
        first = np.mean([row[0] in relevant for row, relevant in zip(top, data["relevant"], strict=True)])
        in_top = np.mean([bool(set(row) & set(relevant)) for row, relevant in zip(top, data["relevant"], strict=True)])
        assert shares[task] == {"top1": first, "in_top_k": in_top}
    text = console.export_text()
    assert "Queries whose first hit is relevant: " in text
    assert (
        "Queries with a relevant key in the top 2: " + ", ".join(f"{t} {s['in_top_k']:.2f}" for t, s in shares.items())
        in text
    )


def test_search_only_refuses_the_options_it_would_ignore(tmp_path):
    """`demo --search-only --set lr=1 --out X` ran the mini search and silently ignored the rest."""
    from typer.testing import CliRunner

    from llm_embedder.cli import app

    for extra in (["--set", "lr=1"], ["--out", str(tmp_path / "x")], ["--quick"], ["--split", "dev"]):
        result = CliRunner().invoke(app, ["demo", "--search-only", *extra])
        assert isinstance(result.exception, ValueError), result.output
        assert f"{extra[0]} would have no effect" in str(result.exception)
    assert not (tmp_path / "x").exists()
