"""Configuration loading: defaults, the example file, overrides, and one-line errors."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from encimap import config
from tests.support import REPO, run_cli


def test_example_file_documents_every_key_with_its_default():
    loaded = config.load(REPO / "config.example.toml", env={})
    assert dataclasses.replace(loaded, source="") == config.Config()
    text = (REPO / "config.example.toml").read_text()
    for section in dataclasses.fields(config.Config):
        if section.name == "source":
            continue
        assert f"[{section.name}]" in text
        for key in dataclasses.fields(
            section.type if isinstance(section.type, type) else getattr(config, section.type)
        ):
            assert f"\n{key.name} = " in text, f"{section.name}.{key.name} undocumented"


def test_defaults_without_a_file():
    assert config.load(None, env={}).intake.listen == "127.0.0.1:2424"


def test_environment_overrides_database_urls(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text('[database]\nencimap_url = "postgresql://file/x"\n')
    env = {
        "ENCIMAP_CONFIG": str(path),
        "MOTORICAL_DATABASE_URL": "postgresql://env/m",
        "ENCIMAP_DATABASE_URL": "postgresql://env/e",
    }
    loaded = config.load(None, env=env)
    assert loaded.database.motorical_url == "postgresql://env/m"
    assert loaded.database.encimap_url == "postgresql://env/e"
    assert loaded.source == str(path)


def test_same_database_for_both_urls_is_allowed(tmp_path: Path):
    path = tmp_path / "c.toml"
    path.write_text(
        '[database]\nmotorical_url = "postgresql://h/one"\nencimap_url = "postgresql://h/one"\n'
    )
    loaded = config.load(path, env={})
    assert loaded.database.motorical_url == loaded.database.encimap_url


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[intake]\nlisten = 2424\n", "intake.listen: expected string or list of strings"),
        ("[intake]\nlistn = 'x'\n", "intake.listn: unknown key"),
        ("[nosuch]\n", "nosuch: unknown key"),
        ("[auth]\nbcrypt_cost = 3\n", "auth.bcrypt_cost: must be between 4 and 31"),
        ("[auth]\ncache_ttl = -1\n", "auth.cache_ttl: must not be negative"),
        ("[auth]\ncache_ttl = true\n", "auth.cache_ttl: expected number, got boolean"),
        ("[intake]\nprotocol = 'pop3'\n", "intake.protocol: must be one of lmtp, smtp"),
        ("[imap]\ntrusted_networks = [1]\n", "imap.trusted_networks: expected list of strings"),
        ("[imap]\nlogin_timeout = 0\n", "imap.login_timeout: must be positive"),
        ("[imap]\ncommand_timeout = 0.0\n", "imap.command_timeout: must be positive"),
        (
            "[imap]\nmax_literal_before_login = 100000000\n",
            "imap.max_literal_before_login: must be between 1 and imap.max_literal_size",
        ),
        (
            "[imap]\nmax_literal_bytes_in_flight = 1000\n",
            "imap.max_literal_bytes_in_flight: must be 0",
        ),
        (
            "[intake]\nmax_data_bytes_in_flight = 1000\n",
            "intake.max_data_bytes_in_flight: must be 0 .* at least intake.max_message_size",
        ),
        (
            "[submission]\nmax_message_size = 2000\nmax_data_bytes_in_flight = 1999\n",
            "submission.max_data_bytes_in_flight: must be 0",
        ),
        ("[imap]\nmax_mailboxes = 0\n", "imap.max_mailboxes: must be at least 1"),
        ("[imap]\nmax_search_keys = 40000\n", "imap.max_search_keys: must be between 1 and"),
        ("[imap]\nworkers = 0\n", "imap.workers: must be at least 1"),
        ("[imap]\nmax_connections_per_ip = 70000\n", "imap.max_connections_per_ip: at most 65536"),
        ("intake = 1\n", "intake: expected a table"),
        ("[intake\n", "invalid TOML"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, message: str):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        config.load(path, env={})


def test_missing_file_is_one_line_on_the_command_line(tmp_path: Path):
    result = run_cli("vaultbox", "list", config_file=tmp_path / "missing.toml")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"encimap: configuration: {tmp_path / 'missing.toml'}: configuration file not found"
    ]


def test_bad_value_is_one_line_on_the_command_line(tmp_path: Path):
    path = tmp_path / "bad.toml"
    path.write_text("[submission]\nmax_recipients = 'many'\n")
    result = run_cli("check", config_file=path)
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1
    assert "submission.max_recipients: expected integer" in result.stderr


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("127.0.0.1:2424", ("127.0.0.1", 2424)),
        ("unix:/run/x", ("unix", "/run/x")),
        ("[::1]:993", ("::1", 993)),
        (":25", ("0.0.0.0", 25)),
    ],
)
def test_listener_specs(spec, parsed):
    assert config.parse_listener(spec) == parsed


def test_listener_spec_without_port_is_an_error():
    with pytest.raises(config.ConfigError):
        config.parse_listener("localhost")
