"""Every command of README.md and of the docs/ pages, run as on an 8-device host.

The commands are read from the pages' bash blocks, so the test follows the text. Each distinct
`main.py` command runs once, in page order (README first, so the reference stages chain; a
page's commands chain too), in a subprocess (the suite itself simulates 4 devices in-process,
these 8), offline, tiny and short: the same overrides are appended to every command, VOC data
is swapped for the `synthetic_shapes` set and the VGG16 download for a random start, and
`/tmp/` becomes the test's own folder. The tools in RUN_AS_IS run as written. Every other
command is listed in NOT_RUN with the reason and what tests it instead.
"""

import json
import os
import pathlib
import re
import shlex
import shutil
import subprocess
import sys

import pytest
from PIL import Image

ROOT = pathlib.Path(__file__).resolve().parent.parent
DEVICES = 8
PAGES = ("README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md")))
# Commands the suite does not run, by their start, and why.
NOT_RUN = {
    "python3 -m venv": "creates the virtualenv the suite runs in",
    ".venv/bin/pip install": "needs PyPI; tests never touch the network",
    "~/venvs/torch/bin/pip install": "needs PyPI; tests never touch the network",
    "pip install -r requirements-colab.txt": "needs PyPI: tools/check_colab_requirements.py",
    ".venv/bin/python -m pytest": "the test suite itself",
    ".venv/bin/ruff": "rewrites files; the lint step before a commit",
    "bash .ci/run": "a fresh virtualenv from PyPI, then the README's test command (checked below)",
    "export FCN_TORCH_PYTHON=": "sets up torch, which the suite never needs",
    '"$FCN_TORCH_PYTHON" tools/': "needs torch; its output is tests/testdata/parity",
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m benchmarks.steps": (
        "full-width benchmark, minutes and GBs: tests/test_benchmarks.py runs it small"
    ),
    "python -m benchmarks.steps": "full width at batch 8: tests/test_benchmarks.py runs it small",
    ".venv/bin/python -m benchmarks.steps": "full width: tests/test_benchmarks.py runs it small",
    ".venv/bin/python -m benchmarks.input_pipeline": "a benchmark; uses no device",
    ".venv/bin/python -m benchmarks.memory": (
        "full width, minutes: tests/test_benchmarks.py runs it small"
    ),
    ".venv/bin/python -m benchmarks.tricks": "full width, minutes and GBs; a timing only",
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m benchmarks.layers": (
        "full-size layers, minutes: tests/test_benchmarks.py runs it small"
    ),
    "GLIBC_TUNABLES=glibc.malloc.hugetlb=1 .venv/bin/python -m benchmarks.threads": (
        "a full-size traced step: tests/test_benchmarks.py runs it small"
    ),
    ".venv/bin/python -m benchmarks.export_latency": (
        "full width, minutes and GBs: tests/test_export_latency.py runs it tiny"
    ),
    "python -m benchmarks.device_check": "tests/test_device_check.py runs it with --tiny",
    "docker run": "needs Docker and TF Serving: tests/test_export.py loads the SavedModel in TF",
}
TINY = (
    "--config.width=0.015625",  # the width of the parity fixtures (tests/testdata/parity)
    "--config.num_train_steps=2",
    "--config.optimizer.warmup_steps=0",
    "--config.log_every_steps=1",
    "--config.eval_every_steps=2",
    "--config.checkpoint_every_steps=2",
    "--config.num_predictions_to_save=1",
    "'--config.dataset.canvas_size=(96, 96)'",
)
SYNTHETIC_FOR_VOC = (
    "--config.dataset.name=synthetic_shapes",
    "--config.dataset.eval_name=synthetic_shapes",
    "--config.dataset.eval_split=validation",
)


def page_commands(page: str) -> list[str]:
    """The shell commands of a page's bash blocks, one per `&&`-separated part."""
    text = (ROOT / page).read_text()
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                commands += [" ".join(part.split()) for part in line.split("&&")]
    return commands


def all_commands() -> list[str]:
    """Every page's commands, in page order, each distinct command once."""
    return list(dict.fromkeys(c for page in PAGES for c in page_commands(page)))


# Commands that run offline in seconds, by their start: run as written (but for /tmp/).
RUN_AS_IS = ("python tools/make_custom_datasets.py",)
# main.py commands the suite runs otherwise, by a part of them, and why.
NOT_RUN_MAIN = {
    "--coordinator_address=": "several hosts: tests/test_multihost.py runs 2 processes locally",
    "srun ": "a SLURM job: tests/test_multihost.py runs 2 processes locally",
}
MAIN_COMMANDS = [
    c for c in all_commands() if " main.py " in c and not any(part in c for part in NOT_RUN_MAIN)
]
RUN_COMMANDS = [c for c in all_commands() if c in MAIN_COMMANDS or c.startswith(RUN_AS_IS)]
# Test ids: the page a command first appears on, and its place in the run.
RUN_IDS = [
    f"{next(p for p in PAGES if c in page_commands(p))}:{i}" for i, c in enumerate(RUN_COMMANDS)
]


def test_every_command_is_run_or_has_a_reason():
    for command in all_commands():
        skipped = any(part in command for part in NOT_RUN_MAIN)
        run = command in RUN_COMMANDS or skipped or command.startswith(tuple(NOT_RUN))
        assert run, f"{command}: run it here, or say in NOT_RUN why not"
    modes = sorted(
        re.search(r"--mode=(\w+)", c)[1] if "--mode" in c else "train" for c in MAIN_COMMANDS
    )
    # README: quickstart, 3 reference stages, Colab, eval, predict, export; docs: the
    # course-notes quickstart, the quickstart on the plain path (cpu_speed.md), training on a
    # folder and its eval, predict and export (own_data.md)
    assert modes == ["eval"] * 2 + ["export"] * 2 + ["predict"] * 2 + ["train"] * 8


