import os
import sys
import tempfile

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

# Real ACDC sample shipped beside the repository (../shared/data/ACDC); tests using it skip without it.
SHARED_ACDC = os.path.join(os.path.dirname(ROOT), "shared", "data", "ACDC")

# The data check's cache (dataset/check.py) goes to a fresh folder per test session, not ~/.cache.
os.environ.setdefault("SSS_CACHE_DIR", tempfile.mkdtemp(prefix="sss-test-cache-"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def shared_acdc():
    if not os.path.isdir(SHARED_ACDC):
        pytest.skip(f"real ACDC sample not found at {SHARED_ACDC}")
    return SHARED_ACDC
