"""``python -m tests.fuzz.fuzz TARGET [libFuzzer args] [corpus folders]``: a target of atheris_targets.py.

Coverage feedback comes from timecoin's own modules and the targets only: instrumenting everything loaded
(Twisted included) took 30 s per start and guided towards nothing of ours."""
from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports(include=["timecoin", "tests.fuzz.atheris_targets"]):
    from tests.fuzz.atheris_targets import main

if __name__ == "__main__":
    main(sys.argv)
