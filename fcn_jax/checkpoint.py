"""Orbax checkpoints: the latest N train states for resuming, and the best model by mean IoU.

WORKDIR/checkpoints/<step>  `state`: the full TrainState, and `data_stream`: a JSON record of
                            what decides the examples each step sees (asynchronous saves,
                            the last N kept);
WORKDIR/best/<step>         model variables of the best evaluation so far.
In a multi-process job every process calls `save` and orbax writes collectively; a checkpoint
restores onto any device count. A save interrupted by SIGKILL leaves a
`*.orbax-checkpoint-tmp` folder that the manager ignores (and removes when it next opens), so a
restart resumes from the last complete step.

Every orbax `CheckpointManager` here is closed when its user is done with it: `Checkpoints` is
a context manager, and the readers open theirs in a `with` block.
"""

import math
from types import TracebackType
from typing import Any, Self

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath


class Checkpoints:
    """The two checkpoint managers of a workdir; `close` them, or use a `with` block.

    Example:
      with checkpoint.Checkpoints(workdir, max_to_keep=3) as checkpoints:
        checkpoints.save(step, state, data_stream)
      # on leaving the block, pending saves are on disk and both managers are closed
    """

    def __init__(self, workdir: str, max_to_keep: int):
        root = _absolute(workdir)
        self.latest = ocp.CheckpointManager(
            root / "checkpoints",
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, cleanup_tmp_directories=True, create=True
            ),
            item_handlers=_latest_handlers(),
        )
        try:
            self.best = ocp.CheckpointManager(
                root / "best",
                options=_best_options(create=True),
                item_handlers=ocp.StandardCheckpointHandler(),
            )
        except BaseException:
            self.latest.close()  # nobody else holds it to close it
            raise

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def latest_step(self) -> int | None:
        """The step of the latest complete train-state checkpoint, if any."""
        return self.latest.latest_step()

    def save(self, step: int, state: Any, data_stream: dict) -> None:
        """Saves the train state and its data-stream record asynchronously (once per step)."""
        if self.latest.latest_step() != step:
            args = ocp.args.Composite(
                state=ocp.args.StandardSave(state), data_stream=ocp.args.JsonSave(data_stream)
            )
            self.latest.save(step, args=args, force=True)

    def save_best(self, step: int, variables: Any, mean_iou: float) -> None:
        """Keeps `variables` if `mean_iou` is the best so far."""
        score = mean_iou if math.isfinite(mean_iou) else -1.0
        self.best.save(
            step, args=ocp.args.StandardSave(variables), metrics={"mean_iou": score}, force=True
        )

    def restore_latest(
        self, abstract_state: Any, sharding: jax.sharding.Sharding
    ) -> tuple[Any, dict]:
        """The latest train state and its data-stream record.

        The state is put on `sharding`, with the shapes of `abstract_state`.
        """
        target = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract_state
        )
        restored = self.latest.restore(
            self.latest_step(),
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(target), data_stream=ocp.args.JsonRestore()
            ),
        )
        return restored.state, restored.data_stream

    def wait(self) -> None:
        """Blocks until asynchronous saves are on disk."""
        self.latest.wait_until_finished()
        self.best.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and closes both managers, the second even if the first fails."""
        try:
            self.latest.close()
        finally:
            self.best.close()


# The folders of a workdir that hold checkpoints: the best by mean IoU, the latest train states.
FOLDERS = ("best", "checkpoints")


def has_train_state(workdir: str) -> bool:
    """Whether WORKDIR holds a train-state checkpoint to resume from (nothing is read)."""
    folder = _absolute(workdir) / "checkpoints"
    return folder.is_dir() and any(p.name.isdigit() for p in folder.iterdir())


def _absolute(workdir: str) -> epath.Path:
    """`workdir` as an absolute path (orbax refuses relative ones); gs:// paths are already."""
    root = epath.Path(workdir)
    return root if root.is_absolute() else root.absolute()


def _best_options(create: bool) -> ocp.CheckpointManagerOptions:
    """Keep one checkpoint: the highest mean IoU."""
    return ocp.CheckpointManagerOptions(
        max_to_keep=1,
        best_fn=lambda metrics: metrics["mean_iou"],
        best_mode="max",
        cleanup_tmp_directories=True,
        create=create,
    )


def _latest_handlers() -> dict:
    return {"state": ocp.StandardCheckpointHandler(), "data_stream": ocp.JsonCheckpointHandler()}


def restore_variables(workdir: str) -> dict:
    """Model variables from a workdir, as numpy.

    The best evaluated model, else the latest train state. Any process and device count can
    read a checkpoint written by any other.

    Raises:
      FileNotFoundError: the workdir has no checkpoint.
    """
    root = _absolute(workdir)
    if (root / "best").exists():
        with ocp.CheckpointManager(
            root / "best",
            options=_best_options(create=False),
            item_handlers=ocp.StandardCheckpointHandler(),
        ) as manager:
            step = manager.best_step()
            if step is not None:
                target = _on_this_host(manager.item_metadata(step))
                variables = manager.restore(step, args=ocp.args.StandardRestore(target))
                return jax.tree.map(np.asarray, variables)
    latest = read_latest_state(workdir)
    if latest is not None:
        state = latest[1]
        return {"params": state["params"], **state["frozen"]}
    raise FileNotFoundError(
        f"no checkpoint in {workdir} (looked in best/ and checkpoints/); train there first "
        "or give a weights file"
    )


def read_latest_state(workdir: str) -> tuple[int, dict] | None:
    """The step and train state (a dict of numpy arrays) of WORKDIR's latest checkpoint.

    Returns None when there is none. Any process and device count can read it.
    """
    folder = _absolute(workdir) / "checkpoints"
    if not folder.exists():
        return None
    with ocp.CheckpointManager(folder, item_handlers=_latest_handlers()) as manager:
        step = manager.latest_step()
        if step is None:
            return None
        target = _on_this_host(manager.item_metadata(step)["state"])
        args = ocp.args.Composite(state=ocp.args.StandardRestore(target))
        state = manager.restore(step, args=args)
    return step, jax.tree.map(np.asarray, dict(state.state))


def _on_this_host(metadata: Any) -> Any:
    """A restore target with the checkpoint's shapes, on this process's first device."""
    sharding = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), metadata
    )
