"""Run the acr-mirror console script as a child process and measure it: exit code, output, peak RSS.

The child's peak resident memory comes from the kernel (``ru_maxrss`` of ``wait4``); while it runs,
``/proc/PID/status`` (VmHWM) is watched so that a child going past ``rss_limit_mib`` is killed at
once instead of taking the machine's memory, and one running past ``timeout`` (a hang guard, never
a performance assertion) is killed too.  Either kill is reported in ``killed``.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def command() -> list[str]:
    """The installed console script next to this Python, else the module."""
    script = Path(sys.executable).with_name("acr-mirror")
    return [str(script)] if script.exists() else [sys.executable, "-m", "mirror.cli"]


def clean_env(extra: Mapping[str, str] | None = None, *, home: Path | None = None) -> dict[str, str]:
    """The environment without any credential or Docker/Azure setting of the user running the tests."""
    drop = ("ACR_MIRROR_", "DOCKER_", "AZURE_", "IDENTITY_", "MSI_", "KUBECONFIG", "GIT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "manifests-rewriter")])
    if home is not None:
        env["HOME"] = str(home)
        env["DOCKER_CONFIG"] = str(home / ".docker")
    env.update(extra or {})
    return env


@dataclass
class Proc:
    returncode: int
    stdout: str
    stderr: str
    peak_rss_mib: float
    killed: str | None = None  # why the watchdog killed it: "rss" or "timeout"

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def _vm_hwm_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_cli(args: Sequence[str], *, env: Mapping[str, str], timeout: float = 120.0,
            rss_limit_mib: float | None = None, cwd: Path | None = None) -> Proc:
    """Run `acr-mirror ARGS...`; kill it past `rss_limit_mib` of peak RSS or after `timeout` seconds."""
    proc = subprocess.Popen([*command(), *args], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=dict(env), cwd=cwd, start_new_session=True)
    out: dict[str, bytes] = {}

    def drain(name: str) -> None:
        stream = getattr(proc, name)
        out[name] = stream.read()
        stream.close()

    readers = [threading.Thread(target=drain, args=(n,), daemon=True) for n in ("stdout", "stderr")]
    for reader in readers:
        reader.start()
    deadline = time.monotonic() + timeout
    killed = None
    peak_kib = 0
    status = 0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            peak_kib = max(peak_kib, usage.ru_maxrss)
            break
        peak_kib = max(peak_kib, _vm_hwm_kib(proc.pid))
        if killed is None and rss_limit_mib is not None and peak_kib > rss_limit_mib * 1024:
            killed = "rss"
        elif killed is None and time.monotonic() > deadline:
            killed = "timeout"
        if killed is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    for reader in readers:
        reader.join(timeout=30)
    return Proc(proc.returncode, out.get("stdout", b"").decode(errors="replace"),
                out.get("stderr", b"").decode(errors="replace"), peak_kib / 1024, killed)
