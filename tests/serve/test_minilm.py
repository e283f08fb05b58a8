"""Integration: the real bundled MiniLM behind the real server, spoken to by the unchanged openai client."""

from __future__ import annotations

import numpy as np
import pytest
from openai import OpenAI

pytestmark = pytest.mark.integration


def test_minilm_server_equals_embedder(start_server, minilm, tmp_path) -> None:
    texts = ["Where was Marie Curie born?", "Marie Curie was born in Warsaw.", "Bananas are yellow."]
    with start_server("minilm", tmp_path / "server.log", api_key="k") as server:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="k", max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["minilm"]
        queries = client.embeddings.create(input=texts[:1], model="minilm")
        keys = client.embeddings.create(input=texts[1:], model="minilm", encoding_format="float",
                                        extra_body={"task": "qa", "role": "key"})
    query = np.array([d.embedding for d in queries.data], dtype=np.float32)
    key = np.array([d.embedding for d in keys.data], dtype=np.float32)
    assert query.shape == (1, 384)
    np.testing.assert_allclose(query, minilm.encode_queries(texts[:1], "qa"), atol=1e-5)
    np.testing.assert_allclose(key, minilm.encode_keys(texts[1:], "qa"), atol=1e-5)
    scores = (query @ key.T)[0]
    assert scores[0] > scores[1]  # the real model ranks the answer above the distractor
