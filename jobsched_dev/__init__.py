"""Development tooling that works only from a source checkout: the benchmark harness
(``jobsched bench``), the local multi-process deployment (``jobsched dev cluster``) and
what the end-to-end and chaos tests drive (role processes, an HTTP API client).

Not part of the installed distribution: ``pip install .`` and the image ship ``jobsched``
alone. ``jobsched.cli`` adds the ``bench`` and ``dev`` commands when this package can be
imported, i.e. from a checkout installed with ``pip install -e '.[dev]'``.
"""

from pathlib import Path

#: The checkout this package belongs to (scripts/zookeeper.sh, the ``jobsched`` sources).
SOURCE_ROOT = Path(__file__).resolve().parent.parent
