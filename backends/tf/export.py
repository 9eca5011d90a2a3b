"""What `meshc -o` writes for the tf backend, and the TensorBoard graph.

- `.pb`: the binary GraphDef. Plain TensorFlow runs it with nothing from meshir:
  `tf.compat.v1.import_graph_def`, a Session with the mesh's N CPU devices
  (`ConfigProto(device_count={"CPU": N})`), `run("init")`, then fetch outputs
  by name (`loss:0`) feeding global inputs by argument name (`x:0`).
- `.pbtxt`: the same GraphDef as text.
- `DIR.savedmodel`: a SavedModel (tag `serve`) whose `serving_default` signature
  maps the argument names to the returned values' names over the global
  interface; its variables hold their initial values. `tf.saved_model.load`
  runs it in TF2 on the loader's logical devices.
- `write_tensorboard(program, DIR)`: an event file with the graph, which
  TensorBoard's graph view shows as one box per meshir op, opening into devices.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from typing import Callable

from google.protobuf import text_format

from meshir.diagnostics import FlagError

from .compile import TFProgram
from .devices import session_config
from .emit import INIT
from .rules_common import tf


def graph_def_binary(program: TFProgram) -> bytes:
    return program.graph_def().SerializeToString()


def graph_def_text(program: TFProgram) -> str:
    return text_format.MessageToString(program.graph_def())


# Output file suffix -> its contents (meshc -o); `.savedmodel` is a folder, see write.
WRITERS: dict[str, Callable[[TFProgram], str | bytes]] = {
    ".pb": graph_def_binary,
    ".pbtxt": graph_def_text,
}
SUFFIXES = (*WRITERS, ".savedmodel")


def signature(program: TFProgram):
    """The `serving_default` SignatureDef: argument names -> returned value names."""
    from tensorflow.core.protobuf import meta_graph_pb2

    sig = meta_graph_pb2.SignatureDef(method_name="tensorflow/serving/predict")
    for ports, infos in ((program.inputs, sig.inputs), (program.outputs, sig.outputs)):
        for port in ports:
            tensor = program.graph.get_tensor_by_name(port.tensor)
            info = infos[port.name]
            info.name = port.tensor
            info.dtype = tensor.dtype.as_datatype_enum
            info.tensor_shape.CopyFrom(tensor.shape.as_proto())
    return sig


def write_savedmodel(program: TFProgram, path: str) -> None:
    """A SavedModel in folder `path`, built beside it and renamed into place, so a
    failure leaves nothing half-written; an existing SavedModel there is replaced."""
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FlagError(f"-o: folder '{parent}' does not exist")
    if os.path.exists(path) and not os.path.exists(os.path.join(path, "saved_model.pb")):
        raise FlagError(f"-o: '{path}' exists and is not a SavedModel; remove it or choose another name")
    staging = tempfile.mkdtemp(prefix=".meshir-", dir=parent)
    try:
        # The saver the builder adds goes into a copy of the graph, not the program's.
        with program.graph.as_default():
            meta_graph = tf.compat.v1.train.export_meta_graph()
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.train.import_meta_graph(meta_graph)
            with tf.compat.v1.Session(graph=graph, config=session_config(program.devices, program.device_kind)) as session:
                session.run(INIT)
                builder = tf.compat.v1.saved_model.Builder(os.path.join(staging, "model"))
                builder.add_meta_graph_and_variables(
                    session, [tf.saved_model.SERVING], signature_def_map={"serving_default": signature(program)},
                    strip_default_attrs=True,
                )
                builder.save()
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(os.path.join(staging, "model"), path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def artifact(program: TFProgram, path: str) -> str | bytes:
    """What `meshc -o path` writes to a file, chosen by the suffix; a `.savedmodel`
    is a folder, written by `write_savedmodel`."""
    suffix = os.path.splitext(path)[1]
    if suffix not in WRITERS:
        raise FlagError(f"-o: the tf backend writes {', '.join(SUFFIXES)}, not '{suffix or path}'")
    return WRITERS[suffix](program)


def write_tensorboard(program: TFProgram, folder: str) -> None:
    """An event file holding the graph in `folder` (created if missing)."""
    os.makedirs(folder, exist_ok=True)
    writer = tf.summary.create_file_writer(folder)
    with writer.as_default():
        tf.summary.graph(program.graph_def())
    writer.close()
