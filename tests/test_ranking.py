"""Ranking agreement between a cheap and a reference reward vector, against brute force."""

import itertools
import math

import numpy as np
import pytest

from vgen.eval.ranking import agreement, kendall_tau, tau_text, topk_overlap


def tau_b_brute(a, b) -> float:
    """Kendall's tau-b by its definition: (concordant - discordant) / sqrt((n0 - n1) (n0 - n2))."""
    conc = disc = ties_a = ties_b = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
        ties_a += da == 0
        ties_b += db == 0
        if da * db > 0:
            conc += 1
        elif da * db < 0:
            disc += 1
    n0 = len(a) * (len(a) - 1) // 2
    return (conc - disc) / math.sqrt((n0 - ties_a) * (n0 - ties_b))


def overlap_brute(cheap, ref, k) -> float:
    """Best |cheap top-k ∩ S| / k over every k-set S that is a valid top-k of ``ref`` under some tie-break."""
    top = set(np.argsort(-np.asarray(cheap), kind="stable")[:k].tolist())
    best = 0
    for s in itertools.combinations(range(len(ref)), k):
        rest = [ref[i] for i in range(len(ref)) if i not in s]
        if not rest or min(ref[i] for i in s) >= max(rest):
            best = max(best, len(top & set(s)))
    return best / k


@pytest.mark.parametrize("seed", range(20))
def test_tau_and_overlap_match_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(4, 9))
    a = rng.integers(0, 4, n) / 3  # coarse, verifier-like rewards: many ties
    b = np.clip(a + rng.integers(-1, 2, n) / 3, 0, 1)
    if np.ptp(a) and np.ptp(b):
        assert kendall_tau(a, b) == pytest.approx(tau_b_brute(a, b), abs=1e-12)
    for k in range(1, n + 1):
        assert topk_overlap(a, b, k) == pytest.approx(overlap_brute(a, b, k))


def test_distinct_rewards_give_the_plain_set_overlap():
    cheap = np.array([0.9, 0.1, 0.8, 0.3, 0.7, 0.2])
    ref = np.array([0.95, 0.5, 0.1, 0.6, 0.7, 0.2])  # top-3 of ref: {0, 4, 3}; of cheap: {0, 2, 4}
    assert topk_overlap(cheap, ref, 3) == pytest.approx(2 / 3)
    assert kendall_tau(ref, ref) == pytest.approx(1.0) and kendall_tau(ref, -ref) == pytest.approx(-1.0)


def test_constant_groups_have_no_tau_and_are_counted():
    cheap = np.array([[1.0, 1.0, 1.0, 1.0], [0.0, 0.5, 1.0, 0.2]])
    ref = np.array([[0.0, 1.0, 0.5, 0.2], [0.1, 0.4, 0.9, 0.3]])
    a = agreement(cheap, ref, k=2)
    assert a["groups_without_tau"] == 1 and a["per_group_tau"][0] is None
    assert a["kendall_tau_mean"] == pytest.approx(a["per_group_tau"][1]) == pytest.approx(1.0)
    assert a["top2_overlap_mean"] == pytest.approx((0.5 + 1.0) / 2)
    assert tau_text(a) == "1.000"
    tied = agreement(cheap[:1], ref[:1], k=2)  # no group with a tau: a table prints n/a, not a crash
    assert tied["kendall_tau_mean"] is None and tau_text(tied) == "n/a"
