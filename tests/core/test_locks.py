import threading
from datetime import timedelta

import pytest
from django.contrib.auth.models import Permission
from django.db import connections
from django.utils import timezone

from core.errors import PermissionDenied, ResourceLocked
from core.locks import lock_acquire, lock_release_by_staff, processing_lock
from core.models import AuditLog, ProcessingLock


@pytest.mark.django_db
def test_a_held_lock_refuses_others_with_holder_and_expiry():
    with processing_lock(key="cycle:1", holder="alice", reason="preparing"):
        with pytest.raises(ResourceLocked) as error:
            lock_acquire(key="cycle:1", holder="bob")
        assert error.value.http_status == 423
        assert error.value.details["holder"] == "alice"
        assert "preparing" in error.value.user_message
        assert error.value.details["expires_at"] == ProcessingLock.objects.get().expires_at.isoformat()
    assert not ProcessingLock.objects.exists()  # given back on exit
    lock_acquire(key="cycle:1", holder="bob")


@pytest.mark.django_db
def test_an_expired_lease_is_free():
    lock_acquire(key="cycle:2", holder="crashed-worker")
    ProcessingLock.objects.update(expires_at=timezone.now() - timedelta(seconds=1))
    assert lock_acquire(key="cycle:2", holder="alice").holder == "alice"


@pytest.mark.django_db
def test_staff_with_permission_release_a_lock_audited(django_user_model, admin_client):
    lock = lock_acquire(key="cycle:3", holder="gone")
    staff = django_user_model.objects.create_user("ops", is_staff=True)
    with pytest.raises(PermissionDenied):
        lock_release_by_staff(lock_pk=lock.pk, actor=staff)
    staff.user_permissions.add(Permission.objects.get(codename="release_processinglock"))
    lock_release_by_staff(lock_pk=lock.pk, actor=django_user_model.objects.get(pk=staff.pk))
    assert not ProcessingLock.objects.exists()
    assert AuditLog.objects.get(action="core.lock.release").before == {"holder": "gone", "key": "cycle:3"}
    assert admin_client.get("/admin/core/processinglock/").status_code == 200


@pytest.mark.django_db(transaction=True)
def test_only_one_of_many_concurrent_callers_gets_the_lock():
    if connections["default"].vendor != "postgresql":
        pytest.skip("concurrency is tested on PostgreSQL")
    winners, barrier = [], threading.Barrier(10)

    def contend(n: int) -> None:
        barrier.wait()
        try:
            lock_acquire(key="cycle:4", holder=f"worker-{n}")
            winners.append(n)
        except ResourceLocked:
            pass
        finally:
            connections.close_all()

    threads = [threading.Thread(target=contend, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(winners) == 1
    assert ProcessingLock.objects.get().holder == f"worker-{winners[0]}"
