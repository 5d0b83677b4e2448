"""TensorFlow stays off the GPU unless it is the Keras backend (kdg.tf_data)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import keras

ROOT = Path(__file__).resolve().parents[1]

# Run in a fresh process: TensorFlow's devices are fixed by its first op, and
# this test process has run TensorFlow ops long before. The child spies on the
# public tf.config.set_visible_devices, recording each call and whether
# TensorFlow had been initialised at that moment (public API too: changing the
# intra-op thread count raises RuntimeError once TensorFlow is initialised,
# and is undone at once otherwise), then builds kdg's pipeline and takes a batch.
CHILD = """
import json
import numpy as np
import tensorflow as tf

def initialised():
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads + 1)
    except RuntimeError:
        return True
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    return False

calls = []
real = tf.config.set_visible_devices
def spy(devices, device_type=None):
    calls.append({"devices": [d.name for d in devices], "type": device_type,
                  "initialised": initialised()})
    return real(devices, device_type)
tf.config.set_visible_devices = spy

import kdg.data
x = np.arange(24, dtype="float32").reshape(8, 3)
y = np.arange(8, dtype="int32")
bx, by = next(iter(kdg.data.domain_batches([(x, y), (x + 1, y)], batch_size=2, seed=0)))
print(json.dumps({
    "calls": calls, "batch": list(bx.shape), "initialised_after": initialised(),
    "visible_gpus": [d.name for d in tf.config.get_visible_devices("GPU")],
    "visible": sorted(d.device_type for d in tf.config.get_visible_devices()),
    "physical": sorted(d.device_type for d in tf.config.list_physical_devices()),
}))
"""


def _child(backend):
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_tensorflow_keeps_off_the_gpu_unless_it_is_the_backend():
    """After kdg's pipeline has yielded a batch (so TensorFlow is initialised),
    under JAX or PyTorch kdg has hidden the GPUs from TensorFlow, exactly once
    and before TensorFlow's first op; under TensorFlow it has not touched them.

    On a machine without a GPU, TensorFlow's visible device list holds no GPU
    whether or not kdg hides them, so that list alone proves nothing here:
    the test watches kdg's call instead. Without kdg's call `calls` is empty
    and the test fails; with the call made after the pipeline's first op
    (too late: TensorFlow would already hold the GPU memory) its `initialised`
    is True and the test fails. On a GPU machine the visible-list checks
    below also fail without the call."""
    backend = keras.backend.backend()
    got = _child(backend)
    assert got["batch"] == [4, 3]
    assert got["initialised_after"]  # the spy's probe does detect an initialised TensorFlow
    if backend == "tensorflow":
        assert got["calls"] == []
        assert got["visible"] == got["physical"]
    else:
        assert got["calls"] == [{"devices": [], "type": "GPU", "initialised": False}]
        assert got["visible_gpus"] == []
        assert got["visible"] == [t for t in got["physical"] if t != "GPU"]
