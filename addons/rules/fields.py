"""Field types shared by every rule schema: durations, rates, secrets with `file:` references."""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, SecretStr, ValidationInfo

from addons.rules.filerefs import read_file_ref
from addons.units import Rate, parse_duration, parse_rate


class Model(BaseModel):
    """Rule-file objects: unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, hide_input_in_errors=True)


Duration = Annotated[float, BeforeValidator(parse_duration)]
RateField = Annotated[Rate, BeforeValidator(parse_rate)]


def _resolve_file_ref(value: Any, info: ValidationInfo) -> Any:
    """`file:path` reads the value from a file, relative to the rules directory."""
    if isinstance(value, str) and value.startswith("file:"):
        # Regular files under the rules directory only, bounded (see filerefs.py).
        return read_file_ref(value[5:], (info.context or {}).get("base_dir", "."))
    return value


# A value given inline or as `file:path` (a CA bundle, say): not secret, so a plain string.
FileText = Annotated[str, BeforeValidator(_resolve_file_ref)]

# A secret: inline, `${ENV}` (substituted before validation) or `file:path`. SecretStr keeps it out of
# every repr, so a rule object printed into a log or /status shows `**********`.
Secret = Annotated[SecretStr, BeforeValidator(_resolve_file_ref)]


def _check_zone(value: str | None) -> str | None:
    if value is not None:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
    return value


TimeZone = Annotated[str | None, AfterValidator(_check_zone)]

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def _check_name(value: str) -> str:
    if not NAME_RE.match(value):
        raise ValueError(f"{value!r} is not a valid name (letters, digits, '-' and '_')")
    return value


Name = Annotated[str, AfterValidator(_check_name)]


def _strict_false(value: Any) -> Any:
    # "10.1.0.1/16" has host bits set; accept it as the network an operator meant.
    if isinstance(value, list):
        return [ipaddress.ip_network(v, strict=False) if isinstance(v, str) else v for v in value]
    return value


# A list of networks (an app's `sources`, egress `allow_cidrs`), written as CIDRs or addresses.
Networks = Annotated[list[ipaddress.IPv4Network | ipaddress.IPv6Network], BeforeValidator(_strict_false)]
