"""No secret is ever printed: the daemon runs with known secrets (a broker password in
the URL, in ``password`` and in ``password_file``) through start, an SOS, reloads good
and broken, ``check-config`` and ``sosctl``; every line any of them wrote is searched
for the secrets. (A whole demo run with every kind of secret is scanned in
``tests/test_demo.py``.)"""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

from sosbeacon.device.cli import sosd_command
from sosbeacon.device.control import request
from sosbeacon.sim.sosd_process import start_sosd, stop_sosd
from tests.conftest import REPO
from tests.test_daemon import broker_and_contact

SECRETS = ("Url-S3cret-9f2", "Field-S3cret-4c1", "File-S3cret-77a")


def config(data: Path, port: int, password_file: Path, *, field: bool = True) -> str:
    return f"""
[device]
id = "t1"
data_dir = "{data}"
[[sos.contacts]]
name = "Alice"
[mqtt]
broker = "mqtt://dev:{SECRETS[0]}@127.0.0.1:{port}"
{f'password = "{SECRETS[1]}"' if field else f'password_file = "{password_file}"'}
"""


def leaked(*texts: str) -> list[str]:
    return [s for s in SECRETS if any(s in t for t in texts)]


async def test_no_secret_in_logs_errors_status_or_check_config(tmp_path: Path) -> None:
    pw = tmp_path / "password"
    pw.write_text(SECRETS[2] + "\n")
    pw.chmod(0o600)
    conf = tmp_path / "sosbeacon.toml"
    async with broker_and_contact(tmp_path) as (broker, rx):
        data = tmp_path / "data"
        conf.write_text(config(data, broker.port, pw))
        out: list[str] = []
        log = tmp_path / "sosd.log"
        proc = await start_sosd(conf, data / "sosd.sock", log)
        sock = data / "sosd.sock"
        try:
            assert (await request(sock, {"cmd": "sos-start", "now": True}))["ok"]
            await rx.wait_until(lambda: any(r.kind == "sos-start" for r in rx.records))
            out.append(str(await request(sock, {"cmd": "status"})))
            # a good reload (the password now from its file), then broken ones
            conf.write_text(config(data, broker.port, pw, field=False))
            proc.send_signal(signal.SIGHUP)
            good = conf.read_text()
            for broken in (
                good.encode().replace(b"[device]", b"[device]\n# caf\xe9"),  # not UTF-8
                (good + "\n[mqtt]\nbroker = 5\n").encode(),  # not TOML (a table twice)
                good.replace('id = "t1"', "id = 7").encode(),  # a wrong type
            ):
                conf.write_bytes(broken)
                proc.send_signal(signal.SIGHUP)
                out.append(str(await request(sock, {"cmd": "status"})))
            conf.write_text(good)
            assert (await request(sock, {"cmd": "sos-stop"}))["ok"]
            out.append(str(await request(sock, {"cmd": "export"})))
        finally:
            await stop_sosd(proc)
        text = log.read_text()
        assert "configuration NOT reloaded" in text  # the broken reloads were reported
    for args in (["check-config", "--config", str(conf)], ["run", "--config", str(conf)]):
        conf.write_text(config(tmp_path / "data", 1, pw) + "\n[uplink]\nbatch_count = 0\n")
        res = sosd_process(*args)
        assert res.returncode == 2 and "uplink.batch_count" in res.stderr
        out += [res.stdout, res.stderr]
    conf.write_text(config(tmp_path / "data", 1, pw))
    res = sosd_process("check-config", "--config", str(conf))
    assert res.returncode == 0 and "mqtt://dev:***@127.0.0.1:1" in res.stdout
    out += [res.stdout, res.stderr]
    assert leaked(text, *out) == []


def sosd_process(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        sosd_command(*args), capture_output=True, text=True, cwd=REPO, timeout=60, check=False
    )
