"""The polekit gateway: field buses and BLE in, normalised SenML over MQTT out."""
