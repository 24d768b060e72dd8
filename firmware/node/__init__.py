# polekit node firmware: runs on the board (MicroPython >= 1.22, ESP32 / S3 / C3).
