"""pytest plugin of the conformance kit: the ``--hal-conformance-seed`` option and where the seed is printed.

    pytest --hal-conformance-seed=1234 tests/drivers/test_memristor.py

The kit draws its operands (and reseeds noisy devices) from one seed per pytest session. Without the
option the seed is drawn at random, so every run tries new inputs; it is printed in the session header,
in the terminal summary and in every conformance failure, so a failing run can be repeated exactly.
"""

from __future__ import annotations

import random

import pytest

OPTION = "--hal-conformance-seed"
SEED_KEY = pytest.StashKey[int]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.getgroup("hal", "hal device conformance").addoption(
        OPTION,
        dest="hal_conformance_seed",
        type=int,
        default=None,
        metavar="SEED",
        help="seed of the conformance kit's random operands and device noise (default: drawn at random and printed)",
    )


def session_seed(config: pytest.Config) -> int:
    """This session's conformance seed: the option's value, else one drawn at random on first use.

    Works without this plugin loaded too (the option then reads as absent), so the kit always has a seed.
    """
    if SEED_KEY not in config.stash:
        given = config.getoption("hal_conformance_seed", default=None)
        config.stash[SEED_KEY] = given if given is not None else random.SystemRandom().randrange(2**31)
    return config.stash[SEED_KEY]


def rerun_hint(seed: int) -> str:
    """The sentence every conformance failure ends with."""
    return f"conformance seed {seed}: rerun with {OPTION}={seed}"


def pytest_report_header(config: pytest.Config) -> str:
    return f"hal {rerun_hint(session_seed(config))}"


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config) -> None:
    """Repeat the seed after the results (the header is hidden under ``-q``)."""
    terminalreporter.write_line(f"hal {rerun_hint(session_seed(config))}")
