"""Service settings, from environment variables. With none set, the embedded default runs:
SQLite under ``DATA_DIR``."""

from __future__ import annotations

from pathlib import Path

from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(extra="ignore")

    data_dir: Path = Path("data")
    # e.g. postgresql://user:pass@host:5432/hotdog; default: SQLite in data_dir.
    database_url: str | None = None

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'hotdog.db').resolve()}"


def get_settings() -> Settings:
    return Settings()
