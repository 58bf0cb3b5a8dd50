"""Bad input to the command-line tools is a clear message and an exit code, never a
traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sosbeacon.device.cli import sosctl, sosd_command, write_export
from tests.conftest import REPO


def run(*args: str, stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        list(args), capture_output=True, text=True, cwd=REPO, timeout=60, check=False, stdin=stdin
    )


def sosctl_cmd(*args: str) -> list[str]:
    return [
        sys.executable,
        "-c",
        "from sosbeacon.device.cli import sosctl_main; sosctl_main()",
        *args,
    ]


def test_purge_without_a_terminal_is_a_no(tmp_path: Path) -> None:
    res = run(*sosctl_cmd("--data-dir", str(tmp_path), "purge"))
    assert res.returncode == 1 and "pass --yes" in res.stderr and "nothing deleted" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_export_to_a_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "a-file"
    target.write_text("x")

    async def answer(path: Path, req: dict[str, object]) -> dict[str, object]:
        return {"ok": True, "device": "d1", "box": "b", "records": []}

    monkeypatch.setattr("sosbeacon.device.cli.request", answer)
    assert sosctl(["--data-dir", str(tmp_path), "export", "--out", str(target)]) == 1
    err = capsys.readouterr().err
    assert f"cannot write the export to {target}" in err and "--out is a directory" in err


def test_an_export_with_no_route_left_removes_the_stale_gpx(tmp_path: Path) -> None:
    fix = {"t": "2026-01-01T00:00:00Z", "lat": 55.9, "lon": -3.1}
    record = {"kind": "fix", "session": "s1", "drill": False, "data": {"fix": fix}}
    write_export({"device": "d1", "records": [record]}, tmp_path)
    assert (tmp_path / "d1-routes.gpx").exists()
    said = write_export({"device": "d1", "records": []}, tmp_path)  # after a purge
    assert not (tmp_path / "d1-routes.gpx").exists() and "removed" in said
    assert json.loads((tmp_path / "d1-export.json").read_text())["records"] == []


@pytest.mark.parametrize("scale", ["0", "nan", "inf", "-2", "fast"])
def test_a_time_scale_that_cannot_be_is_refused(scale: str) -> None:
    res = run(*sosd_command("run", "--sim", "--time-scale", scale))
    assert res.returncode == 2 and "--time-scale" in res.stderr
    assert "Traceback" not in res.stderr


def test_a_data_dir_that_is_a_file_is_a_clear_error(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.write_text("not a directory")
    res = run(*sosd_command("run", "--sim", "--data-dir", str(data)))
    assert res.returncode == 1 and "is not a directory" in res.stderr
    assert "Traceback" not in res.stderr


def test_nmea_decode_of_a_directory_says_so(tmp_path: Path) -> None:
    res = run(sys.executable, "-m", "sosbeacon.sim.cli", "nmea", "decode", str(tmp_path))
    assert res.returncode == 1 and "a directory" in res.stderr and "no such file" not in res.stderr


def test_the_simulated_receiver_removes_its_link_on_sigterm(tmp_path: Path) -> None:
    link = tmp_path / "gps0"
    proc = subprocess.Popen(
        [sys.executable, "-m", "sosbeacon.sim.cli", "gps", "run", "--link", str(link)],
        cwd=REPO,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        assert "simulated GPS on" in proc.stderr.readline()  # the link exists from here
        assert link.is_symlink()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not link.is_symlink() and not link.exists()  # removed before it exited
