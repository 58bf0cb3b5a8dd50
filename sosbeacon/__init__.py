"""sosbeacon, installed under one name: ``sosbeacon.device`` (the daemon's core),
``sosbeacon.hw`` (real hardware), ``sosbeacon.sim`` (the simulator) and
``sosbeacon.relay`` (the contacts' relay).

In the source tree the four live at the top of the repository (``device/``, ``hw/``,
``sim/``, ``relay/``), as the design card fixes; ``sosbeacon/`` holds links to them, so
the same files are imported, type-checked and packaged under this one name, and an
installed wheel claims no other top-level name. Code imports ``sosbeacon.device...``,
never ``device...`` (a test checks it).
"""
