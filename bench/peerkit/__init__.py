"""The pieces of the side-by-side gateway benchmark (bench/peer_thingsboard.py and
bench/gateway_throughput.py): counting Modbus devices, a counting subscriber, process
CPU/RSS sampling, one runner per gateway, and the table.

Every gateway runs as a process of its own against the same simulated devices and the same
mosquitto, one after the other; what it delivered is compared with what the devices
answered, so a lost poll is counted, not guessed.
"""
