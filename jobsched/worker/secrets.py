"""Secret references resolved on the worker, at the last moment.

A job stores ``{"secret": "NAME"}`` where a value would go (shell env, HTTP headers); only
that name is ever in the API, the database, the queue or a log. The worker reads the
value from ``<secrets_dir>/NAME`` (one file per secret, a trailing newline dropped) or
else from its environment variable ``JOBSCHED_SECRET_<NAME>``, hands it to the process or
request, and masks it in the output it records.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobsched.settings import Settings

ENV_PREFIX = "JOBSCHED_SECRET_"
MAX_SECRET_BYTES = 65_536
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# Shorter values are not masked in output: masking "1" would garble every number.
MIN_MASKED_LENGTH = 4


class MissingSecret(Exception):
    """A referenced secret cannot be resolved; the message names it, never a value."""

    def __init__(self, name: str, why: str) -> None:
        super().__init__(f"secret {name!r} {why}")
        self.name = name


@dataclass(frozen=True)
class SecretSource:
    directory: Path | None = None
    environ: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings, environ: Mapping[str, str] | None = None,
                      ) -> SecretSource:
        directory = Path(settings.secrets_dir) if settings.secrets_dir else None
        return cls(directory, os.environ if environ is None else environ)

    def lookup(self, name: str) -> str:
        if not NAME_RE.fullmatch(name):  # also keeps a name from walking out of the directory
            raise MissingSecret(name, "is not a valid secret name")
        if self.directory is not None:
            path = self.directory / name
            try:
                with path.open("rb") as handle:
                    data = handle.read(MAX_SECRET_BYTES + 1)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise MissingSecret(name, f"cannot be read from {path}: "
                                          f"{exc.strerror}") from None
            else:
                if len(data) > MAX_SECRET_BYTES:
                    raise MissingSecret(name, f"is larger than {MAX_SECRET_BYTES} bytes")
                try:
                    text = data.decode()
                except UnicodeDecodeError:
                    raise MissingSecret(name, "is not UTF-8 text") from None
                return text.removesuffix("\n").removesuffix("\r")
        value = self.environ.get(ENV_PREFIX + name)
        if value is not None:
            return value
        where = f"no file {self.directory / name} and " if self.directory else ""
        raise MissingSecret(name, f"is not configured on this worker: {where}"
                                  f"${ENV_PREFIX}{name} is not set")

    def resolve(self, values: Mapping[str, Any]) -> tuple[dict[str, str], list[str]]:
        """Plain values kept, references replaced: the mapping and the secret values used."""
        resolved: dict[str, str] = {}
        used: list[str] = []
        for key, value in values.items():
            if isinstance(value, dict):
                secret = self.lookup(str(value.get("secret", "")))
                resolved[key] = secret
                used.append(secret)
            else:
                resolved[key] = str(value)
        return resolved, used


def mask(text: str | None, secrets: Iterable[str]) -> str | None:
    """The text with every secret value replaced by ``***``."""
    if not text:
        return text
    for secret in sorted(set(secrets), key=len, reverse=True):
        if len(secret) >= MIN_MASKED_LENGTH:
            text = text.replace(secret, "***")
    return text