def test_ci_runs_the_readme_test_command():
    readme = [c for c in page_commands("README.md") if c.startswith(".venv/bin/python -m pytest")]
    ci = [" ".join(line.split()) for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert len(readme) == 1
    assert [line for line in ci if " -m pytest" in line] == readme


def _local(command: str, workspace: dict) -> str:
    """The page's command made to run offline, tiny, in the workspace folder."""
    as_is = command.startswith(RUN_AS_IS)
    command = command.replace("/tmp/", f"{workspace['folder']}/")
    command = re.sub(
        r"^\S*python3? (main\.py|tools/)", rf"{shlex.quote(sys.executable)} {ROOT}/\1", command
    )
    if as_is:
        return command
    config = re.search(r"--config=configs/(\w+)\.py", command)[1]
    command = command.replace("--config=configs/", f"--config={ROOT}/configs/")
    command = command.replace("gs://BUCKET/", "bucket/")
    if config != "custom":  # custom reads its folder: manual_dir stays
        command = re.sub(r" --config\.dataset\.(manual_dir|data_dir)=\S+", "", command)
    for flag in TINY:  # the page's own value goes: a tuple given twice is concatenated
        name = re.escape(flag.strip("'").split("=")[0])
        command = re.sub(rf" (?:'{name}=[^']*'|{name}=\S+)", "", command)
    extra = [*TINY, f"--config.dataset.data_dir={workspace['data_dir']}"]
    if config not in ("quickstart", "quickstart_simple", "custom"):  # VOC configs
        extra += SYNTHETIC_FOR_VOC
        if config in ("fcn32s", "fcn8s_atonce") and "--mode" not in command:
            extra.append("--config.init.kind=random")  # no VGG16 download offline
        if "--config.batch_size" not in command:
            extra.append(f"--config.batch_size={DEVICES}")  # as the README says for N devices
    return " ".join([command, *extra])


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, synthetic_data_dir) -> dict:
    """A working folder with the inputs the commands name, and an environment with 8 devices."""
    folder = tmp_path_factory.mktemp("readme")
    home = folder / "home"
    (home / ".cache" / "fcn_jax").mkdir(parents=True)
    # A pytorch-fcn FCN-8s file in the README's place (width 1/64, 5 classes like the data).
    shutil.copy(
        ROOT / "tests/testdata/parity/fcn8s_random.pth",
        home / ".cache/fcn_jax/fcn8s_from_caffe.pth",
    )
    for name in ("photos/a.jpg", "more/b.jpg"):
        (folder / name).parent.mkdir(exist_ok=True)
        Image.new("RGB", (40, 30), (200, 100, 50)).save(folder / name)
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    env |= {
        "HOME": str(home),
        "XLA_FLAGS": f"--xla_force_host_platform_device_count={DEVICES}",
        "JAX_PLATFORMS": "cpu",
        "JAX_DISABLE_MOST_OPTIMIZATIONS": "true",  # faster compiles; the results stay right
    }
    return {"folder": folder, "env": env, "data_dir": synthetic_data_dir}


def _run(command: str, workspace: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", command],
        cwd=workspace["folder"],
        env=workspace["env"],
        capture_output=True,
        text=True,
        timeout=900,
    )


def _workdir(command: str, workspace: dict) -> pathlib.Path:
    return workspace["folder"] / re.search(r"--workdir=(\S+)", command)[1]


def _flag_path(command: str, flag: str, workspace: dict, default: pathlib.Path) -> pathlib.Path:
    """The folder a path flag of `command` names (relative to the workspace), or `default`."""
    value = re.search(rf"--{flag}=(\S+)", command)
    return workspace["folder"] / value[1] if value else default


@pytest.mark.slow
@pytest.mark.parametrize("command", RUN_COMMANDS, ids=RUN_IDS)  # in page order: stages chain
def test_command_on_8_devices(command, workspace):
    local = _local(command, workspace)
    result = _run(local, workspace)
    assert result.returncode == 0, f"{local}\n{result.stderr[-3000:]}"
    if " main.py " not in command:
        return
    workdir = _workdir(local, workspace)
    if "--mode=predict" in command:
        out = _flag_path(local, "output_dir", workspace, workdir / "predict")
        assert sorted(p.name for p in out.glob("*.png"))
        return
    if "--mode=export" in command:
        out = _flag_path(local, "export_dir", workspace, workdir)
        assert sorted(os.listdir(out)) == ["classes.json", "model.stablehlo", "saved_model"]
        return
    scores = [
        json.loads(line) for line in (workdir / "eval_results.jsonl").read_text().splitlines()
    ]
    assert scores[-1]["step"] == (-1 if "--mode=eval" in command else 2)
    assert 0 <= scores[-1]["mean_iou"] <= 1


@pytest.mark.slow
def test_reference_batch_of_one_stops_early_on_8_devices(workspace):
    command = _local(MAIN_COMMANDS[1], workspace)
    assert "configs/fcn32s.py" in command
    result = _run(command.replace(f" --config.batch_size={DEVICES}", ""), workspace)
    assert result.returncode != 0
    assert "config.batch_size=1 must be a positive multiple of the device count (8)" in (
        result.stderr
    )
