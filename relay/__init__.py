"""sos-relay: the contacts' side of sosbeacon (a service, not on the device).

MQTT v5 shared subscription -> database -> notifications with capability links -> a live
page (Server-Sent Events) -> acknowledgements back to the device. See docs/relay.md.
"""
