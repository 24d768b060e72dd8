# The lamp driver: PWM dimming 0-100 % and a relay that switches the lamp off entirely.
class Lamp:
    def __init__(self, pwm, relay, freq=1000):
        self.pwm = pwm
        self.relay = relay
        self.pwm.freq(freq)
        self.level = 0

    # set the level in percent (0 = off: relay open)
    def set(self, level):
        level = max(0, min(100, int(level)))
        self.pwm.duty_u16(level * 65535 // 100)
        self.relay.value(1 if level else 0)
        self.level = level
