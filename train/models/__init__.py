"""CTC models: streaming students (GRU, residual BiLSTM, TCN) and offline teachers (TDS-Conv, CNN+Transformer).

Every model maps features ``(T, N, n_bands, C, n_freq)`` to log-probabilities
``(T_out, N, 99)``; ``output_lengths`` gives ``T_out``. Build them by name with
``build_model`` from a config dict (what checkpoints store) or ``default_config``.
"""

from emgkey.train.models.bilstm import BiLSTMConfig, BiLSTMModel
from emgkey.train.models.common import (
    CTCModel,
    ModelConfig,
    RotationInvariantMLP,
    SpectrogramNorm,
    State,
    StreamingModel,
)
from emgkey.train.models.gru import ExplicitGRU, GRUConfig, GRUModel
from emgkey.train.models.registry import (
    MODEL_NAMES,
    STREAMING_MODELS,
    build_model,
    config_from_dict,
    default_config,
    default_configs,
)
from emgkey.train.models.tcn import TCNConfig, TCNModel
from emgkey.train.models.tds_conv import TDSConvConfig, TDSConvModel
from emgkey.train.models.transformer import TransformerConfig, TransformerModel

__all__ = [
    "MODEL_NAMES",
    "STREAMING_MODELS",
    "BiLSTMConfig",
    "BiLSTMModel",
    "CTCModel",
    "ExplicitGRU",
    "GRUConfig",
    "GRUModel",
    "ModelConfig",
    "RotationInvariantMLP",
    "SpectrogramNorm",
    "State",
    "StreamingModel",
    "TCNConfig",
    "TCNModel",
    "TDSConvConfig",
    "TDSConvModel",
    "TransformerConfig",
    "TransformerModel",
    "build_model",
    "config_from_dict",
    "default_config",
    "default_configs",
]
