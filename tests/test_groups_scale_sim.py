"""The groups simulation (``shoal.sim.groups``, ``shoal sim``): posts reach every online
member with few copies, the run replays by seed, churned members catch up; the big runs
(``SHOAL_BIG_SIM=1``) check the targets at 1,000 and 10,000 peers."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from cli_helpers import shoal
from shoal.errors import ShoalError
from shoal.sim.groups import GroupSimSpec, run_groups

_MACHINE = ("wall_s", "cpu_s", "peak_rss_mb", "phases_wall_s", "phases_cpu_s")
_QUICK = {"settle": 8.0, "window": 6.0}


def _replayable(figures: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in figures.items() if k not in _MACHINE}


def test_without_churn_every_online_member_gets_every_post_in_few_copies() -> None:
    result = run_groups(GroupSimSpec(peers=24, posts=5, seed=5, **_QUICK))
    assert result.online_pairs == 5 * 23
    assert result.delivery_online == 1.0
    assert result.delivery_after_sync == 1.0
    assert 1.0 <= result.copies_per_delivery <= 3
    assert 0 < result.latency_p50_s <= result.latency_p99_s < 3
    assert 0 < result.datagrams_per_node_per_post < 40
    assert result.bytes_per_node_per_post > 256  # a post's payload at least
    assert result.links_per_node >= 2


def test_the_same_seed_gives_the_same_figures_and_another_seed_others() -> None:
    spec = GroupSimSpec(peers=14, posts=3, churn=0.2, nat=0.3, seed=7, **_QUICK)
    first, again = run_groups(spec).figures(), run_groups(spec).figures()
    assert _replayable(first) == _replayable(again)
    other = run_groups(GroupSimSpec(peers=14, posts=3, churn=0.2, nat=0.3, seed=8,
                                      **_QUICK)).figures()
    assert _replayable(other) != _replayable(first)


def test_members_away_or_behind_nats_get_the_posts_and_catch_up_when_back() -> None:
    result = run_groups(GroupSimSpec(peers=24, groups=2, posts=6, churn=0.3, nat=0.4,
                                     nat_kind="symmetric", seed=3, **_QUICK))
    assert result.online_pairs < 6 * 11  # some members were away for some posts
    assert result.delivery_online == 1.0
    assert result.delivery_after_sync == 1.0
    assert result.sync_virtual_s > 0


def test_bad_specs_are_refused() -> None:
    for spec in (GroupSimSpec(peers=3, groups=2), GroupSimSpec(churn=1.0),
                 GroupSimSpec(loss=-0.1), GroupSimSpec(nat_kind="open")):
        with pytest.raises(ShoalError):
            run_groups(spec)


def test_shoal_sim_prints_the_same_figures_from_one_process_to_the_next() -> None:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    runs = [subprocess.run(shoal("sim", "--peers", "8", "--posts", "2", "--churn", "0.2",
                                 "--json"), capture_output=True, text=True, timeout=60,
                           env={**env, **extra}) for extra in ({}, {"PYTHONHASHSEED": "7"})]
    assert [run.returncode for run in runs] == [0, 0], runs[0].stderr
    assert len(runs[0].stdout.splitlines()) == 1
    figures = [json.loads(run.stdout) for run in runs]
    assert figures[0]["peers"] == 8 and figures[0]["delivery_after_sync"] == 1.0
    for key in ("delivery_online", "latency_p50_s", "latency_p99_s",
                "datagrams_per_node_per_post", "bytes_per_node_per_post",
                "copies_per_delivery", "wall_s", "peak_rss_mb"):
        assert key in figures[0]
    assert _replayable(figures[0]) == _replayable(figures[1])


def test_shoal_sim_refuses_bad_options_in_one_line() -> None:
    bad = subprocess.run(shoal("sim", "--churn", "2"), capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1


_BIG = pytest.mark.skipif(not os.environ.get("SHOAL_BIG_SIM"),
                          reason="long: set SHOAL_BIG_SIM=1")


@_BIG
@pytest.mark.parametrize("peers", [1000, 10_000])
def test_big_group_under_churn(peers: int) -> None:
    result = run_groups(GroupSimSpec(peers=peers, posts=100, churn=0.1, seed=1))
    assert result.delivery_online >= 0.999
    assert result.delivery_after_sync == 1.0
    assert result.copies_per_delivery <= 3
    assert result.datagrams_per_node_per_post < 20
