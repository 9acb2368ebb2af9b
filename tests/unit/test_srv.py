"""RFC 2782 ordering of SRV records."""

from __future__ import annotations

import random
from collections import Counter

from profiles.app_config.srv import order_srv
from profiles.network_address.resolver_io import SrvRecord


def targets(records, seed):
    return [r.target for r in order_srv(records, random.Random(seed))]


def test_lowest_priority_first_regardless_of_weight():
    records = [SrvRecord(10, 100, 389, "b"), SrvRecord(0, 1, 389, "a"),
               SrvRecord(20, 0, 389, "c")]
    for seed in range(20):
        assert targets(records, seed) == ["a", "b", "c"]


def test_weights_share_the_first_place_in_proportion():
    records = [SrvRecord(0, 60, 389, "heavy"), SrvRecord(0, 20, 389, "light"),
               SrvRecord(0, 20, 389, "light2")]
    firsts = Counter(targets(records, seed)[0] for seed in range(3000))
    assert 0.55 < firsts["heavy"] / 3000 < 0.65
    assert 0.15 < firsts["light"] / 3000 < 0.25


def test_weight_zero_is_tried_last_almost_always():
    records = [SrvRecord(0, 0, 389, "zero"), SrvRecord(0, 50, 389, "fifty")]
    firsts = Counter(targets(records, seed)[0] for seed in range(2000))
    assert firsts["fifty"] > 1900 and firsts["zero"] > 0  # drawn only on a 0 draw
    all_zero = [SrvRecord(0, 0, 389, "x"), SrvRecord(0, 0, 389, "y")]
    assert sorted(targets(all_zero, 1)) == ["x", "y"]


def test_a_lone_dot_target_means_no_service():
    assert targets([SrvRecord(0, 0, 0, ".")], 1) == []
    assert targets([], 1) == []
