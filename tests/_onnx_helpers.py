"""ONNX models and facts shared by the test files (written with onnx.helper)."""

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

F32 = TensorProto.FLOAT


def _loads(opset):
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", F32, [2])],
        [helper.make_tensor_value_info("y", F32, [2])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8
    )
    try:
        sess = ort.InferenceSession(
            model.SerializeToString(), providers=["CPUExecutionProvider"]
        )
    except Exception:
        return False
    y = sess.run(None, {"x": np.array([-1.0, 2.0], dtype=np.float32)})[0]
    return y.tolist() == [0.0, 2.0]


# The newest opset that both onnx and the installed onnxruntime load, found
# with this module's own probe (the library's newest_opset is tested against it)
CURRENT = next(op for op in range(onnx.defs.onnx_opset_version(), 6, -1) if _loads(op))


def make_lenet(
    opset,
    *,
    batch="N",
    channels=1,
    init_as_inputs=False,
    reshape_batch=None,
    offset_input=False,
    ir_version=None,
    seed=0,
):
    """A LeNet-shaped ONNX graph (28x28 input) written with onnx.helper.

    Tensors: c1 (conv1), r1, p1 (MaxPool), c2, r2, p2 (AveragePool), f, g1,
    [o1 = g1 + offset], r3, y. Node names: conv1, relu1, pool1, ..., fc2.
    ``reshape_batch``: flatten with Reshape to a hard-coded (batch, -1), as old
    exporters did (then the batch dim cannot simply be made dynamic).
    """
    rng = np.random.default_rng(seed)
    w = {
        "W1": rng.normal(0, 0.3, (4, channels, 5, 5)),
        "b1": rng.normal(0, 0.1, 4),
        "W2": rng.normal(0, 0.2, (6, 4, 5, 5)),
        "b2": rng.normal(0, 0.1, 6),
        "Wf": rng.normal(0, 0.2, (12, 96)),
        "bf": rng.normal(0, 0.1, 12),
        "Wo": rng.normal(0, 0.3, (10, 12)),
        "bo": rng.normal(0, 0.1, 10),
    }
    inits = [numpy_helper.from_array(v.astype(np.float32), k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["x", "W1", "b1"], ["c1"], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node(
            "MaxPool", ["r1"], ["p1"], name="pool1", kernel_shape=[2, 2], strides=[2, 2]
        ),
        helper.make_node("Conv", ["p1", "W2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node(
            "AveragePool",
            ["r2"],
            ["p2"],
            name="pool2",
            kernel_shape=[2, 2],
            strides=[2, 2],
        ),
    ]
    if reshape_batch:
        inits.append(numpy_helper.from_array(np.array([reshape_batch, -1]), "shape"))
        nodes.append(helper.make_node("Reshape", ["p2", "shape"], ["f"], name="flat"))
    else:
        nodes.append(helper.make_node("Flatten", ["p2"], ["f"], name="flat", axis=1))
    nodes.append(
        helper.make_node("Gemm", ["f", "Wf", "bf"], ["g1"], name="fc1", transB=1)
    )
    pre = "g1"
    inputs = [helper.make_tensor_value_info("x", F32, [batch, channels, 28, 28])]
    if offset_input:
        inputs.append(helper.make_tensor_value_info("offset", F32, [batch, 12]))
        nodes.append(helper.make_node("Add", ["g1", "offset"], ["o1"], name="shift"))
        pre = "o1"
    nodes += [
        helper.make_node("Relu", [pre], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "Wo", "bo"], ["y"], name="fc2", transB=1),
    ]
    if init_as_inputs:
        inputs += [
            helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
            for t in inits
        ]
    graph = helper.make_graph(
        nodes,
        "lenet",
        inputs,
        [helper.make_tensor_value_info("y", F32, [batch, 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    if ir_version is not None:
        model.ir_version = ir_version
    onnx.checker.check_model(model)
    return model
