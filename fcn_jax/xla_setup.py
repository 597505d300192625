"""XLA settings for the CPU that fcn-jax's programs apply: `add_default_xla_flags`.

XLA reads `XLA_FLAGS` once, when the first backend starts, so a program calls
`add_default_xla_flags()` before its first JAX computation (main.py and the benchmarks do).
Importing fcn_jax changes nothing. A flag the user already set is never overridden.

* `--xla_cpu_experimental_ynn_fusion_type=` (empty: no YNNPACK fusions) routes CPU
  convolutions to XLA's own kernels, which run the FCN's forward and train step faster.
* `--xla_cpu_copy_insertion_use_region_analysis=true` lets XLA see that the train step reads
  each donated parameter before overwriting it, so it no longer copies them all first.
* `--xla_cpu_enable_concurrency_optimized_scheduler=false` orders the step to keep memory low
  rather than to run independent operations side by side, which two cores have little use for.
* `--xla_cpu_use_fusion_emitters=false` compiles the element-wise fusions with XLA's older
  emitter: as fast, and less code left resident (compiling the course-notes train step,
  1,200 fusions, grows the process by 0.11 GiB instead of 0.19 GiB).

The figures behind each are in docs/cpu_speed.md and docs/benchmarks.md.

These flags only exist in the jaxlib releases we tested; an unknown flag makes XLA abort, so
they are set for those releases alone. They are also set only when the process computes on
the CPU alone: `JAX_PLATFORMS` is `cpu`, or it is unset and no GPU or TPU plugin is installed
(`targets_cpu_only`). Every XLA backend in a process parses `XLA_FLAGS`, and the GPU and TPU
compilers ignore `--xla_cpu_*` fields, but libtpu parses them with its own XLA build, which
may not know them, and none of them was measured next to an accelerator.
"""

import importlib.metadata
import importlib.util
import os
import pkgutil

import jax

_TESTED_JAX_MINOR = ((0, 10),)
CPU_FLAGS = (
    "--xla_cpu_experimental_ynn_fusion_type=",
    "--xla_cpu_copy_insertion_use_region_analysis=true",
    "--xla_cpu_enable_concurrency_optimized_scheduler=false",
    "--xla_cpu_use_fusion_emitters=false",
)


def add_default_xla_flags(environ: dict[str, str] | None = None) -> str:
    """Appends fcn-jax's CPU flags to `XLA_FLAGS` for a CPU-only process, unless the user set them.

    Args:
      environ: the environment to edit (default: `os.environ`).

    Returns:
      The resulting `XLA_FLAGS` value.
    """
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if tuple(jax.__version_info__[:2]) in _TESTED_JAX_MINOR and targets_cpu_only(environ):
        for flag in CPU_FLAGS:
            if flag.split("=")[0] not in flags:
                flags = f"{flags} {flag}".strip()
    if flags:
        environ["XLA_FLAGS"] = flags
    return flags


def targets_cpu_only(environ: dict[str, str] | None = None) -> bool:
    """Whether JAX will compute on the CPU alone in a process with this environment.

    True if `JAX_PLATFORMS` names only `cpu`, or if it is unset and no accelerator plugin is
    installed (`accelerator_plugins`).
    """
    environ = os.environ if environ is None else environ
    platforms = environ.get("JAX_PLATFORMS", "").strip()
    if platforms:
        return {p.strip() for p in platforms.split(",")} == {"cpu"}
    return not accelerator_plugins(environ)


def accelerator_plugins(environ: dict[str, str] | None = None) -> list[str]:
    """The GPU/TPU PJRT plugins JAX would load: as JAX discovers them when its backends start.

    Those are the modules of the `jax_plugins` namespace package (the CUDA and ROCm plugins),
    the `jax_plugins` entry points, and libtpu (the `libtpu` package or `TPU_LIBRARY_PATH`).
    """
    environ = os.environ if environ is None else environ
    found = [e.value for e in importlib.metadata.entry_points(group="jax_plugins")]
    namespace = importlib.util.find_spec("jax_plugins")
    if namespace is not None and namespace.submodule_search_locations is not None:
        found += [m.name for m in pkgutil.iter_modules(namespace.submodule_search_locations)]
    if importlib.util.find_spec("libtpu") is not None or environ.get("TPU_LIBRARY_PATH"):
        found.append("libtpu")
    return sorted(set(found))
