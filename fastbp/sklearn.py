"""scikit-learn estimators around fastbp modules: NeuralNetClassifier and NeuralNetRegressor.

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.model_selection import GridSearchCV, cross_val_score
    from fastbp.sklearn import NeuralNetClassifier

    clf = make_pipeline(StandardScaler(), NeuralNetClassifier(hidden_layer_sizes=(64,), epochs=30))
    cross_val_score(clf, X, y, cv=5)
    GridSearchCV(NeuralNetClassifier(), {"weight_decay": [0, 1e-4, 1e-3]}).fit(X, y)

Constructor parameters (all plain values, as scikit-learn's clone/get_params/set_params need):
- module: None for an MLP (Linear-ReLU per entry of hidden_layer_sizes, then Linear), or a callable
  `module(n_features, n_outputs) -> nn.Module` (a module factory; a top-level function pickles).
- loss: None for CrossEntropyLoss (classifier) / MSELoss (regressor), or a loss module.
- optimizer: "adam", "adamw", "sgd", "rmsprop", "adagrad" or a fastbp optimizer class; lr, weight_decay,
  and optimizer_kwargs (a dict of other settings, e.g. {"momentum": 0.9}).
- epochs, batch_size, shuffle, random_state (an int makes initialisation and shuffling reproducible without
  touching fastbp's global generator), dtype ("float32"/"float64"), verbose (progress lines).

Fitted attributes: module_, optimizer_, history_ (fastbp.train.History), n_iter_ (epochs run), n_features_in_
(and feature_names_in_), classes_ (classifier). partial_fit runs one epoch on the batch given, continuing
from the current weights and optimizer state (classes= on the first call of a classifier).
Needs scikit-learn >= 1.6 (imported only when this module is)."""
import contextlib

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, column_or_1d, validate_data

from . import nn, optim
from . import random as _random
from .data.dataset import TensorDataset
from .data.loader import DataLoader
from .train.loop import fit as _fit
from .train.loop import predict as _predict

__all__ = ["NeuralNetClassifier", "NeuralNetRegressor"]

_OPTIMIZERS = {"adam": optim.Adam, "adamw": optim.AdamW, "sgd": optim.SGD, "rmsprop": optim.RMSprop,
               "adagrad": optim.Adagrad}


@contextlib.contextmanager
def _seeded(seed):
    """Run with fastbp's generator seeded from `seed` and put the caller's generator back afterwards."""
    if seed is None:
        yield
        return
    saved = _random._rng
    _random._rng = np.random.default_rng(seed)
    try:
        yield
    finally:
        _random._rng = saved


class _NeuralNet(BaseEstimator):
    _default_loss = None

    def __init__(self, module=None, hidden_layer_sizes=(100,), loss=None, optimizer="adam", lr=1e-3,
                 weight_decay=0.0, optimizer_kwargs=None, epochs=20, batch_size=32, shuffle=True,
                 random_state=None, dtype="float32", verbose=False):
        self.module = module
        self.hidden_layer_sizes = hidden_layer_sizes
        self.loss = loss
        self.optimizer = optimizer
        self.lr = lr
        self.weight_decay = weight_decay
        self.optimizer_kwargs = optimizer_kwargs
        self.epochs = epochs
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.random_state = random_state
        self.dtype = dtype
        self.verbose = verbose

    # ----- building ---------------------------------------------------------------------------------------
    def _build_module(self, n_in, n_out):
        if self.module is not None:
            if not callable(self.module):
                raise TypeError(f"module must be a callable (n_features, n_outputs) -> Module, got {self.module!r}")
            m = self.module(n_in, n_out)
            if not isinstance(m, nn.Module):
                raise TypeError(f"module(...) must return a fastbp nn.Module, got {type(m).__name__}")
        else:
            sizes = [n_in, *[int(h) for h in self.hidden_layer_sizes], n_out]
            layers = []
            for a, b in zip(sizes[:-1], sizes[1:]):
                layers += [nn.Linear(a, b), nn.ReLU()]
            m = nn.Sequential(*layers[:-1])
        return m.to(np.dtype(self.dtype))

    def _build_optimizer(self, params):
        opt = self.optimizer
        if isinstance(opt, str):
            if opt.lower() not in _OPTIMIZERS:
                raise ValueError(f"optimizer={opt!r}: choose one of {sorted(_OPTIMIZERS)} or pass an optimizer class")
            opt = _OPTIMIZERS[opt.lower()]
        kwargs = dict(self.optimizer_kwargs or {})
        kwargs.setdefault("lr", self.lr)
        if self.weight_decay:
            kwargs.setdefault("weight_decay", self.weight_decay)
        return opt(params, **kwargs)

    def _loss(self):
        return self.loss if self.loss is not None else self._default_loss()

    def _check_params(self):
        for name in ("epochs", "batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if np.dtype(self.dtype) not in (np.float32, np.float64):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {self.dtype!r}")

    # ----- training ---------------------------------------------------------------------------------------
    def _train(self, X, y, epochs, first):
        seed = self.random_state
        if first:
            with _seeded(seed):
                self.module_ = self._build_module(X.shape[1], self._n_outputs)
            self.optimizer_ = self._build_optimizer(self.module_.parameters())
            self.n_iter_ = 0
            self.history_ = None
        loader_seed = None if seed is None else np.random.SeedSequence([int(seed), self.n_iter_]).generate_state(1)[0]
        loader = DataLoader(TensorDataset(X, y), batch_size=int(self.batch_size), shuffle=bool(self.shuffle),
                            seed=int(loader_seed) if self.shuffle and loader_seed is not None else None)
        hist = _fit(self.module_, self._loss(), self.optimizer_, loader, epochs=int(epochs),
                    metrics=self._metrics, progress="log" if self.verbose else False)
        if self.history_ is None:
            self.history_ = hist
        else:
            for r in hist.records:
                r = dict(r)
                r["epoch"] += self.n_iter_
                self.history_.append(r)
        self.n_iter_ += len(hist)
        return self

    def _outputs(self, X):
        check_is_fitted(self, "module_")
        X = validate_data(self, X, reset=False, dtype=[np.float64, np.float32])
        return _predict(self.module_, X.astype(np.dtype(self.dtype), copy=False), batch_size=1024)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = self.random_state is None
        return tags


