# Over-the-air updates on the node: staging (session.py), the boot record shared with the
# boot selector /main.py (record.py), the trial of a new version (trial.py) and the Modbus
# transfer window (modbus_window.py). Nothing here is imported until an update or a trial
# needs it, except record.py's few constants and the keys below.

# What an `ota` command over HTTP (node/ota_http.py) keeps in the node's state file
# (/state.json) across its resets: a node that sleeps between wakes (the water node) looks
# for them at each wake without loading the HTTP pull.
REPORT_KEY = "ota.cmd"  # [code, id, heap low] of the command whose update is being installed
PULL_KEY = "ota.pull"  # [code, id, url] of a command whose header a check boot checks
