"""Generate docs/configuration.md from the config models: every key, its type, default and meaning.

    python -m backupd.docgen > docs/configuration.md      (or: make docs)

A test regenerates it and fails when the committed file and the models have drifted apart.
"""

from __future__ import annotations

import json
import types
import typing
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from backupd import config as cfg

HEADER = """# Configuration reference

Generated from the pydantic models in `backupd/config.py` by `python -m backupd.docgen` (`make docs`);
a test fails when this file and the models disagree. The file is TOML, found at `--config PATH`, else
`$BACKUPD_CONFIG`, else `/etc/backupd/backupd.toml`.

- Any scalar can be overridden from the environment: `BACKUPD_<SECTION>__<KEY>` (e.g.
  `BACKUPD_SOURCE__DSN`, `BACKUPD_DESTINATIONS__0__PATH`); a value that parses as a JSON array or
  object is used as one.
- Every secret (marked **secret** below) can be given inline, as `<key>_file = "/path"` (one
  trailing newline stripped), or as systemd credential `$CREDENTIALS_DIRECTORY/<key>`.
- Durations are strings like `90s`, `30min`, `48h`, `7d` (units: s, min, h, d, w; combinable: `1h30min`).
- Unknown keys are refused. A wrong config exits with code 2 and one line per problem naming its key
  path, e.g. `destinations[1].bucket: required`.

See `config/backupd.example.toml` for a complete example.
"""


def _type_name(annotation: Any) -> str:
    origin = get_origin(annotation)
    if annotation is SecretStr:
        return "string"
    if annotation is timedelta:
        return "duration"
    if annotation in (str, Path):
        return "string" if annotation is str else "path"
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if origin is typing.Annotated:
        return _type_name(get_args(annotation)[0])
    if origin is Literal:
        return " \\| ".join(json.dumps(a) for a in get_args(annotation))
    if origin in (Union, types.UnionType):
        parts = [a for a in get_args(annotation) if a is not type(None)]
        name = " or ".join(_type_name(a) for a in parts)
        return name + (" (optional)" if len(parts) < len(get_args(annotation)) else "")
    if origin is list:
        return f"list of {_type_name(get_args(annotation)[0])}"
    if origin is dict:
        key, value = get_args(annotation)
        return f"table of {_type_name(key)} to {_type_name(value)}"
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return "table"
    return getattr(annotation, "__name__", str(annotation))


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is PydanticUndefined and field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    if isinstance(value, BaseModel):
        return "see below" if value.model_dump(exclude_none=True) else "(none)"
    if isinstance(value, timedelta):
        return f"`{cfg.format_duration(value)}`"
    if value is None:
        return "(none)"
    if isinstance(value, Path):
        return f"`{value}`"
    return f"`{json.dumps(value)}`"


def _table(model: type[BaseModel], skip: set[str] = frozenset()) -> list[str]:  # type: ignore[assignment]
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in skip:
            continue
        kind = _type_name(field.annotation)
        if name in getattr(model, "secret_keys", ()):
            kind += " **secret**"
        lines.append(f"| `{name}` | {kind} | {_default(field)} | {field.description or ''} |")
    return lines


def _union_members(annotation: Any) -> list[type[BaseModel]]:
    inner = get_args(annotation)[0] if get_origin(annotation) is typing.Annotated else annotation
    return [m for m in get_args(inner) if isinstance(m, type) and issubclass(m, BaseModel)]


def render() -> str:
    """The whole document."""
    out = [HEADER]
    for name, field in cfg.Config.model_fields.items():
        annotation = field.annotation
        if get_origin(annotation) is list:
            out.append(f"## `[[{name}]]`\n")
            out.append((field.description or "").capitalize() + ". One table per entry; `type` chooses the kind.\n")
            members = _union_members(get_args(annotation)[0])
            base: type[BaseModel] = members[0].__mro__[1]  # the shared base model of the union
            out.append(f"Keys every entry has ({base.__doc__.strip() if base.__doc__ else ''}):\n")
            out += _table(base) + [""]
            for member in members:
                type_literal = get_args(member.model_fields["type"].annotation)[0]
                out.append(f"### type = \"{type_literal}\"\n")
                out.append((member.__doc__ or "").strip() + "\n")
                out += _table(member, skip=set(base.model_fields) | {"type"}) + [""]
            if name == "destinations":
                out.append("#### `retention` (inside a destination)\n")
                out.append((cfg.Retention.__doc__ or "").strip() + "\n")
                out += _table(cfg.Retention) + [""]
        else:
            model = annotation
            assert isinstance(model, type) and issubclass(model, BaseModel)
            out.append(f"## `[{name}]`\n")
            out.append((model.__doc__ or "").strip() + "\n")
            out += _table(model) + [""]
    return "\n".join(out).rstrip() + "\n"


def main() -> None:
    """Print the reference to stdout."""
    print(render(), end="")


if __name__ == "__main__":
    main()