class NeuralNetClassifier(ClassifierMixin, _NeuralNet):
    """A fastbp network as a scikit-learn classifier (softmax outputs, one per class). See the module
    docstring for the parameters."""

    _default_loss = nn.CrossEntropyLoss
    _metrics = ("accuracy",)

    def _prepare(self, X, y, reset):
        self._check_params()
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32])
        y = column_or_1d(y, warn=True)
        check_classification_targets(y)
        return X.astype(np.dtype(self.dtype), copy=False), y

    def fit(self, X, y):
        X, y = self._prepare(X, y, reset=True)
        self.classes_, yi = np.unique(y, return_inverse=True)
        self._n_outputs = len(self.classes_)
        return self._train(X, yi.astype(np.int64), self.epochs, first=True)

    def partial_fit(self, X, y, classes=None):
        first = not hasattr(self, "module_")
        X, y = self._prepare(X, y, reset=first)
        if first:
            if classes is None:
                raise ValueError("classes must be passed on the first call to partial_fit")
            self.classes_ = np.unique(np.asarray(classes))
            self._n_outputs = len(self.classes_)
        elif classes is not None and not np.array_equal(np.unique(np.asarray(classes)), self.classes_):
            raise ValueError(f"classes={classes!r} is not the same as on the first call to partial_fit "
                             f"{self.classes_!r}")
        unknown = np.setdiff1d(y, self.classes_)
        if len(unknown):
            raise ValueError(f"y has labels {unknown.tolist()} that are not in classes {self.classes_.tolist()}")
        yi = np.searchsorted(self.classes_, y).astype(np.int64)
        return self._train(X, yi, 1, first=first)

    def predict_proba(self, X):
        z = self._outputs(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        return p / p.sum(axis=1, keepdims=True)

    def predict_log_proba(self, X):
        z = self._outputs(X).astype(np.float64)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def decision_function(self, X):
        z = self._outputs(X).astype(np.float64)
        return z[:, 1] - z[:, 0] if len(self.classes_) == 2 else z

    def predict(self, X):
        z = self._outputs(X)
        return self.classes_[np.argmax(z, axis=1)]


class NeuralNetRegressor(RegressorMixin, _NeuralNet):
    """A fastbp network as a scikit-learn regressor (one output per target; y 1-D or 2-D). See the module
    docstring for the parameters."""

    _default_loss = nn.MSELoss
    _metrics = ()

    def _prepare(self, X, y, reset):
        self._check_params()
        X, y = validate_data(self, X, y, reset=reset, dtype=[np.float64, np.float32], multi_output=True,
                             y_numeric=True)
        X = X.astype(np.dtype(self.dtype), copy=False)
        y = np.asarray(y, dtype=np.dtype(self.dtype))
        if reset:
            self._y_1d = y.ndim == 1
        return X, (y.reshape(-1, 1) if y.ndim == 1 else y)

    def fit(self, X, y):
        X, y = self._prepare(X, y, reset=True)
        self._n_outputs = y.shape[1]
        return self._train(X, y, self.epochs, first=True)

    def partial_fit(self, X, y):
        first = not hasattr(self, "module_")
        X, y = self._prepare(X, y, reset=first)
        if first:
            self._n_outputs = y.shape[1]
        elif y.shape[1] != self._n_outputs:
            raise ValueError(f"y has {y.shape[1]} targets but the model was fitted with {self._n_outputs}")
        return self._train(X, y, 1, first=first)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def predict(self, X):
        out = self._outputs(X)
        out = out.astype(np.float64)  # (scikit-learn expects float64 predictions)
        return out[:, 0] if self._y_1d else out
