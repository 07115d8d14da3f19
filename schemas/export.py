"""Write the JSON Schema of every topic to docs/schemas/ (python -m schemas.export)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

from .outputs import DEAD_LETTER_SCHEMA, PROPOSAL_SCHEMA, STATUS_SCHEMA, SUPPRESSED_SCHEMA
from .validate import SPECS, json_schema


def all_schemas() -> dict[str, dict]:
    out = {topic: json_schema(topic) for topic in SPECS}
    out["proposals"] = PROPOSAL_SCHEMA
    out["proposals.suppressed"] = SUPPRESSED_SCHEMA
    out["proposal-status"] = STATUS_SCHEMA
    out["dead-letters"] = DEAD_LETTER_SCHEMA
    return out


def render(schema: dict) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"


def main(target: str = "docs/schemas") -> None:
    root = Path(target)
    root.mkdir(parents=True, exist_ok=True)
    for name, schema in all_schemas().items():
        (root / f"{name}.json").write_text(render(schema), encoding="utf-8")


if __name__ == "__main__":
    main(*sys.argv[1:])
