"""The Dockerfile, docker-compose.yml and README agree with the code: every command they
run exists, every variable they set is a setting, every setting is documented."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from app.cli.main import build_parser
from app.core.config import Settings

ROOT = Path(__file__).resolve().parents[1]
SERVICE_COMMANDS = {"serve", "worker", "migrate"}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _subcommands() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return set(sub.choices)  # type: ignore[arg-type]


def test_compose_has_every_part_and_runs_real_commands() -> None:
    services = _compose()["services"]
    workers = ("worker-gpu0", "worker-gpu1")
    assert set(services) == {"postgres", "redis", "migrate", "api", *workers}
    commands = _subcommands()
    for name in ("migrate", "api", *workers):
        command = services[name]["command"][0]
        assert command in commands and command in SERVICE_COMMANDS, name
    assert services["api"]["depends_on"]["migrate"]["condition"] == (
        "service_completed_successfully")
    for i, name in enumerate(workers):  # one GPU each
        (gpu,) = services[name]["deploy"]["resources"]["reservations"]["devices"]
        assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
        assert gpu["device_ids"] == [str(i)]
    for name in ("api", *workers):
        assert "data:/data" in services[name]["volumes"]
    env = _compose()["x-hotdog-env"]
    assert env["DATA_DIR"] == "/data" and env["BROKER_URL"].startswith("redis://")
    assert env["DATABASE_URL"].startswith("postgresql://")


def test_compose_refuses_to_publish_the_api_without_a_key() -> None:
    """The API's port is published: its API_KEY must be set and not empty (``:?``)."""
    api = _compose()["services"]["api"]
    assert api["ports"] and api["command"][api["command"].index("--host") + 1] == "0.0.0.0"
    assert re.fullmatch(r"\$\{API_KEY:\?[^}]+\}", api["environment"]["API_KEY"])
    assert "API_KEY" not in _compose()["x-hotdog-env"]  # no empty default for anyone


def test_compose_variables_are_settings() -> None:
    fields = {name.upper() for name in Settings.model_fields}
    env = dict(_compose()["x-hotdog-env"])
    env.update(_compose()["services"]["api"]["environment"])
    env.pop("<<", None)
    assert set(env) <= fields, set(env) - fields


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Environment variables", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"`([A-Z][A-Z0-9_]+)`", table))
    missing = {name.upper() for name in Settings.model_fields} - documented
    assert not missing, f"settings missing from the README's table: {sorted(missing)}"


def test_the_image_runs_hotdog_and_ships_the_migrations() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["hotdog"]' in dockerfile
    assert 'CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]' in dockerfile
    assert "COPY --chown=hotdog:hotdog migrations ./migrations" in dockerfile
    assert "-c constraints.txt" in dockerfile


def test_compose_file_validates_where_docker_compose_is_installed(tmp_path: Path) -> None:
    tool = shutil.which("docker-compose")
    if tool is None:  # only the client-less CI image lacks it; the checks above still run
        return
    env_file = tmp_path / "empty.env"  # not the checkout's own .env, if it has one
    env_file.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "API_KEY"}

    def config(**given: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([tool, "--env-file", str(env_file), "config", "-q"], cwd=ROOT,
                              capture_output=True, text=True, env={**env, **given})

    proc = config(API_KEY="a-key")
    assert proc.returncode == 0, proc.stderr
    # Scoped keys pass through as written (';' and ',' need no quoting in compose).
    entries = "k" * 43 + ":predict;" + "K-_9" * 11 + ":read,train"
    proc = subprocess.run([tool, "--env-file", str(env_file), "config"], cwd=ROOT,
                          capture_output=True, text=True,
                          env={**env, "API_KEY": "a-key", "API_KEYS": entries})
    assert proc.returncode == 0, proc.stderr
    passed = yaml.safe_load(proc.stdout)["services"]["api"]["environment"]["API_KEYS"]
    assert len(Settings(api_keys=passed).key_entries()) == 2 and passed == entries
    for proc in (config(), config(API_KEY="")):  # missing or empty: compose refuses
        assert proc.returncode != 0 and "set API_KEY" in proc.stderr, proc.stderr
