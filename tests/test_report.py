"""Reports and terminal lines with remote text in them: each format escapes it (issue 11, classes 6 and 9)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from manifests_rewriter.errors import UsageError
from manifests_rewriter.files import FileError, printable, redact_url
from manifests_rewriter.model import Finding
from manifests_rewriter.scan import ScanResult
from mirror import report, terminal
from mirror.engines.base import CopyResult

CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x9b]")
HOSTILE = "denied\n\nssh-ed25519 AAAA planted\n\x1b]0;owned\x07| forged | row | [click](https://evil.example) <b>`x`</b>"
SECRET = "https://robot:S3cret-Passw0rd@mirror.example:8443/v2/"


def test_redact_url_hides_userinfo_up_to_the_last_at() -> None:
    assert redact_url(f"ping at {SECRET}: 403") == "ping at https://***@mirror.example:8443/v2/: 403"
    assert redact_url("git@github.com:org/x.git and me@example.com") == "git@github.com:org/x.git and me@example.com"
    assert redact_url("https://u:p@ss@host/x") == "https://***@host/x"
    assert printable(f"error: {SECRET}\n") == "error: https://***@mirror.example:8443/v2/\\n"


def _copies() -> list[dict]:
    failed = CopyResult("docker.io/library/nginx:1`|", "acr.example/nginx:1", error=f"{HOSTILE} {SECRET}",
                        platforms=["linux/amd64\n| x |"])
    return [failed.as_json(), CopyResult("a/b:1", "acr.example/a/b:1", status="copied").as_json()]


def test_markdown_report_keeps_remote_text_in_its_cell() -> None:
    remaining = [Finding(image="nginx:1`\n- x", reason=HOSTILE, file="k8s/[a](b).yaml", line=3)]
    text = report.markdown_summary(_copies(), [{"file": "x|`y`.yaml", "changes": [
        {"line": 1, "old": "a`b", "new": "c|d"}]}], remaining)
    print(text)
    assert not CONTROL.search(text)
    rows = [line for line in text.splitlines() if line.startswith("| ")]
    assert len(rows) == 3, rows  # the header and one row per image: no row of the registry's
    assert all(len(re.findall(r"(?<!\\)\|", row)) == 7 for row in rows[1:]), rows  # six cells each
    assert "ssh-ed25519" not in "".join(line[:12] for line in text.splitlines())  # no line of its own
    assert "[click](https" not in text and "<b>" not in text  # no link, no HTML
    assert "S3cret" not in text
    assert "``a`b``" in text and "`c|d`" in text  # code spans survive backticks; pipes escaped in cells only


def test_json_and_sarif_reports_hide_url_credentials_and_control_characters(tmp_path: Path) -> None:
    result = ScanResult(findings=[Finding(image="nginx:1", reason=f"{HOSTILE} {SECRET}", file="a.yaml", line=1)],
                        errors=[FileError("b.yaml", f"cannot read: {SECRET}")])
    for text in (report.scan_json(result), report.scan_sarif(result)):
        assert "S3cret" not in text
        json.loads(text)  # still JSON
    sarif = json.loads(report.scan_sarif(result))
    messages = [r["message"]["text"] for r in sarif["runs"][0]["results"]]
    assert messages and not any(CONTROL.search(m) or "\n" in m for m in messages)


@pytest.mark.parametrize("planted", ["link", "directory", "missing parent"])
def test_an_output_that_cannot_be_written_is_refused_before_the_run(planted: str, tmp_path: Path) -> None:
    victim = tmp_path / "authorized_keys"
    victim.write_text("keys\n")
    path = tmp_path / "report.json"
    if planted == "link":
        path.symlink_to(victim)
    elif planted == "directory":
        path.mkdir()
    else:
        path = tmp_path / "nowhere" / "report.json"
    with pytest.raises(UsageError, match=r"symbolic link|not a regular file|does not exist"):
        report.check_output(str(path))
    assert victim.read_text() == "keys\n"


def test_terminal_lines_and_log_records_are_escaped(capsys: pytest.CaptureFixture[str]) -> None:
    terminal.route_logging()
    terminal.route_logging()  # once only, however often the CLI starts
    logging.getLogger("mirror.registry.acr").warning("realm %s", f"\x1b[2K\rerror: forged {SECRET}")
    terminal.out(f"Deployment x/y: {HOSTILE}")
    terminal.err(f"failed: {HOSTILE}")
    out, err = capsys.readouterr()
    assert not CONTROL.search(out + err)
    assert len(out.splitlines()) == 1 and len(err.splitlines()) == 2, (out, err)
    assert err.startswith("warning: realm \\x1b[2K\\rerror: forged https://***@") and "S3cret" not in out + err
