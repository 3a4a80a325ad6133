"""The workflow files are valid YAML, name only nox sessions that exist, and release each
distribution on its own."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from sagaz_repo_support import DISTRIBUTIONS, ROOT

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
NOX_OPTIONS_WITH_VALUE = {"-f", "--noxfile", "-p", "--python", "-t", "--tags", "-k"}


def load(path: Path) -> dict[Any, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), f"{path.name} is not a YAML mapping"
    return data


def run_steps(workflow: dict[Any, Any]) -> list[str]:
    return [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job.get("steps", [])
        if "run" in step
    ]


def nox_sessions_named(command: str) -> list[str]:
    """The sessions a shell command passes to nox with -s/--session/--sessions."""
    named = []
    for line in command.splitlines():
        if not re.search(r"(^|\s)nox(\s|$)", line):
            continue
        words = shlex.split(line, comments=True)
        taking = False
        for word in words[words.index("nox") + 1 :]:
            if word in {"-s", "--session", "--sessions", "-e"}:
                taking = True
            elif word.startswith("-") or word in {"|", ">>", "&&", ";"}:
                taking = False
            elif taking:
                named.append(word)
    return named


def test_workflows_exist() -> None:
    names = {p.name for p in WORKFLOWS}
    assert "ci.yml" in names
    assert {f"release-{d}.yml" for d in DISTRIBUTIONS} <= names


@pytest.mark.parametrize(
    "path", [*WORKFLOWS, ROOT / ".github" / "dependabot.yml"], ids=lambda p: p.name
)
def test_valid_yaml(path: Path) -> None:
    data = load(path)
    if path.parent.name == "workflows":
        # PyYAML reads the key `on` as True.
        assert data.get("on", data.get(True)), f"{path.name} has no trigger (`on:`)"
        assert data.get("jobs"), f"{path.name} has no jobs"
        for name, job in data["jobs"].items():
            assert "runs-on" in job, f"{path.name}: job {name} has no runs-on"
            assert job.get("steps"), f"{path.name}: job {name} has no steps"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflows_name_only_existing_nox_sessions(
    path: Path, full_matrix: list[dict[str, Any]]
) -> None:
    known = {s["name"] for s in full_matrix} | {s["session"] for s in full_matrix}
    named = [n for run in run_steps(load(path)) for n in nox_sessions_named(run)]
    named = [n for n in named if "${{" not in n]  # generated from nox --list --json
    missing = sorted(set(named) - known)
    assert not missing, f"{path.name} runs nox sessions that do not exist: {missing}"


def test_ci_runs_every_default_session(default_matrix: list[dict[str, Any]]) -> None:
    """The CI workflow runs what `.ci/run` runs: every default session (the tests through the
    generated matrix, which holds each of them)."""
    ci = load(ROOT / ".github" / "workflows" / "ci.yml")
    named = {n for run in run_steps(ci) for n in nox_sessions_named(run)}
    tests = {s["name"] for s in default_matrix if "tests" in s["tags"]}
    defaults = {s["name"] for s in default_matrix} - tests
    assert defaults <= named, f"ci.yml does not run {sorted(defaults - named)}"
    assert any("nox_matrix.py --tag tests" in run for run in run_steps(ci))


def test_generated_job_matrix_is_the_full_test_matrix(full_matrix: list[dict[str, Any]]) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / ".github" / "scripts" / "nox_matrix.py"), "--tag", "tests"],
        input=json.dumps(full_matrix),
        capture_output=True,
        text=True,
        check=True,
    )
    key, _, value = done.stdout.strip().partition("=")
    assert key == "matrix"
    jobs = json.loads(value)["include"]
    assert [j["session"] for j in jobs] == [
        s["session"] for s in full_matrix if "tests" in s["tags"]
    ]
    assert {j["python"] for j in jobs} == {"3.11", "3.12", "3.13"}
    artifacts = [j["artifact"] for j in jobs]
    assert len(set(artifacts)) == len(artifacts)
    assert all(re.fullmatch(r"[A-Za-z0-9._-]+", a) for a in artifacts)


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
def test_release_workflow_builds_and_publishes_one_distribution(distribution: str) -> None:
    path = ROOT / ".github" / "workflows" / f"release-{distribution}.yml"
    workflow = load(path)
    trigger = workflow.get("on", workflow.get(True))
    assert trigger == {"push": {"tags": [f"{distribution}-v*"]}}
    text = path.read_text()
    others = set(re.findall(r"packages/(sagaz-[a-z]+)", text)) - {distribution}
    assert not others, f"{path.name} touches other distributions: {others}"
    runs = "\n".join(run_steps(workflow))
    assert 'release_check.py "$GITHUB_REF_NAME"' in runs
    assert f"build --outdir dist packages/{distribution}" in runs
    assert workflow["permissions"] == {"contents": "read"}
    publish = workflow["jobs"]["publish"]
    assert publish["permissions"] == {"id-token": "write"}, "trusted publishing needs id-token"
    assert any(
        step.get("uses", "").startswith("pypa/gh-action-pypi-publish@") for step in publish["steps"]
    )
    assert not any("password" in step.get("with", {}) for step in publish["steps"])
    others_with_token = [
        n for n, job in workflow["jobs"].items() if n != "publish" and "permissions" in job
    ]
    assert not others_with_token


def test_dependabot_watches_each_distribution_and_the_actions() -> None:
    config = load(ROOT / ".github" / "dependabot.yml")
    pairs = {(u["package-ecosystem"], u["directory"]) for u in config["updates"]}
    assert pairs == {("pip", f"/packages/{d}") for d in DISTRIBUTIONS} | {("github-actions", "/")}
