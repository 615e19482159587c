"""The MLflow pyfunc model of a registered arinv encoder or autoencoder (models from code).

``pipelines.registry`` logs this file as the model's code; MLflow runs it when the model is
loaded. It may import only ``mlflow``, numpy, torch and the ``arinv`` package bundled with the
model (``code_paths``): consumers of a registered model do not have ``pipelines``.

Artifacts: ``encoder`` (an arinv encoder checkpoint) and, for an autoencoder, ``generator``;
or ``denoiser`` alone (the wavelet denoising autoencoder, its encoder inside).
Input: float32 images N x 3 x R x R in [0, 1]. Output: ``{"logits"}`` for an encoder,
``{"reconstruction", "features"}`` for an autoencoder, ``{"denoised"}`` for a denoiser (any
size of at least 63 px a side).
"""

import mlflow
import numpy as np
from mlflow.pyfunc import PythonModel


class ArinvModel(PythonModel):
    def load_context(self, context):
        self.encoder = self.generator = self.layer = self.denoiser = None
        if "denoiser" in context.artifacts:
            from arinv.models.load import load_denoiser

            self.denoiser, _ = load_denoiser(context.artifacts["denoiser"])
            return
        from arinv.models.load import load_encoder

        self.encoder, _ = load_encoder(context.artifacts["encoder"])
        if "generator" in context.artifacts:
            from arinv.models.load import load_generator

            self.generator, gcfg = load_generator(context.artifacts["generator"])
            self.layer = gcfg.encoder.layer

    # The np.ndarray hint only silences MLflow's "add type hints" warning; the signature given
    # at logging time does the input checking.
    def predict(self, context, model_input: np.ndarray, params=None):
        import torch

        if isinstance(model_input, dict) and len(model_input) == 1:  # {"inputs": ...} as served
            (model_input,) = model_input.values()
        x = torch.as_tensor(np.asarray(model_input, dtype=np.float32))
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected float32 images N x 3 x R x R in [0, 1], got shape "
                             f"{tuple(x.shape)}")
        with torch.no_grad():
            if self.denoiser is not None:
                return {"denoised": self.denoiser(x).float().clamp(0, 1).numpy()}
            if self.generator is None:
                return {"logits": self.encoder(x).float().numpy()}
            features = self.encoder.features(x, self.layer)
            reconstruction = self.generator(features).float().clamp(0, 1)
        return {"reconstruction": reconstruction.numpy(), "features": features.float().numpy()}


mlflow.models.set_model(ArinvModel())
