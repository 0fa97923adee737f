"""Shared test set-up: quiet TensorFlow, small helpers."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

# XLA compiles the tests' programs (and those of the scripts they start, which
# inherit the environment) without LLVM's optimisation passes: the tests
# compile hundreds of small programs and run each for a few steps, so the
# optimiser's time is much of what XLA costs them (the suite took ~15% less
# time). The code is then not bit-for-bit what users run: float rounding
# differs (the default run ends on test ELBO -118.20 at level 0, -118.31 at
# the default level), and no test depends on those digits. To run the suite
# as users compile, set the level yourself:
#   XLA_FLAGS=--xla_backend_optimization_level=3 python -m pytest -n 2 tests
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = " ".join(
        f for f in (os.environ.get("XLA_FLAGS"), "--xla_backend_optimization_level=0") if f)
