"""The per-process counters the rate limits use while Redis is away (apps.core.throttling)."""

from apps.core.throttling import _LocalCounts


def test_a_window_counts_its_hits_and_reads_the_previous_window():
    counts = _LocalCounts()
    assert counts.hit("w:2", 60, "w:1") == (1, 0, None)
    assert counts.hit("w:2", 60, "w:1") == (2, 0, None)
    counts.uncount("w:2")  # a refused request is not counted
    assert counts.hit("w:3", 60, "w:2") == (1, 1, None)


def test_a_window_past_its_time_to_live_counts_from_zero():
    counts = _LocalCounts()
    assert counts.hit("w:1", 0, "w:0") == (1, 0, None)  # lives 0 s: gone at once
    assert counts.hit("w:1", 60, "w:0") == (1, 0, None)


def test_a_flood_of_keys_does_not_grow_memory_and_keeps_the_newest_counts():
    counts = _LocalCounts()
    counts.MAX_KEYS = 10
    for i in range(25):
        counts.hit(f"ident-{i}:1", 60, f"ident-{i}:0")
    assert len(counts._counts) <= 10
    assert counts.hit("ident-24:1", 60, "ident-24:0")[0] == 2  # the newest kept its count
