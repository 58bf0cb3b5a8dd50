"""u-blox UBX binary frames: sync chars, class, id, length, payload, Fletcher checksum."""

from __future__ import annotations


def ubx_frame(cls: int, msg_id: int, payload: bytes) -> bytes:
    body = bytes([cls, msg_id]) + len(payload).to_bytes(2, "little") + payload
    a = b = 0
    for x in body:
        a = (a + x) & 0xFF
        b = (b + a) & 0xFF
    return b"\xb5\x62" + body + bytes([a, b])
