"""Prompt files: ``prompts/<name>.md`` (a ``string.Template``: ``$duration``, ``$events``...) and, for answers that
are JSON, ``<name>.schema.json`` sent as the response format and checked after ``json.loads``. A user's
``--prompts DIR`` overrides any of them by file name; the rest come from the package."""

from __future__ import annotations

import json
import string
from pathlib import Path

from ...errors import EchoError

PACKAGED = Path(__file__).parent / "prompts"
CAPTION_VIEWS = ("description", "speech", "music")


class Prompt:
    def __init__(self, name: str, override_dir: Path | None = None):
        self.name = name
        self.template_path = _find(f"{name}.md", override_dir)
        self.template = string.Template(self.template_path.read_text(encoding="utf-8"))
        schema_path = _find(f"{name}.schema.json", override_dir, required=False)
        self.schema = json.loads(schema_path.read_text(encoding="utf-8")) if schema_path else None

    def render(self, **values) -> str:
        try:
            return self.template.substitute({k: str(v) for k, v in values.items()})
        except (KeyError, ValueError) as exc:
            raise EchoError(f"prompt {self.template_path}: unknown or malformed placeholder ({exc})") from None

    def response_format(self) -> dict | None:
        """The OpenAI ``response_format`` asking for JSON that follows this prompt's schema."""
        if self.schema is None:
            return None
        return {"type": "json_schema", "json_schema": {"name": self.name, "strict": True, "schema": self.schema}}


def _find(filename: str, override_dir: Path | None, required: bool = True) -> Path | None:
    if override_dir is not None and (Path(override_dir) / filename).is_file():
        return Path(override_dir) / filename
    if (PACKAGED / filename).is_file():
        return PACKAGED / filename
    if required:
        raise EchoError(f"prompt file {filename} not found (looked in {override_dir or '-'} and {PACKAGED})")
    return None


def validate(obj, schema: dict, where: str = "$") -> list[str]:
    """Problems with ``obj`` against the subset of JSON Schema the prompts use (type, properties, required,
    additionalProperties, items, minItems). Empty when it conforms."""
    kind = schema.get("type")
    checks = {"object": dict, "array": list, "string": str, "boolean": bool, "number": (int, float),
              "integer": int}
    if kind in checks and (not isinstance(obj, checks[kind]) or (kind in ("number", "integer")
                                                                  and isinstance(obj, bool))):
        return [f"{where} should be {kind}, got {type(obj).__name__}"]
    problems = []
    if kind == "object":
        props = schema.get("properties", {})
        problems += [f"{where}.{k} is missing" for k in schema.get("required", []) if k not in obj]
        if schema.get("additionalProperties") is False:
            problems += [f"{where}.{k} is not allowed" for k in obj if k not in props]
        for k, sub in props.items():
            if k in obj:
                problems += validate(obj[k], sub, f"{where}.{k}")
    elif kind == "array":
        if len(obj) < schema.get("minItems", 0):
            problems.append(f"{where} needs at least {schema['minItems']} items")
        if "items" in schema:
            for i, x in enumerate(obj):
                problems += validate(x, schema["items"], f"{where}[{i}]")
    return problems
