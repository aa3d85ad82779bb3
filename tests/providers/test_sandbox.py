"""The sandbox's own machinery: routes over real HTTP, faults, control API, webhook delivery."""

import re
import time

import httpx
import pytest

from providers.sandbox.server import Fault, Sandbox, SandboxRequest, SandboxResponse

APPLIED: list[str] = []
RECEIVED: list[tuple[bytes, str]] = []


def install_test_routes(sandbox: Sandbox) -> None:
    if any(route.operation == "test.apply" for route in sandbox.routes):
        return

    @sandbox.route("POST", "/test/apply", "test.apply")
    def apply(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        APPLIED.append(request.json()["id"])
        return SandboxResponse(200, {"applied": request.json()["id"]})

    @sandbox.route("POST", "/test/receive", "test.receive")
    def receive(request: SandboxRequest, match: re.Match[str]) -> SandboxResponse:
        RECEIVED.append((request.body, request.header("x-signature")))
        return SandboxResponse(200, {})


@pytest.fixture
def box(sandbox: Sandbox) -> Sandbox:
    install_test_routes(sandbox)
    APPLIED.clear()
    RECEIVED.clear()
    return sandbox


def post(box: Sandbox, payload: dict, timeout: float = 1.0) -> httpx.Response:
    return httpx.post(f"{box.url}/test/apply", json=payload, timeout=timeout)


def test_routes_answer_over_http_and_calls_are_counted(box):
    assert post(box, {"id": "a"}).json() == {"applied": "a"}
    assert httpx.get(f"{box.url}/_control/calls").json() == {"test.apply": 1}
    assert httpx.get(f"{box.url}/nowhere").status_code == 404


def test_error_fault_answers_without_applying(box):
    httpx.post(f"{box.url}/_control/faults", json={"operation": "test.*", "kind": "error", "status": 502})
    assert post(box, {"id": "a"}).status_code == 502
    assert post(box, {"id": "b"}).status_code == 200  # times=1 by default
    assert APPLIED == ["b"]


def test_timeout_and_reset_do_not_apply(box):
    box.add_fault(Fault(operation="test.apply", kind="timeout"))
    with pytest.raises(httpx.ReadTimeout):
        post(box, {"id": "a"}, timeout=0.3)
    box.add_fault(Fault(operation="test.apply", kind="reset"))
    with pytest.raises(httpx.RemoteProtocolError):
        post(box, {"id": "b"})
    assert APPLIED == []


def test_applied_then_timeout_applies_but_the_caller_times_out(box):
    box.add_fault(Fault(operation="test.apply", kind="applied_then_timeout"))
    with pytest.raises(httpx.ReadTimeout):
        post(box, {"id": "a"}, timeout=0.3)
    assert APPLIED == ["a"]


def test_latency_fault_delays(box):
    box.add_fault(Fault(operation="test.apply", kind="latency", latency_ms=300, times=None))
    started = time.monotonic()
    post(box, {"id": "a"})
    assert time.monotonic() - started >= 0.3


def test_unknown_fault_kind_is_refused_by_the_control_api(box):
    response = httpx.post(f"{box.url}/_control/faults", json={"operation": "*", "kind": "explode"})
    assert response.status_code == 400
    assert box.faults == []


def deliver(box: Sandbox, count: int) -> list[bytes]:
    for n in range(count):
        box.webhooks.send("test", f"event-{n}".encode(), {"X-Signature": f"sig-{n}"})
    box.webhooks.wait_idle()
    return [body for body, _ in RECEIVED]


def test_webhooks_are_delivered_with_their_headers(box):
    box.webhooks.configure("test", url=f"{box.url}/test/receive")
    assert sorted(deliver(box, 2)) == [b"event-0", b"event-1"]  # in parallel: in any order
    assert sorted(RECEIVED) == [(b"event-0", "sig-0"), (b"event-1", "sig-1")]


def test_webhooks_can_be_dropped_duplicated_and_reordered(box):
    box.webhooks.configure("test", url=f"{box.url}/test/receive", drop=1, duplicate=1)
    assert sorted(deliver(box, 3)) == [b"event-1", b"event-1", b"event-2"]
    RECEIVED.clear()
    box.webhooks.configure("test", url=f"{box.url}/test/receive", reorder=3)
    assert deliver(box, 3) == [b"event-2", b"event-1", b"event-0"]


def test_reset_forgets_faults_and_calls(box):
    post(box, {"id": "a"})
    box.add_fault(Fault(operation="*", kind="error", times=None))
    box.reset()
    assert box.calls == {} and box.faults == []
