"""Fixtures for the end-to-end CLI tests (tests/e2e).

The CLI always runs as a subprocess with STACKVAULT_KDF=1,1024,1 (cheap Argon2id) and a
distinctive password; see e2e_support.py. The session builds one repository with two
snapshots of a generated folder; tests that change a repository work on a copy of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e_support import PASSWORD, SV, Result, base_env, copy_repo, make_tree


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/e2e/" in str(item.fspath).replace("\\", "/"):
            item.add_marker(pytest.mark.e2e)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "e2e: end-to-end test of the stackvault command")


@dataclass
class Base:
    repo: Path
    src: Path
    first: Result  # backup --tag a --tag b --host h1
    second: Result  # the same folder again, unchanged, --host h1


@pytest.fixture
def env() -> dict[str, str]:
    return base_env(STACKVAULT_PASSWORD=PASSWORD)


@pytest.fixture(scope="session")
def base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    root = tmp_path_factory.mktemp("e2e-base")
    src = make_tree(root / "src")
    sv = SV(root / "repo", base_env(STACKVAULT_PASSWORD=PASSWORD))
    sv.ok("init")
    first = sv.ok("backup", str(src), "--tag", "a", "--tag", "b", "--host", "h1", "--json")
    second = sv.ok("backup", str(src), "--host", "h1", "--json")
    yield Base(root / "repo", src, first, second)


@pytest.fixture
def repo(base: Base, tmp_path: Path, env: dict[str, str]) -> SV:
    """A private copy of the session repository (two snapshots of ``base.src``)."""
    return SV(copy_repo(base.repo, tmp_path / "repo"), env)


@pytest.fixture(scope="session")
def empty_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("e2e-empty") / "repo"
    SV(root, base_env(STACKVAULT_PASSWORD=PASSWORD)).ok("init")
    return root


@pytest.fixture
def fresh(empty_template: Path, tmp_path: Path, env: dict[str, str]) -> SV:
    """An initialised, empty repository (a copy of one made by `init`, to save time)."""
    return SV(copy_repo(empty_template, tmp_path / "fresh-repo"), env)


@pytest.fixture
def nowhere(tmp_path: Path, env: dict[str, str]) -> SV:
    """A repository location where nothing exists yet."""
    return SV(tmp_path / "new-repo", env)
