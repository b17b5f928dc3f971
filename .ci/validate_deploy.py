#!/usr/bin/env python3
"""Offline checks of push0's deployment files; run through .ci/validate-deploy.

The real tools do the validating (no hand-written YAML schema here):
  compose   docker-compose v2 `config` (Compose specification loader + schema)
  docker    hadolint on deploy/Dockerfile
  helm      Helm v4 Go SDK (helm-python-sdk): lint, values.schema.json, render
  k8s       kubernetes-validate strict schemas on every rendered manifest, except the
            custom resources (Prometheus Operator, KEDA), whose CRDs those schemas lack:
            they get structural schemas of our own (CRD_SCHEMAS)
  prometheus  promtool (deploy/prometheus/check): config, rules, rule unit tests,
              dashboard expressions
On top of that, push0-specific assertions: every team has a gateway group,
the services get the NATS URL, every service exports its traces to the
collector compose runs, teams.toml agrees between compose and Helm, TLS to NATS
reaches every push0 container (the chart with tls.enabled, compose with
deploy/compose.tls.yml), each compose container signs in with its own key only
(deploy/compose.auth.yml), and so on. A last check feeds known-bad inputs to each
validator to prove it bites.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path
from typing import Any, Callable

import yaml

KUBE_VERSION = "1.33.0"
RELEASE = "push0"
NAMESPACE = "push0"
SERVICES = ("ingest", "scheduler", "aggregator")
# Compose services that watch push0 rather than run it (checked by check_compose_monitoring;
# jaeger, the trace collector, by check_compose_traces).
MONITORING = ("prometheus", "grafana", "jaeger")
BINARIES = ("push0", "push0-ingest", "push0-scheduler", "push0-prover-gateway", "push0-aggregator",
            "push0-reporter")
EXTERNAL_NATS = "nats://nats-0.nats:4222,nats://nats-1.nats:4222,nats://nats-2.nats:4222"
TLS_EXTERNAL_NATS = "tls://nats-0.nats:4222,tls://nats-1.nats:4222,tls://nats-2.nats:4222"
# Binaries the deployment files run before their crate is in the workspace: push0-reporter
# (services/reporter) is being written. While services/<name>/src/main.rs is absent, the
# Dockerfile and flag checks pass over them; once it exists, both apply to them like to the
# others (deploy/Dockerfile must then install it).
PENDING_BINARIES = ("push0-reporter",)


# TLS to NATS: the chart mounts tls.secretName here and names its files in these variables;
# compose's TLS override (deploy/compose.tls.yml) mounts the certificates folder here too.
TLS_DIR = "/etc/push0/tls"
# Credentials to NATS: the chart mounts each pod's own key of auth.secretName here.
CREDS_DIR = "/etc/push0/creds"
TLS_VARS = {"PUSH0_TLS_CA": "caKey", "PUSH0_TLS_CERT": "certKey", "PUSH0_TLS_KEY": "keyKey"}
COMPOSE_TLS = Path("deploy") / "compose.tls.yml"
# Flags the deployment files set before the binaries declare them: the TLS settings
# (--tls-ca, --tls-cert, --tls-key) are being added to every binary. While no service's
# sources declare one, the flag check passes over it; once declared, it applies as to any flag.
PENDING_FLAGS = tuple(TLS_VARS)


def pending_binaries(root: Path) -> set[str]:
    return {b for b in PENDING_BINARIES
            if not (root / "services" / b.removeprefix("push0-") / "src" / "main.rs").is_file()}


class CheckError(Exception):
    def __init__(self, message: str, details: str = "") -> None:
        super().__init__(message)
        self.details = details


class Report:
    def __init__(self) -> None:
        self.passed = 0
        self.failed = 0

    def run(self, area: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            result = fn()
        except CheckError as exc:
            self.failed += 1
            print(f"FAIL {area}: {exc}", flush=True)
            for line in exc.details.strip().splitlines()[:40]:
                print(f"       {line}", flush=True)
            return
        except Exception as exc:  # a crash in a check is a failed check, not a traceback
            self.failed += 1
            print(f"FAIL {area}: {type(exc).__name__}: {exc}", flush=True)
            return
        # A check returns its message, or (message, value) to hand a value on.
        message, value = result if isinstance(result, tuple) else (result, None)
        self.passed += 1
        took = time.monotonic() - start
        print(f"ok   {area}: {message}" + (f" [{took:.1f}s]" if took >= 1 else ""), flush=True)
        return value


def run_tool(cmd: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def expect(cond: bool, message: str, details: str = "") -> None:
    if not cond:
        raise CheckError(message, details)


# --------------------------------------------------------------------------
# compose
# --------------------------------------------------------------------------


class Compose:
    def __init__(self, binary: Path, root: Path) -> None:
        self.binary = binary
        self.root = root
        # Interpolation must not depend on the caller's shell.
        self.env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("COMPOSE_", "PUSH0_", "DOCKER_", "OTEL_", "ETHPROOFS_"))}

    def version(self) -> str:
        out = run_tool([str(self.binary), "version", "--short"], self.root, self.env)
        return out.stdout.strip() or "?"

    def config(self, file: Path, *extra: str) -> subprocess.CompletedProcess:
        """`config` with every profile on (tools: the CLI; ethproofs: the reporter)."""
        return self.config_files([file], *extra)

    def config_files(self, files: list[Path], *extra: str,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """`config` of files merged in order, paths relative to the first one's folder; `env`
        adds variables to the interpolation's environment."""
        args = [a for f in files for a in ("-f", str(f))]
        return run_tool([str(self.binary), *args, "--project-directory", str(files[0].parent),
                         "--profile", "tools", "--profile", "ethproofs", "config", *extra], self.root,
                        {**self.env, **(env or {})})


def check_compose_valid(compose: Compose) -> str:
    out = compose.config(compose.root / "docker-compose.yml", "--quiet")
    expect(out.returncode == 0, "docker-compose.yml rejected by docker-compose config",
           out.stderr + out.stdout)
    return f"docker-compose.yml valid (validator docker-compose {compose.version()} config)"


# The scheduler's teams file, as push0_protocol::TeamsFile reads it: snake_case
# keys, unknown keys refused, defaults below. Kept in step with
# shared/protocol/src/team.rs so a bad deploy/teams.toml fails here, not at start.
TEAM_DEFAULTS = {"shape": "single", "parts": None, "arity": 2, "chains": [],
                 "leaf_class": "prove", "aggregate_class": "prove",
                 "ack_wait_ms": 3_000, "max_deliver": 5, "time_limit_ms": None,
                 "proof_system": None, "verifier": [], "mode": "sequential",
                 "slot_ms": 12_000, "sample_every": 1, "late_policy": "drop", "class": {},
                 "ethproofs_cluster_id": None}
# [team.class.<class>]: overrides of the team's settings for one of its task classes.
CLASS_KEYS = ("ack_wait_ms", "max_deliver", "time_limit_ms")
TOKEN = re.compile(r"[a-z0-9-]{1,32}")
# Helm values spell the same keys in camelCase.
HELM_TEAM_KEYS = {"leafClass": "leaf_class", "aggregateClass": "aggregate_class",
                  "ackWaitMs": "ack_wait_ms", "maxDeliver": "max_deliver",
                  "timeLimitMs": "time_limit_ms", "proofSystem": "proof_system",
                  "slotMs": "slot_ms", "sampleEvery": "sample_every", "latePolicy": "late_policy",
                  "ethproofsClusterId": "ethproofs_cluster_id"}
# Keys of .Values.teams[] that configure the chart, not the teams file.
HELM_ONLY_TEAM_KEYS = ("gateway", "keda")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def team_problems(teams: list[dict[str, Any]]) -> list[str]:
    """What push0_protocol::TeamsFile::parse would refuse, every problem at once."""
    problems = []
    names: set[str] = set()
    for i, team in enumerate(teams):
        name = team.get("name")
        if not isinstance(name, str) or not TOKEN.fullmatch(name):
            problems.append(f"team[{i}]: name {name!r} must be 1-32 of a-z, 0-9, -")
        if name in names:
            problems.append(f"team {name} is defined twice")
        names.add(name)
        unknown = set(team) - {"name", *TEAM_DEFAULTS}
        if unknown:
            problems.append(f"team {name}: unknown keys {sorted(unknown)}")
        t = {**TEAM_DEFAULTS, **team}
        if t["shape"] not in ("single", "split"):
            problems.append(f"team {name}: shape must be single or split, not {t['shape']!r}")
        elif t["shape"] == "split" and not (is_int(t["parts"]) and 1 <= t["parts"] <= 1024):
            problems.append(f"team {name}: split needs parts from 1 to 1024, got {t['parts']!r}")
        elif t["shape"] == "single" and t["parts"] is not None:
            problems.append(f"team {name}: parts only applies to shape split")
        if not (is_int(t["arity"]) and 2 <= t["arity"] <= 64):
            problems.append(f"team {name}: arity must be 2 to 64, got {t['arity']!r}")
        for key in ("leaf_class", "aggregate_class"):
            if not (isinstance(t[key], str) and TOKEN.fullmatch(t[key])):
                problems.append(f"team {name}: {key} {t[key]!r} must be 1-32 of a-z, 0-9, -")
        if not isinstance(t["chains"], list) or not all(
                isinstance(c, str) and TOKEN.fullmatch(c) for c in t["chains"]):
            problems.append(f"team {name}: chains must be a list of chain ids [a-z0-9-]{{1,32}}")
        if t["proof_system"] is not None and not isinstance(t["proof_system"], str):
            problems.append(f"team {name}: proof_system must be a string")
        if not isinstance(t["verifier"], list) or not all(isinstance(a, str) for a in t["verifier"]):
            problems.append(f"team {name}: verifier must be a list of strings (program and arguments)")
        if t["mode"] not in ("sequential", "realtime"):
            problems.append(f"team {name}: mode must be sequential or realtime, not {t['mode']!r}")
        if t["late_policy"] not in ("drop", "finish-late"):
            problems.append(f"team {name}: late_policy must be drop or finish-late, not {t['late_policy']!r}")
        if not (is_int(t["slot_ms"]) and t["slot_ms"] >= 50):
            problems.append(f"team {name}: slot_ms must be at least 50")
        if not (is_int(t["sample_every"]) and t["sample_every"] >= 1):
            problems.append(f"team {name}: sample_every must be at least 1")
        elif t["sample_every"] > 1 and t["mode"] == "sequential":
            problems.append(f"team {name}: sampling skips blocks, which mode sequential never does; use mode realtime")
        cluster = t["ethproofs_cluster_id"]
        if cluster is not None and not (is_int(cluster) and 0 <= cluster < 2**64):
            problems.append(f"team {name}: ethproofs_cluster_id must be a non-negative integer, got {cluster!r}")
        classes = [t["leaf_class"]]
        if t["shape"] == "split" and t["aggregate_class"] != t["leaf_class"]:
            classes.append(t["aggregate_class"])
        overrides = t["class"] if isinstance(t["class"], dict) else {}
        if not isinstance(t["class"], dict):
            problems.append(f"team {name}: class must be a table of task classes")
        settings = [(f"team {name}", {k: t[k] for k in CLASS_KEYS})]
        for cls, own in overrides.items():
            if cls not in classes:
                problems.append(f"team {name}: settings for class {cls}, which the team does not use "
                                f"(its classes: {', '.join(classes)})")
            if not isinstance(own, dict) or set(own) - set(CLASS_KEYS):
                problems.append(f"team {name}, class {cls}: only {', '.join(CLASS_KEYS)} may be set")
                continue
            settings.append((f"team {name}, class {cls}", {
                "ack_wait_ms": own.get("ack_wait_ms", t["ack_wait_ms"]),
                "max_deliver": own.get("max_deliver", t["max_deliver"]),
                "time_limit_ms": own.get("time_limit_ms")}))
        for whose, s in settings:
            if not (is_int(s["ack_wait_ms"]) and s["ack_wait_ms"] >= 500):
                problems.append(f"{whose}: ack_wait_ms must be at least 500")
            if not (is_int(s["max_deliver"]) and s["max_deliver"] >= 1):
                problems.append(f"{whose}: max_deliver must be at least 1")
            if s["time_limit_ms"] is not None and not (is_int(s["time_limit_ms"]) and s["time_limit_ms"] >= 100):
                problems.append(f"{whose}: time_limit_ms must be at least 100")
    return problems


def load_teams_toml(path: Path, text: str | None = None) -> list[dict[str, Any]]:
    try:
        data = tomllib.loads(path.read_text() if text is None else text)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise CheckError(f"{path.name}: {exc}")
    unknown = set(data) - {"team"}
    teams = data.get("team")
    expect(not unknown, f"{path.name}: unknown top-level keys {sorted(unknown)}")
    expect(isinstance(teams, list) and bool(teams), f"{path.name}: no [[team]] tables")
    problems = team_problems(teams)
    expect(not problems, f"{path.name}: {len(problems)} problem(s)", "\n".join(problems))
    return teams


def normalized_teams(teams: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teams with defaults applied and Helm's camelCase keys mapped, for comparing (without the
    chart-only gateway and keda settings)."""
    out = []
    for team in teams:
        t = {HELM_TEAM_KEYS.get(k, k): v for k, v in team.items() if k not in HELM_ONLY_TEAM_KEYS}
        t["class"] = {cls: {HELM_TEAM_KEYS.get(k, k): v for k, v in own.items()}
                      for cls, own in (t.get("class") or {}).items()}
        out.append({**TEAM_DEFAULTS, **t})
    return out


def check_compose_model(compose: Compose) -> str:
    root = compose.root
    out = compose.config(root / "docker-compose.yml", "--format", "json")
    expect(out.returncode == 0, "docker-compose config --format json failed", out.stderr)
    model = json.loads(out.stdout)
    services = model.get("services", {})
    problems: list[str] = []

    nats = services.get("nats")
    if not nats:
        problems.append("no nats service")
    else:
        cmd = nats.get("command") or []
        if not str(nats.get("image", "")).startswith("nats:"):
            problems.append("nats: image is not the official nats image")
        for flag in ("-js", "-m"):
            if flag not in cmd:
                problems.append(f"nats: command lacks {flag}")
        test = " ".join(nats.get("healthcheck", {}).get("test", []))
        if "/healthz?js-enabled-only=true" not in test:
            problems.append("nats: healthcheck does not probe /healthz?js-enabled-only=true")
        if not any(v.get("type") == "volume" and v.get("target") == "/data" for v in nats.get("volumes", [])):
            problems.append("nats: no named volume on /data")
        conf_mounts = [v for v in nats.get("volumes", []) if v.get("type") == "bind"
                       and v.get("target", "").endswith(".conf")]
        if not conf_mounts:
            problems.append("nats: no config file mounted (max_payload)")
        for v in conf_mounts:
            text = Path(v["source"]).read_text() if Path(v["source"]).exists() else ""
            if not re.search(r"(?m)^\s*max_payload\s*[:=]\s*8\s*MB\b", text):
                problems.append(f"nats: {v['source']} does not set max_payload: 8MB")
            if v.get("target") not in cmd:
                problems.append("nats: mounted config file is not passed with --config")
            if re.search(r"(?m)^\s*store_dir\s*[:=]", text) and {"-sd", "--store_dir"} & set(cmd):
                problems.append(f"nats: {v['source']} sets store_dir and the command gives -sd: "
                                "nats-server exits at start (Duplicate 'store_dir' configuration)")

    # The Compose schema types `restart` as any string; the engine rejects
    # anything else only at `up`.
    for name, svc in services.items():
        restart = svc.get("restart")
        if restart is not None and not re.fullmatch(r"no|always|unless-stopped|on-failure(:\d+)?", restart):
            problems.append(f"{name}: restart policy {restart!r} is not no|always|unless-stopped|on-failure[:N]")

    topology = services.get("topology") or {}
    if (topology.get("command") or [])[:3] != ["push0", "topology", "apply"]:
        problems.append("no one-shot topology service running push0 topology apply")
    elif topology.get("restart") not in (None, "no"):
        problems.append(f"topology: restart {topology.get('restart')!r}: a one-shot must not restart")

    teams = load_teams_toml(root / "deploy" / "teams.toml")
    # The topology step creates each team's object store from the scheduler's teams file.
    scheduler = services.get("scheduler") or {}
    scheduler_teams = bind_mounts(scheduler).get((scheduler.get("environment") or {}).get("PUSH0_TEAMS", ""))
    topology_teams = bind_mounts(topology).get((topology.get("environment") or {}).get("PUSH0_TEAMS", ""))
    if topology_teams is None or topology_teams != scheduler_teams:
        problems.append("topology: does not read the scheduler's teams file (PUSH0_TEAMS), so no "
                        "team gets its own object store")
    gateway_teams: dict[str, str] = {}
    binaries_seen: set[str] = set()
    for name, svc in services.items():
        if name == "nats" or name in MONITORING:
            continue
        cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
        binary = next((c for c in cmd if c in BINARIES), None)
        if binary is None:
            problems.append(f"{name}: runs no push0 binary ({cmd})")
            continue
        binaries_seen.add(binary)
        build = svc.get("build") or {}
        dockerfile = Path(build.get("context", str(root))) / build.get("dockerfile", "Dockerfile")
        if dockerfile.resolve() != (root / "deploy" / "Dockerfile").resolve():
            problems.append(f"{name}: not built from deploy/Dockerfile")
        if svc.get("depends_on", {}).get("nats", {}).get("condition") != "service_healthy":
            problems.append(f"{name}: does not wait for nats service_healthy")
        # Services only check the topology: each waits for the one-shot that applies it.
        if binary != "push0" and (svc.get("depends_on", {}).get("topology", {}).get("condition")
                                  != "service_completed_successfully"):
            problems.append(f"{name}: does not wait for the topology service to complete")
        env = svc.get("environment") or {}
        if env.get("PUSH0_NATS_URL") != "nats://nats:4222":
            problems.append(f"{name}: PUSH0_NATS_URL is {env.get('PUSH0_NATS_URL')!r}")
        if binary == "push0":
            continue
        if env.get("PUSH0_METRICS_ADDR") != "0.0.0.0:9090":
            problems.append(f"{name}: PUSH0_METRICS_ADDR must be 0.0.0.0:9090 in a container")
        if env.get("PUSH0_LOG_FORMAT") not in ("text", "json"):
            problems.append(f"{name}: PUSH0_LOG_FORMAT must be text or json")
        if not any(int(p.get("target", 0)) == 9090 for p in svc.get("ports", [])):
            problems.append(f"{name}: metrics port 9090 not published")
        if binary == "push0-scheduler":
            target = env.get("PUSH0_TEAMS", "")
            mount = next((v for v in svc.get("volumes", []) if v.get("target") == target), None)
            if not mount:
                problems.append(f"{name}: PUSH0_TEAMS {target!r} is not a mounted file")
            elif Path(mount["source"]).resolve() != (root / "deploy" / "teams.toml").resolve():
                problems.append(f"{name}: teams file is not deploy/teams.toml")
        if binary == "push0-prover-gateway":
            team = env.get("PUSH0_TEAM")
            if not team:
                problems.append(f"{name}: PUSH0_TEAM missing")
            elif team in gateway_teams.values():
                problems.append(f"{name}: second gateway service for team {team}")
            else:
                gateway_teams[name] = team
            if env.get("PUSH0_PROVER") not in ("sim", "exec"):
                problems.append(f"{name}: PUSH0_PROVER must be sim or exec")
            if env.get("PUSH0_PROVER") == "exec" and not env.get("PUSH0_PROVER_CMD"):
                problems.append(f"{name}: PUSH0_PROVER=exec needs PUSH0_PROVER_CMD")
            if not isinstance((svc.get("deploy") or {}).get("replicas"), int):
                problems.append(f"{name}: deploy.replicas not set")
    for binary in BINARIES[1:]:
        if binary not in binaries_seen:
            problems.append(f"no service runs {binary}")
    team_names = [t["name"] for t in teams]
    for team in team_names:
        if team not in gateway_teams.values():
            problems.append(f"team {team} (deploy/teams.toml) has no gateway service")
    for svc, team in gateway_teams.items():
        if team not in team_names:
            problems.append(f"{svc}: team {team} is not in deploy/teams.toml")
    if "nats-data" not in (model.get("volumes") or {}):
        problems.append("named volume nats-data not declared")
    problems += compose_reporter_problems(model)
    expect(not problems, f"{len(problems)} problem(s) in the compose model", "\n".join(problems))
    return (f"{len(services)} services; gateways {', '.join(f'{s}={t}' for s, t in sorted(gateway_teams.items()))}; "
            f"teams.toml has {len(teams)} team(s)")


def compose_reporter_problems(model: dict[str, Any]) -> list[str]:
    """The reporter in a compose model: started only under a profile, the API's URL set, and
    the API key only as a secret file (PUSH0_ETHPROOFS_KEY_FILE) whose secret comes from an
    environment variable or a file, never inline, with no ETHPROOFS_API_KEY in its environment."""
    services = model.get("services", {})
    reporters = {n: s for n, s in services.items()
                 if "push0-reporter" in (s.get("entrypoint") or []) + (s.get("command") or [])}
    if len(reporters) != 1:
        return [f"{len(reporters)} services run push0-reporter, expected 1"]
    name, svc = next(iter(reporters.items()))
    env = svc.get("environment") or {}
    problems = []
    if not svc.get("profiles"):
        problems.append(f"{name}: in no profile, so a plain `docker compose up` starts it")
    if "PUSH0_ETHPROOFS_URL" not in env:
        problems.append(f"{name}: PUSH0_ETHPROOFS_URL not set")
    if "ETHPROOFS_API_KEY" in env:
        problems.append(f"{name}: ETHPROOFS_API_KEY in its environment; the key is only a secret file")
    path = env.get("PUSH0_ETHPROOFS_KEY_FILE")
    files = {s.get("target") or f"/run/secrets/{s['source']}": s["source"] for s in svc.get("secrets") or []}
    secret = (model.get("secrets") or {}).get(files.get(path, ""))
    if path not in files:
        problems.append(f"{name}: PUSH0_ETHPROOFS_KEY_FILE {path!r} is none of its secrets' files {sorted(files)}")
    elif secret is None:
        problems.append(f"{name}: secret {files[path]} is not declared")
    elif "content" in secret or not (secret.get("environment") or secret.get("file")):
        problems.append(f"{name}: secret {files[path]} must come from an environment variable or a file, "
                        f"not {secret}")
    return problems


# --------------------------------------------------------------------------
# monitoring: Prometheus and Grafana
# --------------------------------------------------------------------------


def bind_mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Target path in the container -> resolved source path on the host."""
    return {v["target"]: Path(v["source"]).resolve()
            for v in svc.get("volumes", []) if v.get("type") == "bind"}


