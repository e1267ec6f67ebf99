"""keras-msam: sharpness-aware minimization with m-sharpness (m-SAM) for Keras 3.

The core is `SAMModel`; the other modules are small tools around it:
`callbacks` (SAM windows, rho schedules), `schedules` (the papers' learning-rate schedules),
`sharpness` (m-sharpness of a trained model), `interpolation` (linear paths between checkpoints),
`implicit_bias` (hyperbolic entropy, effective alpha), `sparsity` (feature sparsity, Jacobian rank),
`tuning` (KerasTuner search over rho and m), `tensorboard` (SAM diagnostics), `models` (PreAct ResNets).
"""

from keras_msam.callbacks import RhoSchedule, SAMWindow
from keras_msam.sam_model import SAMModel

__all__ = ["SAMModel", "SAMWindow", "RhoSchedule"]
__version__ = "0.1.0"
