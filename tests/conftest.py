"""pytest hooks for the suite: the Triton interpreter checks (kernel_checks.py) start in the background as soon as
the tests are collected, one subprocess per test file whose test_triton_interpreter_against_reference is selected,
and run beside the other tests; those tests are moved to the end of the run, where each waits for its subprocess."""

import kernel_checks

INTERP_TEST = "test_triton_interpreter_against_reference"


def pytest_collection_modifyitems(session, config, items):
    # the tests that wait for the background checks last (a stable order otherwise)
    items[:] = [i for i in items if i.name != INTERP_TEST] + [i for i in items if i.name == INTERP_TEST]


def pytest_collection_finish(session):
    # session.items is the final selection here (after -k, -m and deselection)
    for item in session.items:
        if item.name == INTERP_TEST:
            kernel_checks.start_interpreter_checks(str(item.path))


def pytest_sessionfinish(session, exitstatus):
    kernel_checks.stop_interpreter_checks()
