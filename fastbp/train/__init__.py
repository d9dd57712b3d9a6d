"""Training utilities: the fit loop, callbacks, cross-validation and training checkpoints.

Rooms: `loop` (fit, evaluate, predict, History), `callbacks` (EarlyStopping, ModelCheckpoint,
LearningRateMonitor, the Callback protocol), `cv` (cross_validate), `checkpoint` (save_checkpoint,
load_checkpoint)."""
from .callbacks import Callback, EarlyStopping, LearningRateMonitor, ModelCheckpoint
from .checkpoint import check_state_dict, load_checkpoint, save_checkpoint
from .cv import CVResult, cross_validate
from .loop import CallbackError, History, TrainingState, accuracy, evaluate, fit, predict

__all__ = ["fit", "evaluate", "predict", "History", "TrainingState", "CallbackError", "accuracy", "Callback",
           "EarlyStopping", "ModelCheckpoint", "LearningRateMonitor", "cross_validate", "CVResult",
           "save_checkpoint", "load_checkpoint", "check_state_dict"]
