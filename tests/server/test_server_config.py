"""YAML export configs: the shipped files load; every error names file, line and key."""

from pathlib import Path

import pytest

from ninep.config import ConfigError, load_config, parse_config, parse_size, parse_squash

REPO = Path(__file__).resolve().parents[2]


def test_shipped_configs_load():
    root = load_config(str(REPO / "exports/guest-root.yaml"))
    assert [e.name for e in root.exports] == ["root"]
    assert root.exports[0].read_only is False and root.exports[0].squash is None
    assert root.msize == 1 << 20
    assert any(url.startswith("unix://") and url.endswith("_564") for url in root.listen)
    share = load_config(str(REPO / "exports/readonly-share.yaml"))
    assert share.exports[0].read_only is True
    assert share.exports[0].squash == (65534, 65534)
    assert share.workers == 2


def test_several_exports_keep_their_order():
    config = parse_config("""
exports:
  first: {path: /a}
  second: {path: /b, read_only: true, squash: "1:30"}
""")
    assert [(e.name, e.path, e.read_only, e.squash) for e in config.exports] == [
        ("first", "/a", False, None), ("second", "/b", True, (1, 30))]


@pytest.mark.parametrize("text, where", [
    ("exports:\n  root:\n    pth: /x\n", "f.yaml:3: exports.root.pth: unknown key"),
    ("exports:\n  root:\n    read_only: true\n", "f.yaml:2: exports.root.path: missing"),
    ("exports:\n  root:\n    path: /x\n    read_only: maybe\n", "f.yaml:4: exports.root.read_only: expected true or false"),
    ("exports:\n  root:\n    path: /x\n    squash: root\n", "f.yaml:4: exports.root.squash: squash must be UID:GID"),
    ("exports:\n  root:\n    path: [a, b]\n", "f.yaml:3: exports.root.path: expected a single value"),
    ("listen: 5640\nexports: {a: {path: /}}\n", "f.yaml:1: listen: expected a non-empty string"),
    ("listen:\n  - tcp://x:1\n  - nonsense\nexports: {a: {path: /}}\n", "f.yaml:3: listen: 'nonsense' is not a URL"),
    ("msize: 1000\nexports: {a: {path: /}}\n", "f.yaml:1: msize: must be at least 4096"),
    ("exports: {a: {path: /}}\nworkers: 0\n", "f.yaml:2: workers: must be at least 1"),
    ("exports: {a: {path: /}}\npoll_us: -3\n", "f.yaml:2: poll_us: must be at least 0"),
    ("exprots:\n  a: {path: /}\n", "f.yaml:1: exprots: unknown key"),
    ("listen: [tcp://x:1]\n", "f.yaml:1: exports: at least one export is required"),
    ("exports: [/a]\n", "f.yaml:1: exports: expected a mapping"),
    ("exports:\n  a: {path: /}\n   b: 1\n", "f.yaml:3: not valid YAML"),
    ("", "f.yaml:1: exports: the file is empty"),
])
def test_errors_name_file_line_and_key(text, where):
    with pytest.raises(ConfigError) as info:
        parse_config(text, "f.yaml")
    assert str(info.value).startswith(where), str(info.value)


def test_workers():
    assert parse_config("workers: 4\nexports: {a: {path: /}}\n").workers == 4
    assert parse_config("exports: {a: {path: /}}\n").workers is None


def test_poll_us_reaches_the_server(tmp_path):
    """YAML poll_us and --poll-us (which wins) set the lone connection's polling window."""
    from ninep.cli import build_parser, build_server
    from ninep.config import load_config

    (tmp_path / "c.yaml").write_text(f"poll_us: 0\nexports: {{a: {{path: {tmp_path}}}}}\n")
    config = load_config(str(tmp_path / "c.yaml"))
    assert config.poll_us == 0
    args = build_parser().parse_args(["--config", str(tmp_path / "c.yaml")])
    assert build_server(args, config).poll_window == 0.0
    args = build_parser().parse_args(["--config", str(tmp_path / "c.yaml"), "--poll-us", "50"])
    from ninep.server.server import _usable_cpus
    wanted = 50e-6 if _usable_cpus() > 1 else 0.0  # never polls with one CPU
    assert build_server(args, config).poll_window == pytest.approx(wanted)


def test_unreadable_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(str(tmp_path / "missing.yaml"))


def test_sizes_and_squash():
    assert parse_size("1M") == 1 << 20 and parse_size("64K") == 65536 and parse_size(8192) == 8192
    assert parse_squash("1000:100") == (1000, 100)
    for bad in ("1000", "a:b", "-1:0"):
        with pytest.raises(ValueError):
            parse_squash(bad)


def test_identity_and_mapped_owner():
    config = parse_config("""
exports:
  vm: {path: /a, identity: mapped, mapped_owner: "0:0"}
  share: {path: /b, identity: per-user}
  plain: {path: /c}
""")
    assert [(e.identity, e.mapped_owner) for e in config.exports] == [
        ("mapped", (0, 0)), ("per-user", (0, 0)), (None, (0, 0))]
    assert parse_config('exports: {a: {path: /, mapped_owner: "1000:100"}}').exports[0] \
        .mapped_owner == (1000, 100)
    for text, where in (
            ("exports:\n  a:\n    path: /\n    identity: mine\n",
             "f.yaml:4: exports.a.identity: identity must be one of passthrough, mapped"),
            ("exports:\n  a:\n    path: /\n    mapped_owner: root\n",
             "f.yaml:4: exports.a.mapped_owner: mapped_owner must be UID:GID")):
        with pytest.raises(ConfigError) as info:
            parse_config(text, "f.yaml")
        assert str(info.value).startswith(where), str(info.value)


def test_identity_flows_from_command_line_and_config_to_the_export(tmp_path):
    from ninep.cli import build_exports, build_parser

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    config = parse_config(f"exports: {{b: {{path: {tmp_path / 'b'}, identity: mapped, "
                          f"mapped_owner: '5:6'}}}}")
    args = build_parser().parse_args(["--export", str(tmp_path / "a"), "--identity", "mapped",
                                      "--mapped-owner", "7:8"])
    exports = build_exports(args, config)
    a, b = exports[""].filesystem, exports["b"].filesystem
    assert (a.identity, a.mapped_owner) == ("mapped", (7, 8))
    assert (b.identity, b.mapped_owner) == ("mapped", (5, 6))
    default = build_exports(build_parser().parse_args(["--export", str(tmp_path / "a")]), None)
    import os
    assert default[""].filesystem.identity == ("passthrough" if os.geteuid() == 0 else "mapped")
    squashed = build_exports(build_parser().parse_args(
        ["--export", str(tmp_path / "a"), "--squash", "1:1"]), None)
    assert squashed[""].filesystem.identity == "squash"
    with pytest.raises(ValueError, match="squash needs"):
        build_exports(build_parser().parse_args(
            ["--export", str(tmp_path / "a"), "--identity", "squash"]), None)
