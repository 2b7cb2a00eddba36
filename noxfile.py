"""nox sessions: the test suite once per backend, the cross-backend parity check, benchmarks.

Keras picks its backend when it is imported, so each backend gets its own process, selected
with KERAS_BACKEND. The sessions run in the environment nox is started from (one environment
holding all three backends and timm, installed as the README says), because the parity check
needs all three side by side, and because PyTorch with torchvision is several GB: one copy,
not one per session.

    nox                        # lint, tests-{jax,torch,tensorflow}, slow, parity, browser, install-jax
    nox -s tests-torch -- -k posemb
    nox -s lint                              # ruff (lint and format) and mypy, as CI runs them
    nox -s slow -- --backend torch           # the realistic sizes (ViT-S at 224 px and more)
    nox -s bench-jax                         # every benchmark script with its defaults
    nox -s bench-torch -- analyze memory     # one script, with its arguments
    nox -s fuzz -- --cases 2000 --seed 11
"""

import importlib.util
import os
import sys
import tempfile

import nox

BACKENDS = ("jax", "torch", "tensorflow")
nox.options.sessions = ["lint", *(f"tests-{b}" for b in BACKENDS), "slow", "parity", "browser", "install-jax"]
nox.options.default_venv_backend = "none"

_MODULES = {"jax": "jax", "torch": "torch", "tensorflow": "tensorflow"}


def _require(session, *modules):
    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        session.error(
            f"{', '.join(missing)} not installed in {sys.executable}; install the test "
            "environment first (README, 'Run the tests')"
        )


def _env(backend):
    return {"KERAS_BACKEND": backend, "TF_CPP_MIN_LOG_LEVEL": "2"}