def load_yaml(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise CheckError(f"{path.name}: {exc}")


def check_compose_monitoring(compose: Compose) -> str:
    """prometheus and grafana in docker-compose.yml mount the files in deploy/, Prometheus
    scrapes every push0 service under the job name alerts.yml expects, Grafana reads it, and
    the scheduler reads JetStream storage from a NATS monitoring port that is served."""
    root = compose.root
    out = compose.config(root / "docker-compose.yml", "--format", "json")
    expect(out.returncode == 0, "docker-compose config --format json failed", out.stderr)
    services = json.loads(out.stdout).get("services", {})
    problems: list[str] = []
    prom_dir = root / "deploy" / "prometheus"
    graf_dir = root / "deploy" / "grafana"

    prom = services.get("prometheus")
    scraped: dict[str, str] = {}
    if not prom:
        problems.append("no prometheus service")
    else:
        if not str(prom.get("image", "")).startswith("prom/prometheus:"):
            problems.append("prometheus: image is not the official prom/prometheus image")
        flags = dict(a.split("=", 1) for a in prom.get("command") or [] if a.startswith("--") and "=" in a)
        config_target = flags.get("--config.file", "/etc/prometheus/prometheus.yml")
        mounts = bind_mounts(prom)
        if mounts.get(config_target) != (prom_dir / "prometheus.yml").resolve():
            problems.append(f"prometheus: deploy/prometheus/prometheus.yml is not mounted at {config_target}")
        config = load_yaml(prom_dir / "prometheus.yml")
        for rule_file in config.get("rule_files") or []:
            target = str(Path(config_target).parent / rule_file)
            if mounts.get(target) != (prom_dir / rule_file).resolve():
                problems.append(f"prometheus: rule file {rule_file} is not deploy/prometheus/{rule_file} mounted at {target}")
        if "alerts.yml" not in (config.get("rule_files") or []):
            problems.append("prometheus.yml does not load alerts.yml")
        for job in config.get("scrape_configs") or []:
            for sd in job.get("dns_sd_configs") or []:
                for host in sd.get("names") or []:
                    scraped[host] = f"{job['job_name']}:{sd.get('port')}"
            for sc in job.get("static_configs") or []:
                for target in sc.get("targets") or []:
                    host, _, port = target.rpartition(":")
                    scraped[host] = f"{job['job_name']}:{port}"
        for name, svc in services.items():
            cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
            binary = next((c for c in cmd if c in BINARIES[1:]), None)
            if binary is None:
                continue
            port = str((svc.get("environment") or {}).get("PUSH0_METRICS_ADDR", "")).rpartition(":")[2]
            want = f"push0-{binary.removeprefix('push0-')}:{port}"
            if scraped.get(name) != want:
                problems.append(f"prometheus.yml: {name} ({binary}) must be scraped as {want}, "
                                f"found {scraped.get(name)!r}")

    graf = services.get("grafana")
    if not graf:
        problems.append("no grafana service")
    else:
        if not str(graf.get("image", "")).startswith("grafana/grafana:"):
            problems.append("grafana: image is not the official grafana/grafana image")
        mounts = bind_mounts(graf)
        if mounts.get("/etc/grafana/provisioning") != (graf_dir / "provisioning").resolve():
            problems.append("grafana: deploy/grafana/provisioning is not mounted at /etc/grafana/provisioning")
        for f in sorted((graf_dir / "provisioning" / "datasources").glob("*.yml")):
            for ds in load_yaml(f).get("datasources") or []:
                m = re.fullmatch(r"http://([\w.-]+):(\d+)/?", str(ds.get("url", "")))
                if not m or m.group(1) not in services:
                    problems.append(f"{f.name}: data source url {ds.get('url')!r} is not a compose service")
                elif m.group(1) == "prometheus" and m.group(2) != "9090":
                    problems.append(f"{f.name}: prometheus listens on 9090, not {m.group(2)}")
        providers = [p for f in sorted((graf_dir / "provisioning" / "dashboards").glob("*.yml"))
                     for p in load_yaml(f).get("providers") or []]
        paths = {str((p.get("options") or {}).get("path", "")).rstrip("/") for p in providers}
        dashboard = (graf_dir / "push0.json").resolve()
        if not any(src == dashboard and str(Path(t).parent) in paths for t, src in mounts.items()):
            problems.append(f"grafana: deploy/grafana/push0.json is not mounted in a provisioned path {sorted(paths)}")

    # The scheduler reads JetStream storage from each NATS server's monitoring port
    # (--nats-monitor-url): each URL must name a compose service that serves it (-m PORT).
    monitored = []
    for name, svc in services.items():
        cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
        if "push0-scheduler" not in cmd:
            continue
        urls = str((svc.get("environment") or {}).get("PUSH0_NATS_MONITOR_URL", ""))
        if not urls:
            problems.append(f"{name}: PUSH0_NATS_MONITOR_URL not set (JetStream storage is not exported)")
        for url in filter(None, (u.strip() for u in urls.split(","))):
            m = re.fullmatch(r"http://([\w.-]+):(\d+)/?", url)
            target = services.get(m.group(1)) if m else None
            args = [str(a) for a in (target or {}).get("command") or []]
            ports = {args[i + 1] for i, a in enumerate(args[:-1]) if a in ("-m", "--http_port")}
            if not m or target is None:
                problems.append(f"{name}: PUSH0_NATS_MONITOR_URL {url!r} is not a compose service")
            elif m.group(2) not in ports:
                problems.append(f"{name}: {m.group(1)} does not serve monitoring on {m.group(2)} (-m)")
            else:
                monitored.append(f"{m.group(1)}:{m.group(2)}")
    expect(not problems, f"{len(problems)} problem(s) in prometheus/grafana", "\n".join(problems))
    return (f"prometheus scrapes {len(scraped)} hosts, every push0 service under push0-<service>; "
            f"grafana provisioned with deploy/grafana; scheduler reads /jsz of {', '.join(monitored)}")


# OTLP trace export, as push0_runtime's telemetry reads it: the base endpoint (the exporter
# appends /v1/traces), only the http/protobuf protocol, service names push0-<service> by default.
OTLP_HTTP_PORT = "4318"
OTLP_PROTOCOLS = ("http/protobuf",)
JAEGER_IMAGE = re.compile(r"jaegertracing/all-in-one:1\.\d+\.\d+")


def resource_attributes(text: str) -> dict[str, str]:
    """OTEL_RESOURCE_ATTRIBUTES as a map (key=value pairs separated by commas)."""
    pairs = [p.partition("=") for p in str(text or "").split(",") if p.strip()]
    return {k.strip(): v.strip() for k, _, v in pairs}


def compose_trace_problems(services: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Problems of the trace wiring in a compose model, and the collectors used: a pinned
    Jaeger 1.x taking OTLP, its UI and receiver published on loopback only, and every push0
    service exporting to it under a name (and, for gateways, a team) of its own."""
    problems: list[str] = []
    collectors = {}
    for name, svc in services.items():
        image = str(svc.get("image", ""))
        if not image.startswith("jaegertracing/"):
            continue
        collectors[name] = svc
        if not JAEGER_IMAGE.fullmatch(image):
            problems.append(f"{name}: image {image!r} is not jaegertracing/all-in-one pinned to a 1.x.y tag")
        env = svc.get("environment") or {}
        if str(env.get("COLLECTOR_OTLP_ENABLED", "")).lower() != "true":
            problems.append(f"{name}: COLLECTOR_OTLP_ENABLED is not true")
        if env.get("COLLECTOR_OTLP_HTTP_HOST_PORT", f":{OTLP_HTTP_PORT}").rpartition(":")[2] != OTLP_HTTP_PORT:
            problems.append(f"{name}: OTLP/HTTP receiver moved off {OTLP_HTTP_PORT}")
        for port in svc.get("ports") or []:
            if port.get("published") and port.get("host_ip") not in ("127.0.0.1", "::1"):
                problems.append(f"{name}: port {port.get('target')} published on "
                                f"{port.get('host_ip') or 'every interface'}, not loopback (no authentication)")
        if not any(int(p.get("target", 0)) == 16686 for p in svc.get("ports") or []):
            problems.append(f"{name}: UI port 16686 not published")
    if not collectors:
        problems.append("no jaegertracing/all-in-one service to receive the traces")
    exporters: dict[tuple[str, str], str] = {}
    for name, svc in services.items():
        cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
        binary = next((c for c in cmd if c in BINARIES[1:]), None)
        if binary is None:
            continue
        env = svc.get("environment") or {}
        endpoint = str(env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "")
        m = re.fullmatch(r"http://([\w.-]+):(\d+)/?", endpoint)
        if not endpoint:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT not set (its spans are not exported)")
        elif "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" in env:
            problems.append(f"{name}: use OTEL_EXPORTER_OTLP_ENDPOINT (the base URL), not the signal's own")
        elif not m:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} is not http://<service>:<port> "
                            "(a base URL: the exporter appends /v1/traces)")
        elif m.group(1) not in collectors:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT {endpoint!r} names no collector service "
                            f"({', '.join(sorted(collectors)) or 'none'})")
        elif m.group(2) != OTLP_HTTP_PORT:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_ENDPOINT port {m.group(2)} is not OTLP/HTTP's {OTLP_HTTP_PORT}")
        protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
        if protocol not in OTLP_PROTOCOLS:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: only http/protobuf is built in")
        if "OTEL_EXPORTER_OTLP_HEADERS" in env:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_HEADERS inline in the compose file (they carry credentials)")
        service_name = env.get("OTEL_SERVICE_NAME") or f"push0-{binary.removeprefix('push0-')}"
        team = ""
        if binary == "push0-prover-gateway":
            team = resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES")).get("push0.team", "")
            if team != env.get("PUSH0_TEAM"):
                problems.append(f"{name}: OTEL_RESOURCE_ATTRIBUTES must carry push0.team={env.get('PUSH0_TEAM')} "
                                f"(every team's gateways share the service name {service_name}), found {team!r}")
        if (service_name, team) in exporters:
            problems.append(f"{name}: its spans would look like {exporters[(service_name, team)]}'s "
                            f"(service {service_name}{', team ' + team if team else ''})")
        exporters[(service_name, team)] = name
    return problems, sorted(collectors)


def check_compose_traces(compose: Compose) -> str:
    root = compose.root
    out = compose.config(root / "docker-compose.yml", "--format", "json")
    expect(out.returncode == 0, "docker-compose config --format json failed", out.stderr)
    services = json.loads(out.stdout).get("services", {})
    problems, collectors = compose_trace_problems(services)
    expect(not problems, f"{len(problems)} problem(s) in the trace wiring", "\n".join(problems))
    exporting = sum(1 for s in services.values()
                    if (s.get("environment") or {}).get("OTEL_EXPORTER_OTLP_ENDPOINT"))
    return (f"{exporting} push0 services export OTLP/HTTP to {', '.join(collectors)} "
            f"({services[collectors[0]]['image']}), gateways tagged with their team, UI on loopback")


def nats_conf_tls(text: str) -> dict[str, str]:
    """The settings of the first `tls { … }` block of a nats-server config (comments dropped)."""
    text = re.sub(r"(?m)#.*$", "", text)
    block = re.search(r"(?m)^\s*tls\s*[:=]?\s*\{([^}]*)\}", text)
    if not block:
        return {}
    pairs = re.findall(r"(\w+)\s*[:=]\s*(\"[^\"]*\"|'[^']*'|[^\s,]+)", block.group(1))
    return {k: v.strip("\"'") for k, v in pairs}


def nats_config(nats: dict[str, Any]) -> tuple[str, dict[str, Path], Path | None]:
    """The nats service's --config path in the container, its bind mounts (target -> host
    source) and the host file mounted at that path (None if none is)."""
    cmd = [str(c) for c in nats.get("command") or []]
    conf_target = cmd[cmd.index("--config") + 1] if "--config" in cmd[:-1] else ""
    mounts = bind_mounts(nats)
    return conf_target, mounts, mounts.get(conf_target)


def included_targets(conf_target: str, text: str) -> list[str]:
    """The container paths a nats-server config at `conf_target` includes."""
    return [str(Path(conf_target).parent / inc.strip("\"'"))
            for inc in re.findall(r"(?m)^\s*include\s+(\S+)", text)]


def compose_tls_problems(model: dict[str, Any], root: Path,
                         read: Callable[[Path], str] = lambda p: p.read_text()) -> list[str]:
    """docker-compose.yml merged with its TLS override: nats-server runs a config that includes
    deploy/nats.conf and requires TLS with client certificates (verify) from a read-only mount
    of the certificates folder, and every container running a push0 binary connects to
    tls://nats:4222 with PUSH0_TLS_CA, PUSH0_TLS_CERT and PUSH0_TLS_KEY in a read-only mount of
    the same folder, which is never created empty when missing."""
    services = model.get("services", {})
    problems: list[str] = []

    def cert_mount(name: str, svc: dict[str, Any], path: str) -> Path | None:
        """Source folder of the read-only bind mount holding path, or None with a problem."""
        mount = next((v for v in svc.get("volumes", []) if v.get("type") == "bind"
                      and path.startswith(v["target"].rstrip("/") + "/")), None)
        if mount is None:
            problems.append(f"{name}: {path} is in no bind mount")
            return None
        if mount.get("read_only") is not True:
            problems.append(f"{name}: {mount['target']} is mounted writable")
        if (mount.get("bind") or {}).get("create_host_path"):
            problems.append(f"{name}: {mount['target']} would be created empty when the folder is missing "
                            "(long syntax with bind.create_host_path: false)")
        return Path(mount["source"]).resolve()

    folders: dict[str, Path] = {}
    nats = services.get("nats") or {}
    conf_target, mounts, conf = nats_config(nats)
    if conf is None:
        problems.append(f"nats: its --config {conf_target!r} is not a mounted file")
    else:
        text = read(conf)
        base = root / "deploy" / "nats.conf"
        includes = included_targets(conf_target, text)
        if not any(mounts.get(inc) == base.resolve() for inc in includes):
            problems.append(f"nats: {conf.name} does not include deploy/nats.conf mounted beside it "
                            f"(includes {includes})")
        tls = nats_conf_tls(text)
        if str(tls.get("verify", "")).lower() != "true":
            problems.append(f"nats: {conf.name} has no tls block with verify: true (client certificates)")
        for key in ("cert_file", "key_file", "ca_file"):
            if not tls.get(key):
                problems.append(f"nats: {conf.name}'s tls block has no {key}")
            elif (folder := cert_mount("nats", nats, tls[key])) is not None:
                folders[f"nats {key}"] = folder
    clients = 0
    for name, svc in sorted(services.items()):
        cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
        if not any(c in BINARIES for c in cmd):
            continue
        clients += 1
        env = svc.get("environment") or {}
        if env.get("PUSH0_NATS_URL") != "tls://nats:4222":
            problems.append(f"{name}: PUSH0_NATS_URL {env.get('PUSH0_NATS_URL')!r} != 'tls://nats:4222'")
        for var in TLS_VARS:
            path = str(env.get(var) or "")
            if not path:
                problems.append(f"{name}: {var} not set")
            elif (folder := cert_mount(name, svc, path)) is not None:
                folders[f"{name} {var}"] = folder
    if len(set(folders.values())) > 1:
        problems.append("the certificates come from different folders: "
                        + ", ".join(f"{k}={v}" for k, v in sorted(folders.items())))
    if not clients:
        problems.append("no service runs a push0 binary")
    return problems


def check_compose_tls(compose: Compose) -> str:
    root = compose.root
    files = [root / "docker-compose.yml", root / COMPOSE_TLS]
    out = compose.config_files(files, "--format", "json")
    expect(out.returncode == 0, f"docker-compose.yml with {COMPOSE_TLS} rejected by docker-compose config",
           out.stderr + out.stdout)
    model = json.loads(out.stdout)
    problems = compose_tls_problems(model, root)
    expect(not problems, f"{len(problems)} problem(s) in docker-compose.yml with {COMPOSE_TLS}", "\n".join(problems))
    clients = sum(1 for s in model["services"].values()
                  if any(c in BINARIES for c in (s.get("entrypoint") or []) + (s.get("command") or [])))
    return (f"docker-compose.yml with {COMPOSE_TLS} valid: nats requires TLS with verified client "
            f"certificates, {clients} push0 containers connect to tls://nats:4222 with theirs")


COMPOSE_AUTH = Path("deploy") / "compose.auth.yml"


def expected_identity(svc: dict[str, Any]) -> str | None:
    """The push0 identity a compose service's binary signs in as, or None if it runs none."""
    cmd = (svc.get("entrypoint") or []) + (svc.get("command") or [])
    env = svc.get("environment") or {}
    for binary, identity in (("push0-ingest", "ingest"), ("push0-scheduler", "scheduler"),
                             ("push0-aggregator", "aggregator"), ("push0-reporter", "reporter")):
        if binary in cmd:
            return identity
    if "push0-prover-gateway" in cmd:
        return f"team-{env.get('PUSH0_TEAM')}"
    # The push0 CLI: the topology step and the operator's commands need admin's rights.
    return "admin" if "push0" in cmd else None


def compose_auth_problems(model: dict[str, Any], root: Path, server_conf: Path) -> list[str]:
    """docker-compose.yml merged with its authorization override: nats-server runs a config
    that includes `server_conf` and the users block from the keys folder, each mounted beside
    it; every container running a push0 binary names in PUSH0_NATS_CREDS the one seed file of
    its own identity, mounted read-only from the keys folder (never created empty), and sees
    no other key."""
    services = model.get("services", {})
    problems: list[str] = []
    keys = root / "deploy" / "keys"
    conf_target, mounts, conf = nats_config(services.get("nats") or {})
    if conf is None:
        problems.append(f"nats: its --config {conf_target!r} is not a mounted file")
    else:
        sources = {mounts.get(target) for target in included_targets(conf_target, conf.read_text())}
        if server_conf.resolve() not in sources:
            problems.append(f"nats: {conf.name} does not include {server_conf.name} mounted beside it")
        if (keys / "authorization.conf").resolve() not in sources:
            problems.append(f"nats: {conf.name} does not include the keys folder's authorization.conf")
        if server_conf.name == "nats-tls.conf" and (root / "deploy" / "nats.conf").resolve() \
                not in mounts.values():
            problems.append("nats: nats-tls.conf includes ./nats.conf, which is not mounted beside it")
    clients = 0
    for name, svc in sorted(services.items()):
        identity = expected_identity(svc)
        if identity is None:
            continue
        clients += 1
        path = str((svc.get("environment") or {}).get("PUSH0_NATS_CREDS") or "")
        key_mounts = [v for v in svc.get("volumes", []) if v.get("type") == "bind"
                      and Path(v["source"]).resolve().is_relative_to(keys.resolve())]
        if not path:
            problems.append(f"{name}: PUSH0_NATS_CREDS not set")
            continue
        own = [v for v in key_mounts if v["target"] == path]
        if len(own) != 1:
            problems.append(f"{name}: PUSH0_NATS_CREDS {path} is not a file mounted from the keys folder")
            continue
        mount = own[0]
        if Path(mount["source"]).resolve() != (keys / f"{identity}.nk").resolve():
            problems.append(f"{name}: signs in with {Path(mount['source']).name}, not {identity}.nk")
        if mount.get("read_only") is not True:
            problems.append(f"{name}: {path} is mounted writable")
        if (mount.get("bind") or {}).get("create_host_path"):
            problems.append(f"{name}: {path} would be created empty when missing "
                            "(long syntax with bind.create_host_path: false)")
        if len(key_mounts) > 1:
            problems.append(f"{name}: sees more of the keys folder than its own key: "
                            + ", ".join(v["target"] for v in key_mounts))
    if not clients:
        problems.append("no service runs a push0 binary")
    return problems


def push0_and_nats_server(root: Path) -> tuple[Path, Path]:
    """The built push0 CLI (to write keys with) and the project's nats-server (to test a
    configuration with)."""
    push0 = next((p for p in (root / "target" / "release" / "push0", root / "target" / "debug" / "push0")
                  if p.is_file()), None)
    expect(push0 is not None, "no push0 binary to write keys with: cargo build --release --workspace --bins")
    nats_server = root / ".tools" / "nats" / "bin" / "nats-server"
    expect(nats_server.is_file(), f"{nats_server} missing: run .ci/install-tools")
    return push0, nats_server


def check_compose_auth(compose: Compose) -> str:
    """The authorization override, alone and after the TLS one, structurally; then the server
    configuration it assembles, with keys `push0 auth` writes for deploy/teams.toml, is what
    nats-server itself accepts (`nats-server -t`)."""
    root = compose.root
    counts = []
    for files, server_conf, env in (
            ([COMPOSE_AUTH], "nats.conf", {}),
            ([COMPOSE_TLS, COMPOSE_AUTH], "nats-tls.conf", {"PUSH0_NATS_CONF": "./deploy/nats-tls.conf"})):
        paths = [root / "docker-compose.yml", *(root / f for f in files)]
        out = compose.config_files(paths, "--format", "json", env=env)
        label = " + ".join(str(f) for f in files)
        expect(out.returncode == 0, f"docker-compose.yml with {label} rejected by docker-compose config",
               out.stderr + out.stdout)
        model = json.loads(out.stdout)
        problems = compose_auth_problems(model, root, root / "deploy" / server_conf)
        expect(not problems, f"{len(problems)} problem(s) in docker-compose.yml with {label}",
               "\n".join(problems))
        counts.append(sum(1 for s in model["services"].values() if expected_identity(s)))
    push0, nats_server = push0_and_nats_server(root)
    with tempfile.TemporaryDirectory() as tmp:
        keys, etc = Path(tmp) / "keys", Path(tmp) / "etc"
        out = run_tool([str(push0), "auth", "--keys", str(keys), "--teams", "deploy/teams.toml",
                        "--out", str(keys / "authorization.conf")], root)
        expect(out.returncode == 0, "push0 auth failed", out.stderr)
        etc.mkdir()
        for target, source in (("nats-auth.conf", root / "deploy" / "nats-auth.conf"),
                               ("server.conf", root / "deploy" / "nats.conf"),
                               ("nats.conf", root / "deploy" / "nats.conf"),
                               ("authorization.conf", keys / "authorization.conf")):
            shutil.copy(source, etc / target)
        out = run_tool([str(nats_server), "-t", "-c", str(etc / "nats-auth.conf")], root)
        expect(out.returncode == 0, "nats-server refuses the assembled configuration",
               out.stderr + out.stdout)
        users = len(re.findall(r"nkey\s*[:=]", (keys / "authorization.conf").read_text()))
    return (f"docker-compose.yml with {COMPOSE_AUTH} valid (alone and after {COMPOSE_TLS}): "
            f"{counts[0]} push0 containers each sign in with their own key; nats-server accepts "
            f"the assembled configuration with {users} users")


def check_prometheus(root: Path, promtool: Path) -> str:
    """deploy/prometheus/check: promtool on the config, the rules, their unit tests and the
    dashboard's expressions."""
    env = {**os.environ, "PROMTOOL": str(promtool)}
    out = run_tool(["bash", str(root / "deploy" / "prometheus" / "check")], root, env)
    expect(out.returncode == 0, "deploy/prometheus/check failed", out.stdout + out.stderr)
    rules = re.findall(r"SUCCESS: (\d+) rules found", out.stdout)
    version = run_tool([str(promtool), "--version"], root).stdout.split("\n")[0]
    return (f"prometheus.yml, {rules[0] if rules else '?'} alert rules, their unit tests and "
            f"{rules[-1] if rules else '?'} dashboard expressions pass ({version})")


def markdown_anchors(path: Path) -> set[str]:
    """Anchors of a markdown file's headings, as GitHub makes them."""
    anchors = set()
    for line in path.read_text().splitlines():
        m = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if m:
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(slug)
    return anchors


def check_alerts_copy(root: Path) -> str:
    """The chart's PrometheusRule reads helm/push0/files/alerts.yml (a chart cannot read outside
    its folder): it must stay byte-identical to deploy/prometheus/alerts.yml."""
    source = root / "deploy" / "prometheus" / "alerts.yml"
    copy_ = root / "helm" / "push0" / "files" / "alerts.yml"
    expect(copy_.is_file(), f"{copy_.relative_to(root)} is missing: cp {source.relative_to(root)} {copy_.relative_to(root)}")
    a, b = source.read_bytes(), copy_.read_bytes()
    if a != b:
        import difflib  # noqa: PLC0415
        diff = difflib.unified_diff(a.decode(errors="replace").splitlines(), b.decode(errors="replace").splitlines(),
                                    str(source.relative_to(root)), str(copy_.relative_to(root)), lineterm="")
        raise CheckError(f"{copy_.relative_to(root)} differs from {source.relative_to(root)}: "
                         f"cp {source.relative_to(root)} {copy_.relative_to(root)}", "\n".join(diff))
    return f"helm/push0/files/alerts.yml is byte-identical to deploy/prometheus/alerts.yml ({len(a)} bytes)"


def check_alert_annotations(root: Path) -> str:
    """Each alert has severity, summary, description and a runbook anchor that exists."""
    rules = [r for g in load_yaml(root / "deploy" / "prometheus" / "alerts.yml")["groups"]
             for r in g["rules"] if "alert" in r]
    problems = []
    docs: dict[str, set[str]] = {}
    for r in rules:
        ann = r.get("annotations") or {}
        for key in ("summary", "description", "runbook"):
            if not ann.get(key):
                problems.append(f"{r['alert']}: no {key} annotation")
        if (r.get("labels") or {}).get("severity") not in ("warning", "critical"):
            problems.append(f"{r['alert']}: severity must be warning or critical")
        doc, _, anchor = str(ann.get("runbook", "")).partition("#")
        if doc:
            path = root / doc
            if not path.is_file():
                problems.append(f"{r['alert']}: runbook {doc} does not exist")
                continue
            if anchor not in docs.setdefault(doc, markdown_anchors(path)):
                problems.append(f"{r['alert']}: runbook anchor #{anchor} is no heading in {doc}")
    expect(not problems, f"{len(problems)} problem(s) in alert annotations", "\n".join(problems))
    return f"{len(rules)} alerts carry severity, summary, description and a runbook heading"


def check_dashboard(root: Path) -> str:
    """The dashboard is JSON Grafana provisions: data source through ${datasource}, a team
    variable from label values, every target an expr."""
    path = root / "deploy" / "grafana" / "push0.json"
    try:
        dash = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckError(f"push0.json: {exc}")
    problems = []
    if not isinstance(dash.get("schemaVersion"), int) or dash["schemaVersion"] < 39:
        problems.append(f"schemaVersion {dash.get('schemaVersion')!r} is older than 39")
    if not dash.get("uid"):
        problems.append("no uid")
    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    if (variables.get("datasource") or {}).get("type") != "datasource":
        problems.append("no datasource variable")
    team = variables.get("team") or {}
    query = team.get("query")
    query = query.get("query", "") if isinstance(query, dict) else str(query or "")
    if team.get("type") != "query" or not re.match(r"label_values\(.+,\s*team\)", query):
        problems.append("no team variable from label_values(…, team)")
    panels = []
    stack = list(dash.get("panels") or [])
    while stack:
        p = stack.pop()
        panels.append(p)
        stack.extend(p.get("panels") or [])
    ids = [p.get("id") for p in panels]
    if len(ids) != len(set(ids)):
        problems.append("panel ids repeat")
    targets = 0
    for p in panels:
        if p.get("type") == "row":
            continue
        for holder in [p, *(p.get("targets") or [])]:
            if (holder.get("datasource") or {}).get("uid") != "${datasource}":
                problems.append(f"panel {p.get('title')!r}: data source is not ${{datasource}}")
        for t in p.get("targets") or []:
            targets += 1
            if not t.get("expr"):
                problems.append(f"panel {p.get('title')!r} target {t.get('refId')}: no expr")
        if not p.get("targets"):
            problems.append(f"panel {p.get('title')!r}: no targets")
    expect(not problems, f"{len(problems)} problem(s) in deploy/grafana/push0.json", "\n".join(problems))
    return f"{len(panels)} panels, {targets} queries, data source ${{datasource}}, team variable"


def check_promtool_rejects(promtool: Path) -> str:
    """promtool must bite: a rule that does not parse, and a unit test whose alert never fires."""
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        (tmpdir / "bad.yml").write_text(
            "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: sum by (team (x)\n")
        out = run_tool([str(promtool), "check", "rules", "bad.yml"], tmpdir)
        expect(out.returncode != 0, "promtool check rules accepted an expression that does not parse")
        (tmpdir / "rules.yml").write_text(
            "groups:\n  - name: x\n    rules:\n      - alert: X\n        expr: up == 0\n")
        (tmpdir / "test.yml").write_text(
            "rule_files: [rules.yml]\nevaluation_interval: 1m\ntests:\n  - interval: 1m\n"
            "    input_series:\n      - series: 'up{job=\"a\"}'\n        values: '1x5'\n"
            "    alert_rule_test:\n      - eval_time: 3m\n        alertname: X\n"
            "        exp_alerts:\n          - exp_labels: {job: a}\n")
        out = run_tool([str(promtool), "test", "rules", "test.yml"], tmpdir)
        expect(out.returncode != 0, "promtool test rules passed a test whose alert cannot fire")
    return "promtool rejects a broken rule and a failing rule test"


# --------------------------------------------------------------------------
# Dockerfile
# --------------------------------------------------------------------------

# DL3008 asks for pinned apt versions, which break on every point release of a
# rolling -slim base; ca-certificates is the only package installed.
HADOLINT_IGNORE = ("DL3008",)


def hadolint_cmd(hadolint: Path, dockerfile: Path) -> list[str]:
    cmd = [str(hadolint), "--no-color", "--failure-threshold", "warning"]
    for rule in HADOLINT_IGNORE:
        cmd += ["--ignore", rule]
    return cmd + [str(dockerfile)]


def check_dockerfile(hadolint: Path, root: Path) -> str:
    dockerfile = root / "deploy" / "Dockerfile"
    out = run_tool(hadolint_cmd(hadolint, dockerfile), root)
    expect(out.returncode == 0, "hadolint rejected deploy/Dockerfile", out.stdout + out.stderr)
    # Structure hadolint cannot know about: what the image must contain.
    text = dockerfile.read_text()
    lines = [l.strip() for l in re.sub(r"\\\n", " ", text).splitlines()]
    froms = [l.split()[1] for l in lines if l.upper().startswith("FROM ")]
    args = dict(re.findall(r"(?m)^ARG\s+(\w+)=(\S+)", text))
    resolved = [re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), f) for f in froms]
    problems = []
    if len(froms) < 2:
        problems.append("not multi-stage")
    if not resolved or resolved[-1] != "debian:bookworm-slim":
        problems.append(f"runtime stage is {resolved[-1] if resolved else None}, not debian:bookworm-slim")
    if not re.search(r"cargo build --release\b", text):
        problems.append("no `cargo build --release`")
    # The RUN that builds must also copy every binary out of target/release.
    build_run = next((l for l in lines if l.upper().startswith("RUN ") and "cargo build" in l), "")
    pending = pending_binaries(root)
    for binary in (b for b in BINARIES if b not in pending):
        if not re.search(rf"(?<![\w-]){re.escape(binary)}(?![\w-])", build_run):
            problems.append(f"binary {binary} is not copied out of the build")
    ignore = root / "deploy" / "Dockerfile.dockerignore"
    if not ignore.exists() or "target" not in ignore.read_text():
        problems.append("deploy/Dockerfile.dockerignore must keep target/ out of the context")
    expect(not problems, "deploy/Dockerfile structure", "\n".join(problems))
    version = run_tool([str(hadolint), "--version"], root).stdout.strip().split()[-1]
    return (f"deploy/Dockerfile lints clean (hadolint {version}), {len(froms)} stages, runtime {resolved[-1]}"
            + (f"; {', '.join(sorted(pending))} not installed, its crate is not in the workspace yet" if pending else ""))


