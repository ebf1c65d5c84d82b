"""The chaos soak's short run: 30 customers through the real machine while processes are
killed and the gateway misbehaves; the three records must reconcile with no violation."""

from __future__ import annotations

import io

import pytest

from bench.chaos import Config, soak
from tests.machine_helpers import need_redis_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.mark.timeout(300)
def test_thirty_customers_under_chaos_break_no_money_rule(tmp_path):
    need_redis_server()
    out = io.StringIO()
    report = soak(Config(purchases=30, seed=20261126), tmp_path, out)
    text = out.getvalue()
    assert report.violations == [], text
    assert sum(report.behaviours.values()) == 30, text
    assert sum(report.faults.values()) > 0, text  # chaos did happen
    assert "violations: 0" in text