def _workers() -> str:
    """pytest-xdist workers for the suite: one per core, at most 4. Most of a test's time is
    single-threaded (tracing, compiling, subprocesses starting a backend), so two workers on
    a 2-core machine took the jax suite from 804 s to 553 s; each worker holds a backend and
    its compiled models (1-2 GB), hence the cap. `-- -n 0` runs the suite in one process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return str(min(cores, 4))


def _pytest(session, backend, *args, env=None):
    """pytest in this environment on one backend (KERAS_BACKEND=backend).

    JAX's persistent compilation cache in a folder for this run only, shared by the pytest
    workers and the `vitops` processes the tests start: a program any of them compiled (for
    more than JAX's default second) is read back by the others instead of compiled again.
    A hit loads the executable that the compilation wrote, so results are unchanged. On a
    2-core AMD EPYC, tests-jax in two pairs of runs: 481 and 576 s with it, 601 and 633 s
    without (9 to 20 % less).
    """
    with tempfile.TemporaryDirectory(prefix="vitops-jax-cache-") as cache:
        session.run(
            sys.executable,
            "-m",
            "pytest",
            "-q",
            *args,
            env={**_env(backend), "JAX_COMPILATION_CACHE_DIR": cache, **(env or {})},
            external=True,
        )


def _tests_session(backend):
    @nox.session(name=f"tests-{backend}", venv_backend="none")
    def tests(session):
        """The whole suite on one backend, but the parity check and the realistic sizes (`slow`),
        a module per worker process (pytest-xdist, `--dist loadfile`: a module's fixtures are
        built once)."""
        _require(session, _MODULES[backend], "timm", "pytest", "xdist", "vitops")
        _pytest(
            session,
            backend,
            "-m",
            "not parity and not slow",
            "-n",
            _workers(),
            "--dist",
            "loadfile",
            *session.posargs,
        )

    return tests


# The benchmark scripts and the arguments each runs with by default (results: benchmarks/README.md).
BENCHMARKS = {
    "forward": [],
    "load": [],
    "analysis": [],
    "analyze": ["cost"],
    "reductions": [],
    "gradients": [],
    "early": [],
    "highres": [],
}


def _bench_session(backend):
    @nox.session(name=f"bench-{backend}", venv_backend="none")
    def bench(session):
        """Benchmarks on one backend; each script prints JSON. `-- NAME ARGS...` runs one script
        (NAME in BENCHMARKS) with those arguments instead of all with their defaults."""
        _require(session, _MODULES[backend], "vitops")
        runs = BENCHMARKS.items()
        if session.posargs:
            name, *args = session.posargs
            if name not in BENCHMARKS:
                session.error(f"unknown benchmark {name!r}; one of {', '.join(BENCHMARKS)}")
            runs = [(name, args)]
        for name, args in runs:
            session.run(sys.executable, f"benchmarks/{name}.py", *args, env=_env(backend), external=True)

    return bench


for _backend in BACKENDS:
    globals()[f"tests_{_backend}"] = _tests_session(_backend)
    globals()[f"bench_{_backend}"] = _bench_session(_backend)


@nox.session(name="slow", venv_backend="none")
def slow(session):
    """The tests marked slow (realistic model sizes against timm) on every backend, or on the
    one given: `-- --backend torch`."""
    backends, args = list(BACKENDS), list(session.posargs)
    if args[:1] == ["--backend"]:
        backends, args = [args[1]], args[2:]
    for backend in backends:
        _require(session, _MODULES[backend], "timm", "pytest", "xdist", "vitops")
        _pytest(session, backend, "-m", "slow", "-n", _workers(), *args)


@nox.session(name="lint", venv_backend="none")
def lint(session):
    """ruff (lint, then the format check) over the project, and mypy over the typed packages
    (pyproject.toml: [tool.ruff], [tool.mypy])."""
    _require(session, "ruff", "mypy")
    session.run(sys.executable, "-m", "ruff", "check", ".", external=True)
    session.run(sys.executable, "-m", "ruff", "format", "--check", ".", external=True)
    session.run(sys.executable, "-m", "mypy", external=True)


@nox.session(name="parity", venv_backend="none")
def parity(session):
    """The same models and images on jax, torch and tensorflow, compared with each other."""
    _require(session, *_MODULES.values(), "timm", "pytest", "xdist", "vitops")
    _pytest(session, "jax", "-m", "parity", "-n", _workers(), *session.posargs)


@nox.session(name="browser", venv_backend="none")
def browser(session):
    """The analysis report in headless Chromium driven by Playwright: every figure loaded, no
    console error and no network request, the contents' links, the tooltips, the attention
    explorer's maps read back against the models' attention, markup in names shown as text.

    Installs Debian's chromium when it is missing and this runs as root (as on CI)."""
    import shutil

    _require(session, "pytest", "vitops")
    if not any(shutil.which(b) for b in ("chromium", "chromium-browser", "google-chrome")):
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            session.error("Chromium is not installed; install it (Debian: apt-get install chromium)")
        session.run("apt-get", "update", "-qq", external=True)
        session.run(
            "apt-get",
            "install",
            "-y",
            "-qq",
            "--no-install-recommends",
            "chromium",
            external=True,
            env={"DEBIAN_FRONTEND": "noninteractive"},
        )
    _pytest(
        session,
        "jax",
        "tests/test_report.py",
        "tests/test_explorer.py",
        "-k",
        "browser or explorer",
        "-m",
        "not slow",
        *session.posargs,
        env={"VITOPS_REQUIRE_BROWSER": "1"},
    )


@nox.session(name="fuzz", venv_backend="none")
def fuzz(session):
    """Mutated weight files, configs and images (benchmarks/fuzz.py): only vitops' errors, bounded
    time and memory. `-- --cases 2000 --seed S` for the long run; the default is a short one."""
    _require(session, "jax", "vitops")
    session.run(
        sys.executable,
        "benchmarks/fuzz.py",
        *(session.posargs or ["--cases", "200"]),
        env=_env("jax"),
        external=True,
    )


@nox.session(name="install-jax", venv_backend="venv")
def install_jax(session):
    """A fresh environment with only the jax extra (no torch, no TensorFlow): the CLI picks JAX
    when KERAS_BACKEND is unset and works (tests/fresh_install_check.py)."""
    session.install("-c", "constraints.txt", ".[jax]")
    session.run("python", "tests/fresh_install_check.py", f"{session.create_tmp()}/fresh")
