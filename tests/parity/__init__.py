"""What the test files of related families share: one trajectory, parity case lists, NumPy helpers.

Each module is named after the families that use it (``radam_adabelief_yogi.py`` serves
tests/test_radam.py, test_adabelief.py and test_yogi.py), which run on the same gradients so that
their tolerances stay comparable. A case list shared here is split by family with
`tests.helpers.cases_of`. The tests themselves are in tests/test_<family>.py.
"""
