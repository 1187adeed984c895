import pytest

from pitstop.slurm.hostlist import HostlistError, compress, expand


@pytest.mark.parametrize("expression, hosts", [
    ("node1", ["node1"]),
    ("node[1-3,7]", ["node1", "node2", "node3", "node7"]),
    ("a[01-03]b", ["a01b", "a02b", "a03b"]),
    ("a[08-10]", ["a08", "a09", "a10"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("a1,b[2-3],c", ["a1", "b2", "b3", "c"]),
    ("gpu-[001-002],cpu[5]", ["gpu-001", "gpu-002", "cpu5"]),
    ("", []),
])
def test_expand(expression, hosts):
    assert expand(expression) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node1]", "node[a-b]", "node[3-1]", "n[[1]]", "n[1,]"])
def test_expand_rejects_malformed(bad):
    with pytest.raises(HostlistError):
        expand(bad)


@pytest.mark.parametrize("hosts, expression", [
    (["node1", "node2", "node3", "node7"], "node[1-3,7]"),
    (["a01b", "a02b", "a03b"], "a[01-03]b"),
    (["node3", "node1", "node2"], "node[1-3]"),
    (["login", "node1"], "login,node1"),
    (["node1"], "node1"),
    (["a08", "a09", "a10"], "a[08-10]"),
])
def test_compress(hosts, expression):
    assert compress(hosts) == expression


def test_round_trip_on_4096_nodes():
    hosts = [f"gpu-{rack:03d}-{slot:02d}" for rack in range(1, 129) for slot in range(1, 33)]
    assert expand(compress(hosts)) == hosts
