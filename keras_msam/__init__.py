"""keras-msam: sharpness-aware minimization with m-sharpness (m-SAM) for Keras 3.

The core is `SAMModel`; the other modules are tools around it that a Keras user can reuse:
`callbacks` (SAM windows, rho schedules), `schedules` (the papers' learning-rate schedules),
`sharpness` (m-sharpness of a trained model), `interpolation` (linear paths between checkpoints),
`sparsity` (feature sparsity, Jacobian rank), `tuning` (KerasTuner search over rho and m),
`tensorboard` (SAM diagnostics), `models` (PreAct ResNets). The paper recipes live in `recipes/`,
which this package never imports.
"""

from keras_msam.callbacks import RhoSchedule, SAMWindow
from keras_msam.sam_model import SAMModel

__all__ = ["SAMModel", "SAMWindow", "RhoSchedule"]
__version__ = "0.1.0"
