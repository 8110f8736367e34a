"""Command-line options made from :class:`TrainConfig`'s field metadata (``params``): the
flag, type, choices, help and range of every training parameter are declared there once.

``hotdog train`` (surface ``cli``) gets TrainConfig's defaults; ``hotdog submit`` (surface
``api``) gets None everywhere, so it sends only what the user gave and the service fills
in the rest; ``hotdog demo`` takes a few of them with its own, smaller defaults.
"""

from __future__ import annotations

import argparse
import os
import types
from collections.abc import Callable, Collection, Mapping
from dataclasses import Field
from typing import Any, Protocol, Union, cast, get_args, get_origin, get_type_hints

from app.client import DEFAULT_URL
from app.engine.config import Param, TrainConfig, params

_HINTS = get_type_hints(TrainConfig)


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def value_type(field: Field[Any]) -> type:
    """The field's type without ``None`` (``float | None`` -> float)."""
    hint = _HINTS[field.name]
    if get_origin(hint) in (Union, types.UnionType):
        (hint,) = [a for a in get_args(hint) if a is not type(None)]
    if hint not in (int, float, str):
        raise TypeError(f"no command-line type for {field.name}: {hint}")
    return cast(type, hint)


def checked(name: str, kind: type, param: Param) -> Callable[[str], Any]:
    """An argparse ``type``: converts, then applies the parameter's range, so that a bad
    value is a usage error (exit 2) that names the parameter."""

    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = param.problem(name, value)
        if problem:
            raise argparse.ArgumentTypeError(problem)
        return value

    return convert


def add_train_options(p: argparse.ArgumentParser, surface: str | None,
                      defaults: Mapping[str, Any] | None, *,
                      only: Collection[str] | None = None) -> None:
    """One option per parameter offered on ``surface`` (or, of those, the ones in ``only``).
    ``defaults``: each option's default by name; None: every option defaults to None (not
    given), its help then says TrainConfig's default (the service's)."""
    for f, param in params(surface):
        if only is not None and f.name not in only:
            continue
        help = param.help
        if defaults is None and f.default is not None:
            help += f" (default: {f.default})"
        p.add_argument(flag(f.name), dest=f.name, type=checked(f.name, value_type(f), param),
                       default=None if defaults is None else defaults[f.name],
                       choices=param.choices, help=help)


def given(args: argparse.Namespace, surface: str) -> dict[str, Any]:
    """The parameters of ``surface`` the user gave (``None``: not given)."""
    return {f.name: getattr(args, f.name) for f, _ in params(surface)
            if getattr(args, f.name) is not None}


def train_config(args: argparse.Namespace, surface: str = "cli") -> TrainConfig:
    """TrainConfig from the options :func:`add_train_options` made."""
    return TrainConfig(**{f.name: getattr(args, f.name) for f, _ in params(surface)})


class AddCommand(Protocol):
    """Adds a subcommand to the ``hotdog`` parser (app.cli.main): every command gets
    ``--json`` and the exit codes in its help. ``json_logs``: a long-running command that
    prints logs, not a result; its --json means JSON log lines."""

    def __call__(self, name: str, func: Callable[[argparse.Namespace], int], help: str,
                 epilog: str = "", *, json_logs: bool = False) -> argparse.ArgumentParser: ...


def add_service_options(p: argparse.ArgumentParser) -> None:
    """Where the service is, for the commands that talk to one."""
    p.add_argument("--url", default=os.environ.get("HOTDOG_URL", DEFAULT_URL),
                   help="the service (env HOTDOG_URL)")
    p.add_argument("--api-key", default=os.environ.get("HOTDOG_API_KEY"),
                   help="API key, when the service has one (env HOTDOG_API_KEY)")


def client_commands(command: AddCommand) -> AddCommand:
    """``command``, each subcommand it adds also taking the service options (--url,
    --api-key): for the commands that talk to a running service."""
    def add(name: str, func: Callable[[argparse.Namespace], int], help: str,
            epilog: str = "", *, json_logs: bool = False) -> argparse.ArgumentParser:
        p = command(name, func, help, epilog, json_logs=json_logs)
        add_service_options(p)
        return p
    return add
