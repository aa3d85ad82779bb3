"""Issue 9's fault matrix: every money-moving operation (tests.protocol.operations) against every fault
sequence (tests.protocol.faults), over real HTTP against the sandbox and real PostgreSQL.

Each case starts the operation through the domain's public services with the faults armed, applies the rest
of the sequence, runs the sweepers until quiet (time moved, not slept), then checks: exactly one money
movement at the sandbox per intent; the ledger posting equal to the sandbox's amount on the right accounts,
with a clean ledger integrity report; no movement left open without a next look unless its staff alert is
open. A combination is skipped only when it cannot apply, with the reason.
"""

from __future__ import annotations

import pytest

from tests.protocol.faults import FAULT_SEQUENCES, FaultSequence
from tests.protocol.harness import Case, ProcessDied, check_outcome, sweep_until_quiet
from tests.protocol.operations import OPERATIONS, OperationRow

# webhooks are received in the test's thread (harness.deliver_webhooks); `make test-protocol` runs the matrix
pytestmark = [pytest.mark.django_db, pytest.mark.fault_matrix]

CASES = [
    pytest.param(row, sequence, id=f"{row.operation}--{sequence.name}")
    for row in OPERATIONS
    for sequence in FAULT_SEQUENCES
]


def test_the_tables_cover_every_operation_and_fault_of_issue_9():
    assert len(OPERATIONS) == 15 and len({row.operation for row in OPERATIONS}) == 15
    assert len(FAULT_SEQUENCES) == 13 and len({sequence.name for sequence in FAULT_SEQUENCES}) == 13
    assert len(CASES) >= 100
    assert not [row.missing() for row in OPERATIONS if row.missing()]


@pytest.mark.parametrize(("row", "sequence"), CASES)
def test_fault_matrix(row: OperationRow, sequence: FaultSequence, fast_sandbox, default_payment_config):
    if reason := sequence.not_applicable(row):
        pytest.skip(reason)
    case = Case(sandbox=fast_sandbox)

    try:
        row.start(case, armed=lambda: sequence.arm(case, row))
    except ProcessDied:
        pass  # the worker is gone; its claim and intent stay for the sweeper
    sequence.after(case, row)
    fast_sandbox.clear_faults()
    missed = sequence.took_effect(case, row)
    assert not missed, missed
    sweep_until_quiet(fast_sandbox, at_least=row.provider_rounds)

    problems = check_outcome(case, row.operation, row.sandbox_movements, row.ledger_expectation)
    assert not problems, "\n".join(problems)
