"""The node's hot-path metrics (plain tallies and a list-backed histogram) in Prometheus text."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from signaling.metrics import Metrics


def samples(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(m.render().decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_tallies_are_exported_as_labelled_counters():
    m = Metrics()
    m.tally_in["offer"] += 2
    m.out("ack")
    m.tally_out["relayed"] += 3
    m.error("bad-json")
    got = samples(m)
    assert got[("signaling_messages_in_total", (("type", "offer"),))] == 2
    assert got[("signaling_messages_in_total", (("type", "answer"),))] == 0  # every type from the start
    assert got[("signaling_messages_out_total", (("type", "relayed"),))] == 3
    assert got[("signaling_messages_out_total", (("type", "ack"),))] == 1
    assert got[("signaling_errors_total", (("code", "bad-json"),))] == 1


def test_latency_histogram_buckets_are_cumulative_and_inclusive():
    m = Metrics()
    for value in (0.0001, 0.0005, 0.003, 7.0):  # 0.0005 sits on a bound: it counts in le="0.0005"
        m.publish_latency.observe(value)
    got = samples(m)
    name = "signaling_bus_publish_latency_seconds"
    assert got[(f"{name}_bucket", (("le", "0.0005"),))] == 2
    assert got[(f"{name}_bucket", (("le", "0.0025"),))] == 2
    assert got[(f"{name}_bucket", (("le", "0.005"),))] == 3
    assert got[(f"{name}_bucket", (("le", "2.5"),))] == 3
    assert got[(f"{name}_bucket", (("le", "+Inf"),))] == 4
    assert got[(f"{name}_count", ())] == 4
    assert abs(got[(f"{name}_sum", ())] - 7.0036) < 1e-9
