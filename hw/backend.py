"""What the real-hardware backend declares (the ``hw`` entry point, the default): its
parts are built by :func:`hw.parts.build` from the ``[gps]``, ``[button]``,
``[battery]`` and ``[network]`` sections."""

from __future__ import annotations

from sosbeacon.device.parts import BackendInfo

BACKEND = BackendInfo(
    name="hw",
    summary="the real hardware named in the configuration (the default)",
    build="sosbeacon.hw.parts:build",
)
