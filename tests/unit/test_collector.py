"""The garbage collector's tuning once a role has started (jobsched/memory.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from tests.helpers import ROOT

TUNED = textwrap.dedent("""
    import gc, json, weakref
    from jobsched.memory import tune_collector

    class Node:
        pass

    before = gc.get_threshold()
    tune_collector(12345)
    frozen = gc.get_freeze_count()
    # a reference cycle made afterwards is still collected
    node = Node()
    node.me = node
    gone = []
    weakref.finalize(node, gone.append, True)
    del node
    gc.collect()
    print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                      "collected": gone == [True]}))
""")


def test_tuning_freezes_the_start_and_raises_the_young_threshold_only() -> None:
    done = subprocess.run([sys.executable, "-c", TUNED], cwd=ROOT, capture_output=True,
                          text=True, timeout=60, check=True)
    seen = json.loads(done.stdout)
    assert seen["after"] == [12345, *seen["before"][1:]]  # the older generations as they were
    assert seen["frozen"] > 1000  # the imports' objects, out of every later pass
    assert seen["collected"] is True
