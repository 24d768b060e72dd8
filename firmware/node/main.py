# Installed as /main.py on the board: start the polekit node.
from node.start import main

main()
