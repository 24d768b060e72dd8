"""[platform] / [[platform]] entries: defaults that keep an existing install as it was,
every problem named with file, key and fix (did-you-mean), `gateway check` listing the
platforms, `platform preview` printing what each would be sent, and the shared reconnect
limiter staying under a platform's ban threshold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from platkit import platform_toml, pole_code

from polekit.gateway.config import ConfigError, parse_config
from polekit.gateway.platforms import adapter_class, available
from polekit.gateway.platforms.limiter import WINDOW_S, ConnectLimiter

BASE: dict[str, Any] = {"gateway": {"id": "gw", "data_dir": "/tmp/unused"}, "bus": [], "device": []}


def problems(platform: Any) -> list[str]:
    with pytest.raises(ConfigError) as err:
        parse_config({**BASE, "platform": platform}, "/etc/polekit/gateway.toml")
    assert "/etc/polekit/gateway.toml" in str(err.value)
    return err.value.problems


def test_no_platform_is_senml_on_mqtt_with_the_old_queue_file() -> None:
    (p,) = parse_config({**BASE, "mqtt": {"url": "mqtt://broker:1884"}}).platforms
    assert (p.kind, p.name, p.queue_file) == ("senml", "senml", "queue.sqlite3")
    assert (p.broker.host, p.broker.port) == ("broker", 1884)


def test_each_platform_has_its_own_queue_and_may_have_its_own_broker() -> None:
    config = parse_config(
        {
            **BASE,
            "platform": [
                {"kind": "senml"},
                {"kind": "thingsboard", "access_token": "t", "url": "mqtt://tb:1883"},
                {"kind": "sparkplug", "name": "scada", "group_id": "g", "edge_node_id": "e"},
            ],
        }
    )
    files = [p.queue_file for p in config.platforms]
    assert files == ["queue.sqlite3", "queue-thingsboard.sqlite3", "queue-scada.sqlite3"]
    assert config.platforms[1].broker.host == "tb"
    assert config.platforms[2].broker.host == "127.0.0.1"  # [mqtt]'s default


@pytest.mark.parametrize(
    ("platform", "expected"),
    [
        (
            {"kind": "thingsbord"},
            "platform.kind: 'thingsbord' is not a platform kind; did you mean 'thingsboard'?",
        ),
        (
            {"kind": "thingsboard", "acess_token": "x"},
            "platform.acess_token: unknown key; did you mean 'access_token'?",
        ),
        ({"kind": "thingsboard"}, "platform.access_token: required"),
        (
            {"kind": "sparkplug", "group_id": "a/b", "edge_node_id": "e"},
            "platform.group_id: 'a/b': text without '+', '/' or '#'",
        ),
        (
            {"kind": "senml", "ca_file": "ca.pem"},
            "platform.ca_file: TLS files belong with this entry's own url",
        ),
        (
            {"kind": "senml", "mqtt_version": "3"},
            "platform.mqtt_version: '3' is not known; one of: 3.1.1, 5",
        ),
        (
            [{"kind": "senml"}, {"kind": "senml"}],
            "platform[1].name = 'senml': another entry has this name",
        ),
        (
            {"kind": "senml", "url": "http://x"},
            "platform.url: 'http://x': must look like mqtt://host:1883",
        ),
        (
            {"kind": "senml", "names": {"temperature": 3}},
            "platform.names.temperature: 3: must be the platform's name",
        ),
        ("senml", "platform = 'senml': must be a [platform] table or [[platform]] entries"),
    ],
)
def test_a_bad_platform_entry_says_which_key_and_what_to_do(platform: Any, expected: str) -> None:
    found = problems(platform)
    assert any(p.startswith(expected) for p in found), found


def test_a_secret_is_never_shown_in_a_problem() -> None:
    found = problems({"kind": "thingsboard", "access_token": 12345})
    assert not any("12345" in p for p in found), found


def test_every_registered_adapter_has_a_valid_example() -> None:
    for kind in available():
        example = adapter_class(kind).EXAMPLE
        assert example.get("kind") == kind, kind
        parse_config({**BASE, "platform": example})


def _config(tmp_path: Path, platforms: Any) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(platform_toml(tmp_path / "data", "mqtt://127.0.0.1:1883", platforms, 5020))
    path.chmod(0o600)
    return path


def _polekit(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "polekit", *args], capture_output=True, text=True, timeout=60
    )


def test_gateway_check_lists_each_platform_and_refuses_a_bad_one(tmp_path: Path) -> None:
    good = _config(tmp_path, [{"kind": "senml"}, {"kind": "thingsboard", "access_token": "t"}])
    out = _polekit("gateway", "check", "-c", str(good))
    assert out.returncode == 0, out.stderr
    assert "platform thingsboard: thingsboard at mqtt://127.0.0.1:1883" in out.stdout
    bad = _config(tmp_path, {"kind": "thingsboard", "access_tokn": "t"})
    out = _polekit("gateway", "check", "-c", str(bad))
    assert out.returncode == 2
    assert "platform.access_tokn: unknown key; did you mean 'access_token'?" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("kind", available())
def test_gateway_check_on_each_kinds_example_with_a_misspelt_key_says_did_you_mean(
    tmp_path: Path, kind: str
) -> None:
    example = adapter_class(kind).EXAMPLE
    key = next(k for k in example if k not in ("kind", "url"))  # the kind's own first key
    entry = {("x" + k if k == key else k): v for k, v in example.items()}
    out = _polekit("gateway", "check", "-c", str(_config(tmp_path, entry)))
    assert out.returncode == 2, out.stdout
    lines = out.stderr.strip().splitlines()
    wanted = f"  - platform.x{key}: unknown key; did you mean '{key}'?"
    assert wanted in lines, out.stderr
    assert "Traceback" not in out.stderr


def test_platform_preview_prints_each_platforms_topics_and_payloads(tmp_path: Path) -> None:
    config = _config(
        tmp_path,
        [
            {"kind": "senml", "format": "senml+json"},
            {"kind": "thingsboard", "access_token": "very-secret-token"},
            {"kind": "sparkplug", "group_id": "g", "edge_node_id": "e"},
        ],
    )
    out = _polekit("platform", "preview", "-c", str(config), "--device", pole_code(1))
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert f"polekit/v1/gw-plat/data/{pole_code(1)}" in text
    assert "v1/gateway/telemetry" in text and "v1/gateway/connect" in text
    assert f"spBv1.0/g/DDATA/e/{pole_code(1)}" in text and "spBv1.0/g/NBIRTH/e" in text
    assert "very-secret-token" not in text
    telemetry = text.split("v1/gateway/telemetry  (QoS 1)\n    ", 1)[1].split("\n", 1)[0]
    values = json.loads(telemetry)[pole_code(1)][0]["values"]
    assert values["temperature"] == 12.5 and values["seq"] == 1
    assert not (tmp_path / "data").exists()  # nothing written where the gateway keeps state


def _attempts(limiter: ConnectLimiter, now: list[float], reached: bool) -> list[float]:
    out = []
    while now[0] < 600:
        now[0] += limiter.wait_s()
        out.append(now[0])
        limiter.attempted(reached)
    return out


def test_reconnects_stay_under_a_ban_threshold_and_spread_out() -> None:
    # CTWing bans an address after 30 connects in 60 s: a broker that takes the connection
    # and drops it (a refused login, a kick) gets at most 20 in any 60 s, however long it
    # goes on, paced (3 to 6 s apart) rather than in bursts with a minute's hold
    now = [0.0]
    attempts = _attempts(ConnectLimiter(clock=lambda: now[0]), now, reached=True)
    for i, t in enumerate(attempts):
        in_window = [a for a in attempts[i:] if a < t + WINDOW_S]
        assert len(in_window) <= 20, (t, len(in_window))
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert max(gaps) <= 2 * WINDOW_S / 20 + 1e-9  # never a minute's hold: within 6 s
    assert attempts[1] - attempts[0] < 0.1  # the first retries are quick


def test_a_broker_that_is_not_there_is_retried_every_second() -> None:
    # connection refused (a broker restarting) reaches no platform's counter: retried
    # quickly, at most a second apart, so the backlog goes as soon as it is back
    now = [0.0]
    attempts = _attempts(ConnectLimiter(clock=lambda: now[0]), now, reached=False)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
    assert max(gaps) <= 1.0 + 1e-9 and len(attempts) > 500


def test_platform_preview_hides_the_sub_device_signatures_of_alibaba(tmp_path: Path) -> None:
    # topology add and batch login carry each sub-device's "sign": with the timestamp
    # beside it, that is the sub-device's own MQTT password (alink_dialect), so preview
    # hides it as it hides the gateway's password
    from polekit.gateway.platforms.aliyun import AliyunAdapter

    example = dict(AliyunAdapter.EXAMPLE)
    example["url"] = "mqtt://127.0.0.1:1883"
    example["sub_devices"] = {pole_code(1): "sub-secret-for-preview"}
    config = _config(tmp_path, [example])
    out = _polekit("platform", "preview", "-c", str(config), "--device", pole_code(1))
    assert out.returncode == 0, out.stderr
    assert '"sign": "***"' in out.stdout, out.stdout
    assert not re.search(r'"sign": ?"[0-9a-fA-F]{16,}"', out.stdout), out.stdout


SECRET_KEYS = {"access_token", "secret", "key", "device_secret", "pw", "password"}


@pytest.mark.parametrize("kind", available())
def test_a_loaded_platforms_repr_holds_no_secret(kind: str) -> None:
    # a settings object ends up in a log line or a traceback's locals: its repr must not
    # carry what it authenticates with (nor the broker password of [mqtt], nor a bind key)
    example = dict(adapter_class(kind).EXAMPLE)
    secrets = [v for k, v in example.items() if k in SECRET_KEYS]
    secrets += list(example.get("sub_devices", {}).values())
    config = parse_config(
        {
            **BASE,
            "mqtt": {"url": "mqtt://user:broker-pass-1@broker:1883"},
            "platform": example,
        }
    )
    shown = repr(config)
    assert kind in shown  # the repr is there and names the platform
    for secret in [*secrets, "broker-pass-1"]:
        assert secret not in shown, f"{kind}: {secret!r} in {shown[:300]}..."
