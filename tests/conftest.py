"""Test-wide settings.

Hypothesis: CI (``.ci/run`` sets ``HYPOTHESIS_PROFILE=ci``) runs the same examples on every
run, so a red CI is reproducible and never a coin toss; developers get fresh random examples
each run (the default profile) and hypothesis's database replays any failure it found.
"""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
