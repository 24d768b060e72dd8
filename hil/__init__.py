"""Hardware-in-the-loop: the emulated board, its virtual lines and the pytest plugin."""
