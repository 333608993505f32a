"""Feed ranker: score = sigmoid(sum(user * item * weights) + bias) per row; weights come with the version."""
import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads((Path(args["model_repository"]) / args["model_version"] / "weights.json").read_text())
        self.weights = np.asarray(params["weights"], dtype=np.float32)
        self.bias = np.float32(params["bias"])

    def execute(self, requests):
        return [self._score(request) for request in requests]

    def _score(self, request):
        user = pb_utils.get_input_tensor_by_name(request, "user").as_numpy()
        item = pb_utils.get_input_tensor_by_name(request, "item").as_numpy()
        if user.shape != item.shape:
            return pb_utils.InferenceResponse(
                error=pb_utils.TritonError(f"user {user.shape} and item {item.shape} must have the same shape")
            )
        logits = (user * item) @ self.weights + self.bias
        score = (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)
        return pb_utils.InferenceResponse([pb_utils.Tensor("score", score)])
