"""Real NATs in network namespaces: every pair of NAT kinds through the CLI.

The lab (``shoal.lab``) builds public hosts, full-cone, port-restricted and symmetric
NATs, a double NAT and two hosts behind one NAT, with 50 ms of delay on every access
link; a second lab adds 5% loss. Each trial runs ``shoal listen`` and ``shoal send`` in
the sites and checks delivery and the path taken.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import pytest

from shoal.lab.matrix import EXPECTED_NAT, Matrix, all_pairs, expected_path

pytestmark = pytest.mark.netns


def _require_root() -> None:
    if os.geteuid() != 0:
        pytest.fail("the NAT lab builds network namespaces and must run as root")


@pytest.fixture(scope="module")
def matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    _require_root()
    with Matrix(tmp_path_factory.mktemp("natlab"), delay=0.05, seed=1) as running:
        yield running


@pytest.fixture(scope="module")
def lossy_matrix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Matrix]:
    _require_root()
    with Matrix(tmp_path_factory.mktemp("lossylab"), delay=0.05, loss=0.05, seed=2) as running:
        yield running


@pytest.mark.parametrize("site", ["public-1", "full-cone-1", "port-restricted-1",
                                  "symmetric-1", "double-1", "shared"])
def test_doctor_names_the_nat_of_each_site(matrix: Matrix, site: str) -> None:
    report = matrix.doctor(site)
    kind = matrix.lab.sites[site].kind
    assert (report["mapping"], report["filtering"]) == EXPECTED_NAT[kind], report
    # The lab's routers masquerade without hairpinning; a public host has no NAT.
    assert report["hairpin"] is (None if kind == "public" else False), report
    assert report["udp"] is True
    assert report["nat"] is (kind != "public")
    assert report["public"] and all(a.startswith("203.0.113.") for a in report["public"])
    if kind == "symmetric":
        assert len(report["public"]) >= 2


@pytest.mark.parametrize(("sender", "receiver"), all_pairs())
def test_every_pair_of_nat_kinds_delivers(matrix: Matrix, sender: str, receiver: str) -> None:
    trial = matrix.run(sender, receiver)
    assert trial.delivered, trial
    assert trial.path == trial.received_path == expected_path(sender, receiver), trial


def test_every_pair_delivers_with_five_percent_loss(lossy_matrix: Matrix) -> None:
    failures = []
    for sender, receiver in all_pairs():
        trial = lossy_matrix.run(sender, receiver)
        if not trial.delivered:
            failures.append(trial)
    assert failures == []


NATDISCOVERY_VERDICTS = {
    "endpoint-independent": "Endpoint Independent",
    "address-dependent": "Address Dependent",
    "address-and-port-dependent": "Address and Port Dependent",
}


@pytest.mark.parametrize("site", ["full-cone-1", "port-restricted-1", "symmetric-1"])
def test_coturn_natdiscovery_agrees_with_the_introducers_rfc5780_answers(
    matrix: Matrix, site: str
) -> None:
    """coturn's RFC 5780 client, pointed at a Shoal introducer, names the same kinds."""
    host = matrix.lab.host(site)
    result = subprocess.run(
        matrix.lab.command(host, ["turnutils_natdiscovery", "-m", "-f", "-P", "-p", "7000",
                                  "203.0.113.2"]),
        capture_output=True, text=True, timeout=60, check=False,
    )
    mapping, filtering = EXPECTED_NAT[matrix.lab.sites[site].kind]
    assert f"NAT with {NATDISCOVERY_VERDICTS[mapping]} Mapping!" in result.stdout, result.stdout
    assert f"NAT with {NATDISCOVERY_VERDICTS[filtering]} Filtering!" in result.stdout
