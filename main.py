"""fcn-jax command line: train, evaluate or predict with an ml_collections config.

python main.py --config=configs/quickstart.py --workdir=/tmp/fcn_quickstart
python main.py --config=configs/fcn8s.py --workdir=DIR --mode=eval --weights=fcn8s_from_caffe.pth
python main.py --config=configs/quickstart.py --workdir=DIR --mode=predict --inputs=photos/
python main.py --config=configs/fcn8s.py --workdir=DIR --mode=export --export_dir=OUT
"""

import logging as pylogging
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import jax  # noqa: E402
import tensorflow as tf  # noqa: E402
from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from fcn_jax import export, train  # noqa: E402

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
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries(pylogging.Filter):
    """Drops INFO chatter of orbax (a dozen lines per checkpoint); warnings still show."""

    def filter(self, record: pylogging.LogRecord) -> bool:
        return record.levelno >= pylogging.WARNING or "orbax" not in record.pathname


def main(argv):
    """Runs the mode the flags ask for."""
    del argv
    logging.get_absl_handler().addFilter(_QuietLibraries())
    # TF only feeds data: keep it off accelerators so JAX has their memory.
    tf.config.set_visible_devices([], "GPU")
    if FLAGS.config.distributed:
        jax.distributed.initialize()
    logging.info("JAX devices: %s", jax.devices())
    config, workdir = FLAGS.config, FLAGS.workdir
    if FLAGS.mode == "train":
        scores = train.train_and_evaluate(config, workdir)
    elif FLAGS.mode == "export":
        if not FLAGS.export_dir:
            raise app.UsageError("--mode=export needs --export_dir")
        written = export.export_trained(
            config, workdir, FLAGS.weights, FLAGS.export_dir, FLAGS.overwrite
        )
        print("wrote " + ", ".join(written.values()))
        return
    elif FLAGS.mode == "eval":
        scores = train.evaluate_model(config, workdir, FLAGS.weights, FLAGS.split)
    else:
        output_dir = FLAGS.output_dir or os.path.join(workdir, "predict")
        files = train.predict(config, workdir, FLAGS.weights, FLAGS.inputs, output_dir)
        print(f"wrote {len(files)} files to {output_dir}")
        return
    print(f"final {config.dataset.eval_split} mean IoU: {scores['mean_iou']:.4f}")


if __name__ == "__main__":
    app.run(main)
