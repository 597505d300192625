"""fcn-jax command line: train, evaluate or predict with an ml_collections config.

python main.py --config=configs/quickstart.py --workdir=/tmp/fcn_quickstart
python main.py --config=configs/fcn8s.py --workdir=DIR --mode=eval --weights=fcn8s_from_caffe.pth
python main.py --config=configs/quickstart.py --workdir=DIR --mode=predict --inputs=photos/
python main.py --config=configs/fcn8s.py --workdir=DIR --mode=export --export_dir=OUT

One process of an N-process job (one per host; process 0's address is the coordinator):
python main.py --config=... --workdir=SHARED_DIR --coordinator_address=HOST0:1234 \
    --num_processes=N --process_id=I
"""

import logging as pylogging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import ml_collections  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fcn_jax import evaluation, export, train, xla_setup  # noqa: E402

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Checkpoints, logs, eval_results.jsonl, predictions.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "predict", "export"], "What to do.")
flags.DEFINE_string("weights", None, "eval/predict/export: a pytorch-fcn .pth instead of WORKDIR.")
flags.DEFINE_string("split", None, "eval: the split (default config.dataset.eval_split).")
flags.DEFINE_list("inputs", [], "predict: image files, folders or globs.")
flags.DEFINE_string("output_dir", None, "predict: where to write (default WORKDIR/predict).")
flags.DEFINE_string("export_dir", None, "export: where to write saved_model/, model.stablehlo.")
flags.DEFINE_bool("overwrite", False, "export: replace a non-empty --export_dir.")
flags.DEFINE_string(
    "coordinator_address", None, "Multi-process: HOST:PORT of process 0 (all processes)."
)
flags.DEFINE_integer("num_processes", None, "Multi-process: how many processes the job has.")
flags.DEFINE_integer("process_id", None, "Multi-process: this process, 0..num_processes-1.")
flags.mark_flags_as_required(["config", "workdir"])

# Config fields that name files or folders: a leading `~` is expanded like the path flags.
_CONFIG_PATHS = (("dataset", "data_dir"), ("dataset", "manual_dir"), ("init", "path"))


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter of orbax (a dozen lines per checkpoint); warnings still show."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def _expand(path: str | None) -> str | None:
    return None if path is None else os.path.expanduser(path)


def _expand_config_paths(config: ml_collections.ConfigDict) -> None:
    for parent, field in _CONFIG_PATHS:
        config[parent][field] = _expand(config[parent][field])


def _initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Joins a multi-process job: from the flags, or auto-detected (TPU pod, SLURM, Open MPI).

    CPU hosts talk through gloo, JAX's default CPU collectives.
    """
    if FLAGS.coordinator_address:
        if FLAGS.num_processes is None or FLAGS.process_id is None:
            raise app.UsageError("--coordinator_address needs --num_processes and --process_id")
        jax.distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    elif config.distributed:
        jax.distributed.initialize()


def main(argv):
    """Runs the mode the flags ask for."""
    del argv
    xla_setup.add_default_xla_flags()  # before the first computation, or XLA ignores them
    logging.get_absl_handler().addFilter(_QuietLibraries())
    # TF only feeds data: keep it off accelerators so JAX has their memory.
    tf.config.set_visible_devices([], "GPU")
    config, workdir = FLAGS.config, _expand(FLAGS.workdir)
    _initialize_distributed(config)
    _expand_config_paths(config)
    logging.info("JAX devices: %s", jax.devices())
    weights_path = _expand(FLAGS.weights)
    if FLAGS.mode == "train":
        scores = train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == "export":
        if not FLAGS.export_dir:
            raise app.UsageError("--mode=export needs --export_dir")
        export_dir = _expand(FLAGS.export_dir)
        written = export.export_trained(config, workdir, weights_path, export_dir, FLAGS.overwrite)
        print("wrote " + ", ".join(written.values()))
        return
    elif FLAGS.mode == "eval":
        scores = evaluation.evaluate_model(config, workdir, weights_path, FLAGS.split)
    else:
        output_dir = _expand(FLAGS.output_dir) or os.path.join(workdir, "predict")
        inputs = [_expand(entry) for entry in FLAGS.inputs]
        files = evaluation.predict_images(config, workdir, weights_path, inputs, output_dir)
        print(f"wrote {len(files)} files to {output_dir}")
        return
    split = FLAGS.split or config.dataset.eval_split
    print(f"final {split} mean IoU: {scores['mean_iou']:.4f}")


if __name__ == "__main__":
    app.run(main)
