"""NMEA 0183: framing, sentence layouts, epoch merging. Pure logic, no I/O."""

from sosbeacon.hw.nmea.decoder import NmeaDecoder
from sosbeacon.hw.nmea.epoch import DEFAULT_DATE_FLOOR, EpochMerger
from sosbeacon.hw.nmea.framer import NmeaFramer
from sosbeacon.hw.nmea.sentences import Reject, Sentence, split_sentence

__all__ = [
    "DEFAULT_DATE_FLOOR",
    "EpochMerger",
    "NmeaDecoder",
    "NmeaFramer",
    "Reject",
    "Sentence",
    "split_sentence",
]
