"""Beam search's repeat blocking: the vectorized `_block_repeats` against the per-beam Python loop it replaced
(read from git history, commit 89d980a), side by side in one run, on the shapes bulk captioning decodes.

For each shape (studies x beams x caption length, vocabulary), both functions get the same random sequences
(drawn from a small set of tokens, so there are repeats to find) and the same log-probabilities; the script
checks that they ban the same tokens and prints the time per call of each and the ratio.

    python benchmarks/repeat_blocking.py
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "89d980a"  # the last commit with the per-beam loop


def loop_version():
    source = subprocess.run(
        ["git", "show", f"{BEFORE}:models/decoding.py"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    namespace: dict = {}
    exec(compile(source, f"{BEFORE}:models/decoding.py", "exec"), namespace)
    return namespace["_block_repeats"]


def timed(fn, logp, sequences, n, finished, repeats: int) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        fn(logp.copy(), sequences, n, finished)
    return (time.perf_counter() - started) / repeats


def main() -> None:
    from radcap.models.decoding import _block_repeats

    before = loop_version()
    rng = np.random.default_rng(0)
    print("studies x beams x length, vocab | loop ms | vectorized ms | speed-up")
    for batch, width, length, vocab in ((8, 3, 10, 1000), (32, 3, 30, 1000), (32, 10, 30, 1000), (32, 10, 60, 1000)):
        sequences = rng.integers(1, 40, (batch, width, length))
        finished = rng.random((batch, width)) < 0.2
        logp = rng.standard_normal((batch, width, vocab))
        a, b = logp.copy(), logp.copy()
        before(a, sequences, 3, finished)
        _block_repeats(b, sequences, 3, finished)
        assert np.array_equal(np.isinf(a), np.isinf(b)), "the two ban different tokens"
        slow = timed(before, logp, sequences, 3, finished, 20)
        fast = timed(_block_repeats, logp, sequences, 3, finished, 20)
        print(f"{batch} x {width} x {length}, {vocab} | {slow * 1e3:.2f} | {fast * 1e3:.2f} | {slow / fast:.1f}x")


if __name__ == "__main__":
    main()
