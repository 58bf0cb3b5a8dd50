"""The uplink's settings and counters."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class UplinkConfig:
    device_id: str
    prefix: str = "sosbeacon"
    #: where the OwnTracks-compatible latest position goes (retained); "" turns it off;
    #: ``None``: ``owntracks/sosbeacon/<device_id>``
    owntracks_topic: str | None = None
    #: OwnTracks tracker id (two characters shown on the map); default: from device id
    owntracks_tid: str = ""
    #: MQTT message expiry for routine telemetry (outside an SOS), seconds
    routine_expiry: int = 7 * 24 * 3600
    #: idle: routine records go when this many wait ...
    batch_count: int = 100
    #: ... or when the oldest has waited this long (seconds)
    batch_interval: float = 300.0
    #: during an SOS: live records go at once (0) or at most this often (seconds)
    sos_interval: float = 0.0
    #: records per ``track`` message, and its size cap in bytes
    max_batch: int = 500
    max_message_bytes: int = 16 * 1024
    #: routine messages in flight: at most this many, and this many bytes
    window: int = 16
    inflight_bytes: int = 32 * 1024
    #: end-to-end backpressure, once a relay's receipt has come (device/uplink/credit.py):
    #: routine messages and live-position messages sent and not yet confirmed by the
    #: relay, at most (0: no limit, the broker's queue takes what comes)
    relay_window: int = 64
    relay_window_live: int = 60
    #: a record the relay's receipts still do not name this long after it went is
    #: given up on (seconds)
    relay_patience: float = 300.0
    #: a message the receipts pass over this long (later ones named, not it) went to a
    #: relay that is down: it leaves the window (seconds)
    relay_stall: float = 3.0
    backoff_min: float = 1.0
    backoff_max: float = 300.0
    backoff_max_sos: float = 10.0
    #: end-to-end encryption: a file with the 32-byte key this device shares with the
    #: relay (mode 0600); "" = our topics' payloads in the clear (docs/security.md)
    key_file: str = ""
    #: OwnTracks' own encryption of the OwnTracks output: a file (0600) whose first line
    #: is the passphrase set in the OwnTracks apps / Recorder ("" = that topic in the
    #: clear, or off when key_file seals everything else)
    owntracks_passphrase_file: str = ""


@dataclass
class UplinkStats:
    connects: int = 0
    published: int = 0
    records_acked: int = 0
    #: inbound messages (receipts, commands) refused: in the clear, or not opening
    #: under our key
    unsealed_refused: int = 0
    #: failure reason codes from the broker, by name
    failures: dict[str, int] = field(default_factory=dict)
    commands: int = 0
    commands_rejected: int = 0
    last_error: str = ""
