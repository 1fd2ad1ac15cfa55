"""The command line as a user meets it: help, config errors, masked summaries."""

from __future__ import annotations

import io
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest

from connector.cli import EXIT_USAGE, main

if TYPE_CHECKING:
    from pathlib import Path

SECRET = "cli-secret-Zq81-never-shown"


def run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), out, err)
    return code, out.getvalue(), err.getvalue()


def test_module_help_lists_every_command() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "connector", "--help"], capture_output=True, text=True, check=True
    )
    for command in ("run", "check", "emulate", "produce-sample"):
        assert command in done.stdout


@pytest.mark.parametrize(
    ("platform", "own", "default_rate", "others"),
    [
        ("buildingminds", "--processing-delay", "100/60", "--login-user"),
        ("buildingx", "--clients", "10/1", "--processing-delay"),
        ("bimlink", "--refresh-token-lifetime", "300/60", "--requests-per-minute"),
        ("bimplus", "--legacy-lifetime", "100/60", "--max-body-bytes"),
    ],
)
def test_emulate_help_shows_one_platform(
    platform: str, own: str, default_rate: str, others: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as caught:
        run("emulate", platform, "--help")
    assert caught.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for shared in ("--host", "--port", "--rate-limit", "--token-lifetime", "--fault-profile"):
        assert shared in text
    assert own in text
    assert f"(default: {default_rate})" in text
    assert others not in text


def test_config_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNECTOR_CONFIG", raising=False)
    with pytest.raises(SystemExit) as caught:
        run("check")
    assert caught.value.code == 2


def test_check_reports_all_problems_and_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(
        f"sink: {{client_id: '', client_secret: {SECRET}, scope: s, token_url: nope}}\n"
        "metrics: {port: 70000}\n"
    )
    code, out, err = run("check", "--config", str(path))
    assert code == EXIT_USAGE
    assert "configuration has 3 problems" in err
    assert "sink.client_id: must not be empty" in err
    assert "sink.token_url: must be an http:// or https:// URL" in err
    assert "metrics.port: Input should be less than or equal to 65535" in err
    assert SECRET not in out + err


def test_check_prints_a_masked_summary(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text(f"sink: {{client_id: c, client_secret: {SECRET}, scope: s}}\n")
    _, out, err = run("check", "--config", str(path))
    assert "client_secret: '**********'" in out
    assert SECRET not in out + err


def serve_briefly(*argv: str) -> tuple[str, str]:
    """`python -m connector emulate ...` until it has announced itself: (stdout, stderr)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "connector", "emulate", *argv, "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        announced = proc.stdout.readline()  # printed once the socket is bound
    finally:
        proc.terminate()
        _, rest = proc.communicate(timeout=10)
    return announced, rest


@pytest.mark.parametrize("platform", ["buildingminds", "buildingx"])
def test_only_an_emulator_bound_beyond_loopback_warns_that_its_admin_api_is_open(
    platform: str,
) -> None:
    announced, err = serve_briefly(platform, "--host", "0.0.0.0")  # noqa: S104 - the point
    assert "listening on" in announced
    assert "the admin API under /_emulator/ has no authentication" in err
    assert "listening on 0.0.0.0" in err
    announced, err = serve_briefly(platform, "--host", "127.0.0.1")
    assert "listening on" in announced
    assert "warning" not in err, "loopback is the safe default: no warning"


@pytest.mark.parametrize("argv", [["buildingminds"], ["buildingx", "--port", "8080"]])
def test_emulate_without_the_dev_tools_installed_says_how_to_get_them(
    monkeypatch: pytest.MonkeyPatch, argv: list[str]
) -> None:
    # as in the runtime image: the emulators are a distribution of their own
    monkeypatch.setitem(sys.modules, "twin_emulators", None)
    code, out, err = run("emulate", *argv)
    assert code == EXIT_USAGE
    assert out == ""
    assert "building-twin-devtools" in err
    assert "pip install -e ./devtools" in err


def test_emulate_help_without_the_dev_tools_installed_names_the_distribution(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "twin_emulators", None)
    with pytest.raises(SystemExit) as stopped:
        run("emulate", "--help")
    assert stopped.value.code == 0
