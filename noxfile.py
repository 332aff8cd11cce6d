"""Sessions that install rspo-bench into a fresh virtual environment and run it.

    nox -s smoke        # the smoke sweep on the embedded defaults
    nox -s tests        # the default test run (what CI runs first)
    nox -s slow_tests   # tests marked slow (CI runs them in a second step)
    nox -s benchmarks   # performance benchmarks, results in docs/benchmarks.md

The test sessions need Debian packages (Chromium for the HTML report, poppler
for the PDF pages, the PostgreSQL server for the storage tests, which start
their own). When one is missing and the
session runs as root on Debian, it installs them with apt-get.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.reuse_existing_virtualenvs = True
nox.options.sessions = ["tests"]

ROOT = Path(__file__).parent
DEBIAN_PACKAGES = {"chromium": "chromium", "pdftoppm": "poppler-utils", "pdftotext": "poppler-utils",
                   "initdb": "postgresql"}


def _present(binary: str) -> bool:
    """Return whether a binary is installed; Debian keeps PostgreSQL's server binaries off PATH."""
    if shutil.which(binary):
        return True
    return binary == "initdb" and any(Path("/usr/lib/postgresql").glob("*/bin/initdb"))


def _default_data_dir() -> str | None:
    """Return $RSPO_BENCH_DATA, or a 'shared/data' folder beside the checkout when one exists."""
    if os.environ.get("RSPO_BENCH_DATA"):
        return os.environ["RSPO_BENCH_DATA"]
    beside = ROOT.parent / "shared" / "data"
    return str(beside) if beside.is_dir() else None


def _install_debian_packages(session: nox.Session) -> None:
    missing = sorted({package for binary, package in DEBIAN_PACKAGES.items() if not _present(binary)})
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        session.warn(f"missing system packages {missing}; the tests that need them are skipped")
        return
    session.run("apt-get", "update", "-qq", external=True)
    session.run("apt-get", "install", "-y", "-qq", "--no-install-recommends", *missing, external=True,
                env={"DEBIAN_FRONTEND": "noninteractive"})


def _install(session: nox.Session, extras: str = "") -> None:
    session.install("--upgrade", "pip")
    session.install("-e", f".{extras}")


def _env() -> dict[str, str]:
    env = {"PYTHONHASHSEED": "0", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    data_dir = _default_data_dir()
    if data_dir:
        env["RSPO_BENCH_DATA"] = data_dir
    return env


@nox.session
def smoke(session: nox.Session) -> None:
    """Run the smoke sweep: 4 regularized variants + the base policy on the tiny CPU world."""
    _install(session)
    args = session.posargs or ["experiments/smoke.yaml"]
    session.run("rspo-bench", "sweep", *args, env=_env())


@nox.session
def tests(session: nox.Session) -> None:
    """Run the default (fast) test suite."""
    _install_debian_packages(session)
    _install(session, "[test]")
    session.run("pytest", *(session.posargs or ["-q"]), env=_env())


@nox.session(name="slow_tests")
def slow_tests(session: nox.Session) -> None:
    """Run the tests marked slow; exit code 5 (none selected) counts as success."""
    _install_debian_packages(session)
    # DeepSpeed installs from a 2 MB source archive without compiling (11 s on a 2-core CPU). The ZeRO-3
    # test then builds one C++ op at start-up with the system's compiler, and skips without one.
    _install(session, "[test,deepspeed]")
    session.run("pytest", "-q", "-m", "slow", *session.posargs, env=_env(), success_codes=[0, 5])


@nox.session
def benchmarks(session: nox.Session) -> None:
    """Run each benchmark script under benchmarks/, skipping helper modules whose names start with "_"."""
    _install(session, "[test]")
    for script in sorted((ROOT / "benchmarks").glob("[!_]*.py")):
        session.run("python", str(script), *session.posargs, env=_env())
