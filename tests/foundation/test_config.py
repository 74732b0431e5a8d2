"""Configuration: defaults, conversions, and one-line errors that name the key and the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config.settings import ConfigError, load

CADUCEE = [str(Path(sys.executable).with_name("caducee"))]


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "caducee.toml"
    p.write_text(text, encoding="utf-8")
    return p


def test_defaults_and_conversions(tmp_path: Path) -> None:
    p = write(
        tmp_path,
        '[server]\nhostname = "mx.a.mssante.test"\n'
        '[limits]\nmessage_size = "10MiB"\nsmtp_idle_timeout = "5m"\n'
        '[database]\nurl = "sqlite+aiosqlite:///data/c.db"\n[storage]\npath = "spool"\n'
        '[delivery]\nroutes = { "B.mssante.test" = "127.0.0.1:2526" }\n',
    )
    s = load(p)
    assert s.server.hostname == "mx.a.mssante.test"
    assert s.limits.message_size == 10 * 1024 * 1024
    assert s.limits.smtp_idle_timeout == 300
    assert s.limits.recipients_per_message == 100
    # the patient portal asks a second factor unless the operator says otherwise (health data)
    assert (s.portal.second_factor, s.portal.trust_device, s.portal.code_tries) == ("email_or_totp", 30, 5)
    assert (s.portal.code_lifetime, s.portal.code_interval) == (600, 60)
    assert (s.limits.folder_name_length, s.limits.folder_depth, s.limits.folders_per_mailbox) == (
        255,
        16,
        1000,
    )
    assert s.storage.path == str(tmp_path / "spool")
    assert s.database.url == f"sqlite+aiosqlite:///{tmp_path}/data/c.db"
    assert s.tls.cert == str(tmp_path / "tls/chain.pem")
    assert s.delivery.routes == {"b.mssante.test": "127.0.0.1:2526"}
    assert s.smtp.listen == ["127.0.0.1:2525"]
    assert s.queue.lease == 60
    assert s.portal.first_contacts_max == 50
    large = s.large_files
    assert (large.threshold, large.max_size, large.keep) == (10 * 1024**2, 2 * 1024**3, 30 * 86400)
    assert large.path.endswith("large_files") and large.max_uploads == 100
    d = s.delivery  # RFC 5321 §4.5.3.2
    assert (d.greeting_timeout, d.mail_timeout, d.rcpt_timeout) == (300, 300, 300)
    assert (d.data_init_timeout, d.data_block_timeout, d.data_final_timeout) == (120, 180, 600)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            '[limits]\nmessage_size = "big"\n',
            "[limits] message_size: expected a size like \"25MiB\", got 'big'",
        ),
        ("[limits]\nmesage_size = 1\n", "[limits] unknown key 'mesage_size'"),
        ("[smpt]\n", "unknown section [smpt]"),
        ('[smtp]\nlisten = ["localhost"]\n', "[smtp] listen: expected \"host:port\", got 'localhost'"),
        ('[smime]\nsign = "maybe"\n', "[smime] sign: expected one of 'always', 'if-certificate', 'never'"),
        ('[database]\nurl = "mysql://x"\n', "[database] url: expected sqlite+aiosqlite:///PATH"),
        ("[auth]\nmax_failures = -1\n", "[auth] max_failures: expected a non-negative integer, got -1"),
        ("[limits]\nimap_update_contexts = 0\n", "[limits] imap_update_contexts: must be at least 1"),
        ("[limits]\nfolder_name_length = 1001\n", "[limits] folder_name_length: must be between 1 and 1000"),
        ("[limits]\nfolder_depth = 0\n", "[limits] folder_depth: must be at least 1"),
        ("[limits]\nfolders_per_mailbox = 5\n", "[limits] folders_per_mailbox: must be at least 6"),
        ("[auth]\nmax_failures = 0\n", "[auth] max_failures: must be at least 1"),
        ("[portal]\nfirst_contacts_max = 0\n", "[portal] first_contacts_max: must be at least 1"),
        ("[limits]\nconnections_per_user_ip = 0\n", "[limits] connections_per_user_ip: must be at least 1"),
        ('[limits]\nportal_idle_timeout = "0s"\n', "[limits] portal_idle_timeout: must be more than 0"),
        ("[delivery]\ndata_final_timeout = 0\n", "[delivery] data_final_timeout: must be more than 0"),
        ('[queue]\nlease = "0.5s"\n', "[queue] lease: must be at least 1 second"),
        (
            '[large_files]\nthreshold = "30MiB"\nmax_size = "20MiB"\n',
            "[large_files] max_size: must be at least",
        ),
        ('[large_files]\nkeep = "0s"\n', "[large_files] keep and upload_expire: must be more than 0"),
        ('[admin]\nlisten = ["0.0.0.0:9180"]\n', "[admin] listen: 0.0.0.0:9180 is not a loopback address"),
        ('[admin]\nlisten = ["10.1.2.3:9180"]\n', "set [admin] allow_remote = true"),
        ('[trust]\nurl = "http://listeblanche.test/l.xml"\n', "[trust] url: expected an https:// URL"),
        ("[trust]\nmax_removed = 101\n", "[trust] max_removed: a percentage, at most 100"),
        ('[trust]\nrefresh_interval = "0s"\n', "[trust] refresh_interval: must be more than 0 seconds"),
        ('[tls]\ncrl_fetch_timeout = "0s"\n', "[tls] crl_fetch_timeout: must be more than 0 seconds"),
        ('[tls]\ncrl_unreachable = "maybe"\n', "[tls] crl_unreachable: expected one of 'accept', 'refuse'"),
        ("[server\n", "not valid TOML"),
        ('[audit]\nkeep = "5 months"\n', "[audit] keep: must be at least 6 months (186 days)"),
        ('[audit]\nkeep = "180d"\n', "[audit] keep: must be at least 6 months"),
        ('[audit]\nkeep = "forever"\n', "[audit] keep: expected a period like \"12 months\", got 'forever'"),
        ('[relay]\nhost = "relay.test"\nusername = "u"\n', "[relay] username needs password_file"),
        ("[relay]\nport = 70000\n", "[relay] port: out of range"),
        ('[patients]\nalert_interval = "soon"\n', "[patients] alert_interval: expected a duration"),
        ('[imap]\nprivate_flags = ["\\\\Deleted"]\n', "private_flags: '\\\\Deleted' cannot be private"),
        ('[imap]\nprivate_flags = ["a b"]\n', "[imap] private_flags: 'a b' cannot be private"),
        ('[portal]\nsecond_factor = "sms"\n', "[portal] second_factor: expected one of 'off', 'email'"),
        ("[portal]\ncode_tries = 0\n", "[portal] code_tries and code_lifetime: must be more than 0"),
        ("[portal]\ntrust_device = -1\n", "[portal] trust_device: expected a non-negative integer"),
    ],
)
def test_bad_values_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as exc:
        load(p)
    assert str(exc.value).startswith(str(p))
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_private_flags_default_to_seen_in_canonical_case(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")).imap.private_flags == ["\\Seen"]
    written = '[imap]\nprivate_flags = ["\\\\seen", "$Lu", "\\\\Seen"]\n'
    assert load(write(tmp_path, written)).imap.private_flags == ["\\Seen", "$Lu"]
    assert load(write(tmp_path, "[imap]\nprivate_flags = []\n")).imap.private_flags == []


def test_audit_retention_in_months_or_years(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")).audit.keep == 12 * 31 * 86400
    assert load(write(tmp_path, '[audit]\nkeep = "6 months"\n')).audit.keep == 6 * 31 * 86400
    assert load(write(tmp_path, '[audit]\nkeep = "2 years"\n')).audit.keep == 2 * 365 * 86400


def test_connection_limits_default_for_a_hospital_behind_one_address(tmp_path: Path) -> None:
    """Issue 13 §8: the old default of 20 connections per address locked a hospital (one NAT address)
    out; a file that still says ``connections_per_ip = 20`` loads, as the per-address ceiling it is."""
    defaults = load(write(tmp_path, "")).limits
    assert (defaults.connections_per_ip, defaults.connections_per_user_ip) == (1000, 10)
    assert (defaults.connections_per_user, defaults.max_connections) == (50, 2000)
    old = load(write(tmp_path, "[limits]\nconnections_per_ip = 20\nconnections_per_user = 20\n")).limits
    assert (old.connections_per_ip, old.connections_per_user_ip, old.connections_per_user) == (20, 10, 20)


@pytest.mark.parametrize("content", [None, '[limits]\nmessage_size = "big"\n'])
def test_cli_reports_config_errors_with_exit_2(tmp_path: Path, content: str | None) -> None:
    p = tmp_path / "caducee.toml"
    if content is not None:
        p.write_text(content)
    r = subprocess.run(
        [*CADUCEE, "--config", str(p), "domain", "list"], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("caducee: ")
    assert "Traceback" not in r.stderr
    assert str(p) in r.stderr


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CADUCEE, *args], capture_output=True, text=True, timeout=60, env={"PATH": "/usr/bin", **env}
    )


def test_environment_variable_and_option_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--config wins over $CADUCEE_CONFIG, which is used when no option is given."""
    good = write(tmp_path, f'[database]\nurl = "sqlite+aiosqlite:///{tmp_path}/empty.db"\n')
    missing = str(tmp_path / "missing.toml")
    monkeypatch.setenv("CADUCEE_CONFIG", str(good))
    assert load(None).source == good

    # A valid file with an empty database answers "not initialised" (exit 1); a missing file exits 2.
    r = run_cli(["--config", str(good), "domain", "list"], {"CADUCEE_CONFIG": missing})
    assert r.returncode == 1 and "not initialised" in r.stderr
    r = run_cli(["domain", "list"], {"CADUCEE_CONFIG": str(good)})
    assert r.returncode == 1 and "not initialised" in r.stderr
    r = run_cli(["domain", "list"], {"CADUCEE_CONFIG": missing})
    assert r.returncode == 2 and "missing.toml: configuration file not found" in r.stderr
    r = run_cli(["domain", "list"], {})
    assert r.returncode == 2 and "CADUCEE_CONFIG" in r.stderr


def test_admin_listener_is_loopback_unless_allowed(tmp_path: Path) -> None:
    """Issue 19: the admin listener defaults to loopback; another address needs ``allow_remote``."""
    assert load(write(tmp_path, "")).admin.listen == ["127.0.0.1:9180"]
    assert load(write(tmp_path, '[admin]\nlisten = ["[::1]:9180", "localhost:9181"]\n')).admin.listen
    s = load(write(tmp_path, '[admin]\nlisten = ["0.0.0.0:9180"]\nallow_remote = true\n'))
    assert s.admin.listen == ["0.0.0.0:9180"] and s.admin.allow_remote
