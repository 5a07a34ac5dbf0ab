import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

import fluid  # noqa: E402,F401  (sets MKL's strict mode on Intel CPUs before any test multiplies)

# One thread per test process under xdist (its workers already fill the cores; two threads
# each oversubscribe a 2-core machine and make timings swing), two otherwise.
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def minilm():
    """The real offline text encoder, cached per caption (loaded once per session)."""
    from fluid.text.cache import CachedTextEncoder
    from fluid.text.encoders import MiniLMEncoder

    return CachedTextEncoder(MiniLMEncoder(max_length=32))


@pytest.fixture
def one_thread():
    # Bit-identical images across batch sizes hold on one CPU thread (fluid sample's default):
    # with more, the matrix libraries split their work by the batch's size.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def float64():
    """Sampling from an untrained head amplifies rounding by up to 1/sqrt(alpha-bar_T) ~ 1e4:
    exact-comparison tests run in float64 so that only real differences show."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
