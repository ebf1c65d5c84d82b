"""services.sandbox_service: the SANDBOX service builds the sandbox from the settings, keeps
its ledger under VAR_DIR, and serves until SIGTERM.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import pytest
import requests

from cores.config import Settings
from services.sandbox_service import build
from tests.machine_helpers import ROOT, ChildOutput
from tests.sandbox_helpers import KEY, WAIT_S

# --------------------------------------------------------------------------------------------
# The SANDBOX service


def test_service_builds_the_sandbox_from_settings_with_its_ledger_under_var_dir(tmp_path):
    settings = Settings(
        sandbox_host="127.0.0.1",
        sandbox_port=0,
        midtrans_server_key=KEY,
        sandbox_notification_url="http://127.0.0.1:9/n",
        sandbox_faults={"LATENCY_MS": 7},
        var_dir=tmp_path,
    )
    sb = build(settings)
    assert sb.server_key == KEY
    assert sb.notification_urls == ["http://127.0.0.1:9/n"]
    assert sb.faults["LATENCY_MS"] == 7
    assert sb.directory == tmp_path / "sandbox"


@pytest.mark.integration
def test_service_process_serves_until_sigterm_then_stops_cleanly(tmp_path):
    script = (
        "import sys\n"
        "from pathlib import Path\n"
        "from cores.config import Settings\n"
        "from cores.logs import setup\n"
        "from services.sandbox_service import run\n"
        "setup('SANDBOX', 'vm-1')\n"
        "run(Settings(sandbox_port=0, var_dir=Path(sys.argv[1])))\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with subprocess.Popen(
        [sys.executable, "-c", script, str(tmp_path)],
        cwd=ROOT,
        env=env,
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        text=True,
    ) as proc:
        assert proc.stderr is not None
        output = ChildOutput(proc.stderr)
        try:
            ready = output.wait_for('msg="sandbox ready"', timeout_s=20)
            found = re.search(r" url=(http://\S+)", ready)
            assert found, ready
            url = found.group(1)
            with requests.Session() as s:
                assert s.get(url + "/simulator/faults", timeout=10).status_code == 200
                charge = {
                    "payment_type": "qris",
                    "transaction_details": {"order_id": "vm-1-svc", "gross_amount": 7000},
                }
                r = s.post(url + "/v2/charge", json=charge, auth=(KEY, ""), timeout=10)
                assert r.json()["status_code"] == "201"
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        text = output.text(wait_s=WAIT_S)
    assert "ANY key" in text
    assert 'msg="sandbox stopped"' in text
    assert "Traceback" not in text
    journal = (tmp_path / "sandbox" / "ledger.jsonl").read_text()
    assert '"order_id":"vm-1-svc"' in journal
