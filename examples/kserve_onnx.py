"""Serve an ONNX digit classifier with KServe's Python model server, a third-party Open Inference
Protocol v2 server that is not `mea serve`, so that `mea attack --url` can be pointed at it:

    mea export --victim runs/victim --out victim.onnx
    python examples/kserve_onnx.py --onnx victim.onnx --name lenet --http_port 8080 &
    mea attack --victim runs/victim --url http://127.0.0.1:8080 --model lenet --out runs/kserve-attack

`--answer` picks what the model returns: logits (FP32 [B, 10], the default), probabilities, or
labels (INT64 [B]).  Needs `pip install kserve onnxruntime`.
"""

from __future__ import annotations

import argparse
import uuid

import numpy as np
import onnxruntime
from kserve import InferOutput, InferRequest, InferResponse, Model, ModelServer, model_server


class OnnxDigits(Model):
    def __init__(self, name: str, path: str, answer: str) -> None:
        super().__init__(name)
        self._session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        self._input = self._session.get_inputs()[0]
        self._answer = answer
        self.ready = True

    def get_input_types(self) -> list[dict]:
        return [{"name": self._input.name, "datatype": "FP32", "shape": [-1, *self._input.shape[1:]]}]

    def get_output_types(self) -> list[dict]:
        if self._answer == "labels":
            return [{"name": "label", "datatype": "INT64", "shape": [-1]}]
        return [{"name": self._answer, "datatype": "FP32", "shape": [-1, 10]}]

    def predict(self, payload: InferRequest, headers=None, response_headers=None) -> InferResponse:
        images = payload.inputs[0].as_numpy().astype(np.float32)
        logits = self._session.run(None, {self._input.name: images})[0]
        if self._answer == "labels":
            values, name, datatype = logits.argmax(1).astype(np.int64), "label", "INT64"
        elif self._answer == "probabilities":
            shifted = np.exp(logits - logits.max(1, keepdims=True))
            values, name, datatype = (
                (shifted / shifted.sum(1, keepdims=True)).astype(np.float32),
                "probabilities",
                "FP32",
            )
        else:
            values, name, datatype = logits.astype(np.float32), "logits", "FP32"
        output = InferOutput(name=name, shape=list(values.shape), datatype=datatype)
        output.set_data_from_numpy(values, binary_data=False)
        # The request id is optional in the protocol; KServe insists on one in the response.
        return InferResponse(model_name=self.name, infer_outputs=[output], response_id=payload.id or str(uuid.uuid4()))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(parents=[model_server.parser], description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, help="the ONNX classifier to serve")
    parser.add_argument("--name", default="lenet", help="the model's name in the OIP v2 paths")
    parser.add_argument("--answer", choices=("logits", "probabilities", "labels"), default="logits")
    args, _ = parser.parse_known_args()
    ModelServer(http_port=args.http_port, enable_grpc=False, workers=1).start(
        [OnnxDigits(args.name, args.onnx, args.answer)]
    )
