# Over-the-air updates on the node: staging (session.py), the boot record shared with the
# boot selector /main.py (record.py), the trial of a new version (trial.py) and the Modbus
# transfer window (modbus_window.py). Nothing here is imported until an update or a trial
# needs it, except record.py's few constants.
