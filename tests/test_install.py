"""deploy/install.sh and deploy/uninstall.sh: a dry run's plan for each mode, refused input,
and a real install into a staging root (files only: no packages, users or services), run
twice (idempotent, .env kept), then uninstalled."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from tests.machine_helpers import ROOT

INSTALL = ROOT / "deploy" / "install.sh"
UNINSTALL = ROOT / "deploy" / "uninstall.sh"
AGENT = ["--mode", "machine", "--machine-id", "vm-7", "--backend-url", "wss://b.example/agent"]


def run(script: Path, *args: str, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(script), *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def plan(*args: str) -> list[str]:
    done = run(INSTALL, "--dry-run", *args)
    assert done.returncode == 0, done.stderr
    return [line.removeprefix("would: ") for line in done.stdout.splitlines()]


def test_a_whole_machine_s_plan_has_redis_chromium_its_user_and_the_up_unit():
    steps = plan()
    apt = next(s for s in steps if "apt-get install" in s)
    assert "redis-server" in apt and "chromium" in apt and "xinit" in apt
    assert any(s.startswith(("useradd --system", "install.sh: user vending exists")) for s in steps)
    assert "write /etc/systemd/system/drink-machine.service (mode 644)" in steps
    assert "systemctl enable drink-machine kiosk-browser" in steps
    assert "systemctl restart drink-machine kiosk-browser" in steps  # new code runs now
    assert "write /etc/X11/Xwrapper.config (mode 644)" in steps
    assert not any("drink-machine-agent" in s for s in steps)


def test_an_agent_s_plan_has_no_redis_its_groups_and_never_shows_the_token():
    """Fleet mode's agent: no Redis package, the agent's unit, the serial board's dialout
    group; the token, given on stdin, appears nowhere in what the script prints."""
    done = run(
        INSTALL,
        "--dry-run",
        *AGENT,
        "--token",
        "-",
        "--dispenser",
        "serial",
        "--port",
        "/dev/ttyUSB0",
        stdin="s3cret-token\n",
    )
    assert done.returncode == 0, done.stderr
    steps = done.stdout.splitlines()
    assert not any("redis-server" in s for s in steps)
    assert "would: usermod -a -G dialout vending" in steps
    assert "would: systemctl enable drink-machine-agent kiosk-browser" in steps
    assert "s3cret-token" not in done.stdout + done.stderr
    gpio = plan(*AGENT, "--token", "t", "--dispenser", "gpio", "--relay-pins", "1:17", "--no-kiosk")
    assert any("-G gpio" in s or "no group gpio" in s for s in gpio)
    assert not any("chromium" in s or "kiosk-browser" in s for s in gpio)


@pytest.mark.parametrize(
    "args, said",
    [
        (["--mode", "machine"], "--backend-url"),
        ([*AGENT], "--token"),
        (["--dispenser", "serial"], "--port"),
        (["--dispenser", "gpio"], "--relay-pins"),
        (["--dispenser", "gpio", "--relay-pins", "17"], "--relay-pins"),
        (["--prefix", "opt/dm"], "absolute"),
        (["--mode", "kiosk"], "--mode is up or machine"),
        (["--machine-id", "vm 7"], "--machine-id"),
        (["--frobnicate"], "unknown option"),
    ],
)
def test_bad_input_is_refused_with_a_message_and_changes_nothing(args, said, tmp_path):
    done = run(INSTALL, "--root", str(tmp_path / "root"), *args)
    assert done.returncode == 2 and said in done.stderr
    assert not (tmp_path / "root").exists()


@pytest.mark.slow
def test_a_staging_install_is_whole_idempotent_and_uninstalls(tmp_path):
    """Into a staging root with another folder and user: the code and a venv, .env (mode 600)
    with the agent's settings, the units with that user and folder. Run again: the operator's
    edit of .env is kept and the units are the same. uninstall.sh removes units and code and
    keeps the data and .env; --purge removes those too."""
    root = tmp_path / "root"
    args = ["--root", str(root), "--prefix", "/srv/dm", "--user", "kiosk", *AGENT, "--token", "-"]
    first = run(INSTALL, *args, stdin="s3cret-token\n")
    assert first.returncode == 0, first.stderr
    dest = root / "srv" / "dm"
    assert (dest / "main.py").exists() and (dest / ".venv" / "bin" / "python").exists()
    assert not (dest / ".git").exists()
    env = dest / ".env"
    assert stat.S_IMODE(env.stat().st_mode) == 0o600
    text = env.read_text()
    assert "BACKEND_URL=wss://b.example/agent" in text and "MACHINE_TOKEN=s3cret-token" in text
    assert "VENDING_MACHINE_ID=vm-7" in text and "VAR_DIR=/srv/dm/var" in text
    unit = (root / "etc" / "systemd" / "system" / "drink-machine-agent.service").read_text()
    assert "User=kiosk" in unit and "ExecStart=/srv/dm/.venv/bin/python main.py machine" in unit
    kiosk = (root / "etc" / "systemd" / "system" / "kiosk-browser.service").read_text()
    assert "/srv/dm/deploy/kiosk-session.sh" in kiosk and "-nocursor" in kiosk
    assert "s3cret-token" not in first.stdout + first.stderr

    env.write_text(text + "MIDTRANS_TIMEOUT_S=5\n")
    (dest / "var").mkdir()
    (dest / "var" / "vends.jsonl").write_text("{}\n")
    second = run(INSTALL, *args, stdin="other-token\n")
    assert second.returncode == 0, second.stderr
    assert "MIDTRANS_TIMEOUT_S=5" in env.read_text() and "other-token" not in env.read_text()
    assert (root / "etc" / "systemd" / "system" / "drink-machine-agent.service").read_text() == unit

    removed = run(UNINSTALL, "--root", str(root), "--prefix", "/srv/dm")
    assert removed.returncode == 0, removed.stderr
    assert not list((root / "etc" / "systemd" / "system").iterdir())
    assert sorted(os.listdir(dest)) == [".drink-machine-install", ".env", "var"]
    again = run(INSTALL, *args, stdin="other-token\n")  # a reinstall over the kept data
    assert again.returncode == 0, again.stderr
    assert "MIDTRANS_TIMEOUT_S=5" in env.read_text()
    assert run(UNINSTALL, "--root", str(root), "--prefix", "/srv/dm", "--purge").returncode == 0
    assert not dest.exists()


def test_it_never_replaces_its_own_source_or_a_folder_it_did_not_make(tmp_path):
    """Run from the installed copy, the source is the target: refused. A --prefix that holds
    someone else's files (say /opt itself) is refused. Nothing is deleted either way."""
    root = tmp_path / "root"
    foreign = root / "opt"
    foreign.mkdir(parents=True)
    (foreign / "other-app").write_text("keep me")
    done = run(INSTALL, "--root", str(root), "--prefix", "/opt")
    assert done.returncode == 2 and "did not install" in done.stderr
    assert (foreign / "other-app").read_text() == "keep me"
    copy = tmp_path / "copy"
    shutil.copytree(ROOT / "deploy", copy / "deploy")
    (copy / "main.py").write_text("# the installed copy\n")
    itself = run(copy / "deploy" / "install.sh", "--root", "/", "--prefix", str(copy))
    assert itself.returncode == 2 and "the source is" in itself.stderr
    assert (copy / "main.py").exists()
