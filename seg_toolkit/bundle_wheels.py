"""The wheels of a bundle (:mod:`seg_toolkit.bundle`): seg_toolkit's own and its requirement tree, for an offline pip.

The tree is walked through the installed distributions from seg_toolkit's wheel and stopped at the base
environment (default torch and torchvision, which Kaggle images carry): what only they need (nvidia-*, triton,
sympy, ...) is left out, what a bundled package needs too is kept. The wheels are fetched at the installed versions
(``pip download``; sdists are built into wheels) and checked with pip's resolver: ``pip install --dry-run
--no-index`` must resolve seg_toolkit from ``wheels/`` alone, the base packages stood in for by empty stubs.
"""

from __future__ import annotations

import email.parser
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Sequence

from . import __version__
from .bundle_check import BundleError

log = logging.getLogger(__name__)

__all__ = ["gather_wheels", "install_spec"]


def _pip(args: list[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, env=env)
    if r.returncode:
        tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-6:])
        raise BundleError(f"`pip {' '.join(args[:3])} ...` failed (exit {r.returncode}): {tail}")
    return r


def _offline_pip_env() -> dict[str, str]:
    """The environment of a pip that sees only what it is given: no config file, no PIP_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_CONFIG_FILE=os.devnull, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    return env


def own_version() -> str:
    """The version of the bundled seg_toolkit wheel: this version with its code's sha256 as a local label
    (``0.1.0+code.<12 hex>``), which requirements.txt pins, so pip replaces a seg_toolkit 0.1.0 of other code already
    installed on the target (it kept it as 'already satisfied', and predict.py ran that code)."""
    from .versions import code_sha256

    return f"{__version__}+code.{code_sha256()[:12]}"


def _own_wheel(wheels: Path) -> Path:
    """``pip wheel --no-deps`` of seg_toolkit's source tree (copied first: the checkout is not written), versioned
    :func:`own_version`."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "setup.cfg").is_file() and not (root / "pyproject.toml").is_file():
        raise BundleError(f"seg_toolkit's source tree is not beside the package ({root}); bundle from a checkout "
                          "(pip install -e .), or pass --no-wheels and add the wheels yourself")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "seg_toolkit", src / "seg_toolkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("setup.cfg", "setup.py", "pyproject.toml", "README.md", "LICENSE", "MANIFEST.in"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        setup = src / "setup.cfg"
        text = setup.read_text() if setup.is_file() else ""
        if not re.search(r"^version\s*=", text, re.M):
            raise BundleError(f"{root / 'setup.cfg'}: no 'version =' line to give the bundled wheel its code's version")
        setup.write_text(re.sub(r"^version\s*=.*$", f"version = {own_version()}", text, count=1, flags=re.M))
        _pip(["wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(wheels), str(src)])
    return next(wheels.glob("seg_toolkit-*.whl"))


def _requires(wheel: Path) -> list[str]:
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return email.parser.Parser().parsestr(z.read(meta).decode("utf-8")).get_all("Requires-Dist") or []


def _closure(requires: list[str], base: set[str], extras: Sequence[str] = ()) -> tuple[dict[str, str], dict[str, list[str]]]:
    """``({name: installed version} of every non-base requirement, reached without passing through a base
    package, {base name: the requirements on it})``; markers are evaluated for this interpreter, seg_toolkit's
    own with its ``extras`` (``instances``: scikit-image) as well."""
    from importlib import metadata

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    found: dict[str, str] = {}
    on_base: dict[str, list[str]] = {}
    seen: set[tuple[str, frozenset]] = set()
    todo = [(Requirement(r), "seg_toolkit", ("", *extras)) for r in requires]
    while todo:
        req, parent, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        name = canonicalize_name(req.name)
        if name in base:
            on_base.setdefault(name, []).append(f"{req} (by {parent})")
            continue
        try:
            dist = metadata.distribution(req.name)
        except metadata.PackageNotFoundError:
            raise BundleError(f"{req.name} (required by {parent}: {req}) is not installed here; "
                              f"`pip install '{req}'` and bundle again, or name it in --base-env") from None
        if not req.specifier.contains(dist.version, prereleases=True):
            raise BundleError(f"{parent} requires {req}, but {req.name} {dist.version} is installed here")
        if (name, frozenset(req.extras)) in seen:
            continue
        seen.add((name, frozenset(req.extras)))
        found[name] = dist.version
        todo += [(Requirement(r), name, ("", *req.extras)) for r in dist.requires or []]
    return found, on_base


def _stub_wheel(folder: Path, name: str, version: str) -> None:
    """An empty wheel that says ``name==version`` is there: the base environment, for the resolver check."""
    dist = f"{re.sub(r'[-_.]+', '_', name)}-{version}"
    info = f"{dist}.dist-info"
    files = {f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: seg_toolkit\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    with zipfile.ZipFile(folder / f"{dist}-py3-none-any.whl", "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
        z.writestr(f"{info}/RECORD", "".join(f"{n},,\n" for n in [*files, f"{info}/RECORD"]))


def install_spec(extras: Sequence[str] = ()) -> str:
    """What pip installs from a bundle's wheels: ``seg_toolkit``, or with the extras its runs need,
    ``seg_toolkit[instances]``."""
    return "seg_toolkit" + (f"[{','.join(sorted(extras))}]" if extras else "")


def gather_wheels(wheels: Path, base: set[str], extras: Sequence[str] = ()) -> dict[str, Any]:
    """seg_toolkit's wheel (with ``extras``) and the wheels of its non-base requirement tree, checked by pip's
    resolver."""
    from importlib import metadata

    from packaging.utils import canonicalize_name

    wheels.mkdir(parents=True)
    own = _own_wheel(wheels)
    found, on_base = _closure(_requires(own), base, extras)
    with tempfile.TemporaryDirectory() as tmp:
        reqs = Path(tmp) / "requirements.txt"
        reqs.write_text("".join(f"{n}=={v}\n" for n, v in sorted(found.items())))
        log.info("bundle: gathering %d wheels (pip download at the installed versions)", len(found))
        _pip(["download", "--no-deps", "--prefer-binary", "--quiet", "-d", str(wheels), "-r", str(reqs)])
        for sdist in [*wheels.glob("*.tar.gz"), *wheels.glob("*.zip")]:  # no wheel on the index: build one here
            _pip(["wheel", "--no-deps", "--quiet", "-w", str(wheels), str(sdist)])
            sdist.unlink()
        stubs = Path(tmp) / "base"
        stubs.mkdir()
        base_versions = {}
        for name in sorted(on_base):
            try:
                base_versions[name] = metadata.version(name)
            except metadata.PackageNotFoundError:
                raise BundleError(f"--base-env: {name} is required but not installed here, so its version on the target "
                                  f"cannot be pinned; install it, or leave it out of --base-env") from None
            _stub_wheel(stubs, name, base_versions[name])
        report = Path(tmp) / "report.json"
        try:
            _pip(["install", "--dry-run", "--ignore-installed", "--no-index", "--quiet", "--find-links", str(wheels),
                  "--find-links", str(stubs), "--report", str(report), f"{install_spec(extras)}=={own_version()}"],
                 env=_offline_pip_env())
        except BundleError as e:
            raise BundleError(f"the gathered wheels are incomplete: {e}") from None
        resolved = {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                    for i in json.loads(report.read_text())["install"]}
    extra = sorted(set(resolved) - set(found) - set(on_base) - {"seg-toolkit"})
    if extra:  # cannot happen unless the installed metadata and the wheels disagree
        raise BundleError(f"pip resolves packages the bundle did not gather from the installed ones: {extra}")
    files = sorted(p.name for p in wheels.glob("*.whl"))
    return {"count": len(files), "bytes": sum(p.stat().st_size for p in wheels.glob("*.whl")), "files": files,
            "requirements": {"seg-toolkit": own_version(), **dict(sorted(found.items()))},
            "base_env": {n: {"required": on_base.get(n, []), "bundled_with": base_versions.get(n)} for n in sorted(base)},
            "extras": sorted(extras),
            "verified": f"pip install --dry-run --no-index resolved {install_spec(extras)} and {len(resolved) - 1 - len(on_base)} "
                        f"dependencies from wheels/ alone, the base environment ({', '.join(sorted(on_base))}) stubbed"}
