"""What the device reports besides an SOS's own records, decided in one place: routine
positions outside an SOS (only when the owner opted in), battery records, and the last
gasp when the battery goes critical. :class:`Telemetry` decides; the SOS controller
stores what it decides, with the session (if any) it belongs to."""

from __future__ import annotations

from dataclasses import dataclass

from sosbeacon.device.battery import BatteryLevel, BatteryPolicy, BatterySample
from sosbeacon.device.privacy import PrivacyConfig


@dataclass(frozen=True, slots=True)
class BatteryNews:
    """What a battery sample means for what is reported."""

    level: BatteryLevel
    #: the level before the sample, when it changed
    changed_from: BatteryLevel | None
    #: the battery just went critical: a last gasp goes (once until it recovers)
    last_gasp: bool
    #: a battery record goes (shared, and during an SOS or at a change of level)
    record: bool


class Telemetry:
    def __init__(self, privacy: PrivacyConfig, battery: BatteryPolicy) -> None:
        self.privacy = privacy
        self.battery = battery
        self._idle_last_point: float | None = None
        self._last_gasp_sent = False

    def idle_point_due(self, now: float) -> bool:
        """Outside an SOS, a routine position is due (and counted as sent) at ``now``
        (monotonic seconds): only when tracking outside an SOS is opted in, at most once
        per the battery level's ``idle_report`` interval."""
        if not self.privacy.track_outside_sos:
            return False
        last = self._idle_last_point
        if last is not None and now - last < self.battery.cadence.idle_report:
            return False
        self._idle_last_point = now
        return True

    def on_battery(self, sample: BatterySample, *, in_sos: bool) -> BatteryNews:
        before = self.battery.level
        level = self.battery.update(sample)
        gasp = level is BatteryLevel.CRITICAL and not self._last_gasp_sent
        if level is BatteryLevel.CRITICAL:
            self._last_gasp_sent = True
        else:
            self._last_gasp_sent = False
        return BatteryNews(
            level=level,
            changed_from=before if level is not before else None,
            last_gasp=gasp,
            record=self.privacy.share_battery and (in_sos or level is not before),
        )
