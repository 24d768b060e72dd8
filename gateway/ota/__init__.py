"""Over-the-air updates from the gateway: a signed bundle checked here first, then rolled out
to the nodes in stages over their own links (docs/ota.md).

- ``settings``: the ``[ota]`` table (public key, size cap, batch size, trial wait, the
  polling rate of a bus while it carries a transfer);
- ``bundle``: a bundle folder or URL, fetched with a size cap and its signature checked;
- ``store``: the rollouts and each device's progress in the gateway's SQLite file, so a
  restarted gateway carries on where it stopped;
- ``transport``: what a link must do (read the node's update status, push a bundle);
  ``modbus_transfer`` is the RS-485 one, ``ble_transfer`` the hook for BLE nodes;
- ``rollout``: the orchestration (one canary, then batches; stop on a failure);
- ``cli``: ``polekit ota push`` and ``polekit ota status``.
"""
