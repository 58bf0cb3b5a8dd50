"""NMEA 0183: framing, sentence layouts, epoch merging. Pure logic, no I/O."""

from hw.nmea.decoder import NmeaDecoder
from hw.nmea.epoch import DEFAULT_DATE_FLOOR, EpochMerger
from hw.nmea.framer import NmeaFramer
from hw.nmea.sentences import Reject, Sentence, split_sentence

__all__ = [
    "DEFAULT_DATE_FLOOR",
    "EpochMerger",
    "NmeaDecoder",
    "NmeaFramer",
    "Reject",
    "Sentence",
    "split_sentence",
]
