# One module per device driver; each talks only to `machine` objects it is given.
