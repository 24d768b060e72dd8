"""Sources: where readings come from (Modbus buses now, BLE later). One task per bus."""
