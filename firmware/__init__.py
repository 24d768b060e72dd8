"""polekit firmware: ``node/`` runs on the board, ``deploy/`` is the host-side tooling."""
