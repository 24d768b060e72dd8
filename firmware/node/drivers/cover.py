# A manhole cover: a reed contact held by a magnet in the cover (open when the cover is
# lifted off) and an ADXL345 on the frame for the cover's tilt. A cover tilted past
# `tilt_deg` counts as open too: a cover pushed aside by a flood still touches its magnet.
# The contact is the chip's EXT1 wake source (any high), so opening it wakes a sleeping node.
class Cover:
    def __init__(self, pin, accel, active_low=False, tilt_deg=20):
        self.pin = pin
        self.accel = accel
        self.active_low = active_low
        self.tilt_deg = tilt_deg
        self.tilt = None

    def contact_open(self):
        return bool(self.pin.value()) != self.active_low

    # (open, tilt in degrees or None when the accelerometer does not answer)
    async def measure(self):
        try:
            self.tilt = await self.accel.measure()
        except (OSError, ValueError):
            self.tilt = None
        tilted = self.tilt is not None and self.tilt > self.tilt_deg
        return self.contact_open() or tilted, self.tilt
