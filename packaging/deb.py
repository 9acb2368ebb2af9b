"""Build the Debian package: `make deb` (dicom-agent_<version>_all.deb in build/deb/).

    python3 packaging/deb.py --man build/man [--version V] [--wheelhouse DIR] [--out DIR]

Debian's own tools build it (dpkg-buildpackage, debhelper: debian/); this script gives
them what Debian 12 cannot make itself, in the project's build environment:
- the wheels: the product's (its build needs setuptools >= 77) and its dependencies',
  zeroconf from its source distribution with SKIP_CYTHON=1 — pure Python, so the
  package is `Architecture: all`; a wheel with compiled code stops the build. From the
  package index, or offline from --wheelhouse (pre-fetched wheels, zeroconf's pure one
  among them);
- a copy of the source with those wheels (kept in OUT/wheelhouse as well) and the man
  pages in build/, and — with
  --version, for a rebuilt package — a changelog entry for that version (as `dch` does).
Then `dpkg-buildpackage -b` with a plain PATH (Debian's python3, not a virtual
environment's), and lintian, which fails the build on any error (no error tag is
overridden). The package's version is pyproject.toml's unless --version says otherwise;
debian/changelog's first entry must agree with pyproject.toml (a unit test checks it).
"""

from __future__ import annotations

import argparse
import email.utils
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SOURCES = ("debian", "packaging", "agent", "README.md", "pyproject.toml")
PATH = "/usr/sbin:/usr/bin:/sbin:/bin"


class BuildError(RuntimeError):
    pass


def project_version() -> str:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]


def debian_version(version: str) -> str:
    """PEP 440 to Debian: a pre-release sorts before its release (1.0rc1 -> 1.0~rc1)."""
    return re.sub(r"(\d)(a|b|rc|\.dev)(\d+)", r"\1~\2\3", version)


def changelog_version(text: str) -> str:
    match = re.match(r"dicom-agent \(([^)]+)\)", text)
    if match is None:
        raise BuildError("debian/changelog: no first entry")
    return match.group(1)


def changelog_entry(version: str, text: str) -> str:
    """A new first entry for a rebuilt version, in the changelog's own form."""
    maintainer = re.search(r"^ -- (.+?>)", text, re.M).group(1)
    return (f"dicom-agent ({version}) unstable; urgency=medium\n\n"
            f"  * Rebuilt as {version}.\n\n"
            f" -- {maintainer}  {email.utils.formatdate(usegmt=False)}\n\n" + text)


def wheels(dest: Path, wheelhouse: Path | None) -> list[Path]:
    """The product's wheel and its dependencies', every one pure Python."""
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    source = (["--no-index", "--find-links", str(wheelhouse)] if wheelhouse else [])
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--wheel-dir", str(dest),
                           "--no-binary", "zeroconf", *source, str(REPO)],
                          env={**os.environ, "SKIP_CYTHON": "1"}, capture_output=True,
                          text=True, timeout=900)
    if done.returncode != 0:
        raise BuildError(f"pip wheel: {done.stderr[-3000:]}")
    built = sorted(dest.glob("*.whl"))
    for wheel in built:
        compiled = [n for n in zipfile.ZipFile(wheel).namelist()
                    if n.endswith((".so", ".pyd", ".c"))]
        if compiled:
            raise BuildError(f"{wheel.name} has compiled code ({compiled[0]}): the package "
                             "is Architecture: all")
    return built


def distributions(built: list[Path]) -> list[str]:
    """The bundled distributions' names, as their files are installed (dist-info)."""
    return [w.name.split("-")[0] for w in built]


def uncovered(names: list[str], copyright_text: str) -> list[str]:
    """Bundled distributions without a paragraph of their own in debian/copyright."""
    return [n for n in names if n != "dicom_agent"
            and f"usr/lib/dicom-agent/python/{n}-*" not in copyright_text]


def build(man: Path, out: Path, version: str | None, wheelhouse: Path | None,
          built_wheels: Path | None = None) -> Path:
    """The package in OUT; `built_wheels`: a previous build's OUT/wheelhouse, packaged
    as it is (a rebuild under another version, as the upgrade test makes)."""
    out.mkdir(parents=True, exist_ok=True)
    upstream = debian_version(version or project_version())
    src = out / f"dicom-agent-{upstream}"
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir()
    for name in SOURCES:
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy(path, src / name)
    if built_wheels is not None:
        built = sorted(built_wheels.glob("*.whl"))
        shutil.copytree(built_wheels, src / "build" / "wheelhouse")
    else:
        built = wheels(out / "wheelhouse", wheelhouse)  # kept: a rebuild may take them
        shutil.copytree(out / "wheelhouse", src / "build" / "wheelhouse")
    missing = uncovered(distributions(built), (src / "debian" / "copyright").read_text())
    if missing:
        raise BuildError(f"debian/copyright has no paragraph for {', '.join(missing)}")
    shutil.copytree(man, src / "build" / "man")
    changelog = src / "debian" / "changelog"
    if changelog_version(changelog.read_text()) != upstream:
        changelog.write_text(changelog_entry(upstream, changelog.read_text()))
    env = {"PATH": PATH, "HOME": str(out), "LC_ALL": "C.UTF-8"}
    done = subprocess.run(["dpkg-buildpackage", "-b", "-us", "-uc"], cwd=src, env=env,
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        raise BuildError(f"dpkg-buildpackage: {(done.stdout + done.stderr)[-4000:]}")
    deb = out / f"dicom-agent_{upstream}_all.deb"
    report = subprocess.run(["lintian", "--fail-on", "error", "--tag-display-limit", "0",
                             "--info", str(deb)], env=env, capture_output=True, text=True,
                            timeout=900)
    print(report.stdout, end="")
    if report.returncode != 0:
        raise BuildError(f"lintian reports errors: {report.stdout[-3000:]}{report.stderr}")
    shutil.rmtree(src)
    return deb


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--man", type=Path, required=True, help="the built man pages (make man)")
    p.add_argument("--version", help="the package's version [pyproject.toml's]")
    p.add_argument("--wheelhouse", type=Path, help="pre-fetched wheels (offline builds)")
    p.add_argument("--out", type=Path, default=REPO / "build" / "deb")
    args = p.parse_args(argv)
    try:
        deb = build(args.man.resolve(), args.out.resolve(), args.version,
                    args.wheelhouse.resolve() if args.wheelhouse else None)
    except BuildError as exc:
        print(f"make deb: {exc}", file=sys.stderr)
        return 1
    print(deb)
    return 0


if __name__ == "__main__":
    sys.exit(main())
