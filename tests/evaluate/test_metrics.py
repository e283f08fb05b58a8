import math

import pytest

from llm_embedder.evaluate.metrics import (
    answer_match,
    ndcg,
    normalize_answer,
    paired_difference,
    per_query_metric,
    retrieval_metrics,
)


def test_metrics_against_hand_computation():
    rankings = [[5, 1, 7, 2], [3, 4, 0, 9]]
    golds = [[1, 2], [8]]
    m = retrieval_metrics(rankings, golds, cutoffs=(1, 3, 5))
    assert m["mrr@1"] == 0.0
    assert m["mrr@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@3"] == pytest.approx((1 / 2 + 0) / 2)
    assert m["recall@5"] == pytest.approx((2 / 2 + 0) / 2)
    idcg = 1 + 1 / math.log2(3)
    assert m["ndcg@5"] == pytest.approx(((1 / math.log2(3) + 1 / math.log2(5)) / idcg + 0) / 2)


def test_ndcg_perfect_is_one_and_queries_without_gold_are_ignored():
    assert ndcg([1, 2, 3], {1, 2}, 10) == pytest.approx(1.0)
    m = retrieval_metrics([[1], [2]], [[1], []], cutoffs=(1,))
    assert m["mrr@1"] == 1.0


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 rankings but 1"):
        retrieval_metrics([[1], [2]], [[1]])


def test_per_query_values_average_to_the_reported_metric():
    rankings, golds = [[5, 1, 7, 2], [3, 4, 0, 9], [1]], [[1, 2], [8], []]
    values = per_query_metric(rankings, golds, "ndcg@5")
    assert len(values) == 2 and values[1] == 0.0  # the query without gold ids has no value
    assert sum(values) / 2 == pytest.approx(retrieval_metrics(rankings, golds)["ndcg@5"])
    with pytest.raises(ValueError, match="unknown retrieval metric 'map@5'"):
        per_query_metric(rankings, golds, "map@5")


def test_paired_difference_is_the_mean_difference_with_its_standard_error():
    mean, se = paired_difference([1.0, 2.0, 4.0], [0.0, 1.0, 1.0])  # differences 1, 1, 3
    assert mean == pytest.approx(5 / 3)
    assert se == pytest.approx(math.sqrt(((1 - 5 / 3) ** 2 * 2 + (3 - 5 / 3) ** 2) / 2) / math.sqrt(3))
    with pytest.raises(ValueError, match="two equal lists"):
        paired_difference([1.0, 2.0], [1.0])


def test_answer_normalisation():
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert answer_match("It is the Jupiter, I think.", ["Jupiter"])
    assert not answer_match("Saturn", ["Jupiter"])
    assert not answer_match("anything", [""])
