"""Both command lines, as a user reads their --help: every option says what it is for, and
the commands that read the cloud topics take the broker the same way with the same
defaults (monitor's --host defaulted to 127.0.0.1 while tail required it; monitor took
--prefix and tail --topic; monitor had no client certificate)."""

from __future__ import annotations

import argparse

from gateway.cli import build_parser as gateway_parser
from tools.cli import build_parser as tools_parser


def _commands(parser: argparse.ArgumentParser, name: str) -> dict[str, argparse.ArgumentParser]:
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                found.update(_commands(child, f"{name} {sub}"))
    return found


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {a.option_strings[-1]: a for a in parser._actions if a.option_strings}


def test_every_option_and_argument_has_help() -> None:
    for top, name in ((gateway_parser(), "gridedge-gateway"), (tools_parser(), "gridedge")):
        for command, parser in _commands(top, name).items():
            bare = [a.option_strings or a.dest for a in parser._actions
                    if a.help is None and not isinstance(a, argparse._SubParsersAction)]
            assert bare == [], (command, bare)


def test_monitor_and_tail_take_the_cloud_broker_alike() -> None:
    commands = _commands(tools_parser(), "gridedge")
    monitor, tail = _options(commands["gridedge monitor"]), _options(commands["gridedge tail"])
    shared = ("--host", "--port", "--tls", "--ca", "--cert", "--key", "--user",
              "--password-env", "--prefix")
    for option in shared:
        m, t = monitor[option], tail[option]
        assert (m.default, m.required, m.help) == (t.default, t.required, t.help), option
    assert monitor["--host"].default == "127.0.0.1" and monitor["--prefix"].default == \
        "gridedge/v1/gw"
    assert "--topic" not in tail


def test_config_options_are_spelled_alike_in_the_gateway() -> None:
    """Every gateway command that reads the config takes --config with the same default
    (check-config also takes the file as an argument)."""
    commands = _commands(gateway_parser(), "gridedge-gateway")
    defaults = {c: _options(p)["--config"].default for c, p in commands.items()
                if "--config" in _options(p)}
    assert {"gridedge-gateway run", "gridedge-gateway check-config", "gridedge-gateway status",
            "gridedge-gateway devices"} <= set(defaults)
    top = {v for c, v in defaults.items() if c.count(" ") == 1}
    assert top == {"/etc/gridedge/gateway.toml"}, defaults
