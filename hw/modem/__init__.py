"""The cellular modem: SMS in PDU mode (:mod:`pdu`, 3GPP TS 23.038 / 23.040)."""
