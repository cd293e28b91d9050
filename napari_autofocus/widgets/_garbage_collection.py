"""Python's full garbage collections, kept out of the GUI thread's long steps.

In a process holding napari, Qt, vispy and torch (about half a million objects the collector
tracks) a full collection takes 0.1-0.2 s on a 2-core CPU. Python starts one on its own whenever
enough objects have survived younger collections, and adding a napari layer (about 8,000 new
objects, 0.05-0.1 s of its own) regularly tips it over: the two pauses add up to more than the
0.2 s a user notices. So before adding layers the plugin asks whether Python could start a full
collection meanwhile and, if so, runs one itself in a turn of the event loop of its own.
"""

from __future__ import annotations

import gc

# A full collection is only possible once more than threshold[2] generation-1 collections have
# run since the last one; a napari layer's ~8,000 objects cause about one (700 x 10 allocations
# each). Two per layer leaves a margin for what else the event loop allocates meanwhile.
GEN1_COLLECTIONS_PER_LAYER = 2


def full_collection_possible(new_layers: int = 1) -> bool:
    """Whether Python could start a full collection while ``new_layers`` napari layers are added."""
    if not gc.isenabled():
        return False
    since_last_full = gc.get_count()[2]
    return since_last_full + GEN1_COLLECTIONS_PER_LAYER * new_layers > gc.get_threshold()[2]


def collect_now() -> None:
    """The full collection, on the GUI thread (finalizers of Qt and vispy objects must run there),
    in a turn of the event loop that does nothing else."""
    gc.collect()
