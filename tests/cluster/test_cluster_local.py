"""tests/support/cluster_local.py: the ports it gives a node, and a node started
again when Ray finds one of them taken (as happened in CI: two components of
one head were given the same port and `ray start` refused)."""
import logging
import socket

from support import cluster_local
from support.cluster_local import LocalCluster, listening, session_pids

from hashgan_ray.ports import free_ports


def test_free_ports_are_distinct_and_bindable():
    # Picked one by one (bind, close, bind again), 500 ports held a repeat in
    # 200 of 200 tries on the 2-core machine: this fails if the holding goes.
    ports = free_ports(500)
    assert len(set(ports)) == 500
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_head_given_one_port_twice_starts_again_on_fresh_ports(monkeypatch, caplog):
    picks = []

    def first_pick_clashes(n):
        ports = free_ports(n)
        if not picks:
            ports[4] = ports[5]     # the runtime-env agent on the GCS port, as in CI
        picks.append(ports)
        return ports

    monkeypatch.setattr(cluster_local, "free_ports", first_pick_clashes)
    with caplog.at_level(logging.WARNING, logger="cluster_local"):
        cluster = LocalCluster(head_cpus=1, dashboard=False)
    try:
        assert len(picks) == 2
        assert cluster.gcs_port == picks[1][5] and listening(cluster.gcs_port)
        assert "found a port taken (try 1 of 3)" in caplog.text
        assert len(cluster.nodes) == 1          # the refused start left no node behind
    finally:
        head = cluster.head.proc.pid
        cluster.stop()
    assert session_pids(head) == []
