# One module per uplink: Modbus RTU slave on RS-485, BTHome over BLE, SenML over MQTT.
