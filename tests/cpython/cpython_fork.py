"""CPython's multiprocessing suite under plain ``fork``: the baseline for ``cpython_cowfork``."""

import sys
import unittest

import test._test_multiprocessing as suite

suite.install_tests_in_module_dict(globals(), "fork")

if __name__ == "__main__":
    unittest.main(argv=sys.argv)
