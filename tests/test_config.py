"""Settings from the environment (cores/config.py): defaults, parsing, refusals, .env.example."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from cores import config
from cores.config import (
    LOCAL_SANDBOX_KEY,
    PRODUCTION_BASE_URL,
    SANDBOX_BASE_URL,
    SANDBOX_FAULTS,
    ConfigError,
    Settings,
)
from tests.machine_helpers import ROOT

# --- defaults --------------------------------------------------------------------------------


def test_empty_environment_gives_the_design_defaults():
    s = Settings.from_env({})
    assert s == Settings()
    assert s.redis_url is None
    assert s.machine_id == "vm-1"
    assert (s.ws_host, s.ws_port) == ("127.0.0.1", 3333)
    assert (s.sandbox_host, s.sandbox_port) == ("127.0.0.1", 3334)
    assert s.sandbox_notification_url is None
    assert dict(s.sandbox_faults) == {}
    assert s.notification_port == 3335
    assert s.midtrans_server_key is None and s.midtrans_client_key is None
    assert s.midtrans_is_production is False
    assert s.midtrans_base_url_override is None
    assert s.payment_type == "qris"
    assert s.payment_deadline_s == 120
    assert (s.menu_idle_s, s.result_screen_s) == (60, 5)
    assert (s.dispenser, s.dispense_s, s.dispense_failure_rate) == ("simulated", 2, 0)
    assert s.var_dir == Path("var")
    assert s.log_level == "INFO"


def test_empty_values_count_as_unset():
    assert Settings.from_env({"PAYMENT_TYPE": "", "WS_PORT": "", "REDIS_URL": ""}) == Settings()


def test_without_a_server_key_the_local_sandbox_is_used_with_a_generated_key():
    s = Settings.from_env({})
    assert s.uses_local_sandbox
    assert s.server_key == LOCAL_SANDBOX_KEY
    assert s.server_key.startswith("SB-Mid-server-")


# --- parsing ---------------------------------------------------------------------------------


def test_every_variable_is_parsed_into_its_setting(tmp_path):
    env = {
        "REDIS_URL": "redis://127.0.0.1:6390/2",
        "VENDING_MACHINE_ID": "kiosk_7.b-2",
        "WS_HOST": "0.0.0.0",
        "WS_PORT": "8080",
        "SANDBOX_HOST": "10.0.0.2",
        "SANDBOX_PORT": "8081",
        "SANDBOX_NOTIFICATION_URL": "http://127.0.0.1:9000/notification",
        "NOTIFICATION_HOST": "0.0.0.0",
        "NOTIFICATION_PORT": "8082",
        "MIDTRANS_SERVER_KEY": "SB-Mid-server-abc",
        "MIDTRANS_CLIENT_KEY": "SB-Mid-client-abc",
        "MIDTRANS_IS_PRODUCTION": "true",
        "MIDTRANS_BASE_URL": "http://127.0.0.1:3999/",
        "PAYMENT_TYPE": "gopay",
        "PAYMENT_DEADLINE_S": "45.5",
        "MENU_IDLE_S": "30",
        "RESULT_SCREEN_S": "2",
        "DISPENSER": "simulated",
        "DISPENSE_S": "0.5",
        "DISPENSE_FAILURE_RATE": "0.25",
        "VAR_DIR": str(tmp_path / "v"),
        "MENU_FILE": str(tmp_path / "menu.json"),
        "LOG_LEVEL": "WARNING",
    }
    s = Settings.from_env(env)
    assert s.redis_url == "redis://127.0.0.1:6390/2"
    assert s.machine_id == "kiosk_7.b-2"
    assert (s.ws_host, s.ws_port) == ("0.0.0.0", 8080)
    assert (s.sandbox_host, s.sandbox_port) == ("10.0.0.2", 8081)
    assert s.sandbox_notification_url == "http://127.0.0.1:9000/notification"
    assert (s.notification_host, s.notification_port) == ("0.0.0.0", 8082)
    assert s.midtrans_server_key == "SB-Mid-server-abc"
    assert s.midtrans_client_key == "SB-Mid-client-abc"
    assert s.midtrans_is_production is True
    assert s.midtrans_base_url_override == "http://127.0.0.1:3999/"
    assert s.payment_type == "gopay"
    assert s.payment_deadline_s == 45.5
    assert (s.menu_idle_s, s.result_screen_s) == (30, 2)
    assert (s.dispenser, s.dispense_s, s.dispense_failure_rate) == ("simulated", 0.5, 0.25)
    assert s.var_dir == tmp_path / "v"
    assert s.menu_file == tmp_path / "menu.json"
    assert s.log_level == "WARNING"
    assert isinstance(s.ws_port, int) and isinstance(s.var_dir, Path)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("yes", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_boolean_variables_accept_the_usual_spellings(raw, expected):
    assert Settings.from_env({"MIDTRANS_IS_PRODUCTION": raw}).midtrans_is_production is expected


def test_values_are_stripped_of_surrounding_spaces():
    s = Settings.from_env({"WS_PORT": " 4000 ", "PAYMENT_TYPE": " gopay\n"})
    assert (s.ws_port, s.payment_type) == (4000, "gopay")


def test_sandbox_fault_variables_are_parsed_with_their_types():
    env = {
        "SANDBOX_FAULT_LATENCY_MS": "250",
        "SANDBOX_FAULT_ERROR_RATE": "0.1",
        "SANDBOX_FAULT_DROP_RATE": "0.05",
        "SANDBOX_FAULT_HTTP200_ERRORS": "1",
        "SANDBOX_FAULT_PENDING_AFTER_PAY_S": "1.5",
        "SANDBOX_FAULT_NOTIFY_DELAY_S": "20",
        "SANDBOX_FAULT_NOTIFY_DUPLICATE_RATE": "0.5",
        "SANDBOX_FAULT_NOTIFY_REORDER": "1",
        "SANDBOX_FAULT_REFUND_DISABLED": "1",
        "SANDBOX_FAULT_CHANNEL_DISABLED": "0",
        "SANDBOX_FAULT_BAD_QR": "1",
    }
    faults = Settings.from_env(env).sandbox_faults
    assert set(faults) == set(SANDBOX_FAULTS)
    assert faults["LATENCY_MS"] == 250 and isinstance(faults["LATENCY_MS"], int)
    assert faults["ERROR_RATE"] == 0.1
    assert faults["PENDING_AFTER_PAY_S"] == 1.5
    assert faults["CHANNEL_DISABLED"] == 0


def test_dotenv_file_fills_what_the_environment_leaves_unset(tmp_path, monkeypatch):
    environ = {
        k: v for k, v in os.environ.items() if k not in ("PAYMENT_TYPE", "WS_PORT", "MENU_IDLE_S")
    }
    environ["WS_PORT"] = "4100"
    monkeypatch.setattr(os, "environ", environ)
    dotenv = tmp_path / ".env"
    dotenv.write_text("PAYMENT_TYPE=gopay\nWS_PORT=4200\nMENU_IDLE_S=15\n", encoding="utf-8")
    s = Settings.from_env(dotenv=dotenv)
    assert s.payment_type == "gopay"
    assert s.ws_port == 4100  # the real environment wins over .env
    assert s.menu_idle_s == 15


# --- refusals name the variable --------------------------------------------------------------


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("PAYMENT_DEADLINE_S", "0"),
        ("PAYMENT_DEADLINE_S", "901"),
        ("PAYMENT_DEADLINE_S", "abc"),
        ("PAYMENT_DEADLINE_S", "nan"),
        ("WS_PORT", "70000"),
        ("WS_PORT", "-1"),
        ("WS_PORT", "80.5"),
        ("SANDBOX_PORT", "65536"),
        ("NOTIFICATION_PORT", "x"),
        ("PAYMENT_TYPE", "card"),
        ("DISPENSE_FAILURE_RATE", "2"),
        ("DISPENSE_FAILURE_RATE", "-0.1"),
        ("DISPENSE_S", "121"),
        ("MENU_IDLE_S", "0"),
        ("RESULT_SCREEN_S", "0"),
        ("DISPENSER", "hardware-x"),
        ("MIDTRANS_IS_PRODUCTION", "maybe"),
        ("VENDING_MACHINE_ID", "vm 1"),
        ("VENDING_MACHINE_ID", "x" * 21),
        ("VENDING_MACHINE_ID", "vm:{1}"),
        ("REDIS_URL", "localhost:6379"),
        ("MIDTRANS_SERVER_KEY", "   "),
        ("SANDBOX_FAULT_ERROR_RATE", "x"),
        ("SANDBOX_FAULT_ERROR_RATE", "-1"),
        ("SANDBOX_FAULT_LATENCY_MS", "1.5"),
    ],
)
def test_invalid_value_raises_config_error_naming_the_variable(var, raw):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value)
    assert isinstance(info.value, ValueError)


def test_kiosk_allowed_origins_are_read_comma_separated():
    s = Settings.from_env(
        {"KIOSK_ALLOWED_ORIGINS": " http://kiosk.local:3333, https://shop.example ,, "}
    )
    assert s.kiosk_allowed_origins == ("http://kiosk.local:3333", "https://shop.example")
    assert Settings.from_env({}).kiosk_allowed_origins == ()


@pytest.mark.parametrize(
    "raw",
    [
        "kiosk.local",
        "http://kiosk.local/",
        "http://kiosk.local/page",
        "ftp://kiosk.local",
        "http://kiosk.local:99999",
        "http://user@kiosk.local",
        "http://",
        "null",
        "http://ok.example,*",
    ],
)
def test_kiosk_allowed_origins_that_are_not_origins_raise_config_error_naming_the_variable(raw):
    with pytest.raises(ConfigError, match="KIOSK_ALLOWED_ORIGINS"):
        Settings.from_env({"KIOSK_ALLOWED_ORIGINS": raw})


def test_log_level_is_read_case_insensitively():
    assert Settings.from_env({"LOG_LEVEL": "debug"}).log_level == "DEBUG"


def test_unknown_log_level_raises_config_error_naming_the_variable():
    with pytest.raises(ConfigError, match="LOG_LEVEL"):
        Settings.from_env({"LOG_LEVEL": "LOUD"})


def test_settings_built_directly_are_checked_too():
    with pytest.raises(ConfigError, match="PAYMENT_DEADLINE_S"):
        Settings(payment_deadline_s=0)


@pytest.mark.parametrize("deadline", ["1", "900"])
def test_payment_deadline_bounds_are_inclusive(deadline):
    assert Settings.from_env({"PAYMENT_DEADLINE_S": deadline}).payment_deadline_s == float(deadline)


# --- Midtrans base URL -----------------------------------------------------------------------


def test_base_url_is_the_local_sandbox_without_a_server_key():
    s = Settings.from_env({"SANDBOX_HOST": "127.0.0.9", "SANDBOX_PORT": "4444"})
    assert s.midtrans_base_url == "http://127.0.0.9:4444"


def test_base_url_is_the_midtrans_sandbox_with_a_key():
    s = Settings.from_env({"MIDTRANS_SERVER_KEY": "SB-Mid-server-abc"})
    assert not s.uses_local_sandbox
    assert s.server_key == "SB-Mid-server-abc"
    assert s.midtrans_base_url == SANDBOX_BASE_URL == "https://api.sandbox.midtrans.com"


def test_base_url_is_production_with_a_key_and_midtrans_is_production():
    s = Settings.from_env(
        {"MIDTRANS_SERVER_KEY": "Mid-server-abc", "MIDTRANS_IS_PRODUCTION": "true"}
    )
    assert s.midtrans_base_url == PRODUCTION_BASE_URL == "https://api.midtrans.com"


@pytest.mark.parametrize(
    "env",
    [
        {},
        {"MIDTRANS_SERVER_KEY": "SB-Mid-server-abc"},
        {"MIDTRANS_SERVER_KEY": "Mid-server-abc", "MIDTRANS_IS_PRODUCTION": "1"},
    ],
)
def test_base_url_override_wins_without_its_trailing_slash(env):
    s = Settings.from_env({**env, "MIDTRANS_BASE_URL": "http://127.0.0.1:3334/"})
    assert s.midtrans_base_url == "http://127.0.0.1:3334"


# --- the documentation of the variables ------------------------------------------------------


def variables_read_by_from_env() -> set[str]:
    source = Path(config.__file__).read_text(encoding="utf-8")
    names = set(re.findall(r'take\("([A-Z0-9_]+)"', source))
    assert len(names) > 20, "the parser of cores/config.py no longer finds its variables"
    return names | {"SANDBOX_FAULT_" + name for name in SANDBOX_FAULTS}


def test_env_example_lists_every_variable_that_settings_read():
    example = ROOT / ".env.example"
    if not example.exists():
        pytest.skip(".env.example does not exist yet at the repository root")
    text = example.read_text(encoding="utf-8")
    listed = set(re.findall(r"^\s*#?\s*(?:export\s+)?([A-Z][A-Z0-9_]*)\s*=", text, re.M))
    missing = variables_read_by_from_env() - listed
    assert not missing, f".env.example lacks {sorted(missing)}"


def test_env_example_values_are_valid_and_are_the_defaults():
    example = ROOT / ".env.example"
    if not example.exists():
        pytest.skip(".env.example does not exist yet at the repository root")
    text = example.read_text(encoding="utf-8")
    env = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", text, re.M))
    s = Settings.from_env(env)
    defaults = Settings(sandbox_faults=s.sandbox_faults)
    assert s.replace(menu_file=defaults.menu_file) == defaults
    assert s.menu_file.name == defaults.menu_file.name
    assert all(value == 0 for value in s.sandbox_faults.values())


# --- Redis Cluster -----------------------------------------------------------------------------


def test_a_redis_cluster_url_names_the_cluster_and_its_startup_nodes():
    s = Settings.from_env({"REDIS_URL": "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"})
    assert s.uses_cluster
    assert s.redis_cluster == config.ClusterAddress((("10.0.0.1", 7000), ("10.0.0.2", 7001)))
    assert s.redis_cluster.url == "redis+cluster://10.0.0.1:7000,10.0.0.2:7001"


def test_a_tls_cluster_url_keeps_its_credentials_out_of_the_repr():
    s = Settings.from_env({"REDIS_URL": "rediss+cluster://app:s%40cret@[::1]:7000/0"})
    cluster = s.redis_cluster
    assert cluster is not None
    assert cluster.tls and cluster.nodes == (("::1", 7000),)
    assert (cluster.username, cluster.password) == ("app", "s@cret")
    assert "s@cret" not in repr(cluster)
    assert cluster.url == "rediss+cluster://app:s%40cret@[::1]:7000"


def test_redis_cluster_nodes_name_a_cluster_without_a_url():
    s = Settings.from_env({"REDIS_CLUSTER_NODES": " a:7000, b:7001 ,"})
    assert s.uses_cluster
    assert s.redis_cluster == config.ClusterAddress((("a", 7000), ("b", 7001)))


def test_one_redis_server_is_not_a_cluster():
    assert not Settings.from_env({"REDIS_URL": "redis://127.0.0.1:6379/0"}).uses_cluster
    assert not Settings.from_env({}).uses_cluster


def test_redis_url_and_redis_cluster_nodes_together_are_refused_naming_both():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"REDIS_URL": "redis://h:6379/0", "REDIS_CLUSTER_NODES": "h:7000"})
    assert "REDIS_URL" in str(info.value) and "REDIS_CLUSTER_NODES" in str(info.value)


@pytest.mark.parametrize(
    ("var", "raw"),
    [
        ("REDIS_URL", "redis+cluster://"),
        ("REDIS_URL", "redis+cluster://host"),
        ("REDIS_URL", "redis+cluster://host:0"),
        ("REDIS_URL", "redis+cluster://host:7000/1"),
        ("REDIS_URL", "redis+cluster://host:7000?db=1"),
        ("REDIS_URL", "redis+cluster://::1:7000"),
        ("REDIS_CLUSTER_NODES", "host"),
        ("REDIS_CLUSTER_NODES", "host:port"),
        ("REDIS_CLUSTER_NODES", "host:70000"),
        ("REDIS_CLUSTER_NODES", "redis://host:7000"),
        ("REDIS_CLUSTER_NODES", ","),
    ],
)
def test_an_invalid_cluster_address_raises_config_error_naming_the_variable(var, raw):
    with pytest.raises(ConfigError) as info:
        Settings.from_env({var: raw})
    assert var in str(info.value)


# --- dispenser drivers -------------------------------------------------------------------------


def test_dispenser_hardware_settings_have_the_design_defaults():
    s = Settings.from_env({})
    assert (s.dispenser, s.dispenser_port, s.slot_fail_limit) == ("simulated", None, 3)
    assert (s.gpio_relay_pins, s.gpio_active_high, s.gpio_sensor_pin) == (None, True, None)
    assert s.relay_pins == {}
    assert s.vend_pulse_s == 1.0


def test_serial_and_gpio_dispensers_read_their_settings():
    serial = Settings.from_env(
        {"DISPENSER": "serial", "DISPENSER_PORT": "/dev/ttyUSB0", "SLOT_FAIL_LIMIT": "5"}
    )
    assert (serial.dispenser, serial.dispenser_port, serial.slot_fail_limit) == (
        "serial",
        "/dev/ttyUSB0",
        5,
    )
    gpio = Settings.from_env(
        {
            "DISPENSER": "gpio",
            "GPIO_RELAY_PINS": " 1:17, 2:27 ,3:22",
            "GPIO_ACTIVE_HIGH": "false",
            "GPIO_SENSOR_PIN": "23",
            "VEND_PULSE_S": "0.5",
        }
    )
    assert gpio.relay_pins == {1: 17, 2: 27, 3: 22}
    assert (gpio.gpio_active_high, gpio.gpio_sensor_pin, gpio.vend_pulse_s) == (False, 23, 0.5)


def test_serial_without_a_port_is_refused_naming_dispenser_port():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DISPENSER": "serial"})
    assert "DISPENSER_PORT" in str(info.value)


def test_gpio_without_relay_pins_is_refused_naming_gpio_relay_pins():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"DISPENSER": "gpio"})
    assert "GPIO_RELAY_PINS" in str(info.value)


@pytest.mark.parametrize(
    ("env", "var"),
    [
        ({"DISPENSER": "stepper"}, "DISPENSER"),
        ({"SLOT_FAIL_LIMIT": "0"}, "SLOT_FAIL_LIMIT"),
        ({"SLOT_FAIL_LIMIT": "three"}, "SLOT_FAIL_LIMIT"),
        ({"GPIO_RELAY_PINS": "17"}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": "1:17,1:27"}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": "1:17,2:17"}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": "0:17"}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": "1:99"}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": ","}, "GPIO_RELAY_PINS"),
        ({"GPIO_RELAY_PINS": "1:17", "GPIO_SENSOR_PIN": "17"}, "GPIO_SENSOR_PIN"),
        ({"GPIO_SENSOR_PIN": "-1"}, "GPIO_SENSOR_PIN"),
        ({"GPIO_ACTIVE_HIGH": "maybe"}, "GPIO_ACTIVE_HIGH"),
        ({"VEND_PULSE_S": "0"}, "VEND_PULSE_S"),
        ({"VEND_PULSE_S": "20", "VEND_TIMEOUT_S": "10"}, "VEND_PULSE_S"),
    ],
)
def test_invalid_dispenser_settings_raise_config_error_naming_the_variable(env, var):
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert var in str(info.value)
