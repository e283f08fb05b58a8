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
