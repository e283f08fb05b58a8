"""The rank-aware reward formula."""

import numpy as np

from llm_embedder.reward.rank_aware import rank_aware_reward, soft_rank


def test_soft_rank_tends_to_the_plain_rank():
    gold = np.array([-1.0, -3.0])
    samples = np.array([[-2.0, -0.5, -5.0], [-2.0, -0.5, -5.0]])
    np.testing.assert_allclose(soft_rank(gold, samples, tau=1e-3), [2.0, 3.0])


def test_a_candidate_that_lifts_the_gold_answer_gets_a_positive_reward():
    # row 0: no candidate (gold 3rd of 3 samples); row 1 lifts it to 1st; row 2 pushes it below everything
    gold = np.array([-3.0, -0.5, -9.0])
    samples = np.array([[-1.0, -2.0, -4.0], [-1.0, -2.0, -4.0], [-1.0, -2.0, -4.0]])
    reward = rank_aware_reward(gold, samples, n=3)
    assert reward[0] > 0.5 and reward[1] < 0
    assert -1 < reward.min() and reward.max() < 1


def test_no_samples_gives_zero_reward():
    assert (rank_aware_reward(np.array([-1.0, -2.0]), np.zeros((2, 0)), n=5) == 0).all()