# --------------------------------------------------------------------------
# Helm
# --------------------------------------------------------------------------


def import_helm() -> tuple[str, Any]:
    try:
        import helm_python  # noqa: PLC0415

        version = helm_python.helm_sdk_version()
    except Exception as exc:  # missing wheel or native library
        raise CheckError(f"helm-python-sdk unavailable: {exc}")
    return (f"Helm {version} Go SDK loaded (helm-python-sdk, libhelm_c {helm_python.helm_c_version()})",
            helm_python)


def chart_without_dependencies(chart: Path, dest: Path) -> Path:
    """A copy of the chart whose Chart.yaml declares no dependencies.

    The bundled NATS is a dependency on the official nats chart, which only
    `helm dependency build` can fetch, and only from its chart repository:
    not reachable here. Helm's lint reports the missing charts/nats as an
    error, so lint runs on this copy; the dependency itself is checked
    separately (check_chart_metadata) and rendering of the bundled-NATS case
    only needs our own templates.
    """
    copy_dir = dest / chart.name
    shutil.copytree(chart, copy_dir, ignore=shutil.ignore_patterns("charts", "Chart.lock"))
    meta = yaml.safe_load((copy_dir / "Chart.yaml").read_text())
    meta.pop("dependencies", None)
    (copy_dir / "Chart.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    return copy_dir


def check_chart_metadata(chart: Path) -> str:
    problems = []
    docs = {}
    for name in ("Chart.yaml", "values.yaml"):
        try:
            docs[name] = yaml.safe_load((chart / name).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise CheckError(f"{name} does not parse", str(exc))
    try:
        json.loads((chart / "values.schema.json").read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckError("values.schema.json does not parse", str(exc))
    meta = docs["Chart.yaml"]
    if meta.get("apiVersion") != "v2":
        problems.append("Chart.yaml apiVersion must be v2")
    deps = meta.get("dependencies") or []
    nats = [d for d in deps if d.get("name") == "nats"]
    if len(nats) != 1:
        problems.append("Chart.yaml must declare the nats dependency once")
    else:
        dep = nats[0]
        if dep.get("condition") != "nats.enabled":
            problems.append("nats dependency must have condition: nats.enabled")
        if not dep.get("version") or not dep.get("repository"):
            problems.append("nats dependency needs version and repository")
    for required in ("NOTES.txt", "_helpers.tpl"):
        if not (chart / "templates" / required).exists():
            problems.append(f"templates/{required} missing")
    expect(not problems, "chart metadata", "\n".join(problems))
    return (f"Chart.yaml, values.yaml, values.schema.json parse; dependency nats "
            f"{nats[0]['version']} (condition nats.enabled)")


VALUES_REF = re.compile(r"\.Values((?:\.[A-Za-z_][A-Za-z0-9_]*)+)")
GW_REF = re.compile(r"\$gw\.([A-Za-z_][A-Za-z0-9_]*)")


def check_template_references(chart: Path) -> str:
    """Every .Values.a.b path a template reads exists in values.yaml.

    Helm renders a misspelt path as empty without complaint; this catches it.
    Paths below a non-map value, or into the nats subchart's values, are not
    followed.
    """
    values = yaml.safe_load((chart / "values.yaml").read_text())
    problems = []
    count = 0
    for tpl in sorted((chart / "templates").glob("*")):
        text = tpl.read_text()
        opens, closes = text.count("{{"), text.count("}}")
        if opens != closes:
            problems.append(f"{tpl.name}: {opens} '{{{{' vs {closes} '}}}}'")
        for match in VALUES_REF.finditer(text):
            count += 1
            node: Any = values
            for key in match.group(1).strip(".").split("."):
                if not isinstance(node, dict) or node is values.get("nats"):
                    break
                if key not in node:
                    line = text.count("\n", 0, match.start()) + 1
                    problems.append(f"{tpl.name}:{line}: .Values{match.group(1)} not in values.yaml")
                    break
                node = node[key]
        for match in GW_REF.finditer(text):
            count += 1
            if match.group(1) not in values.get("gateway", {}):
                line = text.count("\n", 0, match.start()) + 1
                problems.append(f"{tpl.name}:{line}: $gw.{match.group(1)} not in values.gateway")
    expect(not problems, "template references", "\n".join(problems))
    return f"{count} value references in templates resolve in values.yaml"


def check_helm_lint(helm, chart: Path) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        copy_dir = chart_without_dependencies(chart, Path(tmp))
        report = helm.lint(str(copy_dir), strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    # severity: 1 info, 2 warning, 3 error; strict treats warnings as failures.
    bad = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    errors = report.get("errors") or []
    expect(not bad and not errors, "helm lint --strict found problems",
           "\n".join(f"[{m.get('severity')}] {m.get('path')}: {m.get('error')}" for m in bad)
           + "\n" + "\n".join(errors))
    infos = len(report.get("messages", []))
    return (f"helm lint --strict passes (Helm {helm.helm_sdk_version()} SDK, dependencies block "
            f"stripped in a copy; {infos} info message(s))")


def render(helm, chart: Path, values: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]], str]:
    """Schema-check and render like `helm template`; returns merged values, manifests, NOTES."""
    with helm.Chart.load(str(chart)) as loaded:
        try:
            loaded.validate_schema(values)
        except helm.HelmError as exc:
            raise CheckError("values rejected by values.schema.json", str(exc))
        merged = loaded.merge_values(values)
        try:
            files = loaded.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
        except helm.HelmError as exc:
            raise CheckError("helm render failed", str(exc))
    docs: list[dict[str, Any]] = []
    notes = ""
    for path, text in sorted(files.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        if not path.endswith((".yaml", ".yml")):
            continue
        try:
            for doc in yaml.safe_load_all(text):
                if doc:
                    doc.setdefault("__source__", path)
                    docs.append(doc)
        except yaml.YAMLError as exc:
            raise CheckError(f"{path} renders to invalid YAML", str(exc) + "\n" + text)
    return merged, docs, notes


# Custom resources the chart can render. Their CRDs are not among the Kubernetes schemas, so
# each is checked against a structural schema of its own below: the fields the chart writes,
# typed and patterned as the operator's CRD declares them, required ones required, and no
# field the CRD does not have (strict, like the built-in kinds).
DNS_SUBDOMAIN = r"^(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
LABEL_KEY = (r"^(([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$"
# Prometheus Operator's Duration (model.ParseDuration units).
PROM_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"


def strict(required: list[str], **properties: Any) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "required": required,
            "properties": properties}


STRING = {"type": "string"}
INT32 = {"type": "integer", "minimum": -2**31, "maximum": 2**31 - 1}
STRING_MAP = {"type": "object", "additionalProperties": STRING}
DURATION = {"type": "string", "pattern": PROM_DURATION}
LABELS = {"type": "object", "propertyNames": {"pattern": LABEL_KEY},
          "additionalProperties": {"type": "string", "pattern": LABEL_VALUE}}
OBJECT_META = strict(["name"], name={"type": "string", "pattern": DNS_SUBDOMAIN},
                     namespace={"type": "string", "pattern": DNS_SUBDOMAIN},
                     labels=LABELS, annotations=STRING_MAP)
LABEL_SELECTOR = strict(
    [], matchLabels=LABELS,
    matchExpressions={"type": "array", "items": strict(
        ["key", "operator"], key={"type": "string", "pattern": LABEL_KEY},
        operator={"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
        values={"type": "array", "items": STRING})})


def custom_resource(api_version: str, kind: str, spec: dict[str, Any]) -> dict[str, Any]:
    return strict(["apiVersion", "kind", "metadata", "spec"], apiVersion={"const": api_version},
                  kind={"const": kind}, metadata=OBJECT_META, spec=spec)


CRD_SCHEMAS: dict[tuple[str, str], dict[str, Any]] = {
    ("monitoring.coreos.com/v1", "ServiceMonitor"): custom_resource(
        "monitoring.coreos.com/v1", "ServiceMonitor", strict(
            ["selector", "endpoints"],
            jobLabel=STRING,
            targetLabels={"type": "array", "items": STRING},
            podTargetLabels={"type": "array", "items": STRING},
            namespaceSelector=strict([], any={"type": "boolean"},
                                     matchNames={"type": "array", "items": STRING}),
            selector=LABEL_SELECTOR,
            endpoints={"type": "array", "minItems": 1, "items": strict(
                [], port=STRING, targetPort={"type": ["string", "integer"]}, path=STRING,
                scheme={"enum": ["http", "https", "HTTP", "HTTPS"]}, interval=DURATION,
                scrapeTimeout=DURATION, honorLabels={"type": "boolean"},
                honorTimestamps={"type": "boolean"})})),
    ("monitoring.coreos.com/v1", "PrometheusRule"): custom_resource(
        "monitoring.coreos.com/v1", "PrometheusRule", strict(
            ["groups"],
            groups={"type": "array", "items": strict(
                ["name", "rules"],
                name={"type": "string", "minLength": 1}, interval=DURATION,
                limit={"type": "integer"}, query_offset=DURATION, labels=STRING_MAP,
                partial_response_strategy={"type": "string", "pattern": "^(?i)(abort|warn)?$"},
                rules={"type": "array", "items": {
                    **strict(["expr"], alert=STRING, record=STRING,
                             expr={"type": ["string", "integer"]}, labels=STRING_MAP,
                             annotations=STRING_MAP, keep_firing_for=DURATION,
                             **{"for": DURATION}),
                    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}]}})})),
    ("keda.sh/v1alpha1", "ScaledObject"): custom_resource(
        "keda.sh/v1alpha1", "ScaledObject", strict(
            ["scaleTargetRef", "triggers"],
            scaleTargetRef=strict(["name"], apiVersion=STRING, kind=STRING, name=STRING,
                                  envSourceContainerName=STRING),
            pollingInterval=INT32, cooldownPeriod=INT32, initialCooldownPeriod=INT32,
            idleReplicaCount=INT32, minReplicaCount=INT32, maxReplicaCount=INT32,
            advanced={"type": "object"},
            fallback=strict(["failureThreshold", "replicas"], failureThreshold=INT32, replicas=INT32),
            triggers={"type": "array", "minItems": 1, "items": strict(
                ["type", "metadata"], type=STRING, name=STRING,
                # KEDA reads every trigger parameter as a string: a bare number is refused.
                metadata=STRING_MAP,
                metricType={"enum": ["AverageValue", "Value", "Utilization"]},
                useCachedMetrics={"type": "boolean"},
                authenticationRef=strict(["name"], name=STRING, kind=STRING))})),
}


def crd_problems(body: dict[str, Any]) -> list[str] | None:
    """Problems of a custom resource against CRD_SCHEMAS; None when its kind is not there."""
    import jsonschema  # noqa: PLC0415

    schema = CRD_SCHEMAS.get((body.get("apiVersion"), body.get("kind")))
    if schema is None:
        return None
    validator = jsonschema.Draft7Validator(schema)
    return [f"{'.'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
            for e in sorted(validator.iter_errors(body), key=lambda e: list(e.absolute_path))]


def kube_validate(docs: list[dict[str, Any]]) -> None:
    import kubernetes_validate  # noqa: PLC0415

    problems = []
    for doc in docs:
        body = {k: v for k, v in doc.items() if k != "__source__"}
        where = f"{doc['__source__']} {body.get('kind')}/{body.get('metadata', {}).get('name')}"
        custom = crd_problems(body)
        if custom is not None:
            problems += [f"{where}: {p}" for p in custom]
            continue
        try:
            kubernetes_validate.validate(body, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            problems.append(f"{where}: {path}: {exc.message}")
        except kubernetes_validate.SchemaNotFoundError:
            problems.append(f"{where}: no Kubernetes {KUBE_VERSION} schema for {body.get('apiVersion')}")
    expect(not problems, f"{len(problems)} problem(s) against the Kubernetes {KUBE_VERSION} schemas "
           "and the custom resources' structural schemas",
           "\n".join(problems))


def duration_seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)", text)
    expect(match is not None, f"unparsable duration {text!r}")
    value, unit = float(match.group(1)), match.group(2)
    return value * {"ms": 0.001, "s": 1, "m": 60}[unit]


def container_env(deployment: dict[str, Any]) -> dict[str, Any]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def check_manifests(merged: dict[str, Any], docs: list[dict[str, Any]], nats_url: str,
                    chart: Path) -> list[str]:
    """push0-specific assertions on one rendering; returns the problems."""
    problems = []
    full = RELEASE  # release "push0" holds the chart name, so fullname is the release name
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    configmaps = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ConfigMap"}
    teams = merged["teams"]
    expected = {f"{full}-{s}": s for s in SERVICES}
    if merged["reporter"]["enabled"]:
        expected[f"{full}-reporter"] = "reporter"
    expected.update({f"{full}-gateway-{t['name']}": f"gateway-{t['name']}" for t in teams})
    if set(deployments) != set(expected):
        problems.append(f"deployments {sorted(deployments)} != expected {sorted(expected)}")
    binaries = {"ingest": "push0-ingest", "scheduler": "push0-scheduler", "aggregator": "push0-aggregator",
                "reporter": "push0-reporter"}
    for name, dep in deployments.items():
        component = expected.get(name, "")
        container = dep["spec"]["template"]["spec"]["containers"][0]
        env = container_env(dep)
        want_bin = binaries.get(component, "push0-prover-gateway")
        if container.get("command") != [want_bin]:
            problems.append(f"{name}: command {container.get('command')} != [{want_bin}]")
        if env.get("PUSH0_NATS_URL") != nats_url:
            problems.append(f"{name}: PUSH0_NATS_URL {env.get('PUSH0_NATS_URL')!r} != {nats_url!r}")
        if env.get("PUSH0_PREFIX") != merged["prefix"]:
            problems.append(f"{name}: PUSH0_PREFIX {env.get('PUSH0_PREFIX')!r}")
        if env.get("PUSH0_METRICS_ADDR") != f"0.0.0.0:{merged['metrics']['port']}":
            problems.append(f"{name}: PUSH0_METRICS_ADDR {env.get('PUSH0_METRICS_ADDR')!r}")
        if component == "ingest":
            if env.get("PUSH0_MAX_PAYLOAD") != str(merged["ingest"]["maxPayload"]):
                problems.append(f"{name}: PUSH0_MAX_PAYLOAD {env.get('PUSH0_MAX_PAYLOAD')!r}")
            if env.get("PUSH0_INLINE_THRESHOLD") != str(merged["ingest"]["inlineThreshold"]):
                problems.append(f"{name}: PUSH0_INLINE_THRESHOLD {env.get('PUSH0_INLINE_THRESHOLD')!r}")
        if component in SERVICES or component == "reporter":
            problems += flag_env_problems(name, component, env, merged, merged[component])
        if component == "reporter":
            problems += reporter_problems(name, dep, merged["reporter"])
        problems += otlp_env_problems(name, container.get("env", []), merged,
                                      component.removeprefix("gateway-") if component.startswith("gateway-") else "")
        problems += tls_problems(name, dep, merged["tls"])
        if component == "scheduler":
            for var, key in (("PUSH0_MAX_UNDELIVERED", "maxUndelivered"), ("PUSH0_MAX_HELD", "maxHeld")):
                if env.get(var) != str(merged["scheduler"][key]):
                    problems.append(f"{name}: {var} {env.get(var)!r}")
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            teams_path = env.get("PUSH0_TEAMS", "")
            volume = mounts.get(str(Path(teams_path).parent))
            vols = {v["name"]: v for v in dep["spec"]["template"]["spec"].get("volumes", [])}
            cm = vols.get(volume, {}).get("configMap", {}).get("name")
            if cm not in configmaps:
                problems.append(f"{name}: PUSH0_TEAMS {teams_path!r} is not backed by a rendered ConfigMap")
            else:
                text = configmaps[cm]["data"][Path(teams_path).name]
                try:
                    rendered = load_teams_toml(Path(f"{cm}/teams.toml"), text)
                except CheckError as exc:
                    problems.append(f"{exc} {exc.details}")
                else:
                    if normalized_teams(rendered) != normalized_teams(teams):
                        problems.append(f"{cm}: teams.toml {rendered} does not match .Values.teams")
        if component.startswith("gateway-"):
            team = next(t for t in teams if f"gateway-{t['name']}" == component)
            gw = copy.deepcopy(merged["gateway"])
            gw.update(team.get("gateway") or {})
            if env.get("PUSH0_TEAM") != team["name"]:
                problems.append(f"{name}: PUSH0_TEAM {env.get('PUSH0_TEAM')!r}")
            if team_keda(merged, team)["enabled"]:
                if "replicas" in dep["spec"]:
                    problems.append(f"{name}: KEDA scales it, yet the Deployment sets replicas "
                                    "(every upgrade would reset KEDA's choice)")
            elif dep["spec"].get("replicas") != gw["replicas"]:
                problems.append(f"{name}: replicas {dep['spec'].get('replicas')} != {gw['replicas']}")
            if env.get("PUSH0_SLOTS") != str(gw["slots"]) or env.get("PUSH0_PROVER") != gw["prover"]:
                problems.append(f"{name}: slots/prover env do not match values")
            if gw["prover"] == "exec" and env.get("PUSH0_PROVER_CMD") != gw["proverCmd"]:
                problems.append(f"{name}: PUSH0_PROVER_CMD {env.get('PUSH0_PROVER_CMD')!r}")
            problems += flag_env_problems(name, "gateway", env, merged, gw)
            grace = dep["spec"]["template"]["spec"].get("terminationGracePeriodSeconds", 30)
            if grace <= duration_seconds(gw["shutdownGrace"]):
                problems.append(f"{name}: terminationGracePeriodSeconds {grace} <= shutdownGrace "
                                f"{gw['shutdownGrace']}: SIGKILL would cut the drain")
    jobs = [d for d in docs if d["kind"] == "Job"]
    if len(jobs) != 1:
        problems.append(f"{len(jobs)} Jobs rendered, expected the one topology hook")
    else:
        job = jobs[0]
        hooks = set(job["metadata"].get("annotations", {}).get("helm.sh/hook", "").split(","))
        first = "post-install" if merged["nats"]["enabled"] else "pre-install"
        if hooks != {first, "pre-upgrade"}:
            problems.append(f"topology Job hooks {sorted(hooks)} != [{first}, pre-upgrade]")
        container = job["spec"]["template"]["spec"]["containers"][0]
        if container.get("command", [])[:3] != ["push0", "topology", "apply"]:
            problems.append(f"topology Job runs {container.get('command')}")
        job_env = {e["name"]: e.get("value") for e in container.get("env", [])}
        if job_env.get("PUSH0_NATS_URL") != nats_url or job_env.get("PUSH0_PREFIX") != merged["prefix"]:
            problems.append("topology Job's NATS URL or prefix differ from the services'")
        for name, dep in deployments.items():
            if container_env(dep).get("PUSH0_REPLICAS") != job_env.get("PUSH0_REPLICAS"):
                problems.append(f"{name}: PUSH0_REPLICAS differs from the topology Job's")
        # Every team's gateways store their proofs in the team's own object store.
        stores = [n for n in (job_env.get("PUSH0_TEAM_STORES") or "").split(",") if n]
        if stores != [t["name"] for t in teams]:
            problems.append(f"topology Job creates team stores {stores}, "
                            f"expected {[t['name'] for t in teams]}")
        problems += tls_problems(f"Job {job['metadata']['name']}", job, merged["tls"])
    if merged["metrics"]["service"]["enabled"]:
        for name in expected:
            svc = services.get(name)
            if not svc:
                problems.append(f"no metrics Service {name}")
                continue
            labels = deployments.get(name, {}).get("spec", {}).get("template", {}).get("metadata", {}).get("labels", {})
            selector = svc["spec"]["selector"]
            if not selector or any(labels.get(k) != v for k, v in selector.items()):
                problems.append(f"Service {name} selects no pod of Deployment {name}")
    elif services:
        problems.append(f"metrics.service.enabled=false but Services rendered: {sorted(services)}")
    problems += inline_api_key_problems(docs)
    problems += disruption_budget_problems(merged, deployments, docs)
    problems += service_monitor_problems(merged, deployments, services, docs)
    problems += prometheus_rule_problems(merged, docs, chart)
    problems += scaled_object_problems(merged, deployments, docs)
    return problems


def tls_problems(name: str, workload: dict[str, Any], tls: dict[str, Any]) -> list[str]:
    """A workload's TLS to NATS as values.tls says: with tls.enabled, PUSH0_TLS_CA, _CERT and _KEY
    name the files of keys caKey, certKey and keyKey of Secret tls.secretName, mounted read-only
    at TLS_DIR in a folder no ConfigMap or Secret volume holds (the kubelet rewrites those);
    without it, none of the three and no such mount."""
    pod = workload["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    mounts = container.get("volumeMounts", [])
    mount = next((m for m in mounts if m["mountPath"].rstrip("/") == TLS_DIR), None)
    if not tls["enabled"]:
        found = sorted(v for v in TLS_VARS if v in env) + ([f"a mount at {TLS_DIR}"] if mount else [])
        return [f"{name}: tls.enabled=false, yet {', '.join(found)}"] if found else []
    problems = []
    for var, key in TLS_VARS.items():
        entry = env.get(var) or {}
        if entry.get("value") != f"{TLS_DIR}/{tls[key]}":
            problems.append(f"{name}: {var} {entry.get('value', entry.get('valueFrom'))!r} "
                            f"!= {TLS_DIR}/{tls[key]} (tls.{key})")
    if mount is None:
        return problems + [f"{name}: nothing mounted at {TLS_DIR}"]
    if mount.get("readOnly") is not True or mount.get("subPath"):
        problems.append(f"{name}: {TLS_DIR} must be a read-only mount of the whole volume")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    source = (volumes.get(mount["name"]) or {}).get("secret")
    if source is None or source.get("secretName") != tls["secretName"]:
        problems.append(f"{name}: {TLS_DIR} is not Secret {tls['secretName']} ({source or volumes.get(mount['name'])})")
    elif source.get("items") is not None:
        projected = {i["key"]: i["path"] for i in source["items"]}
        for key in ("caKey", "certKey", "keyKey"):
            if projected.get(tls[key]) != tls[key]:
                problems.append(f"{name}: key {tls[key]} (tls.{key}) of Secret {tls['secretName']} is not "
                                f"projected as {TLS_DIR}/{tls[key]} (items {source['items']})")
    for other in mounts:
        parent = other["mountPath"].rstrip("/")
        kind = next((k for k in ("configMap", "secret", "projected")
                     if k in (volumes.get(other["name"]) or {})), None)
        if other is not mount and kind and TLS_DIR.startswith(parent + "/"):
            problems.append(f"{name}: {TLS_DIR} lies inside the {kind} volume mounted at {parent}")
    return problems


def reporter_problems(name: str, dep: dict[str, Any], reporter: dict[str, Any]) -> list[str]:
    """The reporter's replicas as values say, and its API key only as a file mounted read-only
    from key apiKeySecret.key of Secret apiKeySecret.name, named by PUSH0_ETHPROOFS_KEY_FILE;
    no key file at all without a Secret name (dryRun)."""
    problems = []
    spec = dep["spec"]
    pod = spec["template"]["spec"]
    container = pod["containers"][0]
    env = {e["name"]: e for e in container.get("env", [])}
    if spec.get("replicas") != reporter["replicas"]:
        problems.append(f"{name}: replicas {spec.get('replicas')!r} != {reporter['replicas']!r}")
    if "ETHPROOFS_API_KEY" in env:
        problems.append(f"{name}: ETHPROOFS_API_KEY in the environment; the key is only the file "
                        "PUSH0_ETHPROOFS_KEY_FILE names")
    secret = reporter["apiKeySecret"]
    path = (env.get("PUSH0_ETHPROOFS_KEY_FILE") or {}).get("value")
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    if not secret["name"]:
        tls_volumes = {m["name"] for m in container.get("volumeMounts", [])
                       if m["mountPath"].rstrip("/") in (TLS_DIR, CREDS_DIR)}
        if path or any("secret" in v for n, v in volumes.items() if n not in tls_volumes):
            problems.append(f"{name}: a key file or Secret volume without reporter.apiKeySecret.name")
        if not reporter["dryRun"]:
            problems.append(f"{name}: sends without an API key (no apiKeySecret.name, dryRun false)")
        return problems
    if not path:
        return problems + [f"{name}: PUSH0_ETHPROOFS_KEY_FILE not set, yet apiKeySecret names {secret['name']}"]
    mount = next((m for m in container.get("volumeMounts", [])
                  if path.startswith(m["mountPath"].rstrip("/") + "/")), None)
    if mount is None or mount.get("readOnly") is not True:
        return problems + [f"{name}: PUSH0_ETHPROOFS_KEY_FILE {path} is not in a read-only volume mount"]
    source = (volumes.get(mount["name"]) or {}).get("secret") or {}
    want = {"secretName": secret["name"],
            "items": [{"key": secret["key"], "path": path[len(mount["mountPath"].rstrip("/")) + 1:]}]}
    if {k: source.get(k) for k in want} != want:
        problems.append(f"{name}: {path} is not key {secret['key']} of Secret {secret['name']} "
                        f"(volume {mount['name']}: {source or 'not a Secret'})")
    return problems


def inline_api_key_problems(docs: list[dict[str, Any]]) -> list[str]:
    """No container of any rendered workload is given ETHPROOFS_API_KEY as a value."""
    problems = []
    for doc in docs:
        pod = doc.get("spec", {}).get("template", {}).get("spec", {})
        for c in pod.get("containers", []) + pod.get("initContainers", []):
            for e in c.get("env") or []:
                if e.get("name") == "ETHPROOFS_API_KEY" and "value" in e:
                    problems.append(f"{doc['kind']}/{doc['metadata']['name']} container {c['name']}: "
                                    "ETHPROOFS_API_KEY inline")
    return problems


def team_keda(merged: dict[str, Any], team: dict[str, Any]) -> dict[str, Any]:
    return {**merged["keda"], **(team.get("keda") or {})}


def scaled_object_problems(merged: dict[str, Any], deployments: dict[str, Any],
                           docs: list[dict[str, Any]]) -> list[str]:
    """A ScaledObject for each team KEDA scales, and only those: aimed at the team's gateway
    Deployment, one Prometheus trigger on the team's waiting tasks, bounds from values."""
    problems = []
    scaled = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ScaledObject"}
    want = {}
    for team in merged["teams"]:
        keda = team_keda(merged, team)
        if keda["enabled"]:
            want[f"{RELEASE}-gateway-{team['name']}"] = (team["name"], keda)
    if set(scaled) != set(want):
        problems.append(f"ScaledObjects {sorted(scaled)} != teams KEDA scales {sorted(want)}")
    for name, so in scaled.items():
        if name not in want:
            continue
        team, keda = want[name]
        spec = so["spec"]
        target = spec.get("scaleTargetRef") or {}
        if target != {"apiVersion": "apps/v1", "kind": "Deployment", "name": name} or name not in deployments:
            problems.append(f"ScaledObject {name} targets {target}, not Deployment {name}")
        bounds = {k: spec.get(k) for k in ("minReplicaCount", "maxReplicaCount", "pollingInterval", "cooldownPeriod")}
        expected = {"minReplicaCount": keda["minReplicas"], "maxReplicaCount": keda["maxReplicas"],
                    "pollingInterval": keda["pollingInterval"], "cooldownPeriod": keda["cooldownPeriod"]}
        if bounds != expected:
            problems.append(f"ScaledObject {name}: {bounds} != {expected}")
        triggers = spec.get("triggers") or []
        if len(triggers) != 1 or triggers[0].get("type") != "prometheus":
            problems.append(f"ScaledObject {name}: expected one prometheus trigger, got {triggers}")
            continue
        trigger = triggers[0]
        meta = trigger.get("metadata") or {}
        if trigger.get("metricType") != "AverageValue":
            problems.append(f"ScaledObject {name}: metricType {trigger.get('metricType')!r}: the threshold "
                            "is meant per pod (AverageValue)")
        if meta.get("serverAddress") != keda["serverAddress"]:
            problems.append(f"ScaledObject {name}: serverAddress {meta.get('serverAddress')!r}")
        for key in ("threshold", "activationThreshold"):
            try:
                same = float(meta.get(key, "x")) == float(keda[key])
            except ValueError:
                same = False
            if not same:
                problems.append(f"ScaledObject {name}: {key} {meta.get(key)!r} != {keda[key]!r}")
        query = meta.get("query", "")
        for gauge in ("push0_tasks_held", "push0_tasks_queued", "push0_tasks_deferred"):
            if f'{gauge}{{team="{team}"' not in query:
                problems.append(f"ScaledObject {name}: query {query!r} does not read {gauge} of team {team}")
    return problems


def promtool_check_scaler_queries(promtool: Path, merged: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """Each ScaledObject's query, evaluated by promtool on made-up series: the team's held,
    queued and deferred tasks over every class add up, other teams (and, with extraMatchers, other
    releases) are left out, held tasks count before any queued series exists, and no series
    at all reads 0, not an empty result."""
    problems = []
    for doc in docs:
        if doc["kind"] != "ScaledObject":
            continue
        name = doc["metadata"]["name"]
        team = doc["metadata"]["labels"]["push0.io/team"]
        query = doc["spec"]["triggers"][0]["metadata"]["query"]
        values = next((team_keda(merged, t) for t in merged["teams"] if t["name"] == team), {})
        extra = re.findall(r'(\w+)\s*(=|!=|=~|!~)\s*"([^"]*)"', values.get("extraMatchers") or "")
        if any(op != "=" for _, op, _ in extra):
            continue  # only equality matchers are modelled below
        own = {k: v for k, _, v in extra}
        other_release = {k: v + "-other" for k, v in own.items()}

        def series(metric: str, labels: dict[str, str], value: int) -> dict[str, str]:
            body = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
            return {"series": f"{metric}{{{body}}}", "values": f"{value}x5"}

        mine = {**own, "team": team}
        cases = [
            ([series("push0_tasks_held", {**mine, "class": "leaf"}, 3),
              series("push0_tasks_held", {**mine, "class": "agg"}, 1),
              series("push0_tasks_queued", {**mine, "class": "leaf"}, 2),
              series("push0_tasks_deferred", mine, 20),
              series("push0_tasks_deferred", {**own, "team": team + "-other"}, 30),
              series("push0_tasks_held", {**own, "team": team + "-other", "class": "leaf"}, 50)]
             + ([series("push0_tasks_queued", {**mine, **other_release, "class": "leaf"}, 70)]
                if other_release else []), 26),
            ([series("push0_tasks_held", {**mine, "class": "leaf"}, 4)], 4),
            ([series("push0_tasks_deferred", mine, 7)], 7),
            ([series("push0_tasks_held", {**own, "team": team + "-other", "class": "leaf"}, 9)], 0),
        ]
        tests = [{"interval": "1m", "input_series": inputs,
                  "promql_expr_test": [{"expr": query, "eval_time": "2m",
                                        "exp_samples": [{"labels": "{}", "value": value}]}]}
                 for inputs, value in cases]
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "rules.yml").write_text("groups: []\n")
            (Path(tmp) / "test.yml").write_text(yaml.safe_dump(
                {"rule_files": ["rules.yml"], "evaluation_interval": "1m", "tests": tests}, sort_keys=False))
            out = run_tool([str(promtool), "test", "rules", "test.yml"], Path(tmp))
            if out.returncode != 0:
                problems.append(f"ScaledObject {name}: query {query!r} fails its promtool test:\n"
                                + (out.stdout + out.stderr).strip())
    return problems


def prometheus_rule_problems(merged: dict[str, Any], docs: list[dict[str, Any]], chart: Path) -> list[str]:
    """The PrometheusRule holds exactly the groups of the chart's files/alerts.yml."""
    rules = [d for d in docs if d["kind"] == "PrometheusRule"]
    want = merged["prometheusRule"]
    if not want["enabled"]:
        return [f"prometheusRule.enabled=false but {len(rules)} PrometheusRule(s) rendered"] if rules else []
    if len(rules) != 1:
        return [f"{len(rules)} PrometheusRules rendered, expected 1"]
    problems = []
    labels = rules[0]["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (want.get("labels") or {}).items()):
        problems.append(f"PrometheusRule labels {labels} lack prometheusRule.labels {want['labels']}")
    groups = load_yaml(chart / "files" / "alerts.yml")["groups"]
    if rules[0]["spec"].get("groups") != groups:
        problems.append("PrometheusRule groups differ from files/alerts.yml")
    return problems


def promtool_check_rendered_rules(promtool: Path, docs: list[dict[str, Any]]) -> list[str]:
    """promtool check rules on the rule groups of every rendered PrometheusRule."""
    problems = []
    for doc in docs:
        if doc["kind"] != "PrometheusRule":
            continue
        with tempfile.TemporaryDirectory() as tmp:
            f = Path(tmp) / "rules.yml"
            f.write_text(yaml.safe_dump({"groups": doc["spec"]["groups"]}, sort_keys=False))
            out = run_tool([str(promtool), "check", "rules", str(f)], Path(tmp))
            if out.returncode != 0:
                problems.append(f"promtool check rules rejects PrometheusRule/{doc['metadata']['name']}: "
                                + (out.stdout + out.stderr).strip())
    return problems


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a Kubernetes label selector (matchLabels, matchExpressions) selects labels."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values") or []
        if ((op == "In" and labels.get(key) not in values)
                or (op == "NotIn" and key in labels and labels[key] in values)
                or (op == "Exists" and key not in labels)
                or (op == "DoesNotExist" and key in labels)):
            return False
    return True


def service_monitor_problems(merged: dict[str, Any], deployments: dict[str, Any],
                             services: dict[str, Any], docs: list[dict[str, Any]]) -> list[str]:
    """The ServiceMonitor selects every metrics Service and nothing else, and names each
    target's job push0-<binary>, the job names alerts.yml and the dashboard select on."""
    monitors = [d for d in docs if d["kind"] == "ServiceMonitor"]
    want = merged["serviceMonitor"]
    if not want["enabled"]:
        return [f"serviceMonitor.enabled=false but {len(monitors)} ServiceMonitor(s) rendered"] if monitors else []
    if len(monitors) != 1:
        return [f"{len(monitors)} ServiceMonitors rendered, expected 1"]
    problems = []
    sm = monitors[0]
    spec = sm["spec"]
    labels = sm["metadata"].get("labels") or {}
    if any(labels.get(k) != v for k, v in (want.get("labels") or {}).items()):
        problems.append(f"ServiceMonitor labels {labels} lack serviceMonitor.labels {want['labels']}")
    if spec.get("namespaceSelector") != {"matchNames": [NAMESPACE]}:
        problems.append(f"ServiceMonitor namespaceSelector {spec.get('namespaceSelector')} is not the release namespace")
    selected = {n for n, s in services.items() if selects(spec["selector"], s["metadata"].get("labels") or {})}
    if selected != set(deployments):
        problems.append(f"ServiceMonitor selects Services {sorted(selected)}, not one per Deployment {sorted(deployments)}")
    endpoint = spec["endpoints"][0] if len(spec["endpoints"]) == 1 else {}
    if not endpoint:
        problems.append(f"ServiceMonitor has {len(spec['endpoints'])} endpoints, expected 1")
    if endpoint.get("path", "/metrics") != "/metrics" or endpoint.get("honorLabels") is not True:
        problems.append("ServiceMonitor endpoint must scrape /metrics with honorLabels: true "
                        "(push0's metrics carry their own `service` label)")
    if endpoint.get("interval") != want["interval"]:
        problems.append(f"ServiceMonitor interval {endpoint.get('interval')!r} != {want['interval']!r}")
    timeout = endpoint.get("scrapeTimeout")
    if (timeout or "") != (want.get("scrapeTimeout") or ""):
        problems.append(f"ServiceMonitor scrapeTimeout {timeout!r} != {want.get('scrapeTimeout')!r}")
    elif timeout and prom_seconds(timeout) > prom_seconds(endpoint.get("interval", "1m")):
        problems.append(f"ServiceMonitor scrapeTimeout {timeout} exceeds interval {endpoint.get('interval')}")
    job_label = spec.get("jobLabel")
    for name in sorted(selected):
        svc = services[name]
        ports = {p.get("name") for p in svc["spec"].get("ports", [])}
        if endpoint.get("port") not in ports:
            problems.append(f"Service {name} has no port named {endpoint.get('port')!r}")
        binary = (deployments[name]["spec"]["template"]["spec"]["containers"][0].get("command") or ["?"])[0]
        job = (svc["metadata"].get("labels") or {}).get(job_label or "")
        if job != f"push0-{binary.removeprefix('push0-')}":
            problems.append(f"Service {name} ({binary}) would be scraped as job {job!r} (jobLabel "
                            f"{job_label!r}), not push0-{binary.removeprefix('push0-')}")
    return problems


def prom_seconds(text: str) -> float:
    """Seconds of a Prometheus duration such as 1m30s."""
    units = {"y": 31536000, "w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|y|w|d|h|m|s)", text)
    expect("".join(n + u for n, u in parts) == text, f"unparsable Prometheus duration {text!r}")
    return sum(int(n) * units[u] for n, u in parts)


def flag_env_problems(name: str, component: str, env: dict[str, Any], merged: dict[str, Any],
                      own: dict[str, Any]) -> list[str]:
    """The environment variables of the flags values set beyond the basics checked above:
    each as values say, or absent where values leave the flag at its default (None)."""
    def joined(items: list[str], sep: str) -> str | None:
        return sep.join(items) if items else None

    want: dict[str, str | None] = {"PUSH0_WORKER_THREADS": str(own["workerThreads"])}
    if component == "scheduler":
        want.update({
            "PUSH0_POLL_INTERVAL": own["pollInterval"],
            "PUSH0_ALERT_NO_PROVER_AFTER": own["alertNoProverAfter"],
            "PUSH0_ALERT_MISS_RATE": None,  # compared as a number below
            "PUSH0_ALERT_MISS_WINDOW": own["alertMissWindow"],
            "PUSH0_NATS_MONITOR_URL": joined(own["natsMonitorUrls"], ",") or bundled_monitor_urls(merged),
        })
        rate = env.get("PUSH0_ALERT_MISS_RATE")
        try:
            if float(rate) != float(own["alertMissRate"]):
                raise ValueError
        except (TypeError, ValueError):
            return [f"{name}: PUSH0_ALERT_MISS_RATE {rate!r} != {own['alertMissRate']!r}"]
        want.pop("PUSH0_ALERT_MISS_RATE")
    if component == "gateway":
        sim, exec_ = own["prover"] == "sim", own["prover"] == "exec"
        want.update({
            "PUSH0_PRIORITY": str(own.get("priority", 0)),
            "PUSH0_CLASSES": joined(own["classes"], ","),
            "PUSH0_SIM_LATENCY": own["simLatency"] if sim else None,
            "PUSH0_SIM_FAIL_WHILE": (own["simFailWhile"] or None) if sim else None,
            "PUSH0_PROVER_ARGS": joined(own["proverArgs"], " ") if exec_ else None,
            "PUSH0_BUNDLE_AGGREGATES": str(own["bundleAggregates"]).lower() if exec_ else None,
            "PUSH0_PROOF_SYSTEM": own["proofSystem"] if exec_ else None,
            "PUSH0_PROVER_THREADS": (str(own["proverThreads"]) if own["proverThreads"] else None) if exec_ else None,
            "PUSH0_TASK_TIMEOUT": own["taskTimeout"],
            "PUSH0_WORK_DIR": own["workDir"],
            "PUSH0_SHUTDOWN_GRACE": own["shutdownGrace"],
            "PUSH0_INLINE_THRESHOLD": str(own["inlineThreshold"]),
        })
    if component == "reporter":
        want.update({
            "PUSH0_ETHPROOFS_URL": own["ethproofsUrl"] or None,
            "PUSH0_ETHPROOFS_RATE": own["rate"],
            "PUSH0_ETHPROOFS_DRY_RUN": str(own["dryRun"]).lower(),
        })
    return [f"{name}: {var} {env.get(var)!r} != {value!r}" for var, value in want.items() if env.get(var) != value]


def otlp_env_problems(name: str, env_list: list[dict[str, Any]], merged: dict[str, Any], team: str) -> list[str]:
    """The OTEL_ variables of one container, as values.otlp says: none but the sampler without
    an endpoint; with one, the base URL, http/protobuf, headers only from a Secret, and resource
    attributes naming the pod (from a POD_NAME listed before them) and a gateway's team."""
    otlp = merged["otlp"]
    env = {e["name"]: e for e in env_list}
    order = [e["name"] for e in env_list]
    problems = []
    want: dict[str, str | None] = {
        "OTEL_TRACES_SAMPLER": otlp["sampler"] or None,
        "OTEL_TRACES_SAMPLER_ARG": None if otlp["samplerArg"] == "" else str(otlp["samplerArg"]),
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp["endpoint"] or None,
        "OTEL_EXPORTER_OTLP_PROTOCOL": otlp["protocol"] if otlp["endpoint"] else None,
    }
    for var, value in want.items():
        got = env.get(var, {}).get("value")
        if var == "OTEL_TRACES_SAMPLER_ARG" and got is not None and value is not None:
            try:
                same = float(got) == float(value)
            except ValueError:
                same = False
            if same:
                continue
        if got != value:
            problems.append(f"{name}: {var} {got!r} != {value!r}")
    protocol = env.get("OTEL_EXPORTER_OTLP_PROTOCOL", {}).get("value")
    if protocol is not None and protocol not in OTLP_PROTOCOLS:
        problems.append(f"{name}: OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}: only http/protobuf is built in")
    if re.search(r"/v1/traces/?$", otlp["endpoint"]):
        problems.append(f"{name}: otlp.endpoint ends in /v1/traces, which the exporter appends itself")
    headers = env.get("OTEL_EXPORTER_OTLP_HEADERS")
    secret = otlp["headersSecret"]
    if headers is not None and "value" in headers:
        problems.append(f"{name}: OTEL_EXPORTER_OTLP_HEADERS inline; headers may carry credentials")
    if otlp["endpoint"] and secret["name"]:
        ref = ((headers or {}).get("valueFrom") or {}).get("secretKeyRef")
        if ref != {"name": secret["name"], "key": secret["key"]}:
            problems.append(f"{name}: OTEL_EXPORTER_OTLP_HEADERS from {ref}, not Secret {secret['name']} key {secret['key']}")
    elif headers is not None:
        problems.append(f"{name}: OTEL_EXPORTER_OTLP_HEADERS set without otlp.endpoint and headersSecret")
    attrs = env.get("OTEL_RESOURCE_ATTRIBUTES")
    if not otlp["endpoint"]:
        if attrs is not None or "POD_NAME" in env:
            problems.append(f"{name}: resource attributes rendered without otlp.endpoint")
        return problems
    got = resource_attributes((attrs or {}).get("value", ""))
    expected = {**otlp["resourceAttributes"], "k8s.namespace.name": NAMESPACE, "k8s.pod.name": "$(POD_NAME)"}
    if team:
        expected["push0.team"] = team
    if got != expected:
        problems.append(f"{name}: OTEL_RESOURCE_ATTRIBUTES {got} != {expected}")
    pod = env.get("POD_NAME", {}).get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
    if pod != "metadata.name" or "OTEL_RESOURCE_ATTRIBUTES" not in order or \
            order.index("POD_NAME") > order.index("OTEL_RESOURCE_ATTRIBUTES"):
        problems.append(f"{name}: POD_NAME (metadata.name) must precede OTEL_RESOURCE_ATTRIBUTES, "
                        "or $(POD_NAME) is not expanded")
    if any(order.count(n) > 1 for n in order if n.startswith("OTEL_") or n == "POD_NAME"):
        problems.append(f"{name}: an OTEL_ variable is listed twice")
    return problems


def bundled_monitor_urls(merged: dict[str, Any]) -> str | None:
    """The monitoring URLs of the bundled NATS servers, as the nats chart names its StatefulSet
    pods and headless Service, that the scheduler reads when scheduler.natsMonitorUrls is empty;
    None without the bundled NATS or with its monitoring off or over TLS."""
    nats = merged["nats"]
    config = nats.get("config") or {}
    monitor = config.get("monitor") or {}
    if not nats["enabled"] or not monitor.get("enabled", True) or (monitor.get("tls") or {}).get("enabled"):
        return None
    name = nats.get("nameOverride") or "nats"
    full = nats.get("fullnameOverride") or (RELEASE if name in RELEASE else f"{RELEASE}-{name}")
    sts = (nats.get("statefulSet") or {}).get("name") or full
    headless = (nats.get("headlessService") or {}).get("name") or f"{full}-headless"
    cluster = config.get("cluster") or {}
    replicas = cluster.get("replicas", 3) if cluster.get("enabled") else 1
    port = monitor.get("port", 8222)
    return ",".join(f"http://{sts}-{i}.{headless}.{NAMESPACE}.svc:{port}" for i in range(replicas))


def service_flags(root: Path) -> dict[str, set[str]]:
    """The environment variable of every flag each service binary takes, read from
    shared/runtime/src/config.rs (flags of every service) and services/*/src/main.rs."""
    env_re = re.compile(r'env\s*=\s*"(PUSH0_[A-Z0-9_]+)"')
    common = set(env_re.findall((root / "shared" / "runtime" / "src" / "config.rs").read_text()))
    flags = {}
    for main in sorted((root / "services").glob("*/src/main.rs")):
        flags[f"push0-{main.parent.parent.name}"] = common | set(env_re.findall(main.read_text()))
    return flags


def check_flag_parity(helm, chart: Path, root: Path) -> str:
    """Every flag of every service binary is set by values in some rendered combination, and
    no rendered PUSH0_ variable is one its binary does not read."""
    flags = service_flags(root)
    pending = pending_binaries(root)
    declared = set().union(*flags.values())
    pending_flags = {f for f in PENDING_FLAGS if f not in declared}
    expect(set(flags) | pending == set(BINARIES[1:]) | set(PENDING_BINARIES),
           f"services/*/src/main.rs give binaries {sorted(flags)}")
    seen: dict[str, set[str]] = {b: set() for b in flags}
    problems = []
    for label, values, _ in helm_scenarios():
        _, docs, _ = render(helm, chart, values)
        for dep in (d for d in docs if d["kind"] == "Deployment"):
            binary = dep["spec"]["template"]["spec"]["containers"][0]["command"][0]
            if binary in pending:
                continue
            names = {n for n in container_env(dep) if n.startswith("PUSH0_")}
            seen[binary] |= names
            unknown = names - flags.get(binary, set()) - pending_flags
            if unknown:
                problems.append(f"{label}: {dep['metadata']['name']} sets {sorted(unknown)}, "
                                f"which {binary} does not read")
    for binary, names in sorted(flags.items()):
        if names - seen[binary]:
            problems.append(f"{binary}: flags {sorted(names - seen[binary])} set by no rendered combination")
    expect(not problems, "service flags and chart values differ", "\n".join(problems))
    return (f"every flag of the {len(flags)} service binaries ({sum(map(len, flags.values()))} in all) is "
            f"set from values in some combination, and no other PUSH0_ variable"
            + (f"; not {', '.join(sorted(pending))}, whose crate is not in the workspace yet" if pending else "")
            + (f"; {', '.join(sorted(pending_flags))} set though no binary declares them yet" if pending_flags else ""))


def disruption_budget_problems(merged: dict[str, Any], deployments: dict[str, Any],
                               docs: list[dict[str, Any]]) -> list[str]:
    """One PodDisruptionBudget per Deployment, selecting exactly its pods, when enabled."""
    problems = []
    pdbs = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PodDisruptionBudget"}
    want = merged["podDisruptionBudget"]
    if not want["enabled"]:
        return [f"podDisruptionBudget.enabled=false but rendered: {sorted(pdbs)}"] if pdbs else []
    if set(pdbs) != set(deployments):
        problems.append(f"PodDisruptionBudgets {sorted(pdbs)} != Deployments {sorted(deployments)}")
    for name, pdb in pdbs.items():
        spec = pdb["spec"]
        dep = deployments.get(name)
        if dep and spec.get("selector") != {"matchLabels": dep["spec"]["selector"]["matchLabels"]}:
            problems.append(f"PodDisruptionBudget {name} does not select exactly Deployment {name}'s pods")
        if spec.get("maxUnavailable") != want["maxUnavailable"] or "minAvailable" in spec:
            problems.append(f"PodDisruptionBudget {name}: maxUnavailable {spec.get('maxUnavailable')!r} "
                            f"!= {want['maxUnavailable']!r} (or minAvailable set)")
        if spec.get("unhealthyPodEvictionPolicy") != want.get("unhealthyPodEvictionPolicy"):
            problems.append(f"PodDisruptionBudget {name}: unhealthyPodEvictionPolicy "
                            f"{spec.get('unhealthyPodEvictionPolicy')!r}")
    return problems


def helm_scenarios() -> list[tuple[str, dict[str, Any], str]]:
    bundled = f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    exec_team = {
        "name": "gamma", "shape": "split", "parts": 8, "arity": 4, "chains": ["eth-mainnet", "op-1"],
        "leafClass": "leaf", "aggregateClass": "agg", "ackWaitMs": 30000, "maxDeliver": 3,
        "timeLimitMs": 600000, "class": {"agg": {"ackWaitMs": 60000, "maxDeliver": 2}, "leaf": {"timeLimitMs": 120000}},
        "proofSystem": "gamma-stark", "verifier": ["/opt/prover/bin/prove", "--strict"],
        "mode": "realtime", "slotMs": 2000, "sampleEvery": 4, "latePolicy": "finish-late",
        "ethproofsClusterId": 7,
        "gateway": {
            "replicas": 3, "slots": 2, "prover": "exec", "proverCmd": "/opt/prover/bin/prove",
            "proverArgs": ["--backend", "gpu"], "bundleAggregates": True, "proofSystem": "gamma-stark",
            "proverThreads": 8, "taskTimeout": "30m", "classes": ["leaf", "agg"], "priority": 2,
            "inlineThreshold": 1048576, "workerThreads": 2,
            "image": {"repository": "registry.example/gamma-prover", "tag": "1.2.3"},
            "extraEnv": [{"name": "RAYON_NUM_THREADS", "value": "4"}],
            "extraVolumes": [{"name": "keys", "secret": {"secretName": "gamma-keys"}}],
            "extraVolumeMounts": [{"name": "keys", "mountPath": "/opt/prover/keys", "readOnly": True}],
            "shutdownGrace": "20s", "terminationGracePeriodSeconds": 45,
        },
    }
    return [
        ("bundled NATS (defaults)", {}, bundled),
        ("external NATS cluster, reporter dry run", {
            "nats": {"enabled": False}, "natsUrl": EXTERNAL_NATS,
            "reporter": {"enabled": True, "dryRun": True},
            "auth": {"enabled": True, "secretName": "push0-creds"},
            "podDisruptionBudget": {"maxUnavailable": "50%", "unhealthyPodEvictionPolicy": "IfHealthyBudget"},
            "serviceMonitor": {"enabled": True, "interval": "15s", "scrapeTimeout": "10s",
                               "labels": {"release": "kube-prometheus-stack"}},
            "prometheusRule": {"enabled": True, "labels": {"release": "kube-prometheus-stack"}},
            "scheduler": {"natsMonitorUrls": [f"http://nats-{i}.nats:8222" for i in range(3)]},
            "ingest": {"chains": ["eth-mainnet", "op-1"]},
            "otlp": {"endpoint": "https://otlp.example.com"},
        }, EXTERNAL_NATS),
        ("bundled 3-node NATS, traces sampled and exported", {
            "nats": {"enabled": True, "config": {"cluster": {"enabled": True, "replicas": 3}}},
            "topology": {"replicas": 3},
            "traces": True,
            "otlp": {"endpoint": "http://otel-collector.observability.svc:4318",
                     "sampler": "parentbased_traceidratio", "samplerArg": 0.05,
                     "headersSecret": {"name": "otlp-auth", "key": "headers"},
                     "resourceAttributes": {"deployment.environment.name": "prod", "cloud.region": "eu-west-1"}},
        }, bundled),
        ("KEDA scales two of three teams", {
            "keda": {"enabled": True, "serverAddress": "http://prometheus-operated.monitoring.svc:9090",
                     "threshold": 2, "maxReplicas": 6, "extraMatchers": 'namespace="push0"'},
            "teams": [
                {"name": "alpha", "shape": "single", "keda": {"minReplicas": 0, "activationThreshold": 1,
                                                              "threshold": 0.5, "maxReplicas": 3}},
                {"name": "beta", "shape": "split", "parts": 4, "keda": {"enabled": False},
                 "gateway": {"replicas": 3}},
                {"name": "delta", "shape": "single"},
            ],
        }, bundled),
        ("exec prover team reported to Ethproofs, no metrics Services", {
            "nats": {"enabled": False}, "natsUrl": "nats://nats.infra:4222", "prefix": "zk-test",
            "reporter": {"enabled": True, "ethproofsUrl": "https://ethproofs.example/api/v0",
                         "apiKeySecret": {"name": "ethproofs", "key": "token"}, "rate": "30/1m",
                         "replicas": 1, "workerThreads": 2, "resources": {"requests": {"cpu": "10m"}}},
            "teams": [{"name": "alpha", "shape": "single",
                       "gateway": {"simFailWhile": "/var/lib/push0/work/poison", "simLatency": "fixed:1s"}},
                      exec_team],
            "scheduler": {"replicas": 2, "pollInterval": "50ms", "alertNoProverAfter": "1m",
                          "alertMissRate": 0.25, "alertMissWindow": "5m", "workerThreads": 2},
            "ingest": {"workerThreads": 2}, "aggregator": {"workerThreads": 4},
            "podAnnotations": {"team.example/owner": "ops"},
            "metrics": {"service": {"enabled": False}}, "podDisruptionBudget": {"enabled": False},
        }, "nats://nats.infra:4222"),
        ("mutual TLS to the bundled NATS, reporter dry run", {
            "tls": {"enabled": True, "secretName": "push0-nats-client"},
            "reporter": {"enabled": True, "dryRun": True},
            "nats": {"enabled": True, "tlsCA": {"enabled": True, "secretName": "push0-nats-server"},
                     "config": {"nats": {"tls": {"enabled": True, "secretName": "push0-nats-server",
                                                 "merge": {"verify": True}}}},
                     "natsBox": {"contexts": {"default": {"tls": {"secretName": "push0-nats-client"}}}}},
        }, f"tls://{RELEASE}-nats.{NAMESPACE}.svc:4222"),
        ("TLS to an external NATS, Secret keys of its own", {
            "nats": {"enabled": False}, "natsUrl": TLS_EXTERNAL_NATS,
            "tls": {"enabled": True, "secretName": "nats-client", "caKey": "ca.pem",
                    "certKey": "client.pem", "keyKey": "client-key.pem"},
        }, TLS_EXTERNAL_NATS),
    ]


def check_helm_render(helm, chart: Path, promtool: Path, label: str, values: dict[str, Any],
                      nats_url: str) -> str:
    merged, docs, notes = render(helm, chart, values)
    kube_validate(docs)
    problems = check_manifests(merged, docs, nats_url, chart)
    problems += promtool_check_rendered_rules(promtool, docs)
    problems += promtool_check_scaler_queries(promtool, merged, docs)
    if "push0" not in notes or nats_url not in notes:
        problems.append("NOTES.txt does not render the NATS URL")
    expect(not problems, f"{label}: rendered manifests", "\n".join(problems))
    kinds: dict[str, int] = {}
    for d in docs:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    custom = sorted({d["kind"] for d in docs if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS})
    return (f"{label}: {summary}; valid against Kubernetes {KUBE_VERSION} (strict)"
            + (f", {' and '.join(custom)} against structural schemas" if custom else ""))


def check_helm_nats_auth(helm, chart: Path, root: Path) -> str:
    """The values `push0 auth --helm-values` writes for the bundled NATS: push0's pods sign in
    with their own keys, the nats chart carries the very block `--out` writes and includes it
    (the chart turns a key ending in `$include` into an include directive of a file of its
    ConfigMap), nats-server accepts that configuration, and the chart renders with them."""
    push0, nats_server = push0_and_nats_server(root)
    with tempfile.TemporaryDirectory() as tmp:
        keys, etc, written = Path(tmp) / "keys", Path(tmp) / "etc", Path(tmp) / "auth-values.yaml"
        out = run_tool([str(push0), "auth", "--keys", str(keys), "--teams", "deploy/teams.toml",
                        "--out", str(keys / "authorization.conf"), "--helm-values", str(written)], root)
        expect(out.returncode == 0, "push0 auth --helm-values failed", out.stderr)
        block = (keys / "authorization.conf").read_text()
        try:
            values = yaml.safe_load(written.read_text())
        except yaml.YAMLError as exc:
            raise CheckError("the Helm values push0 auth writes do not parse", str(exc))
        expect(values.get("auth") == {"enabled": True, "secretName": "push0-creds"},
               f"auth values {values.get('auth')!r}: pods would not sign in with their keys")
        nats = values.get("nats") or {}
        includes = {k: v for k, v in ((nats.get("config") or {}).get("merge") or {}).items()
                    if k.endswith("$include")}
        expect(len(includes) == 1, f"nats.config.merge holds {len(includes)} include keys, expected 1")
        (file,) = includes.values()
        data = ((nats.get("configMap") or {}).get("merge") or {}).get("data") or {}
        expect(data.get(file) == block,
               f"nats.configMap.merge.data[{file!r}] is not the authorization block `--out` writes")
        etc.mkdir()
        (etc / file).write_text(data[file])
        (etc / "nats.conf").write_text(f"include {file};\n" + (root / "deploy" / "nats.conf").read_text())
        out = run_tool([str(nats_server), "-t", "-c", str(etc / "nats.conf")], root)
        expect(out.returncode == 0, "nats-server refuses the bundled NATS configuration with the block",
               out.stderr + out.stdout)
        users = len(re.findall(r"nkey\s*[:=]", block))
    bundled = f"nats://{RELEASE}-nats.{NAMESPACE}.svc:4222"
    merged, docs, _ = render(helm, chart, values)
    problems = check_manifests(merged, docs, bundled, chart)
    expect(not problems, "the chart with the values push0 auth writes", "\n".join(problems))
    return (f"push0 auth --helm-values: the bundled NATS includes the block ({users} users, "
            f"nats-server accepts it), every pod signs in with its own key")


def rust_struct_fields(source: str, struct: str) -> list[str]:
    """Field names of a `pub struct NAME { pub field: T, … }` in Rust source."""
    match = re.search(rf"pub struct {struct} \{{(.*?)\n\}}", source, re.S)
    expect(match is not None, f"no `pub struct {struct}` found")
    return re.findall(r"(?m)^\s*pub (\w+):", match.group(1))


def check_team_keys_parity(root: Path, chart: Path) -> str:
    """Every field of the scheduler's TeamConfig and ClassSettings is known to this validator
    and settable in values (values.schema.json, camelCase), and nothing else is."""
    source = (root / "shared" / "protocol" / "src" / "team.rs").read_text()
    team_fields = set(rust_struct_fields(source, "TeamConfig"))
    class_fields = set(rust_struct_fields(source, "ClassSettings"))
    camel = {v: k for k, v in HELM_TEAM_KEYS.items()}
    schema = json.loads((chart / "values.schema.json").read_text())
    team_schema = schema["properties"]["teams"]["items"]
    problems = []
    if team_fields != {"name", *TEAM_DEFAULTS}:
        problems.append(f"TeamConfig fields {sorted(team_fields)} != validator's TEAM_DEFAULTS + name")
    if class_fields != set(CLASS_KEYS):
        problems.append(f"ClassSettings fields {sorted(class_fields)} != validator's CLASS_KEYS")
    want = {camel.get(f, f) for f in team_fields} | set(HELM_ONLY_TEAM_KEYS)
    if set(team_schema["properties"]) != want:
        problems.append(f"values.schema.json teams[] keys {sorted(team_schema['properties'])} != {sorted(want)}")
    class_schema = team_schema["properties"].get("class", {}).get("additionalProperties", {})
    want_class = {camel.get(f, f) for f in class_fields}
    if set(class_schema.get("properties", {})) != want_class:
        problems.append(f"values.schema.json teams[].class keys {sorted(class_schema.get('properties', {}))} "
                        f"!= {sorted(want_class)}")
    used = {k for _, values, _ in helm_scenarios() for team in values.get("teams", []) for k in team}
    if want - used:
        problems.append(f"no rendered combination sets teams[] keys {sorted(want - used)}")
    for schema_part, where in ((team_schema, "teams[]"), (class_schema, "teams[].class.*")):
        if schema_part.get("additionalProperties") is not False:
            problems.append(f"values.schema.json {where} allows unknown keys")
    expect(not problems, "teams file keys and values differ", "\n".join(problems))
    return (f"values.schema.json teams[] covers all {len(team_fields)} TeamConfig and {len(class_fields)} "
            "ClassSettings fields of shared/protocol/src/team.rs, refuses others; each is rendered")


def check_teams_agree(root: Path, chart: Path) -> str:
    compose_teams = load_teams_toml(root / "deploy" / "teams.toml")
    helm_teams = yaml.safe_load((chart / "values.yaml").read_text())["teams"]
    expect(normalized_teams(compose_teams) == normalized_teams(helm_teams),
           "deploy/teams.toml and helm values.yaml teams differ",
           f"teams.toml:  {normalized_teams(compose_teams)}\nvalues.yaml: {normalized_teams(helm_teams)}")
    return f"deploy/teams.toml and helm values agree: {', '.join(t['name'] for t in helm_teams)}"


# --------------------------------------------------------------------------
# the validators must bite
# --------------------------------------------------------------------------


def check_validators_reject(compose: Compose, hadolint: Path, helm, chart: Path) -> str:
    rejected = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        broken = {
            "image not a string, bad restart": "services:\n  x:\n    image: 1\n    restart: bogus\n",
            "unknown service key": "services:\n  x:\n    image: alpine\n    replicas: 2\n",
            "bad depends_on condition": ("services:\n  x:\n    image: alpine\n    depends_on:\n"
                                         "      y: {condition: service_ready}\n  y:\n    image: alpine\n"),
        }
        for label, text in broken.items():
            f = tmpdir / "compose.yml"
            f.write_text(text)
            out = compose.config(f, "--quiet")
            expect(out.returncode != 0, f"docker-compose accepted a broken file ({label})")
            rejected.append(f"compose:{label}")

        # The trace wiring, on mutated copies of the real compose model.
        out = compose.config(compose.root / "docker-compose.yml", "--format", "json")
        expect(out.returncode == 0, "docker-compose config --format json failed", out.stderr)
        full_model = json.loads(out.stdout)
        model = full_model["services"]
        collector = next(n for n, s in model.items() if str(s.get("image", "")).startswith("jaegertracing/"))

        def env_of(m: dict[str, Any], name: str) -> dict[str, Any]:
            return m[name].setdefault("environment", {})

        trace_breaks: dict[str, Callable[[dict[str, Any]], None]] = {
            "gateway without endpoint": lambda m: env_of(m, "gateway-alpha").pop("OTEL_EXPORTER_OTLP_ENDPOINT"),
            "endpoint with /v1/traces": lambda m: env_of(m, "ingest").__setitem__(
                "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{collector}:4318/v1/traces"),
            "endpoint at no service": lambda m: env_of(m, "scheduler").__setitem__(
                "OTEL_EXPORTER_OTLP_ENDPOINT", "http://otel-collector:4318"),
            "OTLP gRPC port": lambda m: env_of(m, "aggregator").__setitem__(
                "OTEL_EXPORTER_OTLP_ENDPOINT", f"http://{collector}:4317"),
            "gRPC protocol": lambda m: env_of(m, "ingest").__setitem__("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            "inline headers": lambda m: env_of(m, "ingest").__setitem__(
                "OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20x"),
            "gateway without its team": lambda m: env_of(m, "gateway-beta").pop("OTEL_RESOURCE_ATTRIBUTES"),
            "UI on every interface": lambda m: [p.pop("host_ip", None) for p in m[collector]["ports"]],
            "collector image unpinned": lambda m: m[collector].__setitem__("image", "jaegertracing/all-in-one:latest"),
            "OTLP receiver off": lambda m: m[collector]["environment"].__setitem__("COLLECTOR_OTLP_ENABLED", "false"),
        }
        for label, mutate in trace_breaks.items():
            bad = copy.deepcopy(model)
            mutate(bad)
            expect(bool(compose_trace_problems(bad)[0]), f"trace wiring check accepted a bad model ({label})")
            rejected.append(f"traces:{label}")

        reporter = next(n for n, s in model.items() if "push0-reporter" in (s.get("command") or []))
        expect(not compose_reporter_problems(full_model), "the compose reporter is wrong before any mutation")
        reporter_breaks: dict[str, Callable[[dict[str, Any]], None]] = {
            "in no profile": lambda m: m["services"][reporter].pop("profiles"),
            "API key inline": lambda m: env_of(m["services"], reporter).__setitem__("ETHPROOFS_API_KEY", "k"),
            "secret inline": lambda m: m["secrets"].__setitem__(
                m["services"][reporter]["secrets"][0]["source"], {"content": "k"}),
            "key file not the secret": lambda m: env_of(m["services"], reporter).__setitem__(
                "PUSH0_ETHPROOFS_KEY_FILE", "/etc/push0/key"),
            "no API URL": lambda m: env_of(m["services"], reporter).pop("PUSH0_ETHPROOFS_URL"),
        }
        for label, mutate in reporter_breaks.items():
            bad = copy.deepcopy(full_model)
            mutate(bad)
            expect(bool(compose_reporter_problems(bad)), f"compose reporter check accepted a bad model ({label})")
            rejected.append(f"compose-reporter:{label}")

        # The TLS override, on mutated copies of the merged model and of its nats config.
        root = compose.root
        out = compose.config_files([root / "docker-compose.yml", root / COMPOSE_TLS], "--format", "json")
        expect(out.returncode == 0, "docker-compose config of the TLS override failed", out.stderr)
        tls_model = json.loads(out.stdout)
        expect(not compose_tls_problems(tls_model, root), "the compose TLS override is wrong before any mutation")

        def tls_mount(m: dict[str, Any], name: str) -> dict[str, Any]:
            return next(v for v in m["services"][name]["volumes"] if v["target"] == TLS_DIR)

        compose_tls_breaks: dict[str, Callable[[dict[str, Any]], None]] = {
            "gateway on nats://": lambda m: env_of(m["services"], "gateway-alpha").__setitem__(
                "PUSH0_NATS_URL", "nats://nats:4222"),
            "topology without a client key": lambda m: env_of(m["services"], "topology").pop("PUSH0_TLS_KEY"),
            "certificates mounted writable": lambda m: tls_mount(m, "scheduler").__setitem__("read_only", False),
            "folder created when missing": lambda m: tls_mount(m, "ingest").__setitem__(
                "bind", {"create_host_path": True}),
            "reporter's certificates from another folder": lambda m: tls_mount(m, "reporter").__setitem__(
                "source", "/srv/other-certs"),
            "nats on its plain config": lambda m: m["services"]["nats"].__setitem__(
                "command", ["--config", "/etc/nats/nats.conf", "-js", "-m", "8222"]),
        }
        for label, mutate in compose_tls_breaks.items():
            bad = copy.deepcopy(tls_model)
            mutate(bad)
            expect(bool(compose_tls_problems(bad, root)), f"compose TLS check accepted a bad model ({label})")
            rejected.append(f"compose-tls:{label}")
        real_conf = (root / "deploy" / "nats-tls.conf").read_text()
        conf_breaks = {
            "no verify": real_conf.replace("verify: true", "verify: false"),
            "no ca_file": re.sub(r"(?m)^\s*ca_file:.*$", "", real_conf),
            "deploy/nats.conf not included": re.sub(r"(?m)^include .*$", "", real_conf),
            "key outside the mount": real_conf.replace("/etc/nats/tls/server.key", "/etc/nats/server.key"),
        }
        for label, text in conf_breaks.items():
            expect(text != real_conf, f"compose TLS self-test: {label} left deploy/nats-tls.conf unchanged")
            problems = compose_tls_problems(
                tls_model, root, lambda p, text=text: text if p.name == "nats-tls.conf" else p.read_text())
            expect(bool(problems), f"compose TLS check accepted a bad nats-tls.conf ({label})")
            rejected.append(f"compose-tls:{label}")

        # The authorization override, on mutated copies of the merged model.
        out = compose.config_files([root / "docker-compose.yml", root / COMPOSE_AUTH], "--format", "json")
        expect(out.returncode == 0, "docker-compose config of the authorization override failed", out.stderr)
        auth_model = json.loads(out.stdout)
        plain = root / "deploy" / "nats.conf"
        expect(not compose_auth_problems(auth_model, root, plain),
               "the compose authorization override is wrong before any mutation")

        def key_mount(m: dict[str, Any], name: str) -> dict[str, Any]:
            return next(v for v in m["services"][name]["volumes"] if v["target"].startswith(CREDS_DIR))

        keys = root / "deploy" / "keys"
        compose_auth_breaks: dict[str, Callable[[dict[str, Any]], None]] = {
            "gateway with another team's key": lambda m: key_mount(m, "gateway-alpha").__setitem__(
                "source", str(keys / "team-beta.nk")),
            "ingest as admin": lambda m: key_mount(m, "ingest").__setitem__("source", str(keys / "admin.nk")),
            "scheduler without credentials": lambda m: env_of(m["services"], "scheduler").pop("PUSH0_NATS_CREDS"),
            "key mounted writable": lambda m: key_mount(m, "aggregator").__setitem__("read_only", False),
            "key created when missing": lambda m: key_mount(m, "reporter").__setitem__(
                "bind", {"create_host_path": True}),
            "the whole keys folder": lambda m: m["services"]["cli"]["volumes"].append(
                {"type": "bind", "source": str(keys), "target": "/keys", "read_only": True}),
            "nats without the users": lambda m: m["services"]["nats"].__setitem__(
                "command", ["--config", "/etc/nats/nats.conf", "-js", "-m", "8222"]),
        }
        for label, mutate in compose_auth_breaks.items():
            bad = copy.deepcopy(auth_model)
            mutate(bad)
            expect(bool(compose_auth_problems(bad, root, plain)),
                   f"compose authorization check accepted a bad model ({label})")
            rejected.append(f"compose-auth:{label}")

        bad_dockerfile = tmpdir / "Dockerfile"
        bad_dockerfile.write_text("FROM debian:bookworm-slim AS a\nCOPY --from=a /x /y\nCMD [\"a\"\n")
        out = run_tool(hadolint_cmd(hadolint, bad_dockerfile), tmpdir)
        expect(out.returncode != 0, "hadolint accepted a broken Dockerfile")
        rejected.append("dockerfile")

    bad_values = {
        "unknown shape": {"teams": [{"name": "x", "shape": "bogus"}]},
        "split without parts": {"teams": [{"name": "x", "shape": "split", "arity": 2}]},
        "nats disabled, no natsUrl": {"nats": {"enabled": False}},
        "unknown top-level key": {"replicaCount": 3},
        "unknown team key": {"teams": [{"name": "x", "shape": "single", "slotMS": 2000}]},
        "mistyped team mode": {"teams": [{"name": "x", "shape": "single", "mode": "fast"}]},
        "unknown scheduler flag": {"scheduler": {"pollIntervall": "50ms"}},
        "mistyped scheduler.alertMissRate": {"scheduler": {"alertMissRate": "half"}},
        "gateway.proverArgs with a space": {"gateway": {"proverArgs": ["--backend gpu"]}},
        "gateway.workerThreads 0": {"gateway": {"workerThreads": 0}},
        "team slotMs a string": {"teams": [{"name": "x", "shape": "single", "mode": "realtime", "slotMs": "2s"}]},
        "sampling outside realtime": {"teams": [{"name": "x", "shape": "single", "sampleEvery": 10}]},
        "unknown class setting": {"teams": [{"name": "x", "shape": "single", "class": {"prove": {"retries": 2}}}]},
        "bad team name": {"teams": [{"name": "Alpha_1", "shape": "single"}]},
        "negative ethproofsClusterId": {"teams": [{"name": "x", "shape": "single", "ethproofsClusterId": -1}]},
        "ethproofsClusterId a string": {"teams": [{"name": "x", "shape": "single", "ethproofsClusterId": "7"}]},
        "mistyped podDisruptionBudget.enabled": {"podDisruptionBudget": {"enabled": "yes"}},
        "podDisruptionBudget.maxUnavailable 0": {"podDisruptionBudget": {"maxUnavailable": 0}},
        "unknown serviceMonitor key": {"serviceMonitor": {"enabled": True, "intervall": "30s"}},
        "serviceMonitor deleted": {"serviceMonitor": None},
        "serviceMonitor.interval not a duration": {"serviceMonitor": {"enabled": True, "interval": "30 seconds"}},
        "prometheusRule label value not a string": {"prometheusRule": {"enabled": True, "labels": {"release": 1}}},
        "mistyped keda.threshold": {"keda": {"enabled": True, "serverAddress": "http://p:9090", "threshold": "2"}},
        "unknown teams[].keda key": {"teams": [{"name": "x", "shape": "single", "keda": {"maxReplica": 3}}]},
        "otlp.protocol grpc": {"otlp": {"endpoint": "http://c:4317", "protocol": "grpc"}},
        "otlp.endpoint with /v1/traces": {"otlp": {"endpoint": "http://c:4318/v1/traces"}},
        "otlp.endpoint without scheme": {"otlp": {"endpoint": "collector:4318"}},
        "otlp headers inline": {"otlp": {"endpoint": "http://c:4318", "headers": "authorization=Bearer%20x"}},
        "otlp.headersSecret without endpoint": {"otlp": {"headersSecret": {"name": "otlp-auth", "key": "h"}}},
        "unknown otlp.sampler": {"otlp": {"sampler": "ratio"}},
        "otlp.samplerArg above 1": {"otlp": {"sampler": "traceidratio", "samplerArg": 5}},
        "otlp.samplerArg without a ratio sampler": {"otlp": {"sampler": "always_on", "samplerArg": 0.5}},
        "otlp.resourceAttributes value with a comma": {"otlp": {"resourceAttributes": {"team": "a,b"}}},
        "otlp.resourceAttributes sets push0.team": {"otlp": {"resourceAttributes": {"push0.team": "x"}}},
        "reporter.apiKey inline": {"reporter": {"apiKey": "k"}},
        "ETHPROOFS_API_KEY in reporter.extraEnv": {"reporter": {"extraEnv": [{"name": "ETHPROOFS_API_KEY", "value": "k"}]}},
        "reporter sending without ethproofsUrl": {
            "reporter": {"enabled": True, "apiKeySecret": {"name": "ethproofs", "key": "token"}}},
        "reporter sending without apiKeySecret": {"reporter": {"enabled": True, "ethproofsUrl": "https://e.example"}},
        "reporter.rate without a window": {"reporter": {"rate": "60"}},
        "unknown reporter key": {"reporter": {"dryrun": True}},
        "reporter.rate with a zero window": {"reporter": {"rate": "60/0s"}},
        "tls enabled without secretName": {"tls": {"enabled": True}},
        "unknown tls key": {"tls": {"verify": True}},
        "tls.caKey a path": {"tls": {"caKey": "certs/ca.crt"}},
        "tls.keyKey with ..": {"tls": {"keyKey": "tls..key"}},
        "mistyped tls.enabled": {"tls": {"enabled": "yes", "secretName": "c"}},
    }
    with helm.Chart.load(str(chart)) as loaded:
        for label, values in bad_values.items():
            try:
                loaded.validate_schema(values)
            except helm.HelmError:
                rejected.append(f"schema:{label}")
                continue
            raise CheckError(f"values.schema.json accepted bad values ({label})")
        # Guards the schema cannot express live in the templates (fail/required).
        bad_renders = {
            "exec without proverCmd": {"teams": [{"name": "x", "shape": "single", "gateway": {"prover": "exec"}}]},
            "duplicate team": {"teams": [{"name": "x", "shape": "single"}, {"name": "x", "shape": "single"}]},
            "serviceMonitor without metrics Services": {
                "serviceMonitor": {"enabled": True}, "metrics": {"service": {"enabled": False}}},
            "class settings for a class the team lacks": {
                "teams": [{"name": "x", "shape": "single", "class": {"agg": {"maxDeliver": 2}}}]},
            "keda without serverAddress": {"keda": {"enabled": True}},
            "keda minReplicas above maxReplicas": {
                "keda": {"enabled": True, "serverAddress": "http://p:9090", "minReplicas": 5, "maxReplicas": 2}},
            "push0 TLS, the bundled NATS without": {"tls": {"enabled": True, "secretName": "c"}},
            "push0 TLS, the bundled NATS's without a Secret": {
                "tls": {"enabled": True, "secretName": "c"}, "nats": {"config": {"nats": {"tls": {"enabled": True}}}}},
            "the bundled NATS's TLS, push0 without": {
                "nats": {"config": {"nats": {"tls": {"enabled": True, "secretName": "s"}}}}},
        }
        for label, values in bad_renders.items():
            try:
                loaded.render(values, name=RELEASE, namespace=NAMESPACE)
            except helm.HelmError:
                rejected.append(f"render:{label}")
                continue
            raise CheckError(f"chart rendered bad values ({label})")

    import kubernetes_validate  # noqa: PLC0415

    _, docs, _ = render(helm, chart, {})
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    body = {k: v for k, v in deployment.items() if k != "__source__"}
    for label, mutate in {
        "replicas not an integer": lambda d: d["spec"].__setitem__("replicas", "two"),
        "unknown container field": lambda d: d["spec"]["template"]["spec"]["containers"][0].__setitem__("cmd", ["x"]),
    }.items():
        bad = copy.deepcopy(body)
        mutate(bad)
        try:
            kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError:
            rejected.append(f"k8s:{label}")
            continue
        raise CheckError(f"kubernetes-validate accepted a bad Deployment ({label})")

    # The OTLP environment check, on mutated renderings of a gateway that exports.
    label, values, _ = next(sc for sc in helm_scenarios() if sc[1].get("otlp", {}).get("headersSecret"))
    merged, docs, _ = render(helm, chart, values)
    gateway = next(d for d in docs if d["kind"] == "Deployment"
                   and d["spec"]["template"]["spec"]["containers"][0]["command"] == ["push0-prover-gateway"])
    team = gateway["metadata"]["labels"]["push0.io/team"]
    env_list = gateway["spec"]["template"]["spec"]["containers"][0]["env"]
    expect(not otlp_env_problems("gateway", env_list, merged, team),
           f"{label}: the gateway's OTLP environment is wrong before any mutation")

    def set_var(env: list[dict[str, Any]], var: str, **entry: Any) -> None:
        env[[e["name"] for e in env].index(var)] = {"name": var, **entry}

    otlp_breaks: dict[str, Callable[[list[dict[str, Any]]], None]] = {
        "headers inline": lambda e: set_var(e, "OTEL_EXPORTER_OTLP_HEADERS", value="authorization=Bearer%20x"),
        "POD_NAME after the attributes": lambda e: e.append(e.pop([x["name"] for x in e].index("POD_NAME"))),
        "gateway without its team": lambda e: set_var(
            e, "OTEL_RESOURCE_ATTRIBUTES", value=f"k8s.namespace.name={NAMESPACE},k8s.pod.name=$(POD_NAME)"),
        "gRPC protocol": lambda e: set_var(e, "OTEL_EXPORTER_OTLP_PROTOCOL", value="grpc"),
        "endpoint dropped": lambda e: e.pop([x["name"] for x in e].index("OTEL_EXPORTER_OTLP_ENDPOINT")),
    }
    for label, mutate in otlp_breaks.items():
        bad = copy.deepcopy(env_list)
        mutate(bad)
        expect(bool(otlp_env_problems("gateway", bad, merged, team)), f"OTLP env check accepted a bad gateway ({label})")
        rejected.append(f"otlp:{label}")

    # The reporter checks, on mutated renderings of a reporter that sends with a key.
    label, values, _ = next(sc for sc in helm_scenarios()
                            if sc[1].get("reporter", {}).get("apiKeySecret", {}).get("name"))
    merged, docs, _ = render(helm, chart, values)
    reporter = next(d for d in docs if d["kind"] == "Deployment"
                    and d["spec"]["template"]["spec"]["containers"][0]["command"] == ["push0-reporter"])
    expect(not reporter_problems("reporter", reporter, merged["reporter"]) and not inline_api_key_problems(docs),
           f"{label}: the reporter is wrong before any mutation")

    def container(d: dict[str, Any]) -> dict[str, Any]:
        return d["spec"]["template"]["spec"]["containers"][0]

    def key_volume(d: dict[str, Any]) -> dict[str, Any]:
        mount = next(m for m in container(d)["volumeMounts"] if m["mountPath"] == "/etc/push0/ethproofs")
        return next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])

    reporter_breaks: dict[str, Callable[[dict[str, Any]], None]] = {
        "API key inline": lambda d: container(d)["env"].append({"name": "ETHPROOFS_API_KEY", "value": "k"}),
        "API key from the Secret as a variable": lambda d: container(d)["env"].append(
            {"name": "ETHPROOFS_API_KEY", "valueFrom": {"secretKeyRef": {"name": "ethproofs", "key": "token"}}}),
        "key file outside the mount": lambda d: set_var(container(d)["env"], "PUSH0_ETHPROOFS_KEY_FILE",
                                                        value="/tmp/api-key"),
        "key mount writable": lambda d: [m.pop("readOnly", None) for m in container(d)["volumeMounts"]],
        "key of another Secret": lambda d: key_volume(d)["secret"].__setitem__("secretName", "other"),
        "replicas not as values say": lambda d: d["spec"].__setitem__("replicas", d["spec"]["replicas"] + 1),
    }
    for label, mutate in reporter_breaks.items():
        bad = copy.deepcopy(reporter)
        mutate(bad)
        expect(bool(reporter_problems("reporter", bad, merged["reporter"]) + inline_api_key_problems([bad])),
               f"reporter check accepted a bad reporter ({label})")
        rejected.append(f"reporter:{label}")

    # The TLS check, on mutated renderings of a scheduler and topology Job with TLS, and of a
    # scheduler without.
    label, values, _ = next(sc for sc in helm_scenarios() if sc[1].get("tls", {}).get("enabled"))
    merged, docs, _ = render(helm, chart, values)
    scheduler = next(d for d in docs if d["kind"] == "Deployment"
                     and container(d)["command"] == ["push0-scheduler"])
    job = next(d for d in docs if d["kind"] == "Job")
    expect(not tls_problems("scheduler", scheduler, merged["tls"]) and not tls_problems("job", job, merged["tls"]),
           f"{label}: TLS is wrong before any mutation")

    def tls_volume(d: dict[str, Any]) -> dict[str, Any]:
        mount = next(m for m in container(d)["volumeMounts"] if m["mountPath"] == TLS_DIR)
        return next(v for v in d["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])

    def mount_at(d: dict[str, Any], path: str) -> dict[str, Any]:
        return next(m for m in container(d)["volumeMounts"] if m["mountPath"] == path)

    tls_breaks: dict[str, tuple[dict[str, Any], Callable[[dict[str, Any]], None]]] = {
        "CA outside the mount": (scheduler, lambda d: set_var(container(d)["env"], "PUSH0_TLS_CA", value="/tmp/ca.crt")),
        "client key dropped": (scheduler, lambda d: container(d)["env"].pop(
            [e["name"] for e in container(d)["env"]].index("PUSH0_TLS_KEY"))),
        "mount writable": (scheduler, lambda d: mount_at(d, TLS_DIR).pop("readOnly")),
        "Secret of another name": (scheduler, lambda d: tls_volume(d)["secret"].__setitem__("secretName", "other")),
        "client certificate not projected": (scheduler, lambda d: tls_volume(d)["secret"]["items"].pop(1)),
        "inside the teams ConfigMap": (scheduler, lambda d: mount_at(d, "/etc/push0/teams").__setitem__(
            "mountPath", "/etc/push0")),
        "topology Job without the Secret": (job, lambda d: d["spec"]["template"]["spec"].pop("volumes")),
    }
    for label, (workload, mutate) in tls_breaks.items():
        bad = copy.deepcopy(workload)
        mutate(bad)
        expect(bool(tls_problems("bad", bad, merged["tls"])), f"TLS check accepted a bad workload ({label})")
        rejected.append(f"tls:{label}")
    merged, docs, _ = render(helm, chart, {})
    plain = copy.deepcopy(next(d for d in docs if d["kind"] == "Deployment"))
    container(plain)["env"].append({"name": "PUSH0_TLS_CA", "value": f"{TLS_DIR}/ca.crt"})
    expect(bool(tls_problems("plain", plain, merged["tls"])), "TLS check accepted PUSH0_TLS_CA without tls.enabled")
    rejected.append("tls:CA without tls.enabled")

    # The custom resources' structural schemas, on mutated renderings of the real ones.
    _, docs, _ = render(helm, chart, CUSTOM_RESOURCES_ON)
    custom = {d["kind"]: {k: v for k, v in d.items() if k != "__source__"}
              for d in docs if (d["apiVersion"], d["kind"]) in CRD_SCHEMAS}
    expect(set(custom) == {kind for _, kind in CRD_SCHEMAS},
           f"CUSTOM_RESOURCES_ON renders {sorted(custom)}, not every kind of CRD_SCHEMAS")
    for label, (kind, mutate) in CUSTOM_RESOURCE_BREAKS.items():
        bad = copy.deepcopy(custom[kind])
        mutate(bad)
        expect(bool(crd_problems(bad)), f"structural schema accepted a bad {kind} ({label})")
        rejected.append(f"crd:{label}")
    return (f"{len(rejected)} known-bad inputs rejected by compose, the trace wiring, reporter, TLS and authorization checks, "
            "hadolint, helm, kubernetes-validate and the custom resources' structural schemas")


# Values that render every custom resource the chart has, for the self-test.
CUSTOM_RESOURCES_ON: dict[str, Any] = {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                                       "keda": {"enabled": True, "serverAddress": "http://prometheus:9090"}}
CUSTOM_RESOURCE_BREAKS: dict[str, tuple[str, Callable[[dict[str, Any]], None]]] = {
    "ServiceMonitor without endpoints": ("ServiceMonitor", lambda d: d["spec"].pop("endpoints")),
    "ServiceMonitor interval not a duration": (
        "ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("interval", "30 seconds")),
    "ServiceMonitor endpoint unknown field": (
        "ServiceMonitor", lambda d: d["spec"]["endpoints"][0].__setitem__("portName", "metrics")),
    "PrometheusRule rule without expr": (
        "PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0].pop("expr")),
    "PrometheusRule group without name": ("PrometheusRule", lambda d: d["spec"]["groups"][0].pop("name")),
    "ScaledObject threshold a number": (
        "ScaledObject", lambda d: d["spec"]["triggers"][0]["metadata"].__setitem__("threshold", 2)),
    "ScaledObject without scaleTargetRef.name": ("ScaledObject", lambda d: d["spec"]["scaleTargetRef"].pop("name")),
    "ScaledObject maxReplicaCount a string": ("ScaledObject", lambda d: d["spec"].__setitem__("maxReplicaCount", "10")),
    "PrometheusRule annotation not a string": (
        "PrometheusRule", lambda d: d["spec"]["groups"][0]["rules"][0]["annotations"].__setitem__("runbook", 1)),
}


# --------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--compose", type=Path, required=True)
    parser.add_argument("--hadolint", type=Path, required=True)
    parser.add_argument("--promtool", type=Path, required=True)
    args = parser.parse_args()
    root = args.root.resolve()
    chart = root / "helm" / "push0"
    compose = Compose(args.compose, root)
    report = Report()

    report.run("compose", lambda: check_compose_valid(compose))
    report.run("compose", lambda: check_compose_model(compose))
    report.run("compose", lambda: check_compose_monitoring(compose))
    report.run("compose", lambda: check_compose_traces(compose))
    report.run("compose", lambda: check_compose_tls(compose))
    report.run("compose", lambda: check_compose_auth(compose))
    report.run("prometheus", lambda: check_prometheus(root, args.promtool))
    report.run("prometheus", lambda: check_alert_annotations(root))
    report.run("prometheus", lambda: check_alerts_copy(root))
    report.run("grafana", lambda: check_dashboard(root))
    report.run("selftest", lambda: check_promtool_rejects(args.promtool))
    report.run("docker", lambda: check_dockerfile(args.hadolint, root))
    report.run("helm", lambda: check_chart_metadata(chart))
    report.run("helm", lambda: check_template_references(chart))
    report.run("teams", lambda: check_teams_agree(root, chart))
    report.run("teams", lambda: check_team_keys_parity(root, chart))

    helm = report.run("helm", import_helm)
    if helm is not None:
        report.run("helm", lambda: check_helm_lint(helm, chart))
        for label, values, nats_url in helm_scenarios():
            report.run("helm", lambda label=label, values=values, nats_url=nats_url:
                       check_helm_render(helm, chart, args.promtool, label, values, nats_url))
        report.run("helm", lambda: check_flag_parity(helm, chart, root))
        report.run("helm", lambda: check_helm_nats_auth(helm, chart, root))
        report.run("selftest", lambda: check_validators_reject(compose, args.hadolint, helm, chart))

    print(f"deploy: {report.passed} passed, {report.failed} failed")
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())
