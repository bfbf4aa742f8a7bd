"""How the project installs: pyproject.toml's ranges, constraints.txt's exact versions
(what `make`, CI and cluster.yaml install) inside them, the environment the tests run
in at those versions, the license, and what the package ships."""
import importlib.metadata
import re
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def constraint_pins() -> dict[str, str]:
    pins = {}
    for number, line in enumerate((REPO / "constraints.txt").read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", f"constraints.txt:{number}: {line} is not an exact pin"
            assert canonicalize_name(req.name) not in pins, f"constraints.txt:{number}: twice"
            pins[canonicalize_name(req.name)] = spec.version
    return pins


def requirements(*groups: str) -> list[Requirement]:
    lines = list(PYPROJECT["dependencies"]) if "base" in groups else []
    for extra in groups:
        lines += PYPROJECT["optional-dependencies"].get(extra, [])
    return [Requirement(line) for line in lines]


def test_every_requirement_is_a_range_with_a_pin_inside_it():
    pins = constraint_pins()
    reqs = requirements("base", *PYPROJECT["optional-dependencies"])
    assert {canonicalize_name(r.name) for r in reqs} >= {"ray", "torch", "faiss-cpu", "faiss-gpu",
                                                          "pyyaml", "fastapi", "starlette"}
    for req in reqs:
        name = canonicalize_name(req.name)
        assert not any(s.operator == "==" for s in req.specifier), f"{req}: a range, not a pin"
        assert name in pins, f"{req.name} has no pin in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's {req}")


def test_the_environment_has_the_pinned_versions():
    """The tests run at the versions `make` installs (a venv made before the
    constraints file may differ: `make venv` after a `touch constraints.txt`)."""
    pins = constraint_pins()
    for req in requirements("base", "dev"):
        name = canonicalize_name(req.name)
        if name == "faiss-cpu" and not _installed(name):
            name = "faiss-gpu"                # a GPU install replaces it (docs/install.md)
        assert importlib.metadata.version(name).split("+")[0] == pins[name], name


def _installed(name: str) -> bool:
    try:
        importlib.metadata.version(name)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


def test_python_versions_and_license():
    assert PYPROJECT["requires-python"] == ">=3.11"
    running = f"Programming Language :: Python :: {sys.version_info.major}.{sys.version_info.minor}"
    assert running in PYPROJECT["classifiers"]
    assert PYPROJECT["license"] == "Apache-2.0"                   # SPDX expression
    assert not any(c.startswith("License ::") for c in PYPROJECT["classifiers"])  # superseded
    text = (REPO / "LICENSE").read_text()
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    assert "END OF TERMS AND CONDITIONS" in text
    # the installed metadata says so too (the editable install reads pyproject.toml)
    assert importlib.metadata.metadata("hashgan-ray")["License-Expression"] == "Apache-2.0"


def test_the_default_search_space_is_one_file_in_the_package():
    from hashgan_ray.tuning.search import default_space_path, read_space

    packaged = REPO / "hashgan_ray" / "tuning" / "space.yaml"
    assert default_space_path().resolve() == packaged.resolve()
    link = REPO / "tune" / "space.yaml"                  # the readable top-level copy
    assert link.is_symlink() and link.resolve() == packaged.resolve()
    assert read_space(link) == read_space(default_space_path())
    package_data = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "space.yaml" in package_data["package-data"]["hashgan_ray.tuning"]


def test_the_package_holds_no_test_support_and_one_private_ray_read():
    """cluster_local is test support (tests/support); Ray's private API is read in
    one function only, tuning.search.placement_group_rows, which checks what it reads."""
    package = REPO / "hashgan_ray"
    assert not (package / "cluster_local.py").exists()
    private = [(path.name, line.strip()) for path in sorted(package.rglob("*.py"))
               for line in path.read_text().splitlines()
               if re.match(r"\s*(from|import)\s+ray\._private", line)]
    assert private == [("search.py", "from ray._private.state import state  "
                                     "# the one private import (see above)")], private


def test_version_option(capsys):
    import pytest

    from hashgan_ray.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"hashgan-ray {PYPROJECT['version']}"
