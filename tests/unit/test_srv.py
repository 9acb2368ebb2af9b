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


def test_staggered_attempts_skip_dead_targets_in_a_quarter_second_each():
    """Three priority-0 targets that never answer before the live one: started 0.25 s
    apart while they hang, the live one (also priority 0) taken when it answers."""
    from profiles.app_config.srv import Staggered

    plan = Staggered([0, 0, 0, 0])
    assert plan.start_due(0.0) == [0]
    assert plan.wakeup(0.0) == 0.25 and plan.start_due(0.2) == []
    assert plan.start_due(0.25) == [1] and plan.start_due(0.5) == [2]
    assert plan.start_due(0.75) == [3] and plan.wakeup(0.75) is None  # all started
    plan.answer(3)
    # The ones before it in the order may still answer: waited for until 1 s after the
    # first attempt, no longer — the dead targets cost about a second in all.
    assert plan.choice(0.8) is None and plan.wakeup(0.8) == 1.0
    assert plan.choice(1.0) == 3


def test_a_failure_starts_the_next_at_once_and_all_failing_is_exhausted():
    from profiles.app_config.srv import Staggered

    plan = Staggered([0, 1])
    assert plan.start_due(0.0) == [0]
    plan.fail(0)
    assert plan.start_due(0.01) == [1] and not plan.exhausted()
    plan.fail(1)
    assert plan.exhausted() and plan.choice(0.02) is None and plan.start_due(0.03) == []


def test_a_better_priority_still_trying_is_waited_for_up_to_one_second():
    """RFC 2782 order decides among those that answer: a priority-10 answer waits while
    the priority-0 attempt is within 1 s of its start, and is taken after."""
    from profiles.app_config.srv import Staggered

    plan = Staggered([0, 10, 10])
    plan.start_due(0.0)
    plan.start_due(0.25)
    plan.answer(1)
    assert plan.start_due(0.5) == []  # no new attempt once one answered
    assert plan.choice(0.3) is None and plan.wakeup(0.3) == 1.0
    assert plan.choice(1.0) == 1
    # The better one answering in time wins over an earlier worse answer.
    plan = Staggered([0, 10])
    plan.start_due(0.0)
    plan.start_due(0.25)
    plan.answer(1)
    plan.answer(0)
    assert plan.choice(0.6) == 0


def test_the_weighted_order_decides_between_two_that_answer_within_a_second():
    """Two equal-priority targets (weighted order ldap1, ldap2): ldap1 is slow, ldap2 was
    started 0.25 s later and answers first; ldap1 answering within the second is taken."""
    from profiles.app_config.srv import Staggered

    plan = Staggered([0, 0])
    plan.start_due(0.0)
    plan.start_due(0.25)
    plan.answer(1)
    assert plan.choice(0.4) is None
    plan.answer(0)
    assert plan.choice(0.5) == 0
