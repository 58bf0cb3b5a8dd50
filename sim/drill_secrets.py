"""The secrets of a drill that runs with ``secrets = true`` (the demo does): every kind
the system can be given, each made at random for the run, so a scan of the run's logs
and outputs can look for every one of them.

* the device's end-to-end key (``uplink.key_file``, and the relay's ``keys_dir``);
* the OwnTracks passphrase (``uplink.owntracks_passphrase_file``);
* an MQTT password per client (the broker refuses anonymous clients): the device's and
  the relay's in files (``mqtt.password_file``), the contact's tools' in their
  connection settings;
* the relay's SMTP password, in its Apprise ``mailto://`` URL (where Apprise keeps it).
"""

from __future__ import annotations

import base64
import json
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sosbeacon.device.private import private_dir, write_private

#: every secret of the run in one file, for the scan after it (the parts read theirs from
#: the files above, or, for the contact's tools and the SMTP login, are given them)
ALL = "drill-secrets.json"
#: the MQTT clients of a drill
USERS = ("beacon", "relay", "contact", "alice")


@dataclass(frozen=True)
class DrillSecrets:
    directory: Path
    device: str
    key: bytes
    owntracks_passphrase: str
    mqtt_passwords: dict[str, str]
    smtp_user: str
    smtp_password: str

    @classmethod
    def make(cls, directory: Path, device: str) -> DrillSecrets:
        made = cls(
            directory,
            device,
            secrets.token_bytes(32),
            secrets.token_urlsafe(24),
            {user: secrets.token_urlsafe(18) for user in USERS},
            "sos-relay",
            secrets.token_urlsafe(18),
        )
        private_dir(made.keys_dir, mode=0o700)
        write_private(made.key_file, made.key)
        write_private(made.owntracks_file, made.owntracks_passphrase.encode() + b"\n")
        for user in ("beacon", "relay"):
            write_private(made.password_file(user), made.mqtt_passwords[user].encode() + b"\n")
        write_private(made.directory / ALL, json.dumps(made.as_json()).encode())
        return made

    def as_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "key": self.key.hex(),
            "owntracks_passphrase": self.owntracks_passphrase,
            "mqtt_passwords": self.mqtt_passwords,
            "smtp_user": self.smtp_user,
            "smtp_password": self.smtp_password,
        }

    @classmethod
    def load(cls, directory: Path) -> DrillSecrets:
        """The secrets a run made, from its directory (for a scan after the run)."""
        j = json.loads((directory / ALL).read_text())
        return cls(directory, j["device"], bytes.fromhex(j["key"]), j["owntracks_passphrase"],
                   j["mqtt_passwords"], j["smtp_user"], j["smtp_password"])  # fmt: skip

    @property
    def keys_dir(self) -> Path:
        return self.directory / "keys"

    @property
    def key_file(self) -> Path:
        return self.keys_dir / f"{self.device}.key"

    @property
    def owntracks_file(self) -> Path:
        return self.directory / "owntracks.passphrase"

    def password_file(self, user: str) -> Path:
        return self.directory / f"{user}.mqtt-password"

    def files(self) -> list[Path]:
        """The files that hold a secret (a scan leaves them out)."""
        return [p for p in self.directory.rglob("*") if p.is_file()]

    def needles(self) -> dict[str, bytes]:
        """Every secret, by name, in each form it could leak in (the key raw, in hex
        and in Base64)."""
        out = {
            "key": self.key,
            "key (hex)": self.key.hex().encode(),
            "key (base64)": base64.b64encode(self.key).rstrip(b"="),
            "key (url-safe base64)": base64.urlsafe_b64encode(self.key).rstrip(b"="),
            "OwnTracks passphrase": self.owntracks_passphrase.encode(),
            "SMTP password": self.smtp_password.encode(),
        }
        out |= {f"MQTT password of {u}": p.encode() for u, p in self.mqtt_passwords.items()}
        return out
