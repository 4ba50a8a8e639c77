"""The YAML config loader and the listen-URL's HOST:PORT parser: any text either parses
or raises the loader's own error (ConfigError, ListenError), never anything else."""

from __future__ import annotations

from ninep.config import ConfigError, parse_config, parse_size, parse_squash
from ninep.server import listeners


def one_input(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        config = parse_config(text, "<fuzz>")
    except ConfigError:
        pass
    else:
        assert config.exports, config  # a config that parses serves something
    for parser in (parse_size, parse_squash):
        try:
            parser(text)
        except ValueError:  # their documented refusal (the loader turns it into ConfigError)
            pass
    for scheme in ("tcp://", ""):
        try:
            host, port = listeners._split_host_port(text.removeprefix(scheme), text)
        except listeners.ListenError:
            pass
        else:
            assert 0 <= port <= 65535


def main() -> None:
    from fuzz.driver import run
    run("config", one_input, ("ninep", "fuzz", "yaml"))  # PyYAML's paths lead to the loader's


if __name__ == "__main__":
    main()
