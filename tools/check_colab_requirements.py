"""Shows that requirements-colab.txt installs on the runtime it supports without replacing it.

    python tools/check_colab_requirements.py            # the runtime stated in the file
    python tools/check_colab_requirements.py --runtime jax==0.10.2 jaxlib==0.10.2 \\
        tensorflow==2.21.0

Creates a fresh virtualenv, installs the runtime's jax, jaxlib and TensorFlow into it (as a
Colab runtime has them), then runs `pip install --dry-run --report` of requirements-colab.txt
on top and lists every package pip would install. It fails if pip would replace any package
already installed (jax, jaxlib, TensorFlow or one of their dependencies). It needs PyPI, so it
is a tool to run by hand, not a test; tests/test_requirements.py checks the file offline.
"""

import argparse
import json
import pathlib
import re
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parent.parent
REQUIREMENTS = ROOT / "requirements-colab.txt"


def stated_runtime(path: pathlib.Path = REQUIREMENTS) -> list[str]:
    """The `# runtime: name==version ...` pins stated in requirements-colab.txt."""
    match = re.search(r"^# runtime: (.+)$", path.read_text(), re.M)
    if not match:
        raise ValueError(f"{path} states no '# runtime:' line")
    return match[1].split()


def _pip(venv: pathlib.Path, *args: str) -> str:
    command = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", *args]
    return subprocess.run(command, check=True, capture_output=True, text=True).stdout


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def check(runtime: list[str]) -> list[str]:
    """Returns the packages the dry run would replace (none: the runtime stays as it is)."""
    with tempfile.TemporaryDirectory(prefix="colab_runtime_") as tmp:
        venv = pathlib.Path(tmp) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        print(f"installing the runtime: {' '.join(runtime)}", flush=True)
        _pip(venv, "install", "-q", *runtime)
        installed = {
            _canonical(p["name"]): p["version"]
            for p in json.loads(_pip(venv, "list", "--format=json"))
        }
        report = pathlib.Path(tmp) / "report.json"
        _pip(venv, "install", "--dry-run", "-q", "--report", str(report), "-r", str(REQUIREMENTS))
        planned = json.loads(report.read_text())["install"]
    replaced = []
    for item in planned:
        name, version = _canonical(item["metadata"]["name"]), item["metadata"]["version"]
        before = installed.get(name)
        print(f"  would install {name}=={version}" + (f" (replacing {before})" if before else ""))
        if before:
            replaced.append(f"{name} {before} -> {version}")
    for pin in runtime:
        name, version = pin.split("==")
        assert installed[_canonical(name)] == version, (pin, installed.get(_canonical(name)))
    return replaced


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runtime", nargs="+", help="name==version pins (default: the file's)")
    args = parser.parse_args()
    runtime = args.runtime or stated_runtime()
    replaced = check(runtime)
    if replaced:
        sys.exit("pip would replace runtime packages: " + ", ".join(replaced))
    print(f"OK: requirements-colab.txt replaces nothing on {' '.join(runtime)}")


if __name__ == "__main__":
    main()
