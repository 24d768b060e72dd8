"""Which link updates which device: chosen once, from the config, at start.

Modbus devices with a polekit node's register map (``UPDATABLE_MAPS``) are updated over
their bus (modbus_transfer.py); third-party devices (meters, drives) are not updatable and
an ``ota`` naming one is refused before anything starts. Our BLE nodes are updated over
their GATT service when the BLE update link is part of this build (ble_transfer.py).
"""

from __future__ import annotations

from polekit.gateway.config import Config
from polekit.gateway.ota.modbus_transfer import ModbusTransport
from polekit.gateway.ota.transport import Transport
from polekit.gateway.sources.modbus_bus import ModbusBus

UPDATABLE_MAPS = ("pole-env",)  # register maps of polekit nodes (they have the window)


def transports_for(config: Config, buses: dict[str, ModbusBus]) -> dict[str, Transport]:
    """Device code -> the link that updates it, for every updatable device of ``config``."""
    out: dict[str, Transport] = {}
    modbus = {
        d.code: (d, buses[d.bus])
        for d in config.devices
        if d.protocol == "modbus" and d.map_name in UPDATABLE_MAPS
    }
    if modbus:
        link = ModbusTransport(modbus, config.ota.poll_interval_s)
        out.update(dict.fromkeys(modbus, link))
    if config.ble_devices:
        from polekit.gateway.ota.ble_transfer import ble_transport

        ble = ble_transport(config)
        if ble is not None:
            out.update(dict.fromkeys((d.code for d in config.ble_devices), ble))
    return out
