"""HJ 212-2017: environmental monitoring data to the environmental bureau's platform,
over plain TCP (the framing is protocols/hj212.py; the TCP session is
gateway/hj212_uplink.py).

What the platform is sent, for each configured device (its readings carry the station's
``mn``, or the device's own from ``mns``):

- real-time data (CN 2011) for each poll: ``a34004-Rtd=35.2,a34004-Flag=N`` per
  pollutant, ``DataTime`` the poll's time;
- minute and hour data (CN 2051 / 2061) when an interval closes (on the first poll
  after it): Min, Avg and Max of what the gateway delivered in it, ``DataTime`` its
  start. Noise is averaged as sound energy (an equivalent level, Leq), wind direction
  as a vector, everything else arithmetically;
- when a device stops answering, a real-time packet with its last values flagged ``D``
  (fault), so the platform does not take the silence for clean air.

Every packet asks for the platform's data answer (CN 9014, Flag=5) unless ``answer =
false``; the uplink resends an unanswered packet ``retries`` times, ``answer_timeout_s``
apart, as the standard's overtime/recount rule says, then reconnects with the packet
still first in the durable queue. Packets are built when the data is (QN, DataTime and
CRC fixed then), so what waited out an outage is re-uploaded as it was, in order.

Times are the platform's local time (``utc_offset_h``, Beijing time by default).
Aggregates are kept in memory: a restart starts a new interval (the readings of the
interval in progress are not in its Min/Avg/Max).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from polekit.gateway.platforms.base import (
    Adapter,
    AdapterContext,
    Connection,
    Downlink,
    Outgoing,
    Reading,
    Section,
)
from polekit.protocols import hj212
from polekit.protocols.errors import HJ212Error

# Our reference name -> the pollutant code of HJ 212-2017's annex (table of air quality
# codes: a34004 PM2.5, a34002 PM10, a01001 air temperature, a01002 relative humidity,
# a01006 air pressure, a01007 wind speed, a01008 wind direction; noise factors: LA, the
# A-weighted sound level). Overridable with ``names = { noise = "Leq" }``.
NAMES = {
    "pm2_5": "a34004",
    "pm10": "a34002",
    "temperature": "a01001",
    "humidity": "a01002",
    "pressure": "a01006",
    "wind_speed": "a01007",
    "wind_direction": "a01008",
    "noise": "LA",
}

# Our name -> (the unit our reading is in, secondary model units; factor to the
# standard's unit; the standard's unit; decimals sent; how an interval averages it:
# "lin" arithmetic, "db" sound energy, "deg" unit vector)
UNITS: dict[str, tuple[str, float, str, int, str]] = {
    "pm2_5": ("ug/m3", 1.0, "ug/m3", 1, "lin"),
    "pm10": ("ug/m3", 1.0, "ug/m3", 1, "lin"),
    "temperature": ("Cel", 1.0, "degC", 1, "lin"),
    "humidity": ("%RH", 1.0, "%", 1, "lin"),
    "pressure": ("hPa", 0.1, "kPa", 2, "lin"),
    "wind_speed": ("m/s", 1.0, "m/s", 1, "lin"),
    "wind_direction": ("deg", 1.0, "deg", 0, "deg"),
    "noise": ("dB", 1.0, "dB(A)", 1, "db"),
}

# Data flags (HJ 212-2017 section 6.6, table of data flags): N normal, F stopped,
# M maintenance, S manual input, D fault, C calibration, T over the range, B
# communication abnormal. The gateway sets N for delivered readings and D for a device
# that stopped answering.
NORMAL = "N"
FAULT = "D"

REALTIME = 2011
MINUTE = 2051
HOUR = 2061
ANSWER_REQUEST = 9011  # the station's answer to a platform request: QnRtn
ANSWER_RESULT = 9012  # the station's execution result: ExeRtn
DATA_ANSWER = 9014  # the platform's answer to a data packet
GET_TIME = 1011  # the platform asks for the station's time
SYSTEM_ST = 91  # ST of the answers (system interaction)
QNRTN_READY, QNRTN_REJECTED, QNRTN_PW, QNRTN_MN = 1, 2, 3, 4
EXERTN_OK = 1


@dataclass(frozen=True)
class Hj212Settings:
    host: str
    port: int
    mn: str
    pw: str = field(repr=False)
    st: int
    realtime: bool
    minute_s: int
    hour: bool
    hour_s: int
    answer: bool
    answer_timeout_s: int
    retries: int
    utc_offset_h: int
    mns: dict[str, str] = field(default_factory=dict)


def _field_text(v: str) -> bool:
    return bool(v) and not any(c in v for c in ";=&,") and v.isascii()


@dataclass
class _Stat:
    low: float
    high: float
    total: float
    count: int
    sin: float = 0.0
    cos: float = 0.0


@dataclass
class _Window:
    start: float
    stats: dict[str, _Stat] = field(default_factory=dict)


class Hj212Adapter(Adapter):
    KIND = "hj212"
    TRANSPORT = "hj212"
    KEYS = (
        "host",
        "port",
        "mn",
        "pw",
        "st",
        "realtime",
        "minute_s",
        "hour",
        "hour_s",
        "answer",
        "answer_timeout_s",
        "retries",
        "utc_offset_h",
        "mns",
    )
    NAMES: ClassVar[dict[str, str]] = NAMES
    SECONDARY_UNITS = True
    EXAMPLE: ClassVar[dict[str, Any]] = {
        "kind": "hj212",
        "host": "hj212.example.gov.cn",
        "port": 8212,
        "mn": "010000A8900016F000169DC0",
        "pw": "123456",
        "st": 22,
        "minute_s": 600,
    }

    @classmethod
    def parse(cls, section: Section) -> Hj212Settings:
        fields = "up to {n} letters or digits, no ';', '=', '&' or ','"
        mn = section.text(
            "mn",
            "",
            required=True,
            check=lambda v: _field_text(v) and len(v) <= 24,
            allowed="the monitoring point code the platform gave, " + fields.format(n=24),
        )
        pw = section.text(
            "pw",
            "",
            required=True,
            secret=True,
            check=lambda v: _field_text(v) and len(v) <= 9,
            allowed="the access password the platform gave, " + fields.format(n=9),
        )
        mns: dict[str, str] = {}
        table = section.table.get("mns", {})
        if not isinstance(table, dict):
            section.problem("mns", f'{table!r}: must be a table: mns = {{ "DEVICE" = "MN" }}')
        else:
            for code, value in table.items():
                if not isinstance(value, str) or not _field_text(value) or len(value) > 24:
                    section.problem(f"mns.{code}", f"{value!r}: {fields.format(n=24)}")
                else:
                    mns[code] = value
        minute_s = section.integer("minute_s", 600, 0, 3600, "seconds (0: no minute data)")
        hour_s = section.integer("hour_s", 3600, 1, 86400, "seconds (3600 except in tests)")
        if minute_s and hour_s % minute_s and section.boolean("hour", True):
            section.problem("minute_s", f"{minute_s}: must divide the hour ({hour_s} s)")
        if "port" not in section.table:
            section.problem("port", "required (the platform's TCP port); add `port = ...`")
        port = section.integer("port", 0, 1, 65535, "a TCP port")
        return Hj212Settings(
            host=section.text(
                "host",
                "",
                required=True,
                allowed="the platform's host name or IP address",
            ),
            port=port,
            mn=mn,
            pw=pw,
            st=section.integer("st", 22, 10, 99, "system code (22 air quality, 23 noise)"),
            realtime=section.boolean("realtime", True),
            minute_s=minute_s,
            hour=section.boolean("hour", True),
            hour_s=hour_s,
            answer=section.boolean("answer", True),
            answer_timeout_s=section.integer("answer_timeout_s", 5, 1, 600, "seconds"),
            retries=section.integer("retries", 3, 0, 20, "resends"),
            utc_offset_h=section.integer("utc_offset_h", 8, -12, 14, "hours"),
            mns=mns,
        )

    def __init__(self, ctx: AdapterContext) -> None:
        super().__init__(ctx)
        self.settings: Hj212Settings = ctx.platform.settings
        self._offset_s = self.settings.utc_offset_h * 3600
        self._flag = hj212.VERSION_2017 | (hj212.ANSWER if self.settings.answer else 0)
        self._last_qn_ms = 0
        self._last: dict[str, dict[str, float]] = {}  # device -> code -> last value
        self._windows: dict[tuple[str, int], _Window] = {}
        self._decimals = {self.names.theirs(n): u[3] for n, u in UNITS.items()}
        self._periods: list[tuple[int, int]] = []
        if self.settings.minute_s:
            self._periods.append((self.settings.minute_s, MINUTE))
        if self.settings.hour:
            self._periods.append((self.settings.hour_s, HOUR))

    # --- session -------------------------------------------------------------------
    def connection(self, now_s: float) -> Connection:
        s = self.settings
        return Connection(host=s.host, port=s.port, client_id=s.mn, keepalive_s=60)

    # --- building packets ----------------------------------------------------------
    def _tm(self, t: float) -> tuple[int, ...]:
        return tuple(time.gmtime(math.floor(t) + self._offset_s))

    def _qn(self) -> str:
        # QN names the packet and its answer: unique, so two packets built in the same
        # millisecond (two devices polled together) get consecutive ones
        ms = max(round(self.ctx.clock() * 1000), self._last_qn_ms + 1)
        self._last_qn_ms = ms
        return hj212.stamp(self._tm(ms / 1000), ms % 1000)

    def packet(
        self,
        cn: int,
        mn: str,
        cp: str,
        flag: int | None = None,
        qn: str | None = None,
        st: int | None = None,
    ) -> bytes:
        """One packet with our header fields: a new QN unless ``qn`` (an answer)."""
        fields = [
            ("QN", qn or self._qn()),
            ("ST", self.settings.st if st is None else st),
            ("CN", cn),
            ("PW", self.settings.pw),
            ("MN", mn),
            ("Flag", self._flag if flag is None else flag),
        ]
        return hj212.encode(fields, cp)

    def mn_of(self, device: str) -> str:
        return self.settings.mns.get(device, self.settings.mn)

    def _values(self, readings: list[Reading]) -> dict[str, float]:
        # our readings -> {code: value in the standard's unit}; names with no code are
        # not the platform's business (lamp level, uptime), so are left out
        out: dict[str, float] = {}
        for r in self.units.convert(readings):
            if isinstance(r.value, bool) or isinstance(r.value, str):
                continue
            code = self.names.table.get(r.name)
            if code is None:
                continue
            unit = UNITS.get(r.name)
            value = float(r.value)
            if unit is not None and unit[0] == r.unit:
                value *= unit[1]
            out[code] = value
        return out

    def _text(self, code: str, value: float) -> str:
        decimals = self._decimals.get(code, 3)
        text = f"{value:.{decimals}f}"
        return "0" if text in ("-0", "-0.0") else text

    def _kind(self, code: str) -> str:
        name = self.names.ours(code)
        return UNITS[name][4] if name in UNITS else "lin"

    def _realtime(self, device: str, values: dict[str, float], t: float, flag: str) -> Outgoing:
        groups = [[("DataTime", hj212.stamp(self._tm(t)))]]
        for code, v in values.items():
            groups.append([(f"{code}-Rtd", self._text(code, v)), (f"{code}-Flag", flag)])
        frame = self.packet(REALTIME, self.mn_of(device), hj212.cp_text(groups))
        return Outgoing(f"hj212/{REALTIME}/{device}", frame)

    def _aggregate(self, device: str, cn: int, w: _Window) -> Outgoing:
        groups = [[("DataTime", hj212.stamp(self._tm(w.start)))]]
        for code, s in w.stats.items():
            kind = self._kind(code)
            if kind == "db":
                avg = 10 * math.log10(s.total / s.count)
            elif kind == "deg":
                avg = math.degrees(math.atan2(s.sin, s.cos)) % 360
                if round(avg, self._decimals.get(code, 3)) >= 360:
                    avg = 0.0  # a hair west of north is north, not "360"
            else:
                avg = s.total / s.count
            groups.append(
                [
                    (f"{code}-Min", self._text(code, s.low)),
                    (f"{code}-Avg", self._text(code, avg)),
                    (f"{code}-Max", self._text(code, s.high)),
                    (f"{code}-Flag", NORMAL),
                ]
            )
        frame = self.packet(cn, self.mn_of(device), hj212.cp_text(groups))
        return Outgoing(f"hj212/{cn}/{device}", frame)

    def _closed(self, device: str, t: float) -> list[Outgoing]:
        # intervals of ``device`` that ended before ``t``, as minute/hour packets
        out = []
        for period, cn in self._periods:
            w = self._windows.get((device, period))
            if w is not None and t >= w.start + period:
                del self._windows[(device, period)]
                if w.stats:
                    out.append(self._aggregate(device, cn, w))
        return out

    def _add(self, device: str, values: dict[str, float], t: float) -> None:
        for period, _ in self._periods:
            key = (device, period)
            start = (math.floor(t) + self._offset_s) // period * period - self._offset_s
            w = self._windows.setdefault(key, _Window(start))
            for code, v in values.items():
                kind = self._kind(code)
                energy = 10 ** (v / 10) if kind == "db" else v
                s = w.stats.get(code)
                if s is None:
                    s = w.stats[code] = _Stat(v, v, 0.0, 0)
                s.low, s.high = min(s.low, v), max(s.high, v)
                s.total += energy
                s.count += 1
                if kind == "deg":
                    s.sin += math.sin(math.radians(v))
                    s.cos += math.cos(math.radians(v))

    # --- uplink --------------------------------------------------------------------
    def readings(self, device: str, readings: list[Reading], time_s: float) -> list[Outgoing]:
        values = self._values(readings)
        out = self._closed(device, time_s)
        if not values:
            return out
        self._last.setdefault(device, {}).update(values)
        self._add(device, values, time_s)
        if self.settings.realtime:
            out.append(self._realtime(device, values, time_s, NORMAL))
        return out

    def device_status(self, device: str, online: bool, time_s: float) -> list[Outgoing]:
        if online:
            return []
        out = self._closed(device, time_s)
        last = self._last.get(device)
        if last:
            # the station's instrument is faulty: its last values, flagged D
            out.append(self._realtime(device, last, time_s, FAULT))
        return out

    # --- downlink ------------------------------------------------------------------
    def downlink(self, topic: str, payload: bytes) -> Downlink:
        """A packet the platform sent that is not a data answer (the uplink takes
        those): a request is answered at once, 9011 (QnRtn) then, for what we carry out,
        the data and 9012 (ExeRtn)."""
        try:
            p = hj212.parse(payload)
        except HJ212Error as exc:
            return Downlink(ignored=f"not an HJ 212 packet: {exc}")
        cn = int(p["CN"])
        if 9000 <= cn < 10000:
            return Downlink(ignored=f"answer CN={cn} to no packet of ours")
        qn = p.get("QN")
        mn = p.get("MN", "")
        if qn is None:
            return Downlink(ignored=f"request CN={cn} without QN")
        if p.get("PW") != self.settings.pw:
            rtn = QNRTN_PW
        elif mn != self.settings.mn and mn not in self.settings.mns.values():
            rtn = QNRTN_MN
        else:
            rtn = QNRTN_READY if cn == GET_TIME else QNRTN_REJECTED
        answer_mn = mn if rtn != QNRTN_MN else self.settings.mn
        out = [self._answer(ANSWER_REQUEST, answer_mn, qn, f"QnRtn={rtn}")]
        if rtn == QNRTN_READY:
            now = hj212.stamp(self._tm(self.ctx.clock()))
            polid = p["CP"].get("PolId")
            cp = (f"PolId={polid};" if polid else "") + f"SystemTime={now}"
            out.append(self._answer(GET_TIME, answer_mn, qn, cp, st=self.settings.st))
            out.append(self._answer(ANSWER_RESULT, answer_mn, qn, f"ExeRtn={EXERTN_OK}"))
        return Downlink(publish=out)

    def _answer(self, cn: int, mn: str, qn: str, cp: str, st: int = SYSTEM_ST) -> Outgoing:
        frame = self.packet(cn, mn, cp, flag=hj212.VERSION_2017, qn=qn, st=st)
        return Outgoing(f"hj212/{cn}", frame)


ADAPTER = Hj212Adapter
