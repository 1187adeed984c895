"""The collector pacing: young garbage after each refresh, old cycles now and then."""

from __future__ import annotations

import gc
import weakref

from pitstop.tui.collector import Collector


class Cycle:
    def __init__(self) -> None:
        self.me = self


def test_survivors_are_frozen_and_a_full_collection_comes_when_due():
    collector = Collector(full_every_s=3600)
    try:
        gc.unfreeze()
        young = Cycle()
        young_ref = weakref.ref(young)
        del young
        collector.settle()
        assert young_ref() is None  # young cyclic garbage went before the freeze
        assert gc.get_freeze_count() > 0 and collector.full_collections == 0
        old = Cycle()
        old_ref = weakref.ref(old)
        collector.settle()  # `old` survived a refresh: frozen, out of the collector's walks
        del old
        gc.collect()
        assert old_ref() is not None
        collector.full_every_s = 0
        collector.settle()
        assert old_ref() is None and collector.full_collections == 1
    finally:
        gc.unfreeze()
