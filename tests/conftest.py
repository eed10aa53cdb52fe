"""Shared pytest setup. Area fixtures live in tests/<area>/conftest.py."""

import os

# Tests run on 2 shared cores: keep BLAS/torch from oversubscribing them.
os.environ.setdefault("OMP_NUM_THREADS", "2")
