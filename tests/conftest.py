import os

# Simulate an 8-device mesh on CPU for every sharded test; must precede the jax import.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the plan tests' TPU compiler) takes a lock file per process; pytest -n 2 runs two.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
# The original's evaluation sets: $E1JAX_DATA_DIR when set (as e1jax.data.registry reads it), else the package's.
PACKAGED_E1_TEST = Path(__file__).resolve().parents[1] / "e1jax" / "data" / "e1_test"
E1_TEST_DATA = Path(os.environ["E1JAX_DATA_DIR"]).expanduser() if os.environ.get("E1JAX_DATA_DIR") \
    else PACKAGED_E1_TEST


@pytest.fixture(scope="session")
def e1_test_data() -> Path:
    """The original's evaluation sets ($E1JAX_DATA_DIR or the packaged copy); skip where absent."""
    if not E1_TEST_DATA.is_dir():
        pytest.skip(f"{E1_TEST_DATA} is not present")
    return E1_TEST_DATA
