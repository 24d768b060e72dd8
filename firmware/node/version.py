# The version this node firmware reports (fw_version register, the OTA status), MAJOR.MINOR.
# Its own module, its one source: `polekit build --version X.Y` rewrites this line, and an
# update's check boot and the community node read it without importing the pole node's app.
VERSION = (0, 1)
