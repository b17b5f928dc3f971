#!/usr/bin/env python3
"""Prints every PromQL expression of push0's alert rules and Grafana dashboard as one JSON array.

    deploy/prometheus/expressions.py [--source all|alerts|dashboard] [--detail]

Sources: deploy/prometheus/alerts.yml (each rule's `expr:`) and deploy/grafana/push0.json
(each panel target's `expr`, rows included). Alert expressions come first, in file order,
then the dashboard's in panel order; an expression that occurs twice is printed once.

Dashboard expressions are made plain PromQL that Prometheus can evaluate as they stand:
  - `$__rate_interval`, `$__interval` and `$__range` (also as `${...}`) become `1m`, so data
    must be scraped at least every 30 s for a rate over them to have two samples;
  - every template variable (`$team`, `${service}`, `[[team]]`) becomes `.+`. The dashboard
    uses variables only as the value of a `=~` matcher, so `.+` matches every value; a
    variable anywhere else is an error here.
Alert expressions return nothing while their condition is false, so on a healthy cluster an
empty result from them is expected.

--detail prints objects instead: {"source": "alerts" | "dashboard", "name": alert name or
panel title with the target's refId, "expr": ...}. Standard library only: alerts.yml is read
line by line (its `expr:` values are single-line scalars, as that file's header says), so no
YAML library is needed. Exits 1 with a message if a file breaks these assumptions.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "push0.json"

INTERVAL = "1m"
MATCH_ALL = ".+"
BUILTIN_INTERVALS = ("__rate_interval", "__interval", "__range")

KEY = re.compile(r"^(?P<indent>\s*)(?:-\s+)?(?P<key>[A-Za-z_][\w-]*):(?:\s+(?P<value>.*))?$")
# A variable reference as Grafana writes them: $name, ${name}, ${name:format}, [[name]].
VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


class FormatError(Exception):
    pass


def yaml_scalar(raw: str, where: str) -> str:
    """The value of a one-line YAML scalar: plain, 'single' or "double" quoted."""
    raw = raw.strip()
    if not raw:
        raise FormatError(f"{where}: empty expr")
    if raw[0] in "|>":
        raise FormatError(f"{where}: block scalar; keep expr on one line")
    if raw[0] in "\"'":
        end = raw.rfind(raw[0])
        rest = raw[end + 1:].strip()
        if end == 0 or (rest and not rest.startswith("#")):
            raise FormatError(f"{where}: unterminated quoted expr")
    if raw[0] == '"':
        # YAML's double-quoted escapes used in PromQL (\" and \\) read the same as JSON's.
        return json.loads(raw[: end + 1])
    if raw[0] == "'":
        return raw[1:end].replace("''", "'")
    # Plain scalar: a comment starts at " #".
    return raw.split(" #", 1)[0].rstrip()


def alert_expressions(path: Path) -> list[tuple[str, str]]:
    lines = path.read_text().splitlines()
    found = []
    name = "?"
    for i, line in enumerate(lines):
        m = KEY.match(line)
        if not m:
            continue
        key, value = m.group("key"), m.group("value") or ""
        if key in ("alert", "record"):
            name = yaml_scalar(value, f"{path.name}:{i + 1}")
        elif key == "expr":
            where = f"{path.name}:{i + 1}"
            expr = yaml_scalar(value, where)
            # A plain scalar continued on the next line would be silently cut here.
            nxt = next((l for l in lines[i + 1:] if l.strip() and not l.lstrip().startswith("#")), "")
            if nxt and not KEY.match(nxt) and not nxt.lstrip().startswith("- "):
                raise FormatError(f"{where}: expr continues on the next line; keep it on one line")
            found.append((name, expr))
    if not found:
        raise FormatError(f"{path}: no expr found")
    return found


def plain_promql(expr: str, where: str) -> str:
    """A dashboard expression with Grafana's variables replaced (see the module doc)."""
    def replace(m: re.Match) -> str:
        var = m.group(1) or m.group(2) or m.group(3)
        if var in BUILTIN_INTERVALS:
            return INTERVAL
        if var.startswith("__"):
            raise FormatError(f"{where}: unsupported built-in variable ${var}")
        # Only as (part of) a regex matcher's value: label=~"…$var…".
        before = expr[: m.start()]
        if not re.search(r'=~\s*"[^"]*$', before):
            raise FormatError(f"{where}: ${var} is used outside a =~ matcher")
        return MATCH_ALL
    out = VARIABLE.sub(replace, expr)
    if "$" in out:
        raise FormatError(f"{where}: unreplaced '$' in {out!r}")
    return out


def panels_of(panels: list[dict]) -> list[dict]:
    out = []
    for p in panels:
        out.append(p)
        out.extend(panels_of(p.get("panels") or []))
    return out


def dashboard_expressions(path: Path) -> list[tuple[str, str]]:
    dash = json.loads(path.read_text())
    found = []
    for panel in panels_of(dash.get("panels") or []):
        for target in panel.get("targets") or []:
            expr = target.get("expr")
            if not expr:
                continue
            name = f"{panel.get('title', '?')} [{target.get('refId', '?')}]"
            found.append((name, plain_promql(expr, f"{path.name}: {name}")))
    if not found:
        raise FormatError(f"{path}: no panel target with an expr")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", choices=("all", "alerts", "dashboard"), default="all")
    parser.add_argument("--detail", action="store_true", help="print source, name and expr")
    args = parser.parse_args()
    try:
        items: list[tuple[str, str, str]] = []
        if args.source in ("all", "alerts"):
            items += [("alerts", n, e) for n, e in alert_expressions(ALERTS)]
        if args.source in ("all", "dashboard"):
            items += [("dashboard", n, e) for n, e in dashboard_expressions(DASHBOARD)]
    except (OSError, ValueError, FormatError) as exc:
        print(f"expressions.py: {exc}", file=sys.stderr)
        return 1
    seen: set[str] = set()
    unique = []
    for source, name, expr in items:
        if expr not in seen:
            seen.add(expr)
            unique.append({"source": source, "name": name, "expr": expr})
    if args.detail:
        json.dump(unique, sys.stdout, indent=2)
    else:
        json.dump([u["expr"] for u in unique], sys.stdout, indent=2)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
