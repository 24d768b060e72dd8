"""The BLE link for updates: the rollout's ``Transport`` over the community node's GATT
service, on top of ``push_ble`` (gateway/ble_ota.py: the OTA control and data
characteristics, docs/protocols.md). This module only adapts it: the frames, the
acknowledgements and the reconnects are ble_ota's.

One BLE transfer at a time per adapter (its ``line_of``), as one per RS-485 bus: a BLE
adapter holds few connections and the air is shared.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from polekit.gateway.config import BleConfig, Config
from polekit.gateway.ota.transport import (
    LinkLost,
    NodeRefused,
    NodeUpdate,
    Progress,
    Pushed,
    UpdateError,
)
from polekit.gateway.sources.modbus_bus import DeviceNoResponse
from polekit.protocols import cbor


def _ble_ota() -> ModuleType | None:
    # the BLE update link ships with the BLE OTA branch; a build without it updates
    # only Modbus nodes (an ota naming a BLE node is refused as not updatable)
    try:
        return importlib.import_module("polekit.gateway.ble_ota")
    except ModuleNotFoundError:
        return None


def ble_transport(config: Config) -> BleTransport | None:
    """The BLE link for ``config``'s BLE devices, or None when this build has none."""
    module = _ble_ota()
    if module is None:
        return None
    return BleTransport(module, config.ble, {d.code: d.address for d in config.ble_devices})


def _version(value: Any) -> str:
    return value if isinstance(value, str) else "0.0"


def node_update(status: dict[str, Any]) -> NodeUpdate:
    """A community node's update status (push_ble's status map: the GATT status names
    ``fw_version``, ``ota_state`` as protocols.ota's code...) as the rollout reads it. A
    state the map does not say is not taken for idle: a node on trial read as idle would
    be counted updated before it confirmed."""
    from polekit.protocols import ota

    code = status.get("ota_state", status.get("state_code"))
    if isinstance(code, int) and 0 <= code < len(ota.STATES):
        state = ota.STATES[code]
    else:
        state = str(status.get("state") or "unknown")
    return NodeUpdate(
        running=_version(status.get("fw_version", status.get("running"))),
        previous=status.get("fw_previous", status.get("previous")) or None,
        state=state,
        error=int(status.get("ota_error", status.get("error")) or 0),
        rollback=int(status.get("ota_rollback", status.get("rollback")) or 0),
    )


class BleTransport:
    """Updates BLE nodes (``addresses``: device code -> MAC) through ``module``'s
    ``push_ble``."""

    def __init__(self, module: ModuleType, ble: BleConfig, addresses: dict[str, str]) -> None:
        self.module = module
        self.ble = ble
        self.addresses = addresses

    def line_of(self, device: str) -> str:
        return f"ble:{self.ble.air or self.ble.adapter}"

    async def status(self, device: str) -> NodeUpdate:
        address = self.addresses[device]
        try:
            st = await self.module.status_ble(address, config=self.ble)
        except (DeviceNoResponse, OSError, self.module.BleOtaError) as exc:
            raise LinkLost(f"{device} ({address}): {exc}") from None
        except Exception as exc:  # noqa: BLE001 - bleak's and the link's errors vary
            raise LinkLost(f"{device} ({address}): {type(exc).__name__}: {exc}") from None
        return node_update(st)

    async def push(
        self,
        device: str,
        manifest: bytes,
        sig: bytes,
        files: list[bytes],
        progress: Progress,
    ) -> Pushed:
        paths = [f["path"] for f in cbor.loads(manifest)["files"]]
        address = self.addresses[device]
        try:
            report = await self.module.push_ble(
                address,
                manifest,
                sig,
                dict(zip(paths, files, strict=True)),
                progress,
                config=self.ble,
            )
        except self.module.OtaRefusedError as exc:
            raise NodeRefused(exc.code or 0, exc.text) from None
        except (self.module.BleOtaError, DeviceNoResponse) as exc:
            raise LinkLost(f"{device} ({address}): {exc}") from None
        # "trial", "updated" or "rolled_back": the rollout watches the trial's outcome
        # itself (status). "not_running": the node came back on another version than the
        # bundle's without a rollback (its install did not take): no trial to wait for
        if report.get("result") == "not_running":
            raise UpdateError(f"{device} ({address}) after its install: {report.get('why')}")
        return Pushed(int(report.get("sent", 0)))
