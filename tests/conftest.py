from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.core.config import Settings
from tests.servers import ServerMissing, postgres_database, postgres_server, redis_server


@pytest.fixture(scope="session")
def color_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.helpers import write_color_dataset

    return write_color_dataset(tmp_path_factory.mktemp("colors"))


@pytest.fixture(scope="session")
def demo_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from app.datasets.synthetic import generate_demo_dataset

    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo_dataset(out, train_per_class=40, test_per_class=20, seed=0)
    return out


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """The API in process, on the requesting module's ``settings`` fixture."""
    from app.api.app import create_app

    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def no_imagenet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torchvision cache and no configured weights file."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
    monkeypatch.delenv("HOTDOG_PRETRAINED_PATH", raising=False)
    return tmp_path / "torch-home"


# The servers: DATABASE_URL / REDIS_URL (set by .ci/run) when given, else the default local
# servers when they answer, else throwaway ones this session starts (tests/servers.py). Each
# test session works in a database of its own, created and dropped here.
CONFIGURED_POSTGRES = os.environ.get("DATABASE_URL")
CONFIGURED_REDIS = os.environ.get("REDIS_URL")
# Then the service settings are taken out of the environment, so that a test which forgets
# to say where its data goes fails the same way everywhere instead of writing into .ci/run's
# database (or this checkout's ./data): tests pass their URLs and folders explicitly.
for _name in ("DATABASE_URL", "BROKER_URL", "API_KEY", "API_KEYS", "TRAINING_QUEUE", "HOST",
              "ALLOWED_HOSTS"):
    os.environ.pop(_name, None)
# Runtimes that cost CPU seconds on every model load or job: a compile (a minute or more on
# 2 cores), INT8 calibration; tests/test_runtimes.py asks for them (and the services a test
# starts inherit this). Measuring the runtimes of a loaded model takes a fraction of a second.
os.environ.setdefault("PREDICT_COMPILE", "false")
os.environ.setdefault("EXPORT_INT8", "false")
os.environ.setdefault("PREDICT_TUNE_SECONDS", "0.2")
os.environ["DATA_DIR"] = tempfile.mkdtemp(prefix="hotdog-tests-data-")
atexit.register(shutil.rmtree, os.environ["DATA_DIR"], True)


@contextmanager
def _server(resolve: Callable[[str | None], AbstractContextManager[str]],
            configured: str | None) -> Iterator[str]:
    """``resolve``'s server; a readable failure (naming the package) when there is none."""
    with ExitStack() as stack:
        try:
            url = stack.enter_context(resolve(configured))
        except ServerMissing as exc:
            missing = str(exc)
        else:
            yield url
            return
    pytest.fail(missing, pytrace=False)


@pytest.fixture(scope="session")
def postgres_server_url() -> Iterator[str]:
    """A PostgreSQL server on which the session creates its databases (see above)."""
    with _server(postgres_server, CONFIGURED_POSTGRES) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """The Redis server of the tests' brokers (see above); each stack uses a queue of its
    own on it."""
    with _server(redis_server, CONFIGURED_REDIS) as url:
        yield url


@pytest.fixture(scope="session")
def postgres_url(postgres_server_url: str) -> Iterator[str]:
    """An empty database for the services under test, which migrate it themselves."""
    with postgres_database(postgres_server_url) as url:
        yield url


@pytest.fixture(scope="session")
def migrated_postgres_url(postgres_server_url: str) -> Iterator[str]:
    """A second database, migrated to head once for every test that uses ``db_url``."""
    from app.db.session import upgrade

    with postgres_database(postgres_server_url) as url:
        upgrade(url)
        yield url


@pytest.fixture(scope="session")
def migrated_sqlite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated to head once; each test gets a copy."""
    from app.db.session import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "hotdog.db"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(params=["sqlite", "postgres"])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A database at the head revision on each backend, empty: SQLite as a fresh copy of a
    migrated file, Postgres as one migrated database whose tables are emptied after the
    test (migrating for every test took most of these tests' time)."""
    if request.param == "sqlite":
        path = tmp_path / "hotdog.db"
        shutil.copyfile(request.getfixturevalue("migrated_sqlite"), path)
        yield f"sqlite:///{path}"
    else:
        url = request.getfixturevalue("migrated_postgres_url")
        yield url
        _empty_at_head(url)


def _empty_at_head(url: str) -> None:
    """Back to an empty database at head, also after a test that migrated it elsewhere."""
    from alembic.script import ScriptDirectory
    from sqlalchemy import text
    from sqlalchemy.exc import DBAPIError

    from app.db.models import Base
    from app.db.session import alembic_config, make_engine, upgrade

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            version = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    except DBAPIError:  # no alembic_version table
        version = None
    if version != ScriptDirectory.from_config(alembic_config(url)).get_current_head():
        upgrade(url)
    try:
        with engine.begin() as conn:  # DELETE: faster than TRUNCATE on a few rows
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())
    finally:
        engine.dispose()
