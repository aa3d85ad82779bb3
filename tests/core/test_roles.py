import pytest
from django.contrib.auth.models import Group

from core.roles import ROLES, roles_sync


@pytest.mark.django_db
def test_finance_roles_exist_with_exactly_their_permissions():
    roles_sync()
    for name, wanted in ROLES.items():
        group = Group.objects.get(name=name)
        granted = {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}
        assert granted == set(wanted), name  # every named permission exists
    operator = set(ROLES["Finance operator"])
    approver = set(ROLES["Finance approver"])
    assert "payouts.approve_payoutbatch" not in operator  # maker-checker: operators cannot approve
    assert "payouts.prepare_payoutbatch" not in approver
