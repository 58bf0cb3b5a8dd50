"""From the outbox to the broker, losing nothing: the MQTT v5 uplink.

One job per module:

=============  ======================================================================
``link``       :class:`Uplink`: connect, serve, reconnect; status, will, inbound
``sender``     the send loops, the in-flight window, PUBACKs and refusals
``credit``     end-to-end backpressure: what the relay's receipts have not confirmed
``packer``     records into messages, pure (no network, no storage)
``sizelimit``  the message size cap, learnt from the broker
``views``      retained views: ``sos`` order, the OwnTracks position (typed)
``config``     :class:`UplinkConfig`, :class:`UplinkStats`
=============  ======================================================================

Commands are answered by :class:`device.commands.CommandDesk`.
"""

from sosbeacon.device.uplink.config import UplinkConfig, UplinkStats
from sosbeacon.device.uplink.link import Uplink
from sosbeacon.device.uplink.packer import Message, Packer, sos_message_id
from sosbeacon.device.uplink.sender import routine_due
from sosbeacon.device.uplink.sizelimit import SizeLimit

__all__ = [
    "Message",
    "Packer",
    "SizeLimit",
    "Uplink",
    "UplinkConfig",
    "UplinkStats",
    "routine_due",
    "sos_message_id",
]
