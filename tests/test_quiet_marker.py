"""The ``quiet`` marker (tests/conftest.py): a test that needs a quiet machine is run a
second time when its first run fails, and fails only if the second run fails too."""

from __future__ import annotations

from pathlib import Path

pytest_plugins = ["pytester"]

CONFTEST = (Path(__file__).parent / "conftest.py").read_text()


def test_a_quiet_test_that_fails_once_passes_and_one_that_fails_twice_fails(pytester):
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(
        """
        import pytest

        runs = {"flaky": 0, "broken": 0, "plain": 0}

        @pytest.mark.quiet
        def test_flaky():
            runs["flaky"] += 1
            assert runs["flaky"] == 2

        @pytest.mark.quiet
        def test_broken():
            runs["broken"] += 1
            assert False, f"run {runs['broken']}"

        def test_plain_fails_once():
            runs["plain"] += 1
            assert runs["plain"] == 2

        def test_counts():
            assert runs == {"flaky": 2, "broken": 2, "plain": 1}
        """
    )
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    # the second run is the one reported, the first shown beside it
    result.stdout.fnmatch_lines(["*AssertionError: run 2*", "*quiet: first try*",
                                 "*AssertionError: run 1*"])
